//! The appliance's guest: /init of its Linux VM. `kiln build` compiles it
//! into the VM's initramfs; change it and run `kiln test appliance.toml`.
//!
//! It runs as PID 1 of the guest, so it must never return (the kernel
//! panics when init exits): it ends the VM through kiln's exit device with a
//! status code, which the VMM reports (`kiln: vm=guest state=exited
//! code=<n>`) and `kiln test` judges (0 passes).

use std::ffi::{c_int, c_ulong};
use std::io::Write;

fn main() {
    say("hello from the appliance");
    // The appliance's work goes here.
    let code = 0;
    say(&format!("exit {code}"));
    exit(code)
}

/// Prints a line on the console. Errors are ignored: init has no one to
/// report them to, and a panic in PID 1 is a kernel panic.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "guest: {line}");
    let _ = out.flush();
}

/// kiln's exit device: a 4-byte write of the status code to this I/O port
/// ends the VM with that code.
const EXIT_PORT: u16 = 0xf4;

/// Linux's `RB_POWER_OFF` for reboot(2).
const RB_POWER_OFF: c_int = 0x4321_fedc;

extern "C" {
    /// glibc's ioperm(2): allows this process to use I/O ports.
    fn ioperm(from: c_ulong, num: c_ulong, turn_on: c_int) -> c_int;
    /// glibc's reboot(2).
    fn reboot(op: c_int) -> c_int;
}

/// Ends the VM with `code`: through the exit device under kiln, else by
/// powering off. Never returns.
fn exit(code: u32) -> ! {
    // SAFETY: ioperm changes only this process's I/O permission bitmap.
    if unsafe { ioperm(c_ulong::from(EXIT_PORT), 4, 1) } == 0 {
        // SAFETY: ioperm granted ports 0xf4..0xf8, so `out` cannot fault,
        // and it touches no memory of this process.
        unsafe {
            std::arch::asm!("out dx, eax", in("dx") EXIT_PORT, in("eax") code,
                options(nomem, nostack, preserves_flags));
        }
    }
    // Still running: no exit device here. Power off like an init would.
    // SAFETY: reboot(2) with RB_POWER_OFF takes no pointers.
    unsafe {
        reboot(RB_POWER_OFF);
    }
    loop {
        std::thread::park();
    }
}
