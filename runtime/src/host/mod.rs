//! The host's side of device assignment, done by PID 1 before any VM
//! starts (the VMM process only reads the host PCI devices, to open them):
//!
//! - [`pci`]: the host's PCI devices in sysfs, and selector resolution.
//! - [`iommu_group`]: is an IOMMU active, which group a device is in, can
//!   the group be handed to a VM.
//! - [`vfio_bind`]: `driver_override` binding to vfio-pci and [`Bound`],
//!   which owns what was bound and gives it back.
//! - [`assignment`]: [`bind_all`] for an appliance's VMs, and
//!   [`pin_addresses`] for the config each VMM process gets.

pub mod assignment;
pub mod iommu_group;
pub mod pci;
pub mod vfio_bind;

pub use assignment::{bind_all, pin_addresses, AssignError, AssignedDevice, Binding};
pub use iommu_group::GroupError;
pub use vfio_bind::{BindError, Bound, DEV_VFIO, VFIO_PCI};
