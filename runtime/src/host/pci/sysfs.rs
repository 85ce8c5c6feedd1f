//! Reading PCI devices, drivers and IOMMU groups from sysfs, and writing its
//! control files (`driver_override`, `unbind`, `drivers_probe`).
//!
//! The layout used, relative to the root:
//!
//! ```text
//! bus/pci/devices/<bdf>/{vendor,device,class,driver_override}
//! bus/pci/devices/<bdf>/driver       -> .../drivers/<name>    (absent when unbound)
//! bus/pci/devices/<bdf>/iommu_group  -> .../iommu_groups/<n>  (absent without an IOMMU)
//! bus/pci/drivers/<name>/unbind
//! bus/pci/drivers_probe
//! kernel/iommu_groups/<n>/devices/<bdf>
//! ```

use kiln_schema::config::Bdf;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where sysfs is mounted on a host.
pub const SYSFS: &str = "/sys";

#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("Cannot read {}; is sysfs mounted?", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds \"{text}\", not the hexadecimal number the kernel writes there", path.display())]
    Malformed { path: PathBuf, text: String },
    #[error("Cannot write \"{value}\" to {}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
}

/// Called after every write with the file and the value: the tests' stand-in
/// for the kernel, which reacts to writes into a fake tree.
#[cfg(test)]
pub(crate) type KernelHook = std::sync::Arc<dyn Fn(&Path, &str) + Send + Sync>;

/// A sysfs tree: the host's at [`SYSFS`], or a fake one in tests.
#[derive(Clone)]
pub struct Sysfs {
    root: PathBuf,
    #[cfg(test)]
    kernel: Option<KernelHook>,
}

impl fmt::Debug for Sysfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sysfs").field("root", &self.root).finish()
    }
}

/// One PCI function as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// Class, subclass and programming interface: `0x010601` is an AHCI controller.
    pub class: u32,
    /// The bound driver's name, `None` when no driver has it.
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
}

impl PciDevice {
    /// A host bridge (class 06/00) or a PCI-to-PCI bridge (06/04). Bridges
    /// do no DMA of their own, so they may stay with their driver in an
    /// IOMMU group that is assigned to a VM, and are never assigned.
    pub fn is_bridge(&self) -> bool {
        matches!(self.class >> 8, 0x0600 | 0x0604)
    }

    /// `vendor:device driver=<name|none>`, as errors list group members.
    pub fn describe(&self) -> String {
        format!(
            "{} {:04x}:{:04x} driver={}",
            self.bdf,
            self.vendor,
            self.device,
            self.driver.as_deref().unwrap_or("none")
        )
    }
}

