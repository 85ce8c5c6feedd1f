//! One bus type for port I/O and for MMIO: a sorted list of address
//! ranges, each served by one device.
//!
//! The bus holds its devices weakly: the [`crate::machine::Machine`] owns
//! them, the vCPUs reach the bus through their VM, and a device that holds
//! the VM (a passed-through PCI function does) makes no cycle. A device
//! already gone answers like an empty range.

use super::StopRequest;
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError, RwLock, Weak};

/// A device on a bus. `base` is the start of the range the access fell in
/// (a device may be registered at several), `offset` is relative to it.
pub trait BusDevice: Send {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> Option<StopRequest>;
    /// Whether the device answers an access of `len` bytes at `offset` of
    /// its range at `base`: a device registered over a window with holes
    /// (the PCI root's BAR windows) says no for the holes, which then read
    /// as all-ones and are counted as unclaimed.
    fn decodes(&self, _base: u64, _offset: u64, _len: usize) -> bool {
        true
    }
}

/// How the bus refers to a device: the machine holds the strong reference.
pub type SharedDevice = Weak<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("Addresses {base:#x}+{len:#x} overlap a device already on the bus")]
    Overlap { base: u64, len: u64 },
}

/// What became of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No device answers there.
    Unclaimed,
    /// A device took it.
    Claimed,
    /// A device took it, and the guest asks to end the VM.
    Stop(StopRequest),
}

/// At most this many distinct unclaimed addresses are counted one by one
/// (any 16-bit port fits); beyond, accesses only add to the total, so a
/// guest probing MMIO cannot grow the map without bound.
const MAX_UNCLAIMED_ADDRESSES: usize = 1 << 16;

#[derive(Debug, Default)]
struct Unclaimed {
    by_address: BTreeMap<u64, u64>,
    total: u64,
}

/// One address space of one VM: its I/O ports or its MMIO.
#[derive(Default)]
pub struct Bus {
    /// (first address, length, device), sorted by first address.
    ranges: RwLock<Vec<(u64, u64, SharedDevice)>>,
    /// Accesses no device claims: probes such as port 0x80 delays or PCI
    /// config space when nothing is assigned.
    unclaimed: Mutex<Unclaimed>,
}

