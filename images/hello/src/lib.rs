//! The hello unikernel's library: everything but the boot code.
//!
//! The hardware-facing modules (`port`, `serial`, `exit`, `pci` config access)
//! run only inside the guest; the parsers and decoders are pure and carry unit
//! tests that run on the host (`cargo test -p kiln-hello --lib`).
#![cfg_attr(not(test), no_std)]

pub mod cmdline;
pub mod devtree;
pub mod edu;
pub mod exit;
pub mod memmap;
pub mod pci;
pub mod phys;
pub mod port;
pub mod serial;
pub mod start_info;
pub mod testdev;
