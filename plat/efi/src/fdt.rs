//! A copy of a flattened device tree with `/chosen/bootargs` set.
//!
//! QEMU and boot loaders put the kernel's command line into `/chosen`;
//! under UEFI the firmware's tree has none, so the loader writes one in.
//! The blob is rebuilt block by block (header, memory reservations,
//! structure, strings): an existing `bootargs` in `/chosen` is dropped and
//! the new one becomes `/chosen`'s first property; a tree without `/chosen`
//! gets the node as the root's last child. Written here because the
//! device-tree crates in use read trees (`fdt`) or build new ones
//! (`vm-fdt`), and neither edits one in place.

use alloc::vec::Vec;

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;
const HEADER: usize = 40;

/// Why a tree could not be copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdtError {
    /// No `0xd00dfeed` magic, or a version before 17 (whose header lacks
    /// the structure block's size).
    BadHeader,
    /// A block or token runs past the blob's end, or an unknown token.
    Truncated,
}

fn be32(b: &[u8], at: usize) -> Result<u32, FdtError> {
    b.get(at..at + 4)
        .map(|w| u32::from_be_bytes(w.try_into().unwrap()))
        .ok_or(FdtError::Truncated)
}

/// The blob's total size from its header (what to read from the address
/// the firmware gives).
pub fn total_size(header: &[u8]) -> Result<usize, FdtError> {
    if be32(header, 0)? != MAGIC {
        return Err(FdtError::BadHeader);
    }
    Ok(be32(header, 4)? as usize)
}

fn align4(n: usize) -> usize {
    n.next_multiple_of(4)
}

/// The offset of `name` as a whole string of the strings block, if there.
fn find_string(strings: &[u8], name: &str) -> Option<usize> {
    let mut at = 0;
    for s in strings.split(|&c| c == 0) {
        if s == name.as_bytes() && at + s.len() < strings.len() {
            return Some(at);
        }
        at += s.len() + 1;
    }
    None
}

