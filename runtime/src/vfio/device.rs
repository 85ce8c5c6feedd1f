//! One VFIO PCI device: the host half of a passed-through function, as the
//! guest-facing model ([`HostFunction`]) needs it: config space, BAR
//! regions (mmapped where VFIO allows: whole, or its sparse areas),
//! interrupts and reset.

use super::bar_mapping::PAGE_SIZE;
use super::container::Container;
use super::host_function::{HostArea, HostError, HostFunction, IrqKind, ROM_REGION};
use kiln_schema::config::Bdf;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_ROM_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;

// The guest-facing model names the ROM region by VFIO's index.
const _: () = assert!(ROM_REGION == VFIO_PCI_ROM_REGION_INDEX);

fn index(kind: IrqKind) -> u32 {
    match kind {
        IrqKind::Intx => VFIO_PCI_INTX_IRQ_INDEX,
        IrqKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
        IrqKind::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
    }
}

/// An open VFIO PCI device. Fields drop in order: the mappings are undone
/// in `Drop`, then the device closes (its group leaves the container), then
/// the container handle goes.
pub struct VfioFunction {
    bdf: Bdf,
    node: PathBuf,
    /// Per BAR, its mmapped areas.
    maps: Vec<Vec<HostArea>>,
    device: VfioDevice,
    container: Arc<Container>,
}

// The vfio-ioctls device has no Debug: the address and node name it.
impl std::fmt::Debug for VfioFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioFunction")
            .field("bdf", &self.bdf)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
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

/// Maps what VFIO lets us map of BAR region `i`: the whole region when it
/// is mmappable and has no sparse-mmap capability (kernels that report
/// MSI-X as mappable let the BAR holding the table be mapped whole), else
/// each of its sparse areas (older kernels leave the MSI-X table out).
fn map_region(device: &VfioDevice, i: u32) -> Vec<HostArea> {
    let size = device.get_region_size(i);
    let flags = device.get_region_flags(i);
    // A BAR below a page cannot get a KVM slot of its own.
    if size < PAGE_SIZE || flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
        return Vec::new();
    }
    let sparse = device.get_region_caps(i).into_iter().find_map(|c| match c {
        VfioRegionInfoCap::SparseMmap(s) => Some(s.areas),
        _ => None,
    });
    let wanted: Vec<(u64, u64)> = match sparse {
        Some(areas) => areas.iter().map(|a| (a.offset, a.size)).collect(),
        None => vec![(0, size)],
    };
    let base = device.get_region_offset(i);
    wanted
        .into_iter()
        .filter_map(|(offset, len)| map_area(device, base, size, offset, len))
        .collect()
}

/// Maps `len` bytes at `offset` of a region of `size` bytes that starts at
/// `base` in the device fd; `None` when the area is empty, not page-aligned,
/// outside the region, or the kernel refuses.
fn map_area(device: &VfioDevice, base: u64, size: u64, offset: u64, len: u64) -> Option<HostArea> {
    let end = offset.checked_add(len)?;
    if len == 0 || offset % PAGE_SIZE != 0 || end > size {
        return None;
    }
    let at = libc::off_t::try_from(base.checked_add(offset)?).ok()?;
    let bytes = usize::try_from(len).ok()?;
    // SAFETY: a fresh shared mapping of the device fd inside the region;
    // the kernel checks the range against what VFIO allows; nothing else
    // aliases it, and `Drop` unmaps it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            device.as_raw_fd(),
            at,
        )
    };
    (addr != libc::MAP_FAILED).then_some(HostArea {
        offset,
        len,
        addr: addr as u64,
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
        // BARs 0-5 and the ROM; not the config or VGA regions.
        if index > ROM_REGION {
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

    fn region_mappings(&self, index: u32) -> &[HostArea] {
        self.maps.get(index as usize).map_or(&[], |m| m.as_slice())
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
            // `m.len` fit a usize when the mapping was made.
            let Ok(len) = usize::try_from(m.len) else {
                continue;
            };
            // SAFETY: `m` is a mapping this value made, of `len` bytes; the
            // guest-facing model removed the KVM slots pointing into it
            // before dropping this device (PassthroughFunction's Drop).
            unsafe { libc::munmap(m.addr as *mut libc::c_void, len) };
        }
        self.container.device_gone();
    }
}
