//! Finding the device a config's `pci.device` selector (with its `index`)
//! means among the host's PCI functions.

use super::sysfs::PciDevice;
use kiln_schema::config::PciSelector;

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("No PCI device matches `pci.device = \"{selector}\"`; the devices present are: {present}. Fix the selector in the VM config")]
    NotFound {
        selector: PciSelector,
        /// `vendor:device@bdf, ...`
        present: String,
    },
    #[error("`pci.index = {index}` is out of range: {count} device(s) match \"{selector}\" ({matches}); use an index below {count}")]
    IndexOutOfRange {
        selector: PciSelector,
        index: usize,
        count: usize,
        /// Their addresses in bus order.
        matches: String,
    },
}

/// The device `selector` picks from `devices` (in bus order, as
/// [`super::Sysfs::devices`] returns them). For a vendor:device pair,
/// `index` chooses among the matches in bus order; for an address it is
/// ignored.
pub fn select<'a>(
    devices: &'a [PciDevice],
    selector: &PciSelector,
    index: usize,
) -> Result<&'a PciDevice, SelectError> {
    let matches: Vec<&PciDevice> = devices
        .iter()
        .filter(|d| match *selector {
            PciSelector::Address(bdf) => d.bdf == bdf,
            PciSelector::Id { vendor, device } => d.vendor == vendor && d.device == device,
        })
        .collect();
    if matches.is_empty() {
        let present = if devices.is_empty() {
            "none".to_string()
        } else {
            join(devices.iter().map(PciDevice::to_string))
        };
        return Err(SelectError::NotFound {
            selector: *selector,
            present,
        });
    }
    let index = match selector {
        PciSelector::Address(_) => 0,
        PciSelector::Id { .. } => index,
    };
    matches
        .get(index)
        .copied()
        .ok_or_else(|| SelectError::IndexOutOfRange {
            selector: *selector,
            index,
            count: matches.len(),
            matches: join(matches.iter().map(|d| d.bdf.to_string())),
        })
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::pci::fake::FakeHost;

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.device("0000:00:05.0", 0x1234, 0x11e8, 0x00ff00, None, Some(5));
        host.device("0000:00:00.0", 0x8086, 0x29c0, 0x060000, None, Some(0));
        host.device("0000:00:03.0", 0x1234, 0x11e8, 0x00ff00, None, Some(3));
        host
    }

    fn sel(s: &str) -> PciSelector {
        s.parse().unwrap()
    }

    #[test]
    fn by_address() {
        let host = host();
        let devs = host.sysfs.devices().unwrap();
        let d = select(&devs, &sel("00:05.0"), 0).unwrap();
        assert_eq!(d.bdf.to_string(), "0000:00:05.0");
        assert_eq!(d.iommu_group, Some(5));
        // An index means nothing with an address.
        assert_eq!(select(&devs, &sel("00:05.0"), 3).unwrap().bdf, d.bdf);
    }

    #[test]
    fn by_id_and_index_in_bus_order() {
        let host = host();
        let devs = host.sysfs.devices().unwrap();
        let first = select(&devs, &sel("1234:11e8"), 0).unwrap();
        let second = select(&devs, &sel("1234:11e8"), 1).unwrap();
        assert_eq!(first.bdf.to_string(), "0000:00:03.0");
        assert_eq!(second.bdf.to_string(), "0000:00:05.0");
    }

    #[test]
    fn index_out_of_range_says_how_many_and_where() {
        let host = host();
        let devs = host.sysfs.devices().unwrap();
        let e = select(&devs, &sel("1234:11e8"), 2).unwrap_err().to_string();
        assert_eq!(
            e,
            "`pci.index = 2` is out of range: 2 device(s) match \"1234:11e8\" \
             (0000:00:03.0, 0000:00:05.0); use an index below 2"
        );
    }

    #[test]
    fn not_found_lists_the_devices_present() {
        let host = host();
        let devs = host.sysfs.devices().unwrap();
        for s in ["1234:11e9", "00:04.0"] {
            let e = select(&devs, &sel(s), 0).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "No PCI device matches `pci.device = \"{}\"`",
                    sel(s)
                )),
                "{e}"
            );
            assert!(
                e.contains(
                    "the devices present are: 8086:29c0@0000:00:00.0, \
                     1234:11e8@0000:00:03.0, 1234:11e8@0000:00:05.0"
                ),
                "{e}"
            );
        }
        let e = select(&[], &sel("1234:11e8"), 0).unwrap_err().to_string();
        assert!(e.contains("present are: none"), "{e}");
    }
}
