//! One VFIO container per VM: the IOMMU address space its devices share,
//! tied to the VM's KVM-VFIO device, on one of two kernel interfaces
//! ([`super::backend`] chooses which per VM):
//!
//! - iommufd: `/dev/iommu` with an IOAS of the VM's own; each device is
//!   opened through its cdev (`/dev/vfio/devices/vfioN`), added to the
//!   KVM-VFIO device, then bound to the iommufd and attached to the IOAS
//!   (vfio-ioctls `VfioIommufd`, `VfioDevice::new_from_fd`).
//! - legacy: the container `/dev/vfio/vfio` with a type1v2 IOMMU; each
//!   device's group joins the container and the KVM-VFIO device before the
//!   device is opened (vfio-ioctls `VfioContainer`, `VfioDevice::new`).
//!
//! Either way the container holds the VM (`Arc<Vm>`): the guest RAM it
//! DMA-maps and the KVM-VFIO device it registers files with stay alive
//! until the last device is gone and the mappings are taken back. Guest RAM
//! is mapped once, IOVA = guest physical address, when the first device is
//! attached (the legacy IOMMU type is only set once a group is in the
//! container), and unmapped when the last device leaves, while it is still
//! attached.

use super::backend::{self, DEV};
use super::device::VfioFunction;
use crate::host::pci::{Sysfs, SysfsError};
use crate::vm::Vm;
use iommufd_ioctls::{IommuFd, IommufdError};
use kiln_schema::config::Bdf;
use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError, VfioIommufd, VfioOps};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("KVM cannot create its VFIO device (KVM_DEV_TYPE_VFIO); the host kernel needs CONFIG_KVM_VFIO")]
    KvmVfio(#[source] kvm_ioctls::Error),
    #[error("Cannot open the VFIO container /dev/vfio/vfio with a type1v2 IOMMU; load vfio and vfio_iommu_type1 and boot the host with the IOMMU on (intel_iommu=on)")]
    Open(#[source] VfioError),
    #[error("Cannot open /dev/iommu; load the iommufd module, or set `backend = \"legacy\"` in the VM's [vfio] table")]
    OpenIommufd(#[source] IommufdError),
    #[error("Cannot allocate an IOMMU address space (IOAS) in /dev/iommu; set `backend = \"legacy\"` in the VM's [vfio] table to use the VFIO container instead")]
    Ioas(#[source] VfioError),
    #[error("Cannot open {bdf} through VFIO (IOMMU group node /dev/vfio/<group>); check that it is bound to vfio-pci and that its IOMMU group is viable (every device in it bound to vfio-pci or to no driver) and not used by another VM")]
    Device {
        bdf: Bdf,
        #[source]
        source: VfioError,
    },
    #[error("{bdf} has no VFIO device cdev (no vfio-dev/vfioN/dev in sysfs); is it bound to vfio-pci? Or set `backend = \"legacy\"` in the VM's [vfio] table")]
    NoCdev { bdf: Bdf },
    #[error("Cannot open {}, the VFIO device cdev of {bdf}; is it bound to vfio-pci and not used by another VM?", node.display())]
    OpenCdev {
        bdf: Bdf,
        node: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot attach {bdf} ({}) to the VM's IOMMU address space through iommufd; check that its IOMMU group is viable (every device in it bound to vfio-pci or to no driver), or set `backend = \"legacy\"` in the VM's [vfio] table", node.display())]
    Cdev {
        bdf: Bdf,
        node: PathBuf,
        #[source]
        source: VfioError,
    },
    #[error("Cannot map the guest's memory for device DMA; raise the locked-memory limit or lower `memory`")]
    DmaMap(#[source] VfioError),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
}

/// Which kernel interface a container uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Iommufd,
    Legacy,
}

impl Kind {
    /// The name `vfio.backend` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Iommufd => "iommufd",
            Kind::Legacy => "legacy",
        }
    }
}

impl fmt::Display for Kind {
    /// How console lines name it: "attached through {kind}".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Iommufd => "iommufd",
            Kind::Legacy => "the legacy VFIO container",
        })
    }
}

/// Timings of what attaching cost, for KILN_VMM_STATS.
#[derive(Debug, Default, Clone, Copy)]
pub struct AttachStats {
    pub open: Duration,
    pub dma_map: Duration,
    pub dma_bytes: u64,
}

#[derive(Debug)]
struct State {
    devices: usize,
    /// The IOVA ranges mapped (each a guest RAM region), to unmap.
    mapped: Vec<(u64, usize)>,
    stats: AttachStats,
}

enum Backend {
    Iommufd(Arc<VfioIommufd>),
    Legacy(Arc<VfioContainer>),
}

// The vfio-ioctls handles print nothing useful: name the interface.
impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Iommufd(_) => "Iommufd",
            Backend::Legacy(_) => "Legacy",
        })
    }
}

#[derive(Debug)]
pub struct Container {
    backend: Backend,
    state: Mutex<State>,
    sysfs: Sysfs,
    vm: Arc<Vm>,
}

/// The KVM-VFIO device of `vm`, made through the VM handle.
fn kvm_vfio(vm: &Vm) -> Result<Arc<VfioDeviceFd>, ContainerError> {
    let mut dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    let fd = vm
        .fd()
        .create_device(&mut dev)
        .map_err(ContainerError::KvmVfio)?;
    Ok(Arc::new(VfioDeviceFd::new_from_kvm(fd)))
}

