//! Leaving the VM through kiln's exit port.
//!
//! The kiln VMM ends the VM when the guest writes a 4-byte status code to
//! I/O port 0xf4; QEMU's `isa-debug-exit,iobase=0xf4,iosize=4` does the same
//! and exits with `(code << 1) | 1`. The port and the codes are kiln-abi's
//! (`kiln_abi::exit`).

use core::arch::asm;

use kiln_abi::exit::PORT;

use crate::port::outl;
use crate::println;

/// Prints `hello: exit <code>`, writes `code` to the exit port and halts.
///
/// Without an exit device the write is ignored and the CPU halts for good,
/// with interrupts off.
pub fn exit(code: u32) -> ! {
    println!("hello: exit {code}");
    // SAFETY: port 0xf4 is the exit device (or nothing); writing it ends the
    // VM and touches no memory.
    unsafe { outl(PORT, code) };
    loop {
        // SAFETY: `cli; hlt` stops this CPU; it has no memory effects.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