/// A copy of `blob` whose `/chosen` node has `bootargs = args`.
pub fn with_bootargs(blob: &[u8], args: &str) -> Result<Vec<u8>, FdtError> {
    let size = total_size(blob)?;
    let blob = blob.get(..size).ok_or(FdtError::Truncated)?;
    let field = |i: usize| be32(blob, 4 * i).map(|v| v as usize);
    let (off_struct, off_strings, off_rsv) = (field(2)?, field(3)?, field(4)?);
    let (version, last_comp, cpu) = (field(5)?, field(6)?, field(7)?);
    let (size_strings, size_struct) = (field(8)?, field(9)?);
    if version < 17 {
        return Err(FdtError::BadHeader);
    }
    let block = |off: usize, len: usize| {
        off.checked_add(len)
            .and_then(|end| blob.get(off..end))
            .ok_or(FdtError::Truncated)
    };
    let structs = block(off_struct, size_struct)?;
    let mut strings: Vec<u8> = block(off_strings, size_strings)?.to_vec();
    // Memory reservations: 16-byte entries up to an all-zero one.
    let mut rsv_len = 0;
    loop {
        let e = block(off_rsv + rsv_len, 16)?;
        rsv_len += 16;
        if e.iter().all(|&b| b == 0) {
            break;
        }
    }
    let rsv = block(off_rsv, rsv_len)?;
    let name_off = match find_string(&strings, "bootargs") {
        Some(o) => o,
        None => {
            let o = strings.len();
            strings.extend_from_slice(b"bootargs\0");
            o
        }
    };
    let mut prop = Vec::with_capacity(12 + align4(args.len() + 1));
    prop.extend_from_slice(&PROP.to_be_bytes());
    prop.extend_from_slice(&(args.len() as u32 + 1).to_be_bytes());
    prop.extend_from_slice(&(name_off as u32).to_be_bytes());
    prop.extend_from_slice(args.as_bytes());
    prop.push(0);
    prop.resize(align4(prop.len()), 0);

    let mut out = Vec::with_capacity(structs.len() + prop.len() + 32);
    let (mut pos, mut depth) = (0usize, 0usize);
    let (mut in_chosen, mut chosen_seen) = (false, false);
    loop {
        let token = be32(structs, pos)?;
        match token {
            BEGIN_NODE => {
                let name_start = pos + 4;
                let nul = structs
                    .get(name_start..)
                    .and_then(|s| s.iter().position(|&c| c == 0))
                    .ok_or(FdtError::Truncated)?;
                let next = align4(name_start + nul + 1);
                out.extend_from_slice(structs.get(pos..next).ok_or(FdtError::Truncated)?);
                depth += 1;
                if depth == 2 && &structs[name_start..name_start + nul] == b"chosen" {
                    in_chosen = true;
                    chosen_seen = true;
                    out.extend_from_slice(&prop);
                }
                pos = next;
            }
            END_NODE => {
                depth = depth.checked_sub(1).ok_or(FdtError::Truncated)?;
                if depth == 1 {
                    in_chosen = false;
                }
                if depth == 0 && !chosen_seen {
                    out.extend_from_slice(&BEGIN_NODE.to_be_bytes());
                    out.extend_from_slice(b"chosen\0\0");
                    out.extend_from_slice(&prop);
                    out.extend_from_slice(&END_NODE.to_be_bytes());
                }
                out.extend_from_slice(&END_NODE.to_be_bytes());
                pos += 4;
            }
            PROP => {
                let len = be32(structs, pos + 4)? as usize;
                let name = be32(structs, pos + 8)? as usize;
                let next = align4(pos + 12 + len);
                let bytes = structs.get(pos..next).ok_or(FdtError::Truncated)?;
                let is_bootargs = blob
                    .get(off_strings + name..)
                    .is_some_and(|s| s.starts_with(b"bootargs\0"));
                if !(in_chosen && depth == 2 && is_bootargs) {
                    out.extend_from_slice(bytes);
                }
                pos = next;
            }
            NOP => pos += 4,
            END => {
                out.extend_from_slice(&END.to_be_bytes());
                break;
            }
            _ => return Err(FdtError::Truncated),
        }
    }

    let new_rsv = HEADER;
    let new_struct = new_rsv + rsv.len();
    let new_strings = new_struct + out.len();
    let total = new_strings + strings.len();
    let mut tree = Vec::with_capacity(total);
    for v in [
        MAGIC as usize,
        total,
        new_struct,
        new_strings,
        new_rsv,
        version,
        last_comp,
        cpu,
        strings.len(),
        out.len(),
    ] {
        tree.extend_from_slice(&(v as u32).to_be_bytes());
    }
    tree.extend_from_slice(rsv);
    tree.extend_from_slice(&out);
    tree.extend_from_slice(&strings);
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    /// A tree built token by token: root (a property, `/chosen` when
    /// `chosen` is given, with those properties, and `/memory`), one
    /// memory reservation.
    fn tree(chosen: Option<&[(&str, &str)]>) -> Vec<u8> {
        let mut strings = Vec::new();
        let mut st = Vec::new();
        let mut name = |n: &str, strings: &mut Vec<u8>| -> u32 {
            if let Some(o) = find_string(strings, n) {
                return o as u32;
            }
            let o = strings.len() as u32;
            strings.extend_from_slice(n.as_bytes());
            strings.push(0);
            o
        };
        let mut prop = |st: &mut Vec<u8>, strings: &mut Vec<u8>, n: &str, v: &[u8]| {
            let o = name(n, strings);
            st.extend_from_slice(&PROP.to_be_bytes());
            st.extend_from_slice(&(v.len() as u32).to_be_bytes());
            st.extend_from_slice(&o.to_be_bytes());
            st.extend_from_slice(v);
            st.resize(align4(st.len()), 0);
        };
        let begin = |st: &mut Vec<u8>, n: &str| {
            st.extend_from_slice(&BEGIN_NODE.to_be_bytes());
            st.extend_from_slice(n.as_bytes());
            st.push(0);
            st.resize(align4(st.len()), 0);
        };
        begin(&mut st, "");
        prop(&mut st, &mut strings, "compatible", b"linux,dummy-virt\0");
        prop(&mut st, &mut strings, "#address-cells", &2u32.to_be_bytes());
        prop(&mut st, &mut strings, "#size-cells", &2u32.to_be_bytes());
        if let Some(props) = chosen {
            begin(&mut st, "chosen");
            st.extend_from_slice(&NOP.to_be_bytes());
            for (n, v) in props {
                let mut v = String::from(*v).into_bytes();
                v.push(0);
                prop(&mut st, &mut strings, n, &v);
            }
            st.extend_from_slice(&END_NODE.to_be_bytes());
        }
        begin(&mut st, "memory@40000000");
        prop(
            &mut st,
            &mut strings,
            "reg",
            &[0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0],
        );
        st.extend_from_slice(&END_NODE.to_be_bytes());
        st.extend_from_slice(&END_NODE.to_be_bytes());
        st.extend_from_slice(&END.to_be_bytes());
        // Header, then strings before the structure (a legal order that
        // is not the one written back), then the reservations.
        let off_strings = HEADER;
        let off_struct = align4(off_strings + strings.len());
        let off_rsv = (off_struct + st.len()).next_multiple_of(8);
        let total = off_rsv + 32;
        let mut b = Vec::new();
        for v in [
            MAGIC as usize,
            total,
            off_struct,
            off_strings,
            off_rsv,
            17,
            16,
            0,
            strings.len(),
            st.len(),
        ] {
            b.extend_from_slice(&(v as u32).to_be_bytes());
        }
        b.extend_from_slice(&strings);
        b.resize(off_struct, 0);
        b.extend_from_slice(&st);
        b.resize(off_rsv, 0);
        b.extend_from_slice(&0x4800_0000u64.to_be_bytes());
        b.extend_from_slice(&0x1000u64.to_be_bytes());
        b.resize(total, 0);
        b
    }

    fn chosen_bootargs(blob: &[u8]) -> Option<String> {
        let t = fdt::Fdt::new(blob).expect("a valid tree");
        t.find_node("/chosen")?
            .property("bootargs")?
            .as_str()
            .map(String::from)
    }

    fn check(blob: &[u8], args: &str) {
        let out = with_bootargs(blob, args).unwrap();
        assert_eq!(chosen_bootargs(&out).as_deref(), Some(args));
        let t = fdt::Fdt::new(&out).unwrap();
        // The rest of the tree is intact.
        assert_eq!(t.root().compatible().first(), "linux,dummy-virt");
        let m = t.memory().regions().next().unwrap();
        assert_eq!(
            (m.starting_address as usize, m.size),
            (0x4000_0000, Some(0x800_0000))
        );
        let r = t.memory_reservations().next().unwrap();
        assert_eq!((r.address() as usize, r.size()), (0x4800_0000, 0x1000));
    }

    #[test]
    fn bootargs_go_into_an_existing_chosen() {
        check(
            &tree(Some(&[("stdout-path", "/pl011@9000000")])),
            "netdev.ip=dhcp -- a 'b c'",
        );
        let out = with_bootargs(&tree(Some(&[("stdout-path", "/pl011@9000000")])), "x").unwrap();
        let t = fdt::Fdt::new(&out).unwrap();
        assert_eq!(
            t.find_node("/chosen")
                .unwrap()
                .property("stdout-path")
                .unwrap()
                .as_str(),
            Some("/pl011@9000000")
        );
    }

    #[test]
    fn old_bootargs_are_replaced() {
        let blob = tree(Some(&[
            ("bootargs", "console=ttyAMA0"),
            ("stdout-path", "/pl011"),
        ]));
        check(&blob, "env.A=1");
        let out = with_bootargs(&blob, "env.A=1").unwrap();
        let t = fdt::Fdt::new(&out).unwrap();
        assert_eq!(
            t.find_node("/chosen")
                .unwrap()
                .properties()
                .filter(|p| p.name == "bootargs")
                .count(),
            1
        );
    }

    #[test]
    fn a_tree_without_chosen_gets_one() {
        check(&tree(None), "");
        check(&tree(None), "helloworld");
    }

    #[test]
    fn bad_blobs_are_refused() {
        assert_eq!(
            with_bootargs(b"not a device tree at all, really not one", "x"),
            Err(FdtError::BadHeader)
        );
        let mut b = tree(None);
        b.truncate(b.len() - 40);
        assert_eq!(with_bootargs(&b, "x"), Err(FdtError::Truncated));
        let mut b = tree(None);
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        assert_eq!(with_bootargs(&b, "x"), Err(FdtError::BadHeader));
    }
}
