//! kiln-schema: what the builder (`kiln`) and the runtime (`kiln-runtime`)
//! must agree on, with nothing of KVM or VFIO in it.
//!
//! - [`config`]: the VM, image-VM and appliance schema: the authoring form
//!   users write ([`config::VmSpec`]) and the run form a VMM runs
//!   ([`config::VmConfig`]), units, key paths and located errors.
//! - [`error_chain`]: an error and its causes on one line.
//! - [`kmod`]: kernel module dependency closure from `modules.dep`.
//! - [`status`]: the console status lines the runtime prints and `kiln test`
//!   reads.

pub mod config;
pub mod error_chain;
pub mod kmod;
pub mod status;
