//! The guest's PCI bus: a host bridge at 00:00.0, config space through
//! 0xCF8/0xCFC and ECAM, and the functions behind it.
//!
//! - [`root`]: the bus itself: config mechanisms, host bridge, BAR windows.

pub mod root;

pub use root::{PciRoot, PciRootError};

/// What kind of BAR, from the device's BAR register and region size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    /// Uses this BAR register and the next.
    Mem64,
}
