//! The host's PCI devices as sysfs shows them: discovery ([`sysfs`]) and
//! the resolution of a config's device selectors ([`select`](mod@select)).
//!
//! Everything goes through a [`Sysfs`] value holding the sysfs root
//! (`/sys` on a host), so the code runs unchanged on a fake tree in tests.

pub mod select;
pub mod sysfs;

#[cfg(test)]
pub(crate) mod fake;

pub use select::{select, SelectError};
pub use sysfs::{PciDevice, Sysfs, SysfsError, SYSFS};
