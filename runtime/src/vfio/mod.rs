//! VFIO in the VMM process: the devices PID 1 bound to vfio-pci (see
//! [`crate::host`]) opened for one VM and put on its PCI bus.
//!
//! - [`backend`]: which kernel interface a VM's devices go through
//!   (iommufd with device cdevs, or the legacy container/group).
//! - [`container`]: the VM's VFIO container (either interface) and
//!   KVM-VFIO device, and guest RAM mapped for DMA.
//! - [`device`]: one open VFIO PCI device, the host half of a passed-through
//!   function; it implements [`host_function::HostFunction`].
//! - [`host_function`]: what the guest-facing model needs of the device.
//! - [`passthrough`]: the guest half: one passed-through function on the
//!   guest's PCI bus, BARs mapped or trapped, interrupts wired to KVM.
//! - [`config_space`]: the config space a guest sees of it.
//! - [`bar_mapping`]: which parts of a BAR the guest reaches without exits.
//! - [`msi`]: MSI and MSI-X capability and table state.
//! - [`attach`]: everything a VM config assigns, opened and modelled.

pub mod attach;
pub mod backend;
pub mod bar_mapping;
pub mod config_space;
pub mod container;
pub mod device;
pub mod host_function;
pub mod msi;
pub mod passthrough;

pub use attach::{attach_all, AttachError};
pub use backend::{BackendError, Choice};
pub use container::{Container, ContainerError, Kind};
pub use device::VfioFunction;
pub use host_function::{HostArea, HostError, HostFunction, IrqKind, ROM_REGION};
pub use passthrough::{PassthroughError, PassthroughFunction};
