//! kiln-runtime: the appliance's PID 1 and its VMM.
//!
//! - [`config`]: the VM and appliance schema (shared with the builder).
//! - [`status`]: the console status lines of DESIGN.md.
//! - [`kmod`]: module dependency closure from modules.dep (shared with the builder).
//! - [`pci`]: the host's PCI devices in sysfs, and selector resolution.
//! - [`vfio`]: IOMMU group checks and binding devices to vfio-pci for the VMs.

pub mod config;
pub mod init;
pub mod kmod;
pub mod pci;
pub mod status;
pub mod vfio;