// The devices are trait objects: their ranges say where each sits.
impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
        let ranges: Vec<_> = ranges.iter().map(|(base, len, _)| (*base, *len)).collect();
        f.debug_struct("Bus")
            .field("ranges", &ranges)
            .field("unclaimed", &self.unclaimed)
            .finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `base .. base + len`.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(PoisonError::into_inner);
        let end = base.checked_add(len).filter(|_| len > 0);
        let overlaps = |end: u64| {
            ranges
                .iter()
                .any(|(b, l, _)| base < b.saturating_add(*l) && *b < end)
        };
        match end {
            Some(end) if !overlaps(end) => {
                let at = ranges.partition_point(|(b, _, _)| *b < base);
                ranges.insert(at, (base, len, device));
                Ok(())
            }
            _ => Err(BusError::Overlap { base, len }),
        }
    }

    /// The range holding `addr`: its base, `addr`'s offset in it, and its
    /// device.
    fn find(&self, addr: u64) -> Option<(u64, u64, SharedDevice)> {
        let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
        let i = ranges.partition_point(|(b, _, _)| *b <= addr);
        let (base, len, dev) = ranges.get(i.checked_sub(1)?)?;
        let offset = addr.checked_sub(*base)?;
        (offset < *len).then(|| (*base, offset, dev.clone()))
    }

    fn count_unclaimed(&self, addr: u64) {
        let mut u = self
            .unclaimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        u.total = u.total.saturating_add(1);
        if u.by_address.len() < MAX_UNCLAIMED_ADDRESSES || u.by_address.contains_key(&addr) {
            let n = u.by_address.entry(addr).or_insert(0);
            *n = n.saturating_add(1);
        }
    }

    /// Handles a read: a device fills `data`, or it reads as all-ones.
    /// Returns whether a device answered.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        if let Some((base, offset, dev)) = self.find(addr) {
            if let Some(dev) = dev.upgrade() {
                let mut dev = dev.lock().unwrap_or_else(PoisonError::into_inner);
                if dev.decodes(base, offset, data.len()) {
                    dev.read(base, offset, data);
                    return true;
                }
            }
        }
        data.fill(0xff);
        self.count_unclaimed(addr);
        false
    }

    /// Handles a write.
    pub fn write(&self, addr: u64, data: &[u8]) -> Access {
        if let Some((base, offset, dev)) = self.find(addr) {
            if let Some(dev) = dev.upgrade() {
                let mut dev = dev.lock().unwrap_or_else(PoisonError::into_inner);
                if dev.decodes(base, offset, data.len()) {
                    return match dev.write(base, offset, data) {
                        Some(stop) => Access::Stop(stop),
                        None => Access::Claimed,
                    };
                }
            }
        }
        self.count_unclaimed(addr);
        Access::Unclaimed
    }

    /// Accesses to unclaimed addresses so far, by address.
    pub fn unclaimed(&self) -> BTreeMap<u64, u64> {
        self.unclaimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_address
            .clone()
    }

    /// How many accesses found no device so far.
    pub fn unclaimed_total(&self) -> u64 {
        self.unclaimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, _: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write(&mut self, _: u64, offset: u64, data: &[u8]) -> Option<StopRequest> {
            self.0.push((offset, data.to_vec()));
            (offset == 1).then_some(StopRequest::Reboot)
        }
    }

    /// A device the test owns, and the bus's handle on it.
    fn echo() -> (Arc<Mutex<Echo>>, SharedDevice) {
        let strong = Arc::new(Mutex::new(Echo(vec![])));
        let dyn_strong: Arc<Mutex<dyn BusDevice>> = strong.clone();
        let weak = Arc::downgrade(&dyn_strong);
        (strong, weak)
    }

    #[test]
    fn dispatches_by_range_and_offset() {
        let bus = Bus::new();
        let (a, a_weak) = echo();
        let (_b, b_weak) = echo();
        bus.insert(0x3f8, 8, a_weak).unwrap();
        bus.insert(0x60, 1, b_weak).unwrap();
        let mut d = [0u8; 1];
        bus.read(0x3fd, &mut d);
        assert_eq!(d, [5]);
        assert_eq!(bus.write(0x3f8, b"x"), Access::Claimed);
        assert_eq!(bus.write(0x3f9, &[1]), Access::Stop(StopRequest::Reboot));
        assert_eq!(a.lock().unwrap().0, vec![(0, vec![b'x']), (1, vec![1])]);
        bus.read(0x400, &mut d);
        assert_eq!(d, [0xff]);
    }

    #[test]
    fn unclaimed_ports_read_all_ones_and_are_counted() {
        let bus = Bus::new();
        let mut d = [0u8; 4];
        bus.read(0xcfc, &mut d);
        assert_eq!(d, [0xff; 4]);
        for _ in 0..3 {
            bus.write(0x80, &[0]);
        }
        let u = bus.unclaimed();
        assert_eq!(u.get(&0x80), Some(&3));
        assert_eq!(u.get(&0xcfc), Some(&1));
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let bus = Bus::new();
        let devices: Vec<_> = (0..5).map(|_| echo()).collect();
        bus.insert(0x70, 2, devices[0].1.clone()).unwrap();
        assert!(bus.insert(0x71, 1, devices[1].1.clone()).is_err());
        assert!(bus.insert(0x6f, 2, devices[2].1.clone()).is_err());
        bus.insert(0x72, 1, devices[3].1.clone()).unwrap();
        bus.insert(0xffff, 1, devices[4].1.clone()).unwrap();
        let mut d = [0u8; 1];
        bus.read(0xffff, &mut d);
        assert_eq!(d, [0]);
    }

    #[test]
    fn a_dropped_device_reads_as_unclaimed() {
        let bus = Bus::new();
        let (dev, weak) = echo();
        bus.insert(0x1000, 0x10, weak).unwrap();
        let mut d = [0u8; 2];
        assert!(bus.read(0x1002, &mut d));
        assert_eq!(d, [2, 2]);
        drop(dev);
        assert!(!bus.read(0x1002, &mut d));
        assert_eq!(d, [0xff; 2]);
        assert_eq!(bus.write(0x1002, &[1]), Access::Unclaimed);
        assert_eq!(bus.unclaimed_total(), 2);
    }

    #[test]
    fn holes_a_device_does_not_decode_are_unclaimed() {
        struct Holey;
        impl BusDevice for Holey {
            fn read(&mut self, _: u64, _: u64, data: &mut [u8]) {
                data.fill(0);
            }
            fn write(&mut self, _: u64, _: u64, _: &[u8]) -> Option<StopRequest> {
                None
            }
            fn decodes(&self, base: u64, offset: u64, _: usize) -> bool {
                base == 0x100 && offset < 4
            }
        }
        let bus = Bus::new();
        let dev: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(Holey));
        bus.insert(0x100, 0x100, Arc::downgrade(&dev)).unwrap();
        let mut d = [1u8; 1];
        assert!(bus.read(0x103, &mut d));
        assert_eq!(d, [0]);
        assert!(!bus.read(0x104, &mut d));
        assert_eq!(d, [0xff]);
        assert_eq!(bus.write(0x1ff, &[0]), Access::Unclaimed);
        assert_eq!(bus.write(0x100, &[0]), Access::Claimed);
        assert_eq!(bus.unclaimed().get(&0x1ff), Some(&1));
    }
}
