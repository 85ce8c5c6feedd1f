//! In the VMM process: opening every device a VM config assigns (already
//! bound to vfio-pci by init) through the VFIO interface chosen for the VM,
//! and modelling each as a function for the guest's PCI bus (the
//! [`crate::machine`] puts them there).

use super::backend::{self, BackendError, Choice, DEV};
use super::container::{AttachStats, Container, ContainerError, Kind};
use super::passthrough::{PassthroughError, PassthroughFunction};
use crate::boot::fdt::PciDeviceInfo;
use crate::devices::pci::root::{BarAllocator, MAX_FUNCTIONS};
use crate::devices::pci::{PciFunction, PciRoot, PciRootError};
use crate::host::pci::{self, SelectError, Sysfs, SysfsError};
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

/// The VM's devices, ready for its PCI bus.
pub struct Attached {
    /// Device number `PciRoot::device_number(i)` is `functions[i]`.
    pub functions: Vec<Box<dyn PciFunction>>,
    /// What the guest's device tree lists: guest addresses and ids.
    pub devices: Vec<PciDeviceInfo>,
    /// Set when devices were attached.
    pub stats: Option<AttachStats>,
    /// The interface they were attached through.
    pub kind: Option<Kind>,
    pub elapsed: Duration,
}

// The functions are trait objects: the device tree entries describe them.
impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("devices", &self.devices)
            .field("stats", &self.stats)
            .field("kind", &self.kind)
            .field("elapsed", &self.elapsed)
            .finish_non_exhaustive()
    }
}

/// Opens the devices of `cfg.pci` for `vm` and models each as a PCI
/// function. A VM without devices gets none (its bus has only the host
/// bridge).
pub fn attach_all(vm: &Arc<Vm>, cfg: &VmConfig) -> Result<Attached, AttachError> {
    let started = Instant::now();
    if cfg.pci.is_empty() {
        return Ok(Attached {
            functions: Vec::new(),
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
    if cfg.pci.len() > MAX_FUNCTIONS {
        return Err(PciRootError::TooMany(cfg.pci.len()).into());
    }
    let mut functions: Vec<Box<dyn PciFunction>> = Vec::with_capacity(cfg.pci.len());
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
        functions.push(Box::new(f));
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
        functions,
        devices,
        stats: Some(stats),
        kind: Some(kind),
        elapsed: started.elapsed(),
    })
}
