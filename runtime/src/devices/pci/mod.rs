//! The guest's PCI bus: a host bridge at 00:00.0, config space through
//! 0xCF8/0xCFC and ECAM, and the functions behind it.
//!
//! - [`root`]: the bus itself: config mechanisms, host bridge, BAR windows.
//!
//! Functions plug in through [`PciFunction`]; the VFIO passthrough model
//! ([`crate::vfio::passthrough`]) is the one kiln has.

pub mod root;

pub use root::{BarAllocator, PciRoot, PciRootError};

/// What kind of BAR, from the device's BAR register and region size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    /// Uses this BAR register and the next.
    Mem64,
}

/// One function on the guest's PCI bus, as the root dispatches to it
/// (Cloud Hypervisor's `pci::PciDevice` has the same shape). The root
/// answers for the host bridge and for empty slots itself.
pub trait PciFunction: Send {
    /// Reads its config space at `offset` (0..4096).
    fn config_read(&self, offset: u16, data: &mut [u8]);
    fn config_write(&mut self, offset: u16, data: &[u8]);
    /// Whether `addr` (an I/O port with `io`, else a memory address) falls
    /// in one of its BARs as the guest placed them now.
    fn claims(&self, io: bool, addr: u64) -> bool;
    /// A trapped access to one of its BARs; false when `addr` is in none.
    fn bar_read(&self, io: bool, addr: u64, data: &mut [u8]) -> bool;
    fn bar_write(&mut self, io: bool, addr: u64, data: &[u8]) -> bool;
}
