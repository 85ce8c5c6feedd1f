//! Which kernel interface a VM's VFIO devices go through, chosen per VM at
//! run time from `vfio.backend` and what the host offers:
//!
//! - iommufd: `/dev/iommu` plus one cdev per device
//!   (`/dev/vfio/devices/vfioN`, named by the device's `vfio-dev/vfioN`
//!   entry in sysfs); Linux 6.6+ with CONFIG_IOMMUFD and
//!   CONFIG_VFIO_DEVICE_CDEV.
//! - legacy: the container `/dev/vfio/vfio` and the group nodes
//!   `/dev/vfio/<group>` (type1v2), which every VFIO kernel has.
//!
//! `auto` takes iommufd when the host has it for every device of the VM,
//! else legacy; `iommufd` without host support is an error for that VM.

use crate::host::pci::{Sysfs, SysfsError};
use kiln_schema::config::{Bdf, VfioBackend};
use std::path::{Path, PathBuf};

/// Where device nodes live on a host.
pub const DEV: &str = "/dev";

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "The VM asks for the iommufd VFIO backend (`vfio.backend = \"iommufd\"`), but {} does \
         not exist: this host kernel has no iommufd. It needs CONFIG_IOMMUFD (with the iommufd \
         module loaded) and CONFIG_VFIO_DEVICE_CDEV (Linux 6.6 or later); on this kernel set \
         `backend = \"legacy\"` (or \"auto\") in the VM's [vfio] table",
        path.display()
    )]
    NoIommufd { path: PathBuf },
    #[error(
        "The VM asks for the iommufd VFIO backend (`vfio.backend = \"iommufd\"`), but {bdf} has \
         no VFIO device cdev (no vfio-dev/vfioN/dev in sysfs): the host kernel needs \
         CONFIG_VFIO_DEVICE_CDEV (Linux 6.6 or later); on this kernel set \
         `backend = \"legacy\"` (or \"auto\") in the VM's [vfio] table"
    )]
    NoCdev { bdf: Bdf },
    #[error(
        "The VM asks for the iommufd VFIO backend (`vfio.backend = \"iommufd\"`), but {}, the \
         VFIO device cdev of {bdf}, does not exist; is devtmpfs mounted on /dev? Or set \
         `backend = \"legacy\"` in the VM's [vfio] table",
        node.display()
    )]
    NoCdevNode { bdf: Bdf, node: PathBuf },
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
}

/// The interface chosen for a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// iommufd, with each device's cdev node in the order asked for.
    Iommufd {
        cdevs: Vec<PathBuf>,
    },
    Legacy,
}

/// The cdev node of `bdf` under `dev` (a `/dev`), if the kernel made one
/// for it: `None` when it has no `vfio-dev` entry.
pub fn cdev_node(sysfs: &Sysfs, dev: &Path, bdf: Bdf) -> Result<Option<PathBuf>, SysfsError> {
    Ok(sysfs
        .vfio_cdev(bdf)?
        .map(|name| dev.join("vfio/devices").join(name)))
}