impl fmt::Display for PciDevice {
    /// `vendor:device@bdf`, the form a user can paste into a selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:04x}@{}", self.vendor, self.device, self.bdf)
    }
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs {
            root: root.into(),
            #[cfg(test)]
            kernel: None,
        }
    }

    /// The host's sysfs at [`SYSFS`].
    pub fn host() -> Self {
        Sysfs::new(SYSFS)
    }

    #[cfg(test)]
    pub(crate) fn with_kernel(root: impl Into<PathBuf>, kernel: KernelHook) -> Self {
        Sysfs {
            root: root.into(),
            kernel: Some(kernel),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn device_dir(&self, bdf: Bdf) -> PathBuf {
        self.root.join("bus/pci/devices").join(bdf.to_string())
    }

    pub fn driver_dir(&self, driver: &str) -> PathBuf {
        self.root.join("bus/pci/drivers").join(driver)
    }

    pub fn drivers_probe(&self) -> PathBuf {
        self.root.join("bus/pci/drivers_probe")
    }

    pub fn iommu_groups_dir(&self) -> PathBuf {
        self.root.join("kernel/iommu_groups")
    }

    /// Every PCI function, in bus order. Entries whose names are not bus
    /// addresses are not PCI functions and are skipped.
    pub fn devices(&self) -> Result<Vec<PciDevice>, SysfsError> {
        let dir = self.root.join("bus/pci/devices");
        let mut found = Vec::new();
        for entry in read_dir(&dir)? {
            if let Some(bdf) = entry.to_str().and_then(|n| n.parse::<Bdf>().ok()) {
                found.push(self.device(bdf)?);
            }
        }
        found.sort_by_key(|d| d.bdf);
        Ok(found)
    }

    /// One PCI function; fails if it does not exist.
    pub fn device(&self, bdf: Bdf) -> Result<PciDevice, SysfsError> {
        let dir = self.device_dir(bdf);
        Ok(PciDevice {
            bdf,
            vendor: narrow(read_hex(&dir.join("vendor"))?, &dir.join("vendor"))?,
            device: narrow(read_hex(&dir.join("device"))?, &dir.join("device"))?,
            class: narrow(read_hex(&dir.join("class"))?, &dir.join("class"))?,
            driver: self.driver(bdf)?,
            iommu_group: self.iommu_group(bdf)?,
        })
    }

    /// The driver bound to `bdf`, from the name its `driver` link points at.
    pub fn driver(&self, bdf: Bdf) -> Result<Option<String>, SysfsError> {
        link_name(&self.device_dir(bdf).join("driver"))
    }

    pub fn iommu_group(&self, bdf: Bdf) -> Result<Option<u32>, SysfsError> {
        let path = self.device_dir(bdf).join("iommu_group");
        match link_name(&path)? {
            None => Ok(None),
            Some(n) => n
                .parse()
                .map(Some)
                .map_err(|_| SysfsError::Malformed { path, text: n }),
        }
    }

    /// The name of `bdf`'s VFIO device cdev (`vfio0`): the `vfio-dev/vfioN`
    /// entry vfio-pci makes, when it has a device number (a `dev` file),
    /// which only kernels with CONFIG_VFIO_DEVICE_CDEV (6.6+) give it;
    /// 6.1 to 6.5 make the entry without one. `None` without a cdev.
    pub fn vfio_cdev(&self, bdf: Bdf) -> Result<Option<String>, SysfsError> {
        let dir = self.device_dir(bdf).join("vfio-dev");
        let names = match read_dir(&dir) {
            Ok(n) => n,
            Err(SysfsError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let mut names: Vec<String> = names
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| n.starts_with("vfio") && dir.join(n).join("dev").is_file())
            .collect();
        names.sort();
        Ok(names.into_iter().next())
    }

    /// What `driver_override` holds; `None` when it is unset (the kernel
    /// shows that as `(null)`).
    pub fn driver_override(&self, bdf: Bdf) -> Result<Option<String>, SysfsError> {
        let path = self.device_dir(bdf).join("driver_override");
        let text = std::fs::read_to_string(&path).map_err(|source| SysfsError::Read {
            path: path.clone(),
            source,
        })?;
        let text = text.trim();
        Ok((!text.is_empty() && text != "(null)").then(|| text.to_string()))
    }

    /// Whether an IOMMU is active: the kernel then lists IOMMU groups.
    pub fn iommu_active(&self) -> bool {
        std::fs::read_dir(self.iommu_groups_dir()).is_ok_and(|mut d| d.next().is_some())
    }

    /// The entries of IOMMU group `group`, as the kernel names them (bus
    /// addresses for PCI functions), sorted.
    pub fn iommu_group_members(&self, group: u32) -> Result<Vec<String>, SysfsError> {
        let dir = self
            .iommu_groups_dir()
            .join(group.to_string())
            .join("devices");
        let mut names: Vec<String> = read_dir(&dir)?
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Writes `value` to a sysfs control file in one `write`, as sysfs
    /// wants. The file must exist: sysfs never creates files.
    pub fn write(&self, path: &Path, value: &str) -> Result<(), SysfsError> {
        let err = |source| SysfsError::Write {
            path: path.to_path_buf(),
            value: value.trim_end().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(err)?;
        file.write_all(value.as_bytes()).map_err(err)?;
        #[cfg(test)]
        if let Some(kernel) = &self.kernel {
            kernel(path, value);
        }
        Ok(())
    }
}

fn read_dir(dir: &Path) -> Result<Vec<std::ffi::OsString>, SysfsError> {
    let err = |source| SysfsError::Read {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::read_dir(dir)
        .map_err(err)?
        .map(|e| e.map(|e| e.file_name()).map_err(err))
        .collect()
}

/// The last component of a symlink's target; `None` if there is no link.
fn link_name(path: &Path) -> Result<Option<String>, SysfsError> {
    match std::fs::read_link(path) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SysfsError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A `0x`-prefixed hexadecimal attribute such as `vendor` or `class`.
fn read_hex(path: &Path) -> Result<u32, SysfsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SysfsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let t = text.trim();
    u32::from_str_radix(t.strip_prefix("0x").unwrap_or(t), 16).map_err(|_| SysfsError::Malformed {
        path: path.to_path_buf(),
        text: t.to_string(),
    })
}

fn narrow<T: TryFrom<u32>>(v: u32, path: &Path) -> Result<T, SysfsError> {
    T::try_from(v).map_err(|_| SysfsError::Malformed {
        path: path.to_path_buf(),
        text: format!("{v:#x}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::pci::fake::FakeHost;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    #[test]
    fn reads_devices_in_bus_order_with_driver_and_group() {
        let host = FakeHost::new();
        host.driver("ahci");
        // Created out of order: the listing sorts by address.
        host.device(
            "0000:00:1f.2",
            0x8086,
            0x2922,
            0x010601,
            Some("ahci"),
            Some(4),
        );
        host.device("0000:00:03.0", 0x1234, 0x11e8, 0x00ff00, None, Some(3));
        let devs = host.sysfs.devices().unwrap();
        assert_eq!(
            devs,
            vec![
                PciDevice {
                    bdf: bdf("00:03.0"),
                    vendor: 0x1234,
                    device: 0x11e8,
                    class: 0x00ff00,
                    driver: None,
                    iommu_group: Some(3),
                },
                PciDevice {
                    bdf: bdf("00:1f.2"),
                    vendor: 0x8086,
                    device: 0x2922,
                    class: 0x010601,
                    driver: Some("ahci".into()),
                    iommu_group: Some(4),
                },
            ]
        );
        assert_eq!(devs[1].to_string(), "8086:2922@0000:00:1f.2");
        assert_eq!(devs[1].describe(), "0000:00:1f.2 8086:2922 driver=ahci");
        assert_eq!(host.sysfs.driver_override(bdf("00:03.0")).unwrap(), None);
        assert_eq!(host.sysfs.iommu_group_members(4).unwrap(), ["0000:00:1f.2"]);
        assert!(host.sysfs.iommu_active());
    }

    #[test]
    fn bridges_by_class() {
        let host = FakeHost::new();
        host.device("0000:00:00.0", 0x8086, 0x29c0, 0x060000, None, None);
        host.device("0000:00:1c.0", 0x8086, 0x2948, 0x060400, None, None);
        // An ISA/LPC bridge is an ordinary endpoint as far as DMA goes.
        host.device("0000:00:1f.0", 0x8086, 0x2918, 0x060100, None, None);
        let bridges: Vec<bool> = host
            .sysfs
            .devices()
            .unwrap()
            .iter()
            .map(PciDevice::is_bridge)
            .collect();
        assert_eq!(bridges, [true, true, false]);
        assert!(!host.sysfs.iommu_active());
    }

    #[test]
    fn malformed_attribute_names_the_file() {
        let host = FakeHost::new();
        host.device("0000:00:03.0", 0x1234, 0x11e8, 0x00ff00, None, None);
        let vendor = host.sysfs.device_dir(bdf("00:03.0")).join("vendor");
        std::fs::write(&vendor, "zz\n").unwrap();
        let e = host.sysfs.devices().unwrap_err().to_string();
        assert!(e.contains("vendor holds \"zz\""), "{e}");
    }

    #[test]
    fn writes_need_an_existing_file() {
        let host = FakeHost::new();
        let e = host
            .sysfs
            .write(&host.sysfs.driver_dir("nope").join("unbind"), "x")
            .unwrap_err();
        assert!(matches!(e, SysfsError::Write { .. }), "{e}");
        assert!(!host.sysfs.driver_dir("nope").exists());
    }
}
