//! x86 port I/O instructions.
//!
//! Every function is `unsafe`: a port write can program a device to do
//! anything (DMA, reset, power off), so callers must know what sits on the port.

use core::arch::asm;

/// Reads a byte from `port`.
///
/// # Safety
/// Reading `port` must have no effect that breaks memory safety.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `in` touches only the named registers; the caller vouches for the port.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads a 16-bit word from `port`.
///
/// # Safety
/// Reading `port` must have no effect that breaks memory safety.
#[inline]
pub unsafe fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: `in` touches only the named registers; the caller vouches for the port.
    unsafe {
        asm!("in ax, dx", out("ax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads a 32-bit doubleword from `port`.
///
/// # Safety
/// Reading `port` must have no effect that breaks memory safety.
#[inline]
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: `in` touches only the named registers; the caller vouches for the port.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a byte to `port`.
///
/// # Safety
/// Writing `value` to `port` must have no effect that breaks memory safety.
#[inline]
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: `out` touches only the named registers; the caller vouches for the port.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 16-bit word to `port`.
///
/// # Safety
/// Writing `value` to `port` must have no effect that breaks memory safety.
#[inline]
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: `out` touches only the named registers; the caller vouches for the port.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 32-bit doubleword to `port`.
///
/// # Safety
/// Writing `value` to `port` must have no effect that breaks memory safety.
#[inline]
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: `out` touches only the named registers; the caller vouches for the port.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}
