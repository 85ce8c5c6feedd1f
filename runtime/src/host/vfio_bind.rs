//! Moving a PCI function to vfio-pci and giving it back to its driver.
//!
//! Binding uses `driver_override`, which names the one driver the device
//! may bind to, rather than vfio-pci's `new_id` (that would claim every
//! device with the same ids): override, unbind from the current driver,
//! reprobe. Giving back clears the override and reprobes, so the kernel
//! picks the original driver again.
//!
//! [`Bound`] owns the bindings it made: [`Bound::restore`] undoes them and
//! reports what failed, and dropping it undoes them as a fallback.

use crate::host::pci::{Sysfs, SysfsError};
use kiln_schema::config::Bdf;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const VFIO_PCI: &str = "vfio-pci";

/// Where the kernel creates a group's node for VFIO users.
pub const DEV_VFIO: &str = "/dev/vfio";

/// How long a (re)probe and the group node it creates may take; both are
/// normally done when the `drivers_probe` write returns.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "The vfio-pci driver is not loaded ({} is missing); add vfio-pci to `modules.load` \
         of the image",
        path.display()
    )]
    NoVfioPci { path: PathBuf },
    #[error(
        "{bdf} did not bind to vfio-pci (its driver is now {}); the kernel log on the \
         console says why",
        driver.as_deref().unwrap_or("none")
    )]
    NotBound { bdf: Bdf, driver: Option<String> },
    #[error(
        "{} did not appear within {} ms of binding {bdf} to vfio-pci; is devtmpfs mounted on /dev?",
        node.display(),
        waited.as_millis()
    )]
    NoNode {
        bdf: Bdf,
        node: PathBuf,
        waited: Duration,
    },
    #[error(
        "{bdf} did not go back to its driver {driver} (it has {}); the kernel log on the \
         console says why",
        now.as_deref().unwrap_or("none")
    )]
    NotReturned {
        bdf: Bdf,
        driver: String,
        now: Option<String>,
    },
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
}

/// What a device had before kiln bound it to vfio-pci.
#[derive(Debug)]
struct Record {
    bdf: Bdf,
    driver: Option<String>,
    driver_override: Option<String>,
}

/// The devices kiln moved to vfio-pci, with what each had before.
#[derive(Debug)]
pub struct Bound {
    sysfs: Sysfs,
    dev_vfio: PathBuf,
    settle: Duration,
    /// In binding order; given back in reverse.
    records: Vec<Record>,
}

impl Bound {
    /// Nothing bound yet. `dev_vfio` is where group nodes appear ([`DEV_VFIO`] on a host).
    pub fn new(sysfs: Sysfs, dev_vfio: impl Into<PathBuf>) -> Self {
        Bound {
            sysfs,
            dev_vfio: dev_vfio.into(),
            settle: SETTLE,
            records: Vec::new(),
        }
    }

    /// The device directory the group nodes are in (`/dev` on a host),
    /// where `/dev/iommu` is looked for.
    pub fn dev_root(&self) -> &Path {
        self.dev_vfio.parent().unwrap_or(&self.dev_vfio)
    }

    #[cfg(test)]
    pub(crate) fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The devices this value will give back, in binding order.
    pub fn devices(&self) -> Vec<Bdf> {
        self.records.iter().map(|r| r.bdf).collect()
    }

    /// Moves `bdf` to vfio-pci. A device already on vfio-pci is left as it
    /// is and not recorded: whoever bound it gives it back.
    pub fn bind(&mut self, bdf: Bdf) -> Result<(), BindError> {
        let vfio = self.sysfs.driver_dir(VFIO_PCI);
        if !vfio.is_dir() {
            return Err(BindError::NoVfioPci { path: vfio });
        }
        let driver = self.sysfs.driver(bdf)?;
        if driver.as_deref() == Some(VFIO_PCI) {
            return Ok(());
        }
        let dev = self.sysfs.device_dir(bdf);
        // Recorded before the first write, so a failure halfway is undone too.
        self.records.push(Record {
            bdf,
            driver: driver.clone(),
            driver_override: self.sysfs.driver_override(bdf)?,
        });
        let name = bdf.to_string();
        self.sysfs.write(&dev.join("driver_override"), VFIO_PCI)?;
        if let Some(d) = &driver {
            self.sysfs
                .write(&self.sysfs.driver_dir(d).join("unbind"), &name)?;
        }
        self.sysfs.write(&self.sysfs.drivers_probe(), &name)?;
        let mut now = None;
        let bound = self.settle(|| {
            now = self.sysfs.driver(bdf)?;
            Ok(now.as_deref() == Some(VFIO_PCI))
        })?;
        if !bound {
            return Err(BindError::NotBound { bdf, driver: now });
        }
        Ok(())
    }

