//! Leaving the VM through kiln's exit port.
//!
//! The kiln VMM ends the VM when the guest writes a 4-byte status code to
//! I/O port 0xf4; QEMU's `isa-debug-exit,iobase=0xf4,iosize=4` does the same
//! and exits with `(code << 1) | 1`.

use core::arch::asm;

use crate::port::outl;
use crate::println;

/// I/O port of the exit device.
pub const EXIT_PORT: u16 = 0xf4;

/// Exit code of a Rust panic in the guest.
pub const PANIC_CODE: u32 = 101;

/// Exit code of a CPU exception in the guest.
pub const EXCEPTION_CODE: u32 = 102;

/// Prints `hello: exit <code>`, writes `code` to the exit port and halts.
///
/// Without an exit device the write is ignored and the CPU halts for good,
/// with interrupts off.
pub fn exit(code: u32) -> ! {
    println!("hello: exit {code}");
    // SAFETY: port 0xf4 is the exit device (or nothing); writing it ends the
    // VM and touches no memory.
    unsafe { outl(EXIT_PORT, code) };
    loop {
        // SAFETY: `cli; hlt` stops this CPU; it has no memory effects.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
