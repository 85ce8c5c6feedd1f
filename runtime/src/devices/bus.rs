//! Port I/O dispatch: a sorted list of port ranges, each owned by one device.

use super::StopRequest;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// A device on the port I/O bus. `offset` is relative to the start of the
/// range it was registered at.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]) -> Option<StopRequest>;
}

type Shared = Arc<Mutex<dyn PioDevice>>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("I/O ports {base:#x}+{len} overlap a device already on the bus")]
    Overlap { base: u16, len: u16 },
}

/// The port I/O bus of one VM.
#[derive(Default)]
pub struct PioBus {
    /// (first port, length, device), sorted by first port.
    ranges: Vec<(u16, u16, Shared)>,
    /// Accesses to ports no device claims, by port: probes such as port
    /// 0x80 delays or PCI config space when nothing is assigned.
    unclaimed: Mutex<BTreeMap<u16, u64>>,
}

impl PioBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at ports `base .. base + len`.
    pub fn insert(&mut self, base: u16, len: u16, device: Shared) -> Result<(), BusError> {
        let end = u32::from(base) + u32::from(len);
        let overlaps = self.ranges.iter().any(|(b, l, _)| {
            let e = u32::from(*b) + u32::from(*l);
            u32::from(base) < e && u32::from(*b) < end
        });
        if overlaps || len == 0 {
            return Err(BusError::Overlap { base, len });
        }
        let at = self.ranges.partition_point(|(b, _, _)| *b < base);
        self.ranges.insert(at, (base, len, device));
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(u16, &Shared)> {
        let i = self.ranges.partition_point(|(b, _, _)| *b <= port);
        let (base, len, dev) = self.ranges.get(i.checked_sub(1)?)?;
        (u32::from(port) < u32::from(*base) + u32::from(*len)).then_some((port - base, dev))
    }

    fn count_unclaimed(&self, port: u16) {
        let mut m = self
            .unclaimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *m.entry(port).or_insert(0) += 1;
    }

    /// Handles an `in`: a device fills `data`, or it reads as all-ones.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((offset, dev)) => dev
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .read(offset, data),
            None => {
                data.fill(0xff);
                self.count_unclaimed(port);
            }
        }
    }

    /// Handles an `out`.
    pub fn write(&self, port: u16, data: &[u8]) -> Option<StopRequest> {
        match self.find(port) {
            Some((offset, dev)) => dev
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write(offset, data),
            None => {
                self.count_unclaimed(port);
                None
            }
        }
    }

    /// Accesses to unclaimed ports so far, by port.
    pub fn unclaimed(&self) -> BTreeMap<u16, u64> {
        self.unclaimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u16, Vec<u8>)>);
    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) -> Option<StopRequest> {
            self.0.push((offset, data.to_vec()));
            (offset == 1).then_some(StopRequest::Reboot)
        }
    }

    #[test]
    fn dispatches_by_range_and_offset() {
        let mut bus = PioBus::new();
        let a = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x60, 1, Arc::new(Mutex::new(Echo(vec![]))))
            .unwrap();
        let mut d = [0u8; 1];
        bus.read(0x3fd, &mut d);
        assert_eq!(d, [5]);
        assert_eq!(bus.write(0x3f8, b"x"), None);
        assert_eq!(bus.write(0x3f9, &[1]), Some(StopRequest::Reboot));
        assert_eq!(a.lock().unwrap().0, vec![(0, vec![b'x']), (1, vec![1])]);
        bus.read(0x400, &mut d);
        assert_eq!(d, [0xff]);
    }

    #[test]
    fn unclaimed_ports_read_all_ones_and_are_counted() {
        let bus = PioBus::new();
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
        let mut bus = PioBus::new();
        bus.insert(0x70, 2, Arc::new(Mutex::new(Echo(vec![]))))
            .unwrap();
        assert!(bus
            .insert(0x71, 1, Arc::new(Mutex::new(Echo(vec![]))))
            .is_err());
        assert!(bus
            .insert(0x6f, 2, Arc::new(Mutex::new(Echo(vec![]))))
            .is_err());
        bus.insert(0x72, 1, Arc::new(Mutex::new(Echo(vec![]))))
            .unwrap();
        bus.insert(0xffff, 1, Arc::new(Mutex::new(Echo(vec![]))))
            .unwrap();
        let mut d = [0u8; 1];
        bus.read(0xffff, &mut d);
        assert_eq!(d, [0]);
    }
}
