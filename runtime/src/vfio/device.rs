//! One VFIO PCI device: the host half of a passed-through function, as the
//! guest-facing model ([`HostFunction`]) needs it: config space, BAR
//! regions (mmapped whole where VFIO allows), interrupts and reset.

use super::container::Container;
use crate::config::Bdf;
use crate::devices::pci::{HostError, HostFunction, IrqKind};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;

fn index(kind: IrqKind) -> u32 {
    match kind {
        IrqKind::Intx => VFIO_PCI_INTX_IRQ_INDEX,
        IrqKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
        IrqKind::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
    }
}

/// A host mapping of a BAR region.
struct Mapping {
    addr: u64,
    len: usize,
}

/// An open VFIO PCI device. Fields drop in order: the mappings are undone
/// in `Drop`, then the device closes (its group leaves the container), then
/// the container handle goes.
pub struct VfioFunction {
    bdf: Bdf,
    node: PathBuf,
    maps: Vec<Option<Mapping>>,
    device: VfioDevice,
    container: Arc<Container>,
}

impl VfioFunction {
    pub(crate) fn new(
        bdf: Bdf,
        node: PathBuf,
        device: VfioDevice,
        container: Arc<Container>,
    ) -> Self {
        let maps = (0..6).map(|i| map_region(&device, i)).collect();
        VfioFunction {
            bdf,
            node,
            maps,
            device,
            container,
        }
    }

    /// The device's host address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The node the device was reached through: its cdev on the iommufd
    /// path, its group node on the legacy path.
    pub fn node(&self) -> &Path {
        &self.node
    }

    /// The container (and through it the VM) this device belongs to.
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }
}

/// Maps BAR region `i` whole when VFIO allows it (no sparse areas, which
/// would mean parts of it must trap).
fn map_region(device: &VfioDevice, i: u32) -> Option<Mapping> {
    let size = device.get_region_size(i);
    let flags = device.get_region_flags(i);
    if size < 4096 || flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
        return None;
    }
    let sparse = device
        .get_region_caps(i)
        .iter()
        .any(|c| matches!(c, VfioRegionInfoCap::SparseMmap(_)));
    if sparse {
        return None;
    }
    let len = usize::try_from(size).ok()?;
    let offset = libc::off_t::try_from(device.get_region_offset(i)).ok()?;
    // SAFETY: a fresh shared mapping of the device fd at the region's
    // offset; the kernel checks the range; nothing else aliases it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            device.as_raw_fd(),
            offset,
        )
    };
    (addr != libc::MAP_FAILED).then_some(Mapping {
        addr: addr as u64,
        len,
    })
}

impl HostFunction for VfioFunction {
    fn config_read(&self, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        self.device
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, data, u64::from(offset));
    }

    fn config_write(&self, offset: u16, data: &[u8]) {
        self.device
            .region_write(VFIO_PCI_CONFIG_REGION_INDEX, data, u64::from(offset));
    }

    fn region_size(&self, index: u32) -> u64 {
        if index >= 6 {
            return 0;
        }
        self.device.get_region_size(index)
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        self.device.region_read(index, data, offset);
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        self.device.region_write(index, data, offset);
    }

    fn region_mapping(&self, index: u32) -> Option<u64> {
        self.maps.get(index as usize)?.as_ref().map(|m| m.addr)
    }

    fn irq_count(&self, kind: IrqKind) -> u32 {
        self.device.get_irq_info(index(kind)).map_or(0, |i| i.count)
    }

    fn enable_irqs(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), HostError> {
        Ok(self.device.enable_irq(index(kind), fds.to_vec())?)
    }

    fn disable_irqs(&self, kind: IrqKind) -> Result<(), HostError> {
        Ok(self.device.disable_irq(index(kind))?)
    }

    fn intx_unmask_on(&self, fd: &EventFd) -> Result<(), HostError> {
        Ok(self
            .device
            .set_irq_resample_fd(VFIO_PCI_INTX_IRQ_INDEX, vec![fd])?)
    }

    fn reset(&self) {
        self.device.reset();
    }
}

impl Drop for VfioFunction {
    fn drop(&mut self) {
        for m in self.maps.drain(..).flatten() {
            // SAFETY: `m` is a mapping this value made; the guest-facing
            // model removed the KVM slots pointing into it before dropping
            // this device (PassthroughFunction's Drop).
            unsafe { libc::munmap(m.addr as *mut libc::c_void, m.len) };
        }
        self.container.device_gone();
    }
}
