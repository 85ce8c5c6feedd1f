//! The few emulated devices a kiln guest gets, and the bus that dispatches
//! port I/O and MMIO to them. Everything else a guest probes reads as
//! all-ones (nothing there) and is counted, not logged. Where each sits is
//! the [`crate::machine`]'s business.
//!
//! - [`bus`]: address ranges to devices, for port I/O and for MMIO.
//! - [`serial`]: COM1, a 16550A at 0x3f8 on IRQ 4.
//! - [`tx_ring`]: COM1's transmit register through KVM's coalesced PIO.
//! - [`i8042`]: the keyboard controller's CPU reset line (reboot).
//! - [`exit_port`]: the debug exit port at 0xf4.
//! - [`cmos`]: the CMOS RTC at 0x70/0x71 (Linux reads the wall clock there).
//! - [`acpi_pm`]: the ACPI sleep control register (poweroff).
//! - [`pci`]: the guest's PCI bus: root, host bridge, the function trait.

pub mod acpi_pm;
pub mod bus;
pub mod cmos;
pub mod exit_port;
pub mod i8042;
pub mod pci;
pub mod serial;
pub mod tx_ring;

pub use bus::{Access, Bus, BusDevice, BusError};

/// A guest action that ends the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// A write of this value to the exit port.
    Exit(u32),
    /// ACPI S5.
    Poweroff,
    /// A CPU reset through the keyboard controller.
    Reboot,
}
