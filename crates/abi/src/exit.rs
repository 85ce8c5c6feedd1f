//! The exit port and the exit codes: how a guest ends its VM with a status
//! and how the VMM process reports the end (docs/runtime.md, "Exit codes").
//!
//! A guest writes a code (1, 2 or 4 bytes) to I/O port [`PORT`]; the kiln
//! VMM ends the VM with it. QEMU's `isa-debug-exit,iobase=0xf4,iosize=4`
//! takes the same write and exits with `(code << 1) | 1`.

/// I/O port of the exit device.
pub const PORT: u16 = 0xf4;
/// Width of the exit device in I/O space, in bytes (one 32-bit register).
pub const PORT_SIZE: u16 = 4;

// The VMM process's exit codes. 0..=127 are the guest's own; 128 and up
// never come from a guest, so a wrapper can tell a guest's verdict from a
// VMM-level failure.

/// The config did not load or check (the usage error of a Unix tool).
pub const CODE_USAGE: i32 = 2;
/// The highest exit-port value passed on as it is; larger ones end as this.
pub const CODE_EXIT_PORT_MAX: i32 = 127;
/// Signals end the VM with 128 + the signal number, as shells report them.
pub const CODE_SIGNAL_BASE: i32 = 128;
/// The guest reset the machine.
pub const CODE_REBOOT: i32 = 193;
/// A vCPU hit a triple fault.
pub const CODE_TRIPLE_FAULT: i32 = 194;
/// KVM could not go on running the guest.
pub const CODE_INTERNAL_ERROR: i32 = 195;
/// The VMM could not set the VM up or keep it running.
pub const CODE_VMM_ERROR: i32 = 196;
/// A vCPU thread panicked (a VMM bug).
pub const CODE_VCPU_PANIC: i32 = 197;
/// A vCPU thread stayed outside `KVM_RUN` too long (the VMM hung).
pub const CODE_VCPU_STUCK: i32 = 198;
/// A VMM thread made a system call its seccomp filter forbids; the VMM's
/// SIGSYS handler ended the process with this code after reporting the
/// call (a VMM the kernel kills outright ends by SIGSYS, 128 + 31).
pub const CODE_SECCOMP: i32 = 199;

/// Test builds of the runtime only (its `test-triggers` feature): a write
/// to this port makes the vCPU thread attempt a system call its seccomp
/// filter forbids (`execve`), which must end the VMM. Shipped runtimes
/// leave the port unclaimed (reads as all-ones, writes ignored).
pub const TEST_SECCOMP_PORT: u16 = 0x5ec;

// What kiln's own guests write to the exit port on their own failures
// (a passing run writes the code asked for on its command line, 0 by default).

/// The VMM's boot data or the guest's command line is unusable.
pub const GUEST_BAD_INPUT: u32 = 1;
/// The hello unikernel: an edu check failed.
pub const HELLO_EDU_FAILED: u32 = 3;
/// The hello unikernel: a pci-testdev check failed (and no edu check did).
pub const HELLO_TESTDEV_FAILED: u32 = 4;
/// A Rust panic in a freestanding guest (Rust's own panic exit code).
pub const GUEST_PANIC: u32 = 101;
/// A CPU exception in a freestanding guest.
pub const GUEST_EXCEPTION: u32 = 102;
