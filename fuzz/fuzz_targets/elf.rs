//! Any bytes as a Linux executable: the load plan is an error or a plan
//! the loader can follow without overflow: every segment's file bytes lie
//! in the file, its memory inside the program's span, below the top of a
//! user address space; the initial stack fits its arguments.
#![no_main]

use kiln_elf::{initial_stack, AuxInfo, Program};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Program::parse(data) else { return };
    let (lo, hi) = p.span();
    assert!(lo <= hi && hi <= kiln_elf::USER_TOP, "span {lo:#x}..{hi:#x}");
    for s in &p.segments {
        assert!(s.file_offset + s.file_size <= data.len() as u64);
        assert!(s.file_size <= s.mem_size);
        assert!(lo <= s.vaddr && s.vaddr + s.mem_size <= hi);
    }
    if p.relocatable() {
        let base = 0x5555_5555_4000u64;
        let _ = p.bias(base);
    }
    let _ = p.interpreter();
    let aux = AuxInfo { entry: p.entry, phnum: p.phnum as u64, phent: p.phent as u64, ..AuxInfo::default() };
    let st = initial_stack(0x7fff_ffff_f000, &["prog", "arg"], &["A=1"], &aux, [7; 16], "x86_64");
    assert_eq!(st.sp % 16, 0);
    assert_eq!(st.sp + st.bytes.len() as u64, 0x7fff_ffff_f000);
});
