//! A fake host for tests: a sysfs tree in a temporary directory, laid out as
//! the kernel lays it out, plus a stand-in for the kernel that reacts to
//! writes the way PCI core does (unbind drops the `driver` link, a probe
//! binds the `driver_override` driver or else the device's own, and binding
//! vfio-pci creates `/dev/vfio/<group>`). It logs every write in order.

use super::sysfs::{KernelHook, Sysfs};
use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A device's `vfio-dev/vfioN` entry, by kernel version.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum VfioDev {
    /// Before 6.1: none.
    #[default]
    None,
    /// 6.1 to 6.5: the entry, without a device number.
    Entry,
    /// 6.6+ with CONFIG_VFIO_DEVICE_CDEV: the entry with its `dev` file,
    /// and `/dev/vfio/devices/vfioN`.
    Cdev,
}

#[derive(Default)]
struct Kernel {
    /// (path relative to the sysfs root, value), in order.
    writes: Vec<(String, String)>,
    /// The driver each device binds to without an override.
    native: BTreeMap<String, String>,
    /// Devices vfio-pci's probe fails on (as when one has no IOMMU group).
    refuse_vfio: Vec<String>,
    /// devtmpfs never creates the group node.
    no_nodes: bool,
    /// What binding vfio-pci makes besides the group node.
    vfio_dev: VfioDev,
    /// The next cdev number.
    next_cdev: u32,
}

pub(crate) struct FakeHost {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub sysfs: Sysfs,
    pub dev_vfio: PathBuf,
    kernel: Arc<Mutex<Kernel>>,
}

impl FakeHost {
    /// QEMU's q35 ICH9 functions in IOMMU group 4, plus a PCI serial card
    /// in the same slot that the built-in 8250 driver holds (what the
    /// end-to-end tests add with `-device pci-serial,addr=1f.4`).
    pub fn ich9() -> Self {
        let host = FakeHost::new();
        host.driver("serial");
        host.device("0000:00:1f.0", 0x8086, 0x2918, 0x060100, None, Some(4));
        host.device("0000:00:1f.2", 0x8086, 0x2922, 0x010601, None, Some(4));
        host.device(
            "0000:00:1f.4",
            0x1b36,
            0x0002,
            0x070002,
            Some("serial"),
            Some(4),
        );
        host
    }

    /// A tree with the vfio-pci driver registered and no devices.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys");
        let dev_vfio = dir.path().join("dev/vfio");
        for d in ["bus/pci/devices", "bus/pci/drivers", "kernel/iommu_groups"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::create_dir_all(&dev_vfio).unwrap();
        std::fs::write(root.join("bus/pci/drivers_probe"), "").unwrap();
        let kernel = Arc::new(Mutex::new(Kernel::default()));
        let hook: KernelHook = {
            let (root, dev_vfio, kernel) = (root.clone(), dev_vfio.clone(), kernel.clone());
            Arc::new(move |path: &Path, value: &str| {
                react(&root, &dev_vfio, &mut kernel.lock().unwrap(), path, value)
            })
        };
        let host = FakeHost {
            sysfs: Sysfs::with_kernel(&root, hook),
            root,
            dev_vfio,
            kernel,
            _dir: dir,
        };
        host.driver("vfio-pci");
        host
    }

