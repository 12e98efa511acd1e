//! Real executables from the host: Debian's static-pie `ldconfig`, the
//! dynamically linked PIE `ls`, busybox-static (a static non-PIE; installed
//! by scripts/setup), glibc's dynamic loader, and a shared library.

use super::*;

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (scripts/setup installs busybox-static)"))
}

#[test]
fn static_pie_dynamic_and_static_programs_are_told_apart() {
    let ldconfig = Program::parse(&read("/sbin/ldconfig")).unwrap();
    assert_eq!(ldconfig.kind, Kind::StaticPie);
    assert!(ldconfig.relocatable());
    assert!(
        ldconfig.tls.is_some(),
        "glibc programs carry a TLS template"
    );

    let ls = Program::parse(&read("/usr/bin/ls")).unwrap();
    assert_eq!(
        ls.kind,
        Kind::Dynamic {
            interpreter: "/lib64/ld-linux-x86-64.so.2".into(),
            pie: true
        }
    );
    assert_eq!(ls.interpreter(), Some("/lib64/ld-linux-x86-64.so.2"));

    let bb = Program::parse(&read("/bin/busybox")).unwrap();
    assert_eq!(bb.kind, Kind::Static);
    assert!(!bb.relocatable());
    assert_eq!(
        bb.bias(0x4000_0000),
        0,
        "a fixed-address program is not moved"
    );
    let (lo, hi) = bb.span();
    assert!(
        lo >= 0x40_0000 && hi > lo,
        "busybox is linked at its usual 4 MiB: {lo:#x}..{hi:#x}"
    );

    // The dynamic loader runs as a program of its own.
    let ld = Program::parse(&read("/lib64/ld-linux-x86-64.so.2")).unwrap();
    assert_eq!(ld.kind, Kind::StaticPie);
}

#[test]
fn segments_and_headers_are_where_the_file_says() {
    let bytes = read("/usr/bin/ls");
    let p = Program::parse(&bytes).unwrap();
    let exec: Vec<_> = p.segments.iter().filter(|s| s.perms.exec).collect();
    assert_eq!(exec.len(), 1, "one text segment");
    assert!(!exec[0].perms.write, "text is not writable");
    assert!(
        p.segments
            .iter()
            .any(|s| s.perms.write && s.mem_size > s.file_size),
        "data with .bss"
    );
    assert_eq!(p.phent, 56);
    assert!(p.phdr_vaddr != 0);
    // A PIE moves by the bias; its entry stays inside its text.
    let bias = p.bias(0x7f00_0000_0000);
    let entry = p.entry.wrapping_add(bias);
    let t = exec[0];
    assert!(entry >= t.vaddr.wrapping_add(bias) && entry < t.vaddr.wrapping_add(bias) + t.mem_size);
    assert!(!p.exec_stack);
}

#[test]
fn bad_files_say_what_is_wrong() {
    assert!(matches!(
        Program::parse(b"not an elf at all, just text"),
        Err(Error::Malformed(_))
    ));
    let lib = Program::parse(&read("/lib/x86_64-linux-gnu/libz.so.1")).unwrap_err();
    assert_eq!(lib, Error::NotExecutable(3));
    assert!(lib.to_string().contains("shared library"));
    // A segment that runs past the end of the file.
    let mut bytes = read("/sbin/ldconfig");
    bytes.truncate(bytes.len() / 2);
    let e = Program::parse(&bytes).unwrap_err();
    assert!(
        matches!(e, Error::BadSegment(_) | Error::Malformed(_)),
        "{e:?}"
    );
    // Another CPU.
    let mut bytes = read("/usr/bin/ls");
    bytes[18] = 40; // EM_ARM
    assert_eq!(Program::parse(&bytes).unwrap_err(), Error::WrongMachine(40));
}

#[test]
fn the_initial_stack_reads_back_like_linux_lays_it_out() {
    let top = 0x7fff_0000_0000u64;
    let aux = AuxInfo {
        phdr: 0x1040,
        phent: 56,
        phnum: 13,
        entry: 0x5000,
        interp_base: 0x7f00_0000_0000,
        hwcap: 0x178bfbff,
        vdso: None,
    };
    let s = initial_stack(
        top,
        &["/bin/prog", "one", "two words"],
        &["HOME=/", "X=1"],
        &aux,
        [7; 16],
        "x86_64",
    );
    assert_eq!(s.sp % 16, 0);
    assert_eq!(s.sp + s.bytes.len() as u64, top);
    let word =
        |addr: u64| u64::from_le_bytes(s.bytes[(addr - s.sp) as usize..][..8].try_into().unwrap());
    let cstr = |addr: u64| {
        let b = &s.bytes[(addr - s.sp) as usize..];
        String::from_utf8(b[..b.iter().position(|&c| c == 0).unwrap()].to_vec()).unwrap()
    };
    assert_eq!(word(s.sp), 3, "argc");
    let argv: Vec<String> = (0..3).map(|i| cstr(word(s.sp + 8 + i * 8))).collect();
    assert_eq!(argv, ["/bin/prog", "one", "two words"]);
    assert_eq!(word(s.sp + 32), 0);
    let envp: Vec<String> = (0..2).map(|i| cstr(word(s.sp + 40 + i * 8))).collect();
    assert_eq!(envp, ["HOME=/", "X=1"]);
    assert_eq!(word(s.sp + 56), 0);
    let mut a = s.sp + 64;
    let mut auxv = std::collections::BTreeMap::new();
    loop {
        let (k, v) = (word(a), word(a + 8));
        a += 16;
        if k == at::NULL {
            break;
        }
        auxv.insert(k, v);
    }
    assert_eq!(auxv[&at::PHDR], 0x1040);
    assert_eq!(auxv[&at::PHNUM], 13);
    assert_eq!(auxv[&at::PAGESZ], 4096);
    assert_eq!(auxv[&at::ENTRY], 0x5000);
    assert_eq!(auxv[&at::BASE], 0x7f00_0000_0000);
    assert_eq!(cstr(auxv[&at::PLATFORM]), "x86_64");
    assert_eq!(cstr(auxv[&at::EXECFN]), "/bin/prog");
    let r = auxv[&at::RANDOM];
    assert_eq!(&s.bytes[(r - s.sp) as usize..][..16], &[7; 16]);
    assert!(!auxv.contains_key(&at::SYSINFO_EHDR));
}