impl Container {
    /// A container of `kind` for `vm`, with the VM's KVM-VFIO device
    /// created; devices are found in the host's sysfs.
    pub fn new(vm: Arc<Vm>, kind: Kind) -> Result<Arc<Container>, ContainerError> {
        let kvm = kvm_vfio(&vm)?;
        let backend = match kind {
            Kind::Legacy => Backend::Legacy(Arc::new(
                VfioContainer::new(Some(kvm)).map_err(ContainerError::Open)?,
            )),
            Kind::Iommufd => {
                let iommufd = Arc::new(IommuFd::new().map_err(ContainerError::OpenIommufd)?);
                // Its own IOAS (None): the VM's address space, shared by
                // its devices and no one else's.
                Backend::Iommufd(Arc::new(
                    VfioIommufd::new(iommufd, None, Some(kvm)).map_err(ContainerError::Ioas)?,
                ))
            }
        };
        Ok(Arc::new(Container {
            backend,
            state: Mutex::new(State {
                devices: 0,
                mapped: Vec::new(),
                stats: AttachStats::default(),
            }),
            sysfs: Sysfs::host(),
            vm,
        }))
    }

    /// The VM this container serves.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    pub fn kind(&self) -> Kind {
        match self.backend {
            Backend::Iommufd(_) => Kind::Iommufd,
            Backend::Legacy(_) => Kind::Legacy,
        }
    }

    fn ops(&self) -> Arc<dyn VfioOps> {
        match &self.backend {
            Backend::Iommufd(i) => i.clone(),
            Backend::Legacy(c) => c.clone(),
        }
    }

    /// Opens `bdf` (bound to vfio-pci) and attaches it to the VM: on the
    /// legacy path its group joins the container and the KVM-VFIO device
    /// before the device is opened; on the iommufd path its cdev is added
    /// to the KVM-VFIO device before it is bound to the iommufd and
    /// attached to the IOAS. Guest RAM is mapped for DMA with the first
    /// device.
    pub fn open(self: &Arc<Self>, bdf: Bdf) -> Result<VfioFunction, ContainerError> {
        let started = Instant::now();
        let (device, node) = match &self.backend {
            Backend::Legacy(c) => {
                let ops: Arc<dyn VfioOps> = c.clone();
                let device = VfioDevice::new(&self.sysfs.device_dir(bdf), ops, false)
                    .map_err(|source| ContainerError::Device { bdf, source })?;
                // vfio-ioctls opened the group by number; name its node.
                let group = self.sysfs.iommu_group(bdf)?.unwrap_or_default();
                (
                    device,
                    Path::new(crate::host::DEV_VFIO).join(group.to_string()),
                )
            }
            Backend::Iommufd(i) => {
                let node = backend::cdev_node(&self.sysfs, Path::new(DEV), bdf)?
                    .ok_or(ContainerError::NoCdev { bdf })?;
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&node)
                    .map_err(|source| ContainerError::OpenCdev {
                        bdf,
                        node: node.clone(),
                        source,
                    })?;
                let device = VfioDevice::new_from_fd(file, i.clone(), true).map_err(|source| {
                    ContainerError::Cdev {
                        bdf,
                        node: node.clone(),
                        source,
                    }
                })?;
                (device, node)
            }
        };
        let opened = started.elapsed();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.stats.open = st.stats.open.saturating_add(opened);
        if st.mapped.is_empty() {
            let t = Instant::now();
            st.mapped = self.map_guest_memory()?;
            st.stats.dma_map = t.elapsed();
            st.stats.dma_bytes = st.mapped.iter().map(|&(_, len)| len as u64).sum();
        }
        st.devices = st.devices.saturating_add(1);
        drop(st);
        Ok(VfioFunction::new(bdf, node, device, self.clone()))
    }

    /// Maps every guest RAM region, IOVA = guest physical address; on an
    /// error, unmaps what it mapped (the caller drops the device).
    fn map_guest_memory(&self) -> Result<Vec<(u64, usize)>, ContainerError> {
        let ops = self.ops();
        let mut mapped = Vec::new();
        for region in self.vm.memory().iter() {
            let iova = region.start_addr().0;
            let mapping = usize::try_from(region.len())
                .map_err(|_| VfioError::GetHostAddress)
                .and_then(|len| {
                    let host = region
                        .get_host_address(MemoryRegionAddress(0))
                        .map_err(|_| VfioError::GetHostAddress)?;
                    // SAFETY: `host..host + len` is a guest RAM region, an
                    // anonymous mapping owned by the VM, which this
                    // container keeps alive (`self.vm`) until the range is
                    // unmapped again (`device_gone`, or just below on an
                    // error). The VMM makes no Rust references into guest
                    // RAM: it goes through vm-memory's volatile accessors,
                    // as the device's DMA requires.
                    unsafe { ops.vfio_dma_map(iova, len, host) }.map(|()| len)
                });
            match mapping {
                Ok(len) => mapped.push((iova, len)),
                Err(e) => {
                    unmap(ops.as_ref(), &mapped);
                    return Err(ContainerError::DmaMap(e));
                }
            }
        }
        Ok(mapped)
    }

    /// Called as a device closes: the last one takes the DMA mappings back
    /// while it is still attached.
    pub(crate) fn device_gone(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.devices = st.devices.saturating_sub(1);
        if st.devices == 0 {
            unmap(self.ops().as_ref(), &st.mapped);
            st.mapped.clear();
        }
    }

    pub fn stats(&self) -> AttachStats {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats
    }
}

fn unmap(ops: &dyn VfioOps, mapped: &[(u64, usize)]) {
    for &(iova, len) in mapped {
        if let Err(e) = ops.vfio_dma_unmap(iova, len) {
            eprintln!("kiln-runtime: vfio: cannot unmap guest memory at {iova:#x}: {e}");
        }
    }
}