    pub fn driver(&self, name: &str) {
        let d = self.root.join("bus/pci/drivers").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("unbind"), "").unwrap();
        std::fs::write(d.join("bind"), "").unwrap();
    }

    /// Adds a PCI function; `driver` (registered with [`Self::driver`]) is
    /// bound now and taken back on a probe without an override.
    pub fn device(
        &self,
        bdf: &str,
        vendor: u16,
        device: u16,
        class: u32,
        driver: Option<&str>,
        group: Option<u32>,
    ) {
        let d = self.root.join("bus/pci/devices").join(bdf);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vendor"), format!("{vendor:#06x}\n")).unwrap();
        std::fs::write(d.join("device"), format!("{device:#06x}\n")).unwrap();
        std::fs::write(d.join("class"), format!("{class:#08x}\n")).unwrap();
        std::fs::write(d.join("driver_override"), "(null)\n").unwrap();
        if let Some(drv) = driver {
            symlink(format!("../../drivers/{drv}"), d.join("driver")).unwrap();
            let mut k = self.kernel.lock().unwrap();
            k.native.insert(bdf.to_string(), drv.to_string());
        }
        if let Some(g) = group {
            symlink(
                format!("../../../../kernel/iommu_groups/{g}"),
                d.join("iommu_group"),
            )
            .unwrap();
            let members = self.root.join(format!("kernel/iommu_groups/{g}/devices"));
            std::fs::create_dir_all(&members).unwrap();
            symlink(
                format!("../../../../bus/pci/devices/{bdf}"),
                members.join(bdf),
            )
            .unwrap();
        }
    }

    /// Every write so far as (path under the sysfs root, value).
    pub fn writes(&self) -> Vec<(String, String)> {
        self.kernel.lock().unwrap().writes.clone()
    }

    pub fn clear_writes(&self) {
        self.kernel.lock().unwrap().writes.clear();
    }

    pub fn refuse_vfio(&self, bdf: &str) {
        self.kernel
            .lock()
            .unwrap()
            .refuse_vfio
            .push(bdf.to_string());
    }

    /// Gives the fake kernel VFIO device cdevs and /dev/iommu (what 6.6+
    /// with CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV has).
    pub fn with_cdev(&self) {
        self.kernel.lock().unwrap().vfio_dev = VfioDev::Cdev;
        std::fs::create_dir_all(self.dev_vfio.join("devices")).unwrap();
        std::fs::write(self.dev_dir().join("iommu"), "").unwrap();
    }

    /// Makes the fake kernel a 6.1 one: `vfio-dev/vfioN` entries without
    /// a device number, no cdevs, no /dev/iommu.
    pub fn with_vfio_dev_entries(&self) {
        self.kernel.lock().unwrap().vfio_dev = VfioDev::Entry;
    }

    /// The fake /dev.
    pub fn dev_dir(&self) -> PathBuf {
        self.dev_vfio.parent().unwrap().to_path_buf()
    }

    pub fn no_nodes(&self) {
        self.kernel.lock().unwrap().no_nodes = true;
    }

    pub fn driver_of(&self, bdf: &str) -> Option<String> {
        self.sysfs.driver(bdf.parse().unwrap()).unwrap()
    }

    pub fn override_of(&self, bdf: &str) -> Option<String> {
        self.sysfs.driver_override(bdf.parse().unwrap()).unwrap()
    }
}

fn react(root: &Path, dev_vfio: &Path, k: &mut Kernel, path: &Path, value: &str) {
    let rel = path
        .strip_prefix(root)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    k.writes.push((rel.clone(), value.to_string()));
    let devices = root.join("bus/pci/devices");
    if rel == "bus/pci/drivers_probe" {
        let bdf = value.trim();
        let dev = devices.join(bdf);
        if dev.join("driver").symlink_metadata().is_ok() {
            return;
        }
        let over = std::fs::read_to_string(dev.join("driver_override")).unwrap();
        let over = over.trim();
        let target = if over != "(null)" {
            Some(over.to_string())
        } else {
            k.native.get(bdf).cloned()
        };
        let Some(target) = target else { return };
        if !root.join("bus/pci/drivers").join(&target).is_dir()
            || (target == "vfio-pci" && k.refuse_vfio.iter().any(|r| r == bdf))
        {
            return;
        }
        symlink(format!("../../drivers/{target}"), dev.join("driver")).unwrap();
        if target == "vfio-pci" && !k.no_nodes {
            if let Ok(g) = std::fs::read_link(dev.join("iommu_group")) {
                std::fs::write(dev_vfio.join(g.file_name().unwrap()), "").unwrap();
            }
        }
        if target == "vfio-pci" && k.vfio_dev != VfioDev::None {
            let name = format!("vfio{}", k.next_cdev);
            k.next_cdev += 1;
            let entry = dev.join("vfio-dev").join(&name);
            std::fs::create_dir_all(&entry).unwrap();
            if k.vfio_dev == VfioDev::Cdev {
                std::fs::write(entry.join("dev"), format!("511:{}\n", k.next_cdev - 1)).unwrap();
                if !k.no_nodes {
                    std::fs::write(dev_vfio.join("devices").join(&name), "").unwrap();
                }
            }
        }
    } else if let Some(drv) = rel
        .strip_prefix("bus/pci/drivers/")
        .and_then(|r| r.strip_suffix("/unbind"))
    {
        let dev = devices.join(value.trim());
        let link = dev.join("driver");
        if std::fs::read_link(&link).is_ok_and(|t| t.ends_with(drv)) {
            std::fs::remove_file(link).unwrap();
            if drv == "vfio-pci" {
                let _ = std::fs::remove_dir_all(dev.join("vfio-dev"));
            }
        }
    } else if rel.ends_with("/driver_override") && value.trim().is_empty() {
        // The kernel clears the override on an empty write and shows "(null)".
        std::fs::write(path, "(null)\n").unwrap();
    }
}