    /// Waits for the node of `group` (which `bdf` is in) and returns its path.
    pub fn wait_for_node(&self, bdf: Bdf, group: u32) -> Result<PathBuf, BindError> {
        let node = self.dev_vfio.join(group.to_string());
        if self.settle(|| Ok(node.exists()))? {
            Ok(node)
        } else {
            Err(BindError::NoNode {
                bdf,
                node,
                waited: self.settle,
            })
        }
    }

    /// Waits for the VFIO device cdev of `bdf` (`<dev_vfio>/devices/vfioN`)
    /// and returns its path, when the kernel made one (a `vfio-dev` entry
    /// in sysfs, CONFIG_VFIO_DEVICE_CDEV); `None` on kernels without cdevs.
    pub fn wait_for_cdev(&self, bdf: Bdf) -> Result<Option<PathBuf>, BindError> {
        let Some(name) = self.sysfs.vfio_cdev(bdf)? else {
            return Ok(None);
        };
        let node = self.dev_vfio.join("devices").join(name);
        if self.settle(|| Ok(node.exists()))? {
            Ok(Some(node))
        } else {
            Err(BindError::NoNode {
                bdf,
                node,
                waited: self.settle,
            })
        }
    }

    /// Gives every device back to its original driver, in reverse order,
    /// and reports each one that did not go back. Call it once nothing uses
    /// the devices any more: vfio-pci waits for open devices to be closed.
    pub fn restore(mut self) -> Result<(), Vec<BindError>> {
        let failed = self.undo_to(0);
        // Tried once; the drop that follows has nothing left to do.
        self.records.clear();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    /// How many bindings there are, to undo later ones with [`Self::undo_to`].
    pub(crate) fn mark(&self) -> usize {
        self.records.len()
    }

    /// Gives back the devices bound after `mark`, newest first. Those that
    /// fail stay recorded, so a later [`Self::restore`] tries them again.
    pub(crate) fn undo_to(&mut self, mark: usize) -> Vec<BindError> {
        let mut failed = Vec::new();
        let mut kept = Vec::new();
        while self.records.len() > mark {
            let Some(record) = self.records.pop() else {
                break;
            };
            if let Err(e) = self.give_back(&record) {
                failed.push(e);
                kept.push(record);
            }
        }
        kept.reverse();
        self.records.extend(kept);
        failed
    }

    fn give_back(&self, r: &Record) -> Result<(), BindError> {
        let name = r.bdf.to_string();
        if self.sysfs.driver(r.bdf)?.as_deref() == Some(VFIO_PCI) {
            self.sysfs
                .write(&self.sysfs.driver_dir(VFIO_PCI).join("unbind"), &name)?;
        }
        // A newline alone clears the override.
        let over = r.driver_override.as_deref().unwrap_or("\n");
        self.sysfs
            .write(&self.sysfs.device_dir(r.bdf).join("driver_override"), over)?;
        let Some(driver) = &r.driver else {
            // It had no driver: leave it without one rather than let a
            // reprobe hand it to a driver it never had.
            return Ok(());
        };
        if self.sysfs.driver(r.bdf)?.is_none() {
            self.sysfs.write(&self.sysfs.drivers_probe(), &name)?;
        }
        let mut now = None;
        let back = self.settle(|| {
            now = self.sysfs.driver(r.bdf)?;
            Ok(now.as_ref() == Some(driver))
        })?;
        if back {
            Ok(())
        } else {
            Err(BindError::NotReturned {
                bdf: r.bdf,
                driver: driver.clone(),
                now,
            })
        }
    }

    /// Polls `done` until it holds or the settle time is over.
    fn settle(
        &self,
        mut done: impl FnMut() -> Result<bool, SysfsError>,
    ) -> Result<bool, BindError> {
        let deadline = Instant::now() + self.settle;
        loop {
            if done()? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Bound {
    /// The fallback for a `Bound` that was never restored: give the devices
    /// back anyway. Failures cannot be reported from here; call
    /// [`Bound::restore`] to learn of them.
    fn drop(&mut self) {
        let _ = self.undo_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::pci::fake::FakeHost;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    fn w(path: &str, value: &str) -> (String, String) {
        (path.to_string(), value.to_string())
    }

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.driver("ahci");
        host.device("0000:00:03.0", 0x1234, 0x11e8, 0x00ff00, None, Some(3));
        host.device(
            "0000:00:1f.2",
            0x8086,
            0x2922,
            0x010601,
            Some("ahci"),
            Some(4),
        );
        host
    }

    #[test]
    fn binds_a_driven_device_in_order_and_restores_it() {
        let host = host();
        let mut bound = Bound::new(host.sysfs.clone(), &host.dev_vfio);
        bound.bind(bdf("00:1f.2")).unwrap();
        assert_eq!(
            host.writes(),
            [
                w("bus/pci/devices/0000:00:1f.2/driver_override", "vfio-pci"),
                w("bus/pci/drivers/ahci/unbind", "0000:00:1f.2"),
                w("bus/pci/drivers_probe", "0000:00:1f.2"),
            ]
        );
        assert_eq!(host.driver_of("0000:00:1f.2").as_deref(), Some("vfio-pci"));
        assert_eq!(
            bound.wait_for_node(bdf("00:1f.2"), 4).unwrap(),
            host.dev_vfio.join("4")
        );
        assert_eq!(bound.devices(), [bdf("00:1f.2")]);

        host.clear_writes();
        bound.restore().unwrap();
        assert_eq!(
            host.writes(),
            [
                w("bus/pci/drivers/vfio-pci/unbind", "0000:00:1f.2"),
                w("bus/pci/devices/0000:00:1f.2/driver_override", "\n"),
                w("bus/pci/drivers_probe", "0000:00:1f.2"),
            ]
        );
        assert_eq!(host.driver_of("0000:00:1f.2").as_deref(), Some("ahci"));
        assert_eq!(host.override_of("0000:00:1f.2"), None);
    }

    #[test]
    fn an_unbound_device_needs_no_unbind_and_stays_unbound_after() {
        let host = host();
        let mut bound = Bound::new(host.sysfs.clone(), &host.dev_vfio);
        bound.bind(bdf("00:03.0")).unwrap();
        assert_eq!(
            host.writes(),
            [
                w("bus/pci/devices/0000:00:03.0/driver_override", "vfio-pci"),
                w("bus/pci/drivers_probe", "0000:00:03.0"),
            ]
        );
        host.clear_writes();
        bound.restore().unwrap();
        assert_eq!(
            host.writes(),
            [
                w("bus/pci/drivers/vfio-pci/unbind", "0000:00:03.0"),
                w("bus/pci/devices/0000:00:03.0/driver_override", "\n"),
            ]
        );
        assert_eq!(host.driver_of("0000:00:03.0"), None);
    }

    #[test]
    fn a_device_already_on_vfio_pci_is_not_ours_to_give_back() {
        let host = host();
        host.device(
            "0000:00:04.0",
            0x1234,
            0x11e8,
            0x00ff00,
            Some("vfio-pci"),
            Some(5),
        );
        let mut bound = Bound::new(host.sysfs.clone(), &host.dev_vfio);
        bound.bind(bdf("00:04.0")).unwrap();
        assert!(bound.devices().is_empty());
        bound.restore().unwrap();
        assert!(host.writes().is_empty());
        assert_eq!(host.driver_of("0000:00:04.0").as_deref(), Some("vfio-pci"));
    }

    #[test]
    fn dropping_gives_the_devices_back() {
        let host = host();
        {
            let mut bound = Bound::new(host.sysfs.clone(), &host.dev_vfio);
            bound.bind(bdf("00:1f.2")).unwrap();
            assert_eq!(host.driver_of("0000:00:1f.2").as_deref(), Some("vfio-pci"));
        }
        assert_eq!(host.driver_of("0000:00:1f.2").as_deref(), Some("ahci"));
    }

    #[test]
    fn without_vfio_pci_nothing_is_touched() {
        let host = host();
        std::fs::remove_dir_all(host.sysfs.driver_dir(VFIO_PCI)).unwrap();
        let mut bound = Bound::new(host.sysfs.clone(), &host.dev_vfio);
        let e = bound.bind(bdf("00:1f.2")).unwrap_err().to_string();
        assert!(e.starts_with("The vfio-pci driver is not loaded"), "{e}");
        assert!(e.contains("add vfio-pci to `modules.load`"), "{e}");
        assert!(host.writes().is_empty());
        assert_eq!(host.driver_of("0000:00:1f.2").as_deref(), Some("ahci"));
    }

    #[test]
    fn a_refused_probe_is_an_error_and_undoing_it_restores_the_driver() {
        let host = host();
        host.refuse_vfio("0000:00:1f.2");
        let mut bound =
            Bound::new(host.sysfs.clone(), &host.dev_vfio).with_settle(Duration::from_millis(20));
        let e = bound.bind(bdf("00:1f.2")).unwrap_err();
        assert!(
            matches!(&e, BindError::NotBound { driver: None, .. }),
            "{e}"
        );
        assert_eq!(host.driver_of("0000:00:1f.2"), None);
        assert!(bound.undo_to(0).is_empty());
        assert_eq!(host.driver_of("0000:00:1f.2").as_deref(), Some("ahci"));
        assert_eq!(host.override_of("0000:00:1f.2"), None);
    }

    #[test]
    fn a_missing_group_node_is_an_error_naming_it() {
        let host = host();
        host.no_nodes();
        let mut bound =
            Bound::new(host.sysfs.clone(), &host.dev_vfio).with_settle(Duration::from_millis(20));
        bound.bind(bdf("00:03.0")).unwrap();
        let e = bound
            .wait_for_node(bdf("00:03.0"), 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dev/vfio/3 did not appear within 20 ms"), "{e}");
    }

    #[test]
    fn the_cdev_node_is_awaited_when_the_kernel_makes_one() {
        let host = host();
        let mut bound =
            Bound::new(host.sysfs.clone(), &host.dev_vfio).with_settle(Duration::from_millis(20));
        bound.bind(bdf("00:03.0")).unwrap();
        // A kernel without cdevs: nothing to wait for.
        assert_eq!(bound.wait_for_cdev(bdf("00:03.0")).unwrap(), None);
        bound.restore().unwrap();
        // 6.1: a vfio-dev entry, but no cdev behind it.
        host.with_vfio_dev_entries();
        let mut bound =
            Bound::new(host.sysfs.clone(), &host.dev_vfio).with_settle(Duration::from_millis(20));
        bound.bind(bdf("00:03.0")).unwrap();
        assert!(host
            .sysfs
            .device_dir(bdf("00:03.0"))
            .join("vfio-dev/vfio0")
            .is_dir());
        assert_eq!(bound.wait_for_cdev(bdf("00:03.0")).unwrap(), None);
        bound.restore().unwrap();

        host.with_cdev();
        let mut bound =
            Bound::new(host.sysfs.clone(), &host.dev_vfio).with_settle(Duration::from_millis(20));
        bound.bind(bdf("00:03.0")).unwrap();
        assert_eq!(
            bound.wait_for_cdev(bdf("00:03.0")).unwrap(),
            Some(host.dev_vfio.join("devices/vfio1"))
        );
        std::fs::remove_file(host.dev_vfio.join("devices/vfio1")).unwrap();
        let e = bound.wait_for_cdev(bdf("00:03.0")).unwrap_err().to_string();
        assert!(
            e.contains("dev/vfio/devices/vfio1 did not appear within 20 ms"),
            "{e}"
        );
        // Giving the device back takes its cdev away.
        bound.restore().unwrap();
        assert_eq!(host.sysfs.vfio_cdev(bdf("00:03.0")).unwrap(), None);
    }

    #[test]
    fn a_failed_give_back_is_reported_and_kept_for_a_retry() {
        let host = host();
        let mut bound =
            Bound::new(host.sysfs.clone(), &host.dev_vfio).with_settle(Duration::from_millis(20));
        bound.bind(bdf("00:1f.2")).unwrap();
        // The original driver went away meanwhile.
        std::fs::remove_dir_all(host.sysfs.driver_dir("ahci")).unwrap();
        let failed = bound.undo_to(0);
        assert_eq!(failed.len(), 1);
        let e = failed[0].to_string();
        assert!(
            e.starts_with("0000:00:1f.2 did not go back to its driver ahci (it has none)"),
            "{e}"
        );
        assert_eq!(bound.devices(), [bdf("00:1f.2")]);
        host.driver("ahci");
        bound.restore().unwrap();
        assert_eq!(host.driver_of("0000:00:1f.2").as_deref(), Some("ahci"));
    }
}
