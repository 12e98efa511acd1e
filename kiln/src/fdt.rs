//! A minimal flattened device tree for boards whose QEMU model passes none
//! (raspi3b without `-dtb`). QEMU puts the command line and the initrd into
//! its `/chosen` node and the RAM size into `/memory`, and hands the tree to
//! the kernel in x0, as a board's firmware does.

/// The tree: root (1 address cell, 1 size cell, the board's compatible
/// strings), an empty `/chosen` and `/memory` of `ram` bytes at 0.
pub fn minimal(compatible: &[&str], model: &str, ram: u32) -> Vec<u8> {
    let mut strings: Vec<u8> = Vec::new();
    let mut st: Vec<u8> = Vec::new();
    let name_off = |n: &str, strings: &mut Vec<u8>| -> u32 {
        let off = strings.len() as u32;
        strings.extend_from_slice(n.as_bytes());
        strings.push(0);
        off
    };
    let word = |st: &mut Vec<u8>, v: u32| st.extend_from_slice(&v.to_be_bytes());
    let pad = |st: &mut Vec<u8>| {
        while st.len() % 4 != 0 {
            st.push(0);
        }
    };
    let begin = |st: &mut Vec<u8>, name: &str| {
        word(st, 1);
        st.extend_from_slice(name.as_bytes());
        st.push(0);
        pad(st);
    };
    let prop = |st: &mut Vec<u8>, strings: &mut Vec<u8>, name: &str, value: &[u8]| {
        let off = name_off(name, strings);
        word(st, 3);
        word(st, value.len() as u32);
        word(st, off);
        st.extend_from_slice(value);
        pad(st);
    };
    let cstrs = |v: &[&str]| {
        v.iter()
            .flat_map(|s| s.bytes().chain([0]))
            .collect::<Vec<u8>>()
    };
    begin(&mut st, "");
    prop(&mut st, &mut strings, "#address-cells", &1u32.to_be_bytes());
    prop(&mut st, &mut strings, "#size-cells", &1u32.to_be_bytes());
    prop(&mut st, &mut strings, "compatible", &cstrs(compatible));
    prop(&mut st, &mut strings, "model", &cstrs(&[model]));
    begin(&mut st, "chosen");
    word(&mut st, 2);
    begin(&mut st, "memory");
    prop(&mut st, &mut strings, "device_type", &cstrs(&["memory"]));
    let reg: Vec<u8> = [0u32, ram].iter().flat_map(|v| v.to_be_bytes()).collect();
    prop(&mut st, &mut strings, "reg", &reg);
    word(&mut st, 2);
    word(&mut st, 2);
    word(&mut st, 9);
    let rsv_off = 40u32;
    let struct_off = rsv_off + 16;
    let strings_off = struct_off + st.len() as u32;
    let total = strings_off + strings.len() as u32;
    let mut out = Vec::with_capacity(total as usize);
    for v in [
        0xd00d_feed,
        total,
        struct_off,
        strings_off,
        rsv_off,
        17,
        16,
        0,
        strings.len() as u32,
        st.len() as u32,
    ] {
        out.extend_from_slice(&u32::to_be_bytes(v));
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&st);
    out.extend_from_slice(&strings);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tree_has_a_valid_header_and_nodes() {
        let t = super::minimal(
            &["raspberrypi,3-model-b", "brcm,bcm2837"],
            "Raspberry Pi 3 Model B",
            0x3c00_0000,
        );
        let be = |o: usize| u32::from_be_bytes(t[o..o + 4].try_into().unwrap());
        assert_eq!(be(0), 0xd00d_feed);
        assert_eq!(be(4) as usize, t.len());
        assert_eq!(be(20), 17);
        let s = String::from_utf8_lossy(&t);
        for needle in [
            "chosen\0",
            "memory\0",
            "device_type",
            "#address-cells",
            "brcm,bcm2837\0",
        ] {
            assert!(s.contains(needle), "{needle}");
        }
        // The struct block ends with FDT_END.
        let end = (be(8) + be(36)) as usize;
        assert_eq!(&t[end - 4..end], &9u32.to_be_bytes());
    }
}
