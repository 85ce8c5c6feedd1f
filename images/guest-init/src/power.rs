//! Ending the VM with a status code.
//!
//! Under kiln the guest writes the code (4 bytes) to I/O port 0xf4 and the
//! VMM ends the VM with it; QEMU's `isa-debug-exit,iobase=0xf4,iosize=4` does
//! the same and exits with `(code << 1) | 1`. Anywhere else the write does
//! nothing and guest-init powers the machine off instead.

use crate::console;

/// I/O port of the exit device.
pub const EXIT_PORT: u16 = kiln_abi::exit::PORT;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot get access to I/O port {EXIT_PORT:#x}; guest-init must run as root (CAP_SYS_RAWIO)"
    )]
    Ioperm(#[source] std::io::Error),
    #[error("power off failed")]
    PowerOff(#[source] nix::errno::Errno),
}

/// Writes `code` to the exit port. Returns only when nothing stopped the VM.
fn write_exit_port(code: u32) -> Result<(), Error> {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(libc::c_ulong::from(EXIT_PORT), 4, 1) } != 0 {
        return Err(Error::Ioperm(std::io::Error::last_os_error()));
    }
    // SAFETY: ioperm above granted ports 0xf4..0xf8, so `out` cannot fault;
    // the port is the exit device or nothing, and the write touches no
    // memory of this process.
    unsafe {
        std::arch::asm!("out dx, eax", in("dx") EXIT_PORT, in("eax") code, options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

/// Ends the VM with `code`: exit port first, then power off. Never returns.
pub fn exit(code: u32) -> ! {
    console::drain();
    if let Err(e) = write_exit_port(code) {
        console::error(&e);
    }
    // Still running: no kiln exit device here. Power off like an init would.
    nix::unistd::sync();
    let error = match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
        Err(errno) => Error::PowerOff(errno),
        Ok(never) => match never {},
    };
    console::error(&error);
    console::drain();
    // Leaving PID 1 makes the kernel panic, which with `panic=-1` resets the
    // VM: the last way out. Outside PID 1 (a test run) it is a plain exit.
    std::process::exit(i32::try_from(code).unwrap_or(i32::MAX))
}
