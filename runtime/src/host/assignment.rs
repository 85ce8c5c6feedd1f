//! Assigning each VM its PCI devices: resolve the selectors, check the
//! IOMMU groups, bind to vfio-pci, wait for the group nodes.
//!
//! Each VM is handled on its own: a VM whose devices cannot be bound gets
//! its error and nothing of it stays bound, while the other VMs still get
//! theirs. An IOMMU group belongs to one VM; the first VM (in config order)
//! that binds it owns it.

use super::iommu_group::{self, GroupError};
use super::vfio_bind::{BindError, Bound};
use crate::host::pci::{self, PciDevice, SelectError, Sysfs, SysfsError};
use crate::vfio::backend::{self, BackendError};
use kiln_schema::config::{Bdf, PciSelector, VfioBackend, VmConfig, VmName};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error("{bdf} ({selector}) is a PCI bridge; bridges cannot be assigned, assign the devices behind it")]
    Bridge { selector: PciSelector, bdf: Bdf },
    #[error("{bdf} is assigned twice, by pci[{first}] and pci[{second}]; assign each device once")]
    Twice {
        bdf: Bdf,
        first: usize,
        second: usize,
    },
    #[error(
        "{bdf} is in IOMMU group {group}, which VM \"{owner}\" already has; VM \"{vm}\" cannot \
         have it too, since a group goes to one VM whole. Assign the group's devices to one VM"
    )]
    GroupTaken {
        vm: VmName,
        owner: VmName,
        bdf: Bdf,
        group: u32,
    },
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// One of a VM's `pci` entries, resolved and bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedDevice {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub group: u32,
    /// The group's node, which the VMM opens on the legacy path.
    pub dev_vfio: PathBuf,
    /// The device's cdev (`/dev/vfio/devices/vfioN`), which the VMM opens
    /// on the iommufd path; `None` when the kernel has no VFIO cdevs.
    pub cdev: Option<PathBuf>,
}

/// The outcome of [`bind_all`].
#[derive(Debug)]
pub struct Binding {
    /// Every device bound for the VMs; restore it once they are all done.
    pub bound: Bound,
    /// Per VM, in the order given: its devices in `pci` order, or why they
    /// could not be bound (then none of its devices stay bound).
    pub vms: Vec<Result<Vec<AssignedDevice>, AssignError>>,
}

/// Binds every VM's PCI devices to vfio-pci. `sysfs` is the host's
/// ([`Sysfs::host`]) and `dev_vfio` where group nodes appear
/// ([`super::DEV_VFIO`]). VMs without devices get an empty list and touch
/// nothing.
pub fn bind_all(sysfs: &Sysfs, dev_vfio: &Path, vms: &[VmConfig]) -> Binding {
    bind_into(Bound::new(sysfs.clone(), dev_vfio), sysfs, vms)
}

fn bind_into(mut bound: Bound, sysfs: &Sysfs, vms: &[VmConfig]) -> Binding {
    let mut owners: BTreeMap<u32, VmName> = BTreeMap::new();
    let mut results = Vec::with_capacity(vms.len());
    for vm in vms {
        if vm.pci.is_empty() {
            results.push(Ok(Vec::new()));
            continue;
        }
        let mark = bound.mark();
        let result = assign(sysfs, &mut bound, &owners, vm);
        match &result {
            Ok(devices) => {
                for d in devices {
                    owners.insert(d.group, vm.name.clone());
                }
            }
            // Those that fail to go back stay recorded; the final restore
            // tries them again and reports them.
            Err(_) => {
                let _ = bound.undo_to(mark);
            }
        }
        results.push(result);
    }
    Binding {
        bound,
        vms: results,
    }
}

/// `vm` with each `pci.device` pinned to the address it resolved to, so
/// the VMM process gets concrete devices: the config init hands it.
pub fn pin_addresses(vm: &VmConfig, devices: &[AssignedDevice]) -> VmConfig {
    let mut vm = vm.clone();
    for (entry, dev) in vm.pci.iter_mut().zip(devices) {
        entry.device = PciSelector::Address(dev.bdf);
        entry.index = 0;
    }
    vm
}

