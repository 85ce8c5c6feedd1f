//! The VMM's sandbox: what confines a VMM process once its VM is set up
//! (docs/runtime.md, "Security model").
//!
//! - [`seccomp`]: the system calls each kind of VMM thread may make.
//! - [`report`]: PID 1's look at a running VMM's sandbox (`/proc`).

pub mod report;
pub mod seccomp;
