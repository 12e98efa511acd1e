//! Small CPU helpers.

/// Stops the CPU for good (interrupts off, then `hlt` in a loop).
pub fn halt() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
/// The port must be one whose write has no effect on memory safety (a
/// device register the caller owns).
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::instructions::port::Port::new(port).write(value) }
}

/// Writes an 8-bit value to an I/O port.
///
/// # Safety
/// As for [`outl`].
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::instructions::port::Port::new(port).write(value) }
}

/// Writes a 16-bit value to an I/O port.
///
/// # Safety
/// As for [`outl`].
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::instructions::port::Port::new(port).write(value) }
}

/// Reads a 32-bit value from an I/O port.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn inl(port: u16) -> u32 {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::instructions::port::Port::new(port).read() }
}

/// Reads an 8-bit value from an I/O port.
///
/// # Safety
/// The port must be one whose read has no effect on memory safety (a
/// device register the caller owns; reads may consume device data).
pub unsafe fn inb(port: u16) -> u8 {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::instructions::port::Port::new(port).read() }
}
