//! kiln-runtime: the appliance's PID 1 and its VMM.
//!
//! - [`config`]: the VM and appliance schema (shared with the builder).
//! - [`status`]: the console status lines of DESIGN.md.
//! - [`kmod`]: module dependency closure from modules.dep (shared with the builder).

pub mod config;
pub mod init;
pub mod kmod;
pub mod status;
