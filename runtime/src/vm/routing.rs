//! The VM's GSI routing table: the in-kernel PIC/IOAPIC pins KVM routes by
//! default, plus one MSI route per enabled device vector.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so the VM keeps the table
//! and every change re-sends all of it; the irqchip entries must stay in it
//! or the legacy interrupts (COM1, INTx) would stop. A guest reprograms its
//! vectors as often as it likes, so callers batch their changes and the
//! table goes to KVM only when an entry really changed ([`Routing::set_msi`]
//! says whether it did).

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use std::collections::BTreeMap;

/// IOAPIC pins; GSIs from here on are free for MSI.
pub const IOAPIC_PINS: u32 = 24;
/// The most GSIs kiln hands out (KVM allows 4096 routes).
pub const MAX_GSI: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error(
        "All {MAX_GSI} interrupt routes of the VM are in use; assign fewer devices or vectors"
    )]
    Exhausted,
    #[error("Cannot build the interrupt routing table")]
    Table,
}

/// An MSI message: what a device writes where to interrupt a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// The routing table of one VM.
#[derive(Debug, Default)]
pub struct Routing {
    msi: BTreeMap<u32, MsiMessage>,
}

impl Routing {
    /// The lowest free GSI above the IOAPIC pins.
    pub fn allocate(&self) -> Result<u32, RoutingError> {
        self.allocate_from(IOAPIC_PINS)
    }

    /// The lowest free GSI from `first` on: a caller taking several in a
    /// row starts each search after the last it took.
    pub fn allocate_from(&self, first: u32) -> Result<u32, RoutingError> {
        (first.max(IOAPIC_PINS)..MAX_GSI)
            .find(|g| !self.msi.contains_key(g))
            .ok_or(RoutingError::Exhausted)
    }

    /// Routes `gsi` to `msg`; returns whether the table changed.
    pub fn set_msi(&mut self, gsi: u32, msg: MsiMessage) -> bool {
        self.msi.insert(gsi, msg) != Some(msg)
    }

    /// Where `gsi` is routed, if it is an MSI route.
    pub fn msi(&self, gsi: u32) -> Option<MsiMessage> {
        self.msi.get(&gsi).copied()
    }

    pub fn remove(&mut self, gsi: u32) -> bool {
        self.msi.remove(&gsi).is_some()
    }

    /// The entries KVM gets: KVM's default irqchip routes, then the MSIs.
    pub fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        let mut v = Vec::with_capacity(40 + self.msi.len());
        for gsi in 0..IOAPIC_PINS {
            if gsi < 16 {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                v.push(irqchip(gsi, chip, gsi % 8));
            }
            v.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (&gsi, m) in &self.msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = (m.address & 0xffff_ffff) as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            v.push(e);
        }
        v
    }

    /// The table as the ioctl takes it.
    pub fn to_kvm(&self) -> Result<KvmIrqRouting, RoutingError> {
        KvmIrqRouting::from_entries(&self.entries()).map_err(|_| RoutingError::Table)
    }
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_irqchip_routes_and_adds_msis() {
        let mut r = Routing::default();
        assert_eq!(r.entries().len(), 16 + 24);
        let g = r.allocate().unwrap();
        assert_eq!(g, IOAPIC_PINS);
        let msg = MsiMessage {
            address: 0x1_fee0_1000,
            data: 0x41,
        };
        assert!(r.set_msi(g, msg));
        assert!(!r.set_msi(g, msg), "the same route again changes nothing");
        assert_eq!(r.allocate().unwrap(), IOAPIC_PINS + 1);
        let e = r.entries();
        let last = e.last().unwrap();
        assert_eq!((last.gsi, last.type_), (g, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the entry was written as an MSI route (type_ checked above),
        // so `msi` is the union member that was initialised.
        let msi = unsafe { last.u.msi };
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xfee0_1000, 1, 0x41)
        );
        // COM1's pin is still routed to both PICs and the IOAPIC.
        assert_eq!(e.iter().filter(|x| x.gsi == 4).count(), 2);
        assert!(r.remove(g));
        assert!(!r.remove(g));
        assert_eq!(r.to_kvm().unwrap().as_slice().len(), 40);
    }
}
