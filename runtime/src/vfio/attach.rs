//! In the VMM process: opening every device a VM config assigns (already
//! bound to vfio-pci by init) through the VFIO interface chosen for the VM,
//! and putting each on the guest's PCI bus.

use super::backend::{self, BackendError, Choice, DEV};
use super::container::{AttachStats, Container, ContainerError, Kind};
use crate::boot::fdt::PciDeviceInfo;
use crate::devices::pci::root::BarAllocator;
use crate::devices::pci::{PassthroughError, PassthroughFunction, PciRoot, PciRootError};
use crate::pci::{self, SelectError, Sysfs, SysfsError};
use crate::vm::Vm;
use kiln_schema::config::{Bdf, VmConfig};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("Cannot put {bdf} on the guest's PCI bus")]
    Passthrough {
        bdf: Bdf,
        #[source]
        source: PassthroughError,
    },
    #[error(transparent)]
    Root(#[from] PciRootError),
}

/// The guest's PCI bus with the VM's devices on it.
pub struct Attached {
    pub root: Arc<PciRoot>,
    /// What the guest's device tree lists: guest addresses and ids.
    pub devices: Vec<PciDeviceInfo>,
    /// Set when devices were attached.
    pub stats: Option<AttachStats>,
    /// The interface they were attached through.
    pub kind: Option<Kind>,
    pub elapsed: Duration,
}

/// Opens the devices of `cfg.pci` for `vm` and builds its PCI bus. A VM
/// without devices gets the bus with only its host bridge.
pub fn attach_all(vm: &Arc<Vm>, cfg: &VmConfig) -> Result<Attached, AttachError> {
    let started = Instant::now();
    if cfg.pci.is_empty() {
        return Ok(Attached {
            root: Arc::new(PciRoot::new(Vec::new())?),
            devices: Vec::new(),
            stats: None,
            kind: None,
            elapsed: started.elapsed(),
        });
    }
    let sysfs = Sysfs::host();
    let present = sysfs.devices()?;
    let hosts = cfg
        .pci
        .iter()
        .map(|entry| pci::select(&present, &entry.device, entry.index))
        .collect::<Result<Vec<_>, _>>()?;
    let bdfs: Vec<Bdf> = hosts.iter().map(|h| h.bdf).collect();
    let kind = match backend::choose(&sysfs, Path::new(DEV), cfg.vfio.backend, &bdfs)? {
        Choice::Iommufd { .. } => Kind::Iommufd,
        Choice::Legacy => Kind::Legacy,
    };
    let container = Container::new(vm.clone(), kind)?;
    let mut bars = BarAllocator::new(cfg.memory.bytes());
    let mut functions = Vec::with_capacity(cfg.pci.len());
    let mut devices = Vec::with_capacity(cfg.pci.len());
    for (i, (host, entry)) in hosts.into_iter().zip(&cfg.pci).enumerate() {
        let device = PciRoot::device_number(i);
        let opened = container.open(host.bdf)?;
        // One write, so the line stays whole on the shared console.
        let note = format!(
            "kiln: vm {}: {} attached through {kind} ({})\n",
            cfg.name,
            host.bdf,
            opened.node().display()
        );
        let _ = std::io::stdout().lock().write_all(note.as_bytes());
        let f = PassthroughFunction::new(
            vm.clone(),
            Box::new(opened),
            device,
            entry.rom,
            &mut bars,
            &host.bdf.to_string(),
        )
        .map_err(|source| AttachError::Passthrough {
            bdf: host.bdf,
            source,
        })?;
        functions.push(f);
        devices.push(PciDeviceInfo {
            bdf: Bdf {
                domain: 0,
                bus: 0,
                device,
                function: 0,
            },
            vendor: host.vendor,
            device: host.device,
        });
    }
    let stats = container.stats();
    Ok(Attached {
        root: Arc::new(PciRoot::new(functions)?),
        devices,
        stats: Some(stats),
        kind: Some(kind),
        elapsed: started.elapsed(),
    })
}
