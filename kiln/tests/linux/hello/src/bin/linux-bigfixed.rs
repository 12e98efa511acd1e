//! A program linked at a fixed address (built with
//! `-C relocation-model=static`) whose image spans 64 MiB: a zeroed array
//! the size of a large non-PIE binary's data, written and summed.
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
}
