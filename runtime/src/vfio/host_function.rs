//! The host device behind a passed-through function, as the guest-facing
//! model ([`super::passthrough`]) needs it: config space, regions, their
//! host mappings, interrupts and reset. [`super::device::VfioFunction`]
//! implements it; unit tests fake it.

use vmm_sys_util::eventfd::EventFd;

/// The interrupt kinds of a PCI function (VFIO's IRQ indexes 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqKind {
    Intx,
    Msi,
    Msix,
}

/// A piece of a BAR region mmapped on the host: `len` bytes at `offset`
/// in the region, at host address `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostArea {
    pub offset: u64,
    pub len: u64,
    pub addr: u64,
}

/// VFIO's region index of the expansion ROM (VFIO_PCI_ROM_REGION_INDEX):
/// [`HostFunction::region_size`] and [`HostFunction::region_read`] take it
/// beside the BARs' 0-5.
pub const ROM_REGION: u32 = 6;

/// A host error from the device, boxed so device backends stay opaque.
pub type HostError = Box<dyn std::error::Error + Send + Sync>;

/// What the guest-facing model needs of the real device.
pub trait HostFunction: Send + Sync {
    /// Reads the device's config space (VFIO's config region).
    fn config_read(&self, offset: u16, data: &mut [u8]);
    fn config_write(&self, offset: u16, data: &[u8]);
    /// The size of region `index` (BAR 0-5, or [`ROM_REGION`]), 0 when
    /// absent.
    fn region_size(&self, index: u32) -> u64;
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]);
    fn region_write(&self, index: u32, offset: u64, data: &[u8]);
    /// The areas of region `index` mmapped on the host, in offset order
    /// (the whole region, or the sparse areas VFIO allows; none when it
    /// cannot be mapped). The mappings live as long as `self`.
    fn region_mappings(&self, index: u32) -> &[HostArea];
    /// How many vectors of `kind` the device has.
    fn irq_count(&self, kind: IrqKind) -> u32;
    /// Signals `fds[i]` when vector `i` of `kind` fires.
    fn enable_irqs(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), HostError>;
    fn disable_irqs(&self, kind: IrqKind) -> Result<(), HostError>;
    /// Unmasks INTx whenever `fd` is signalled (the guest's EOI).
    fn intx_unmask_on(&self, fd: &EventFd) -> Result<(), HostError>;
    /// Resets the function, where it supports it.
    fn reset(&self);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A device that is 256 bytes of config space and records writes.
    #[derive(Debug)]
    pub struct FakeFunction {
        /// What `region_mappings` answers, per BAR.
        pub areas: [Vec<HostArea>; 6],
        pub space: Mutex<[u8; 256]>,
        /// BARs 0-5, then the ROM.
        pub region_sizes: Mutex<[u64; 7]>,
        pub writes: Mutex<Vec<(u16, Vec<u8>)>>,
        pub regions: Mutex<Vec<(u32, u64, Vec<u8>)>>,
        pub irqs: Mutex<Vec<(IrqKind, usize)>>,
        /// How many MSI-X vectors the device has (INTx and MSI have one).
        pub msix_vectors: u32,
    }

    impl FakeFunction {
        pub fn new(vendor: u16, device: u16) -> Self {
            let f = FakeFunction {
                areas: Default::default(),
                space: Mutex::new([0; 256]),
                region_sizes: Mutex::new([0; 7]),
                writes: Mutex::new(Vec::new()),
                regions: Mutex::new(Vec::new()),
                irqs: Mutex::new(Vec::new()),
                msix_vectors: 0,
            };
            f.set32(0, u32::from(vendor) | u32::from(device) << 16);
            f
        }

        pub fn set32(&self, offset: usize, v: u32) {
            self.space.lock().unwrap()[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
        }

        pub fn writes(&self) -> Vec<(u16, Vec<u8>)> {
            self.writes.lock().unwrap().clone()
        }
    }

    impl HostFunction for FakeFunction {
        fn config_read(&self, offset: u16, data: &mut [u8]) {
            let s = self.space.lock().unwrap();
            let o = usize::from(offset);
            data.copy_from_slice(&s[o..o + data.len()]);
        }
        fn config_write(&self, offset: u16, data: &[u8]) {
            self.writes.lock().unwrap().push((offset, data.to_vec()));
        }
        fn region_size(&self, index: u32) -> u64 {
            self.region_sizes
                .lock()
                .unwrap()
                .get(index as usize)
                .copied()
                .unwrap_or(0)
        }
        fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
            data.fill(index.to_le_bytes()[0].wrapping_add(offset.to_le_bytes()[0]));
        }
        fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
            self.regions
                .lock()
                .unwrap()
                .push((index, offset, data.to_vec()));
        }
        fn region_mappings(&self, index: u32) -> &[HostArea] {
            self.areas.get(index as usize).map_or(&[], |a| a.as_slice())
        }
        fn irq_count(&self, kind: IrqKind) -> u32 {
            match kind {
                IrqKind::Intx | IrqKind::Msi => 1,
                IrqKind::Msix => self.msix_vectors,
            }
        }
        fn enable_irqs(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), HostError> {
            self.irqs.lock().unwrap().push((kind, fds.len()));
            Ok(())
        }
        fn disable_irqs(&self, kind: IrqKind) -> Result<(), HostError> {
            self.irqs.lock().unwrap().push((kind, 0));
            Ok(())
        }
        fn intx_unmask_on(&self, _: &EventFd) -> Result<(), HostError> {
            Ok(())
        }
        fn reset(&self) {}
    }

    /// A fake the test keeps a handle on after giving it to the model.
    impl HostFunction for Arc<FakeFunction> {
        fn config_read(&self, offset: u16, data: &mut [u8]) {
            self.as_ref().config_read(offset, data)
        }
        fn config_write(&self, offset: u16, data: &[u8]) {
            self.as_ref().config_write(offset, data)
        }
        fn region_size(&self, index: u32) -> u64 {
            self.as_ref().region_size(index)
        }
        fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
            self.as_ref().region_read(index, offset, data)
        }
        fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
            self.as_ref().region_write(index, offset, data)
        }
        fn region_mappings(&self, index: u32) -> &[HostArea] {
            self.as_ref().region_mappings(index)
        }
        fn irq_count(&self, kind: IrqKind) -> u32 {
            self.as_ref().irq_count(kind)
        }
        fn enable_irqs(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), HostError> {
            self.as_ref().enable_irqs(kind, fds)
        }
        fn disable_irqs(&self, kind: IrqKind) -> Result<(), HostError> {
            self.as_ref().disable_irqs(kind)
        }
        fn intx_unmask_on(&self, fd: &EventFd) -> Result<(), HostError> {
            self.as_ref().intx_unmask_on(fd)
        }
        fn reset(&self) {
            self.as_ref().reset()
        }
    }
}
