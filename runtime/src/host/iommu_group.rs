//! IOMMU groups: whether an IOMMU is active, a device's group, and whether a
//! group can be handed to a VM.
//!
//! VFIO gives a group to one user whole: the kernel refuses to open it while
//! any endpoint in it is bound to a driver that does DMA through the kernel's
//! DMA API. Endpoints must be on vfio-pci, on pci-stub (which does no DMA),
//! or on no driver; bridges may keep their driver.

use crate::host::pci::{PciDevice, Sysfs, SysfsError};
use kiln_schema::config::Bdf;
use std::collections::BTreeSet;

/// Drivers an endpoint may keep in an assigned group.
const HARMLESS_DRIVERS: [&str; 2] = [super::vfio_bind::VFIO_PCI, "pci-stub"];

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(
        "No IOMMU is active, so {bdf} cannot be assigned with VFIO. Enable VT-d (Intel) or \
         AMD-Vi/IOMMU (AMD) in the firmware setup, and on Intel boot with intel_iommu=on \
         (add it to the image's `kernel.cmdline`)"
    )]
    NoIommu { bdf: Bdf },
    #[error(
        "{bdf} is in no IOMMU group although an IOMMU is active: the IOMMU does not \
         isolate it, so it cannot be assigned; assign another device"
    )]
    NotCovered { bdf: Bdf },
    #[error(
        "IOMMU group {group} holds {name}, which is not a PCI function; kiln assigns only \
         groups made of PCI functions"
    )]
    ForeignMember { group: u32, name: String },
    #[error(
        "IOMMU group {group} of {bdf} cannot be assigned: VFIO hands a group to one VM whole, \
         and {in_use} still bound to a host driver. Its members: {members}. \
         Set `bind_group = true` on this device to bind them to vfio-pci as well, or assign \
         the whole group"
    )]
    NotViable {
        group: u32,
        bdf: Bdf,
        /// `0000:00:1f.4 (serial), ...` with "is"/"are".
        in_use: String,
        /// Every member as `bdf vendor:device driver=<name|none>`.
        members: String,
    },
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
}

/// The IOMMU group of `dev`, or why it has none.
pub fn group_of(sysfs: &Sysfs, dev: &PciDevice) -> Result<u32, GroupError> {
    match dev.iommu_group {
        Some(g) => Ok(g),
        None if sysfs.iommu_active() => Err(GroupError::NotCovered { bdf: dev.bdf }),
        None => Err(GroupError::NoIommu { bdf: dev.bdf }),
    }
}

/// The PCI functions in `group`, in bus order.
pub fn members(sysfs: &Sysfs, group: u32) -> Result<Vec<PciDevice>, GroupError> {
    sysfs
        .iommu_group_members(group)?
        .into_iter()
        .map(|name| match name.parse::<Bdf>() {
            Ok(bdf) => Ok(sysfs.device(bdf)?),
            Err(_) => Err(GroupError::ForeignMember { group, name }),
        })
        .collect()
}

/// The members that keep the group from being assigned: endpoints other
/// than `assigned` that a DMA-capable driver holds.
pub fn in_use<'a>(members: &'a [PciDevice], assigned: &BTreeSet<Bdf>) -> Vec<&'a PciDevice> {
    members
        .iter()
        .filter(|m| {
            !assigned.contains(&m.bdf)
                && !m.is_bridge()
                && m.driver
                    .as_deref()
                    .is_some_and(|d| !HARMLESS_DRIVERS.contains(&d))
        })
        .collect()
}

