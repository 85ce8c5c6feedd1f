//! VFIO device assignment on the host: the IOMMU group checks, moving
//! devices to vfio-pci and back, and the per-VM assignment PID 1 runs before
//! it starts the VMs.
//!
//! - [`group`]: is an IOMMU active, which group a device is in, can the
//!   group be handed to a VM.
//! - [`bind`]: `driver_override` binding and [`Bound`], which owns what was
//!   bound and gives it back.
//! - [`assign`]: [`bind_all`] for an appliance's VMs, and [`pin_addresses`]
//!   for the config each VMM process gets.
//! - [`backend`]: which kernel interface a VM's devices go through
//!   (iommufd with device cdevs, or the legacy container/group).
//! - [`container`]: in the VMM, the VM's VFIO container (either interface)
//!   and KVM-VFIO device, and guest RAM mapped for DMA.
//! - [`device`]: one open VFIO PCI device, the host half of a passed-through
//!   function (the guest half is `devices::pci`).
//! - [`attach`]: everything a VM config assigns, opened and modelled.

pub mod assign;
pub mod attach;
pub mod backend;
pub mod bind;
pub mod container;
pub mod device;
pub mod group;

pub use assign::{bind_all, pin_addresses, AssignError, AssignedDevice, Binding};
pub use attach::{attach_all, AttachError};
pub use backend::{BackendError, Choice};
pub use bind::{BindError, Bound, DEV_VFIO, VFIO_PCI};
pub use container::{Container, ContainerError, Kind};
pub use device::VfioFunction;
pub use group::GroupError;