fn assign(
    sysfs: &Sysfs,
    bound: &mut Bound,
    owners: &BTreeMap<u32, VmName>,
    vm: &VmConfig,
) -> Result<Vec<AssignedDevice>, AssignError> {
    let present = sysfs.devices()?;
    // Resolve and check every entry before binding anything.
    let mut chosen: Vec<(&PciDevice, u32)> = Vec::with_capacity(vm.pci.len());
    for (i, entry) in vm.pci.iter().enumerate() {
        let dev = pci::select(&present, &entry.device, entry.index)?;
        if dev.is_bridge() {
            return Err(AssignError::Bridge {
                selector: entry.device,
                bdf: dev.bdf,
            });
        }
        if let Some(first) = chosen.iter().position(|(d, _)| d.bdf == dev.bdf) {
            return Err(AssignError::Twice {
                bdf: dev.bdf,
                first,
                second: i,
            });
        }
        let group = iommu_group::group_of(sysfs, dev)?;
        if let Some(owner) = owners.get(&group) {
            return Err(AssignError::GroupTaken {
                vm: vm.name.clone(),
                owner: owner.clone(),
                bdf: dev.bdf,
                group,
            });
        }
        chosen.push((dev, group));
    }
    let ours: BTreeSet<Bdf> = chosen.iter().map(|(d, _)| d.bdf).collect();
    let mut to_bind = ours.clone();
    // Each group with the first of this VM's devices in it, for errors.
    let mut groups: BTreeMap<u32, Bdf> = BTreeMap::new();
    for (d, g) in &chosen {
        groups.entry(*g).or_insert(d.bdf);
    }
    for (&g, &first) in &groups {
        let members = iommu_group::members(sysfs, g)?;
        let in_use = iommu_group::in_use(&members, &ours);
        if in_use.is_empty() {
            continue;
        }
        let bind_group = vm
            .pci
            .iter()
            .zip(&chosen)
            .any(|(entry, (_, dg))| *dg == g && entry.bind_group);
        if !bind_group {
            return Err(iommu_group::not_viable(g, first, &members, &in_use).into());
        }
        to_bind.extend(in_use.iter().map(|m| m.bdf));
    }
    // A VM that insists on iommufd is refused here, before anything is
    // bound, when the host has none (its VMM would only fail later).
    let forced = vm.vfio.backend == VfioBackend::Iommufd;
    if forced {
        backend::choose(sysfs, bound.dev_root(), VfioBackend::Iommufd, &[])?;
    }
    // Bus order, so the same config binds the same way every boot.
    for &bdf in &to_bind {
        bound.bind(bdf)?;
    }
    let devices = chosen
        .iter()
        .map(|&(d, group)| {
            Ok(AssignedDevice {
                bdf: d.bdf,
                vendor: d.vendor,
                device: d.device,
                group,
                dev_vfio: bound.wait_for_node(d.bdf, group)?,
                cdev: bound.wait_for_cdev(d.bdf)?,
            })
        })
        .collect::<Result<Vec<_>, AssignError>>()?;
    if forced {
        // Every device needs its cdev too, which exists once it is bound.
        let bdfs: Vec<Bdf> = devices.iter().map(|d| d.bdf).collect();
        backend::choose(sysfs, bound.dev_root(), VfioBackend::Iommufd, &bdfs)?;
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::pci::fake::FakeHost;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    /// A VM with `pci` entries of (device, index, bind_group).
    fn vm(name: &str, pci: &[(&str, usize, bool)]) -> VmConfig {
        let mut src = format!("name = \"{name}\"\nmemory = \"64M\"\n[boot]\nkernel = \"k\"\n");
        for (device, index, bind_group) in pci {
            src += &format!(
                "[[pci]]\ndevice = \"{device}\"\nindex = {index}\nbind_group = {bind_group}\n"
            );
        }
        kiln_schema::config::parse(Path::new("t.toml"), &src).unwrap()
    }

    /// q35 as the emulated target has it: edu alone in group 3, the ICH9
    /// functions plus a PCI serial card (bound to the 8250 driver) in group 4,
    /// the host bridge alone in group 0.
    /// The ICH9 group with the q35 host bridge and an edu device beside it.
    fn q35() -> FakeHost {
        let host = FakeHost::ich9();
        host.device("0000:00:00.0", 0x8086, 0x29c0, 0x060000, None, Some(0));
        host.device("0000:00:03.0", 0x1234, 0x11e8, 0x00ff00, None, Some(3));
        host
    }

    fn reason(r: &Result<Vec<AssignedDevice>, AssignError>) -> String {
        match r {
            Ok(d) => panic!("expected an error, got {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn binds_edu_by_id_and_pins_its_address() {
        let host = q35();
        let vms = [vm("edu", &[("1234:11e8", 0, false)]), vm("plain", &[])];
        let Binding { bound, vms: result } = bind_all(&host.sysfs, &host.dev_vfio, &vms);
        let devices = result[0].as_ref().unwrap();
        assert_eq!(
            devices,
            &[AssignedDevice {
                bdf: bdf("00:03.0"),
                vendor: 0x1234,
                device: 0x11e8,
                group: 3,
                dev_vfio: host.dev_vfio.join("3"),
                cdev: None,
            }]
        );
        assert!(result[1].as_ref().unwrap().is_empty());
        assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("vfio-pci"));

        let pinned = pin_addresses(&vms[0], devices);
        assert_eq!(
            pinned.pci[0].device,
            PciSelector::Address(bdf("0000:00:03.0"))
        );
        let text = toml::to_string(&pinned).unwrap();
        assert!(text.contains("device = \"0000:00:03.0\""), "{text}");
        // What the VMM is asked for besides the device goes along with it.
        let mut with_rom = vms[0].clone();
        with_rom.pci[0].rom = true;
        let pinned = pin_addresses(&with_rom, devices);
        assert!(pinned.pci[0].rom);
        let reread = kiln_schema::config::parse::<VmConfig>(
            Path::new("t.toml"),
            &toml::to_string(&pinned).unwrap(),
        );
        assert!(reread.unwrap().pci[0].rom);

        bound.restore().unwrap();
        assert_eq!(host.driver_of("0000:00:03.0"), None);
        assert_eq!(host.override_of("0000:00:03.0"), None);
    }

    #[test]
    fn with_cdevs_each_device_gets_its_cdev_node() {
        let host = q35();
        host.with_cdev();
        let vms = [vm("edu", &[("1234:11e8", 0, false)])];
        let b = bind_all(&host.sysfs, &host.dev_vfio, &vms);
        let devices = b.vms[0].as_ref().unwrap();
        assert_eq!(devices[0].dev_vfio, host.dev_vfio.join("3"));
        assert_eq!(devices[0].cdev, Some(host.dev_vfio.join("devices/vfio0")));
        b.bound.restore().unwrap();
    }

    #[test]
    fn forced_iommufd_is_refused_before_binding_where_the_host_has_none() {
        let mut forced = vm("edu", &[("1234:11e8", 0, false)]);
        forced.vfio.backend = VfioBackend::Iommufd;
        // Debian's 6.1: no /dev/iommu. Refused, edu left alone.
        let host = q35();
        let b = bind_all(&host.sysfs, &host.dev_vfio, std::slice::from_ref(&forced));
        let e = reason(&b.vms[0]);
        assert!(e.contains("dev/iommu does not exist"), "{e}");
        assert_eq!(host.driver_of("0000:00:03.0"), None);
        assert!(b.bound.devices().is_empty());
        // A 6.6+ host: bound, with its cdev.
        let host = q35();
        host.with_cdev();
        let b = bind_all(&host.sysfs, &host.dev_vfio, &[forced]);
        let devices = b.vms[0].as_ref().unwrap();
        assert_eq!(devices[0].cdev, Some(host.dev_vfio.join("devices/vfio0")));
        b.bound.restore().unwrap();
    }

    #[test]
    fn a_group_in_use_is_refused_and_nothing_is_touched() {
        let host = q35();
        let b = bind_all(
            &host.sysfs,
            &host.dev_vfio,
            &[vm("sata", &[("00:1f.2", 0, false)])],
        );
        let e = reason(&b.vms[0]);
        assert!(
            e.starts_with("IOMMU group 4 of 0000:00:1f.2 cannot be assigned"),
            "{e}"
        );
        assert!(e.contains("0000:00:1f.4 1b36:0002 driver=serial"), "{e}");
        assert!(e.contains("`bind_group = true`"), "{e}");
        assert!(host.writes().is_empty());
        assert!(b.bound.devices().is_empty());
    }

    #[test]
    fn bind_group_binds_the_rest_of_the_group_and_restore_gives_it_back() {
        let host = q35();
        let b = bind_all(
            &host.sysfs,
            &host.dev_vfio,
            &[vm("sata", &[("00:1f.2", 0, true)])],
        );
        let devices = b.vms[0].as_ref().unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].group, 4);
        // The unbound ICH9 functions stay unbound: they keep nothing from the VM.
        assert_eq!(host.driver_of("0000:00:1f.0"), None);
        assert_eq!(host.driver_of("0000:00:1f.2").as_deref(), Some("vfio-pci"));
        assert_eq!(host.driver_of("0000:00:1f.4").as_deref(), Some("vfio-pci"));
        assert_eq!(b.bound.devices(), [bdf("00:1f.2"), bdf("00:1f.4")]);
        b.bound.restore().unwrap();
        assert_eq!(host.driver_of("0000:00:1f.2"), None);
        assert_eq!(host.driver_of("0000:00:1f.4").as_deref(), Some("serial"));
    }

    #[test]
    fn a_vm_failing_halfway_is_undone_and_its_sibling_still_binds() {
        let host = q35();
        host.refuse_vfio("0000:00:1f.4");
        let vms = [
            vm("half", &[("00:03.0", 0, false), ("00:1f.4", 0, false)]),
            vm("edu", &[("1234:11e8", 0, false)]),
        ];
        let bound = Bound::new(host.sysfs.clone(), &host.dev_vfio)
            .with_settle(std::time::Duration::from_millis(20));
        let b = bind_into(bound, &host.sysfs, &vms);
        let e = reason(&b.vms[0]);
        assert!(
            e.starts_with("0000:00:1f.4 did not bind to vfio-pci"),
            "{e}"
        );
        // Both went back: edu to no driver, the serial card to its driver.
        assert_eq!(host.override_of("0000:00:1f.4"), None);
        assert_eq!(host.driver_of("0000:00:1f.4").as_deref(), Some("serial"));
        // The second VM then got edu, and only that is left to restore.
        assert_eq!(b.vms[1].as_ref().unwrap()[0].bdf, bdf("00:03.0"));
        assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("vfio-pci"));
        assert_eq!(b.bound.devices(), [bdf("00:03.0")]);
    }

    #[test]
    fn siblings_of_a_refused_vm_still_bind() {
        let host = q35();
        let vms = [
            vm("sata", &[("00:1f.2", 0, false)]),
            vm("edu", &[("1234:11e8", 0, false)]),
            vm("ghost", &[("1234:11e8", 1, false)]),
        ];
        let b = bind_all(&host.sysfs, &host.dev_vfio, &vms);
        assert!(reason(&b.vms[0]).contains("IOMMU group 4"));
        assert_eq!(b.vms[1].as_ref().unwrap()[0].bdf, bdf("00:03.0"));
        let e = reason(&b.vms[2]);
        assert!(
            e.contains("1 device(s) match \"1234:11e8\" (0000:00:03.0)"),
            "{e}"
        );
        assert_eq!(b.bound.devices(), [bdf("00:03.0")]);
    }

    #[test]
    fn a_group_goes_to_one_vm_naming_both() {
        let host = q35();
        let vms = [
            vm("first", &[("00:1f.2", 0, true)]),
            vm("second", &[("00:1f.0", 0, true)]),
            vm("third", &[("00:1f.2", 0, false)]),
        ];
        let b = bind_all(&host.sysfs, &host.dev_vfio, &vms);
        assert!(b.vms[0].is_ok());
        let e = reason(&b.vms[1]);
        assert_eq!(
            e,
            "0000:00:1f.0 is in IOMMU group 4, which VM \"first\" already has; VM \"second\" \
             cannot have it too, since a group goes to one VM whole. Assign the group's devices \
             to one VM"
        );
        assert!(reason(&b.vms[2]).contains("VM \"first\" already has; VM \"third\""));
    }

    #[test]
    fn the_same_device_twice_and_bridges_are_refused() {
        let host = q35();
        let vms = [
            vm("twice", &[("00:03.0", 0, false), ("1234:11e8", 0, false)]),
            vm("bridge", &[("00:00.0", 0, false)]),
        ];
        let b = bind_all(&host.sysfs, &host.dev_vfio, &vms);
        assert_eq!(
            reason(&b.vms[0]),
            "0000:00:03.0 is assigned twice, by pci[0] and pci[1]; assign each device once"
        );
        assert!(reason(&b.vms[1]).contains("is a PCI bridge"));
        assert!(host.writes().is_empty());
    }

    #[test]
    fn no_iommu_fails_before_binding() {
        let host = FakeHost::new();
        host.device("0000:00:03.0", 0x1234, 0x11e8, 0x00ff00, None, None);
        let b = bind_all(
            &host.sysfs,
            &host.dev_vfio,
            &[vm("edu", &[("1234:11e8", 0, false)])],
        );
        assert!(reason(&b.vms[0]).starts_with("No IOMMU is active"));
        assert!(host.writes().is_empty());
    }
}
