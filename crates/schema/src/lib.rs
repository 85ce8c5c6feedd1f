//! kiln-schema: what the builder (`kiln`) and the runtime (`kiln-runtime`)
//! must agree on, with nothing of KVM or VFIO in it. What guests share with
//! them too (status lines, exit codes, the error-chain formatter) is in
//! kiln-abi.
//!
//! - [`config`]: the VM, image-VM and appliance schema: the authoring form
//!   users write ([`config::VmSpec`]) and the run form a VMM runs
//!   ([`config::VmConfig`]), units, key paths and located errors.
//! - [`kmod`]: kernel module dependency closure from `modules.dep`.

pub mod config;
pub mod kmod;
