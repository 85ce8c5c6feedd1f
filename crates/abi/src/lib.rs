//! kiln-abi: what kiln's guests and its host side agree on, defined once.
//!
//! The runtime (the VMM and PID 1), the builder (`kiln test`'s judge, the
//! kernel and UKI code), the hello unikernel and the Linux guests' init all
//! read or write these; a change here is a change of contract between them.
//! `no_std` without `alloc`, so the freestanding hello can use it as it is.
//!
//! - [`exit`]: the exit port and the exit codes guests and the VMM use.
//! - [`status`]: the runtime's status lines (`kiln: vm=<name> state=...`).
//! - [`sandbox`]: PID 1's report on a VMM's sandbox (`kiln: vm <name>: sandbox ...`).
//! - [`console`]: a guest's lines on the shared console (`[<vm>] <text>`).
//! - [`fdt`]: node and property names of the device tree kiln hands guests.
//! - [`bzimage`]: the x86 boot protocol's setup header of a Linux kernel.
//! - [`error`]: an error with its causes, on one line or one per line.

#![no_std]

pub mod bzimage;
pub mod console;
pub mod error;
pub mod exit;
pub mod fdt;
pub mod sandbox;
pub mod status;
