//! One VFIO container per VM: the IOMMU domain its devices share, on the
//! legacy type1v2 path, tied to the VM's KVM-VFIO device.
//!
//! The container holds the VM (`Arc<Vm>`): the guest RAM it DMA-maps and
//! the KVM-VFIO device it registers groups with stay alive until the last
//! device is gone and the mappings are taken back. Guest RAM is mapped once,
//! IOVA = guest physical address, when the first device is attached (the
//! IOMMU type is only set once a group is in the container), and unmapped
//! when the last device leaves, before its group leaves the container.
//!
//! The iommufd/cdev path (/dev/iommu with /dev/vfio/devices/vfioN) is not
//! used: kiln's host kernel (6.1) has neither; [`iommufd_available`] tells
//! when a host offers it.

use super::device::VfioFunction;
use crate::config::Bdf;
use crate::vm::Vm;
use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError, VfioOps};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("KVM cannot create its VFIO device (KVM_DEV_TYPE_VFIO); the host kernel needs CONFIG_KVM_VFIO")]
    KvmVfio(#[source] kvm_ioctls::Error),
    #[error("Cannot open the VFIO container /dev/vfio/vfio with a type1v2 IOMMU; load vfio and vfio_iommu_type1 and boot the host with the IOMMU on (intel_iommu=on)")]
    Open(#[source] VfioError),
    #[error("Cannot open {bdf} through VFIO (IOMMU group node /dev/vfio/<group>); check that it is bound to vfio-pci and that its IOMMU group is viable (every device in it bound to vfio-pci or to no driver) and not used by another VM")]
    Device {
        bdf: Bdf,
        #[source]
        source: VfioError,
    },
    #[error("Cannot map the guest's memory for device DMA; raise the locked-memory limit or lower `memory`")]
    DmaMap(#[source] VfioError),
}

/// Timings of what attaching cost, for KILN_VMM_STATS.
#[derive(Debug, Default, Clone, Copy)]
pub struct AttachStats {
    pub open: Duration,
    pub dma_map: Duration,
    pub dma_bytes: u64,
}

struct State {
    devices: usize,
    mapped: bool,
    stats: AttachStats,
}

pub struct Container {
    inner: Arc<VfioContainer>,
    state: Mutex<State>,
    vm: Arc<Vm>,
}

/// Whether this host offers the iommufd/cdev VFIO interface (Linux 6.6+
/// with CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV).
pub fn iommufd_available() -> bool {
    Path::new("/dev/iommu").exists() && Path::new("/dev/vfio/devices").is_dir()
}

impl Container {
    /// A container for `vm`, with the VM's KVM-VFIO device created.
    pub fn new(vm: Arc<Vm>) -> Result<Arc<Container>, ContainerError> {
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_vfio = vm
            .fd()
            .create_device(&mut dev)
            .map_err(ContainerError::KvmVfio)?;
        let inner = VfioContainer::new(Some(Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio))))
            .map_err(ContainerError::Open)?;
        Ok(Arc::new(Container {
            inner: Arc::new(inner),
            state: Mutex::new(State {
                devices: 0,
                mapped: false,
                stats: AttachStats::default(),
            }),
            vm,
        }))
    }

    /// The VM this container serves.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    /// Opens `bdf` (bound to vfio-pci): its group joins the container and
    /// the KVM-VFIO device before the device is opened; guest RAM is mapped
    /// for DMA with the first device.
    pub fn open(self: &Arc<Self>, bdf: Bdf) -> Result<VfioFunction, ContainerError> {
        let started = Instant::now();
        let path = PathBuf::from("/sys/bus/pci/devices").join(bdf.to_string());
        let ops: Arc<dyn VfioOps> = self.inner.clone();
        let device = VfioDevice::new(&path, ops, false)
            .map_err(|source| ContainerError::Device { bdf, source })?;
        let opened = started.elapsed();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.stats.open += opened;
        if !st.mapped {
            let t = Instant::now();
            // SAFETY: guest RAM is an anonymous mapping owned by the VM,
            // which this container keeps alive (`self.vm`) until the
            // mappings are removed in `device_gone`/`drop`. The VMM makes no
            // Rust references into guest RAM that live across guest
            // execution: it goes through vm-memory's volatile accessors.
            let r = unsafe { self.inner.vfio_map_guest_memory(self.vm.memory()) };
            if let Err(e) = r {
                // Whatever was mapped goes back; the caller drops the device.
                let _ = self.inner.vfio_unmap_guest_memory(self.vm.memory());
                return Err(ContainerError::DmaMap(e));
            }
            st.mapped = true;
            st.stats.dma_map = t.elapsed();
            st.stats.dma_bytes = vm_memory::GuestMemoryBackend::iter(self.vm.memory())
                .map(vm_memory::GuestMemoryRegion::len)
                .sum();
        }
        st.devices += 1;
        drop(st);
        Ok(VfioFunction::new(bdf, device, self.clone()))
    }

    /// Called as a device closes: the last one takes the DMA mappings back
    /// while its group is still in the container.
    pub(crate) fn device_gone(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.devices = st.devices.saturating_sub(1);
        if st.devices == 0 && st.mapped {
            if let Err(e) = self.inner.vfio_unmap_guest_memory(self.vm.memory()) {
                eprintln!("kiln-runtime: vfio: cannot unmap guest memory: {e}");
            }
            st.mapped = false;
        }
    }

    pub fn stats(&self) -> AttachStats {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats
    }
}