/// Chooses the interface for devices `bdfs` (bound to vfio-pci) as
/// `wanted` says, looking at `sysfs` and at the device nodes under `dev`.
pub fn choose(
    sysfs: &Sysfs,
    dev: &Path,
    wanted: VfioBackend,
    bdfs: &[Bdf],
) -> Result<Choice, BackendError> {
    if wanted == VfioBackend::Legacy {
        return Ok(Choice::Legacy);
    }
    let forced = wanted == VfioBackend::Iommufd;
    let iommu = dev.join("iommu");
    if !iommu.exists() {
        return if forced {
            Err(BackendError::NoIommufd { path: iommu })
        } else {
            Ok(Choice::Legacy)
        };
    }
    let mut cdevs = Vec::with_capacity(bdfs.len());
    for &bdf in bdfs {
        let node = match cdev_node(sysfs, dev, bdf)? {
            Some(node) if node.exists() => node,
            _ if !forced => return Ok(Choice::Legacy),
            Some(node) => return Err(BackendError::NoCdevNode { bdf, node }),
            None => return Err(BackendError::NoCdev { bdf }),
        };
        cdevs.push(node);
    }
    Ok(Choice::Iommufd { cdevs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::pci::fake::FakeHost;
    use crate::host::Bound;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    /// Two edu devices, both bound to vfio-pci, on a kernel with cdevs
    /// (6.6+) or on a 6.1 one.
    fn host(cdev: bool) -> FakeHost {
        let host = FakeHost::new();
        if cdev {
            host.with_cdev();
        } else {
            host.with_vfio_dev_entries();
        }
        host.device("0000:00:02.0", 0x1234, 0x11e8, 0x00ff00, None, Some(2));
        host.device("0000:00:03.0", 0x1234, 0x11e8, 0x00ff00, None, Some(3));
        let mut bound = Bound::new(host.sysfs.clone(), &host.dev_vfio);
        bound.bind(bdf("00:02.0")).unwrap();
        bound.bind(bdf("00:03.0")).unwrap();
        // Kept bound: the test host goes away as a whole.
        std::mem::forget(bound);
        host
    }

    fn both() -> [Bdf; 2] {
        [bdf("00:02.0"), bdf("00:03.0")]
    }

    #[test]
    fn auto_takes_iommufd_when_every_device_has_its_cdev() {
        let host = host(true);
        let dev = host.dev_dir();
        let c = choose(&host.sysfs, &dev, VfioBackend::Auto, &both()).unwrap();
        assert_eq!(
            c,
            Choice::Iommufd {
                cdevs: vec![
                    dev.join("vfio/devices/vfio0"),
                    dev.join("vfio/devices/vfio1")
                ]
            }
        );
        // The order asked for, not the order bound.
        let c = choose(&host.sysfs, &dev, VfioBackend::Iommufd, &[bdf("00:03.0")]).unwrap();
        assert_eq!(
            c,
            Choice::Iommufd {
                cdevs: vec![dev.join("vfio/devices/vfio1")]
            }
        );
    }

    #[test]
    fn legacy_is_taken_when_asked_even_with_iommufd_there() {
        let host = host(true);
        let c = choose(&host.sysfs, &host.dev_dir(), VfioBackend::Legacy, &both()).unwrap();
        assert_eq!(c, Choice::Legacy);
    }

    #[test]
    fn auto_falls_back_to_legacy_without_dev_iommu_or_a_cdev() {
        // A 6.1 kernel: neither /dev/iommu nor cdevs (vfio-dev entries,
        // but without device numbers).
        let host = host(false);
        assert!(host
            .sysfs
            .device_dir(bdf("00:02.0"))
            .join("vfio-dev/vfio0")
            .is_dir());
        let c = choose(&host.sysfs, &host.dev_dir(), VfioBackend::Auto, &both()).unwrap();
        assert_eq!(c, Choice::Legacy);
        // iommufd there, but one device without its cdev node.
        let host = super::tests::host(true);
        let dev = host.dev_dir();
        std::fs::remove_file(dev.join("vfio/devices/vfio1")).unwrap();
        let c = choose(&host.sysfs, &dev, VfioBackend::Auto, &both()).unwrap();
        assert_eq!(c, Choice::Legacy);
        // /dev/iommu gone (iommufd not loaded) although cdevs exist.
        let host = super::tests::host(true);
        std::fs::remove_file(host.dev_dir().join("iommu")).unwrap();
        let c = choose(&host.sysfs, &host.dev_dir(), VfioBackend::Auto, &both()).unwrap();
        assert_eq!(c, Choice::Legacy);
    }

    #[test]
    fn forced_iommufd_without_it_names_what_the_kernel_needs() {
        let host = host(false);
        let e = choose(&host.sysfs, &host.dev_dir(), VfioBackend::Iommufd, &both())
            .unwrap_err()
            .to_string();
        assert!(e.contains("dev/iommu does not exist"), "{e}");
        assert!(e.contains("CONFIG_IOMMUFD"), "{e}");
        assert!(e.contains("CONFIG_VFIO_DEVICE_CDEV"), "{e}");
        assert!(e.contains("`backend = \"legacy\"`"), "{e}");

        // /dev/iommu there but the kernel makes no cdevs.
        std::fs::write(host.dev_dir().join("iommu"), "").unwrap();
        let e = choose(&host.sysfs, &host.dev_dir(), VfioBackend::Iommufd, &both())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0000:00:02.0 has no VFIO device cdev (no vfio-dev/vfioN/dev in sysfs)"),
            "{e}"
        );
        assert!(e.contains("CONFIG_VFIO_DEVICE_CDEV"), "{e}");

        let host = super::tests::host(true);
        let dev = host.dev_dir();
        std::fs::remove_file(dev.join("vfio/devices/vfio1")).unwrap();
        let e = choose(&host.sysfs, &dev, VfioBackend::Iommufd, &both())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vfio/devices/vfio1, the VFIO device cdev of 0000:00:03.0, does not exist"),
            "{e}"
        );
    }
}
