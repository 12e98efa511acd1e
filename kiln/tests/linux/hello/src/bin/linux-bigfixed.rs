//! A program linked at a fixed address (built with
//! `-C relocation-model=static`) whose image spans 64 MiB: a zeroed array
//! the size of a large non-PIE binary's data, written and summed.
//! `write-code` then writes to its own code and `exec-data` jumps into its
//! data: both must fault (W^X holds for fixed-address programs too);
//! `protect` makes a page of its data read-only with mprotect and writes
//! to it, which must fault too.
static mut BIG: [u8; 64 << 20] = [0; 64 << 20];

fn main() {
    let p = &raw mut BIG;
    // SAFETY: the only reference to BIG, made once on the main thread.
    let big = unsafe { &mut *p };
    for (i, b) in big.iter_mut().enumerate().step_by(4096) {
        *b = (i >> 12) as u8;
    }
    let sum: u64 = big.iter().step_by(4096).map(|&b| b as u64).sum();
    println!("bigfixed: at {:#x}, {} MiB, checksum {sum}", main as *const () as usize, big.len() >> 20);
    match std::env::args().nth(1).as_deref() {
        Some("write-code") => {
            let code = std::hint::black_box(main as *const () as usize as *mut u8);
            // SAFETY: none; this write must fault.
            unsafe { code.write_volatile(0xc3) };
            println!("bigfixed: wrote to its code");
        }
        Some("exec-data") => {
            big[0] = 0xc3; // ret
            let f: extern "C" fn() = unsafe { std::mem::transmute(big.as_ptr()) };
            std::hint::black_box(f)();
            println!("bigfixed: executed its data");
        }
        Some("protect") => {
            extern "C" {
                fn mprotect(addr: *mut u8, len: usize, prot: i32) -> i32;
            }
            let page = (big.as_ptr() as usize + 8192) & !4095;
            // SAFETY: a page inside BIG; PROT_READ (1).
            let r = unsafe { mprotect(page as *mut u8, 4096, 1) };
            println!("bigfixed: mprotect {r}, reading {}", big[page - big.as_ptr() as usize]);
            // SAFETY: none; this write must fault.
            unsafe { (page as *mut u8).write_volatile(1) };
            println!("bigfixed: wrote to a read-only page");
        }
        _ => {}
    }
}