/// The error for a group with members `in_use`, requested through `bdf`.
pub fn not_viable(
    group: u32,
    bdf: Bdf,
    members: &[PciDevice],
    in_use: &[&PciDevice],
) -> GroupError {
    let list: Vec<String> = in_use
        .iter()
        .map(|m| format!("{} ({})", m.bdf, m.driver.as_deref().unwrap_or("none")))
        .collect();
    let verb = if list.len() == 1 { "is" } else { "are" };
    GroupError::NotViable {
        group,
        bdf,
        in_use: format!("{} {verb}", list.join(", ")),
        members: members
            .iter()
            .map(PciDevice::describe)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::pci::fake::FakeHost;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    #[test]
    fn no_iommu_says_how_to_enable_it() {
        let host = FakeHost::new();
        host.device("0000:00:03.0", 0x1234, 0x11e8, 0x00ff00, None, None);
        let dev = host.sysfs.device(bdf("00:03.0")).unwrap();
        let e = group_of(&host.sysfs, &dev).unwrap_err().to_string();
        assert!(
            e.starts_with("No IOMMU is active, so 0000:00:03.0 cannot be assigned"),
            "{e}"
        );
        assert!(
            e.contains("Enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup"),
            "{e}"
        );
        assert!(
            e.contains("intel_iommu=on") && e.contains("`kernel.cmdline`"),
            "{e}"
        );
    }

    #[test]
    fn device_outside_every_group_while_an_iommu_is_active() {
        let host = FakeHost::new();
        host.device("0000:00:02.0", 0x8086, 0x10d3, 0x020000, None, Some(2));
        host.device("0000:00:03.0", 0x1234, 0x11e8, 0x00ff00, None, None);
        let dev = host.sysfs.device(bdf("00:03.0")).unwrap();
        let e = group_of(&host.sysfs, &dev).unwrap_err();
        assert!(matches!(e, GroupError::NotCovered { .. }), "{e}");
        let dev = host.sysfs.device(bdf("00:02.0")).unwrap();
        assert_eq!(group_of(&host.sysfs, &dev).unwrap(), 2);
    }

    #[test]
    fn group_with_a_bound_endpoint_is_refused_naming_group_and_members() {
        let host = FakeHost::ich9();
        let members = members(&host.sysfs, 4).unwrap();
        let ours = BTreeSet::from([bdf("00:1f.2")]);
        let busy = in_use(&members, &ours);
        assert_eq!(busy.len(), 1);
        assert_eq!(busy[0].bdf, bdf("00:1f.4"));
        let e = not_viable(4, bdf("00:1f.2"), &members, &busy).to_string();
        assert_eq!(
            e,
            "IOMMU group 4 of 0000:00:1f.2 cannot be assigned: VFIO hands a group to one VM \
             whole, and 0000:00:1f.4 (serial) is still bound to a host driver. \
             Its members: 0000:00:1f.0 8086:2918 driver=none, 0000:00:1f.2 8086:2922 \
             driver=none, 0000:00:1f.4 1b36:0002 driver=serial. Set `bind_group = true` on \
             this device to bind them to vfio-pci as well, or assign the whole group"
        );
    }

    #[test]
    fn bridges_and_harmless_drivers_do_not_block() {
        let host = FakeHost::new();
        host.driver("pcieport");
        host.driver("pci-stub");
        host.device(
            "0000:00:1c.0",
            0x8086,
            0x2948,
            0x060400,
            Some("pcieport"),
            Some(7),
        );
        host.device("0000:01:00.0", 0x1234, 0x11e8, 0x00ff00, None, Some(7));
        host.device(
            "0000:01:00.1",
            0x1234,
            0x11e8,
            0x00ff00,
            Some("pci-stub"),
            Some(7),
        );
        let members = members(&host.sysfs, 7).unwrap();
        assert_eq!(members.len(), 3);
        assert!(in_use(&members, &BTreeSet::from([bdf("01:00.0")])).is_empty());
    }

    #[test]
    fn assigning_the_bound_member_itself_clears_the_group() {
        let host = FakeHost::ich9();
        let members = members(&host.sysfs, 4).unwrap();
        let ours = BTreeSet::from([bdf("00:1f.2"), bdf("00:1f.4")]);
        assert!(in_use(&members, &ours).is_empty());
    }
}
