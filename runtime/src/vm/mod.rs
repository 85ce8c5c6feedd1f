//! `Vm`: one virtual machine on a [`Vac`]: its KVM VM file descriptor,
//! guest memory, in-kernel interrupt controllers and PIT, and its two
//! buses (ports and MMIO), empty until the [`crate::machine`] puts its
//! devices on them.
//!
//! A `Vm` holds its `Vac` through an `Arc`, and each [`vcpu::Vcpu`] holds its
//! `Vm` the same way: whoever has a handle keeps everything beneath it
//! alive, and teardown runs from the leaves (vCPUs, devices) to the root
//! (the device node) in the order ownership dictates. The buses hold their
//! devices weakly, so a device holding the VM makes no cycle. Nothing is
//! global.

pub mod exit;
pub mod memory;
pub mod notes;
pub mod routing;
pub mod vcpu;

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::devices::Bus;
use crate::vac::{Vac, VacError};
use kiln_schema::config::VmConfig;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, VmFd};
use notes::Notes;
use routing::{MsiMessage, Routing, RoutingError};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Vac(#[from] VacError),
    #[error("The VM asks for {asked} vCPUs but {} allows at most {max}; lower `vcpus`", path.display())]
    TooManyVcpus {
        asked: u8,
        max: usize,
        path: std::path::PathBuf,
    },
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error("KVM refused to {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error("All KVM memory slots of the VM are in use; assign fewer devices")]
    NoSlot,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// One VM. Fields drop in declaration order: the buses first, then the KVM
/// VM, then guest memory, and the `Vac` last.
#[derive(Debug)]
pub struct Vm {
    pio_bus: Bus,
    mmio_bus: Bus,
    fd: VmFd,
    memory: memory::GuestRam,
    vcpus: u8,
    /// KVM memory slots used by device memory (BARs), beyond guest RAM's.
    slots: Mutex<BTreeSet<u32>>,
    routing: Mutex<Routing>,
    /// How often the routing table went to KVM (KILN_VMM_STATS).
    routing_commits: AtomicU64,
    notes: Notes,
    created: Instant,
    vac: Arc<Vac>,
}

impl Vm {
    /// Creates the VM `cfg` describes on `vac`: memory registered with KVM,
    /// in-kernel IOAPIC/PIC/LAPICs and PIT. No device is on its buses yet,
    /// no kernel is loaded and no vCPU exists.
    pub fn new(vac: Arc<Vac>, cfg: &VmConfig) -> Result<Arc<Vm>, VmError> {
        if usize::from(cfg.vcpus) > vac.max_vcpus() {
            return Err(VmError::TooManyVcpus {
                asked: cfg.vcpus,
                max: vac.max_vcpus(),
                path: vac.path().to_path_buf(),
            });
        }
        let created = Instant::now();
        let fd = vac.create_vm()?;
        let memory = memory::create(cfg.memory.bytes(), cfg.hugepages)?;
        for (slot, region) in (0u32..).zip(memory.iter()) {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::Kvm {
                    what: "map guest memory",
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host` is the start of a live mapping of `region.len()`
            // bytes that `memory` owns; `memory` is dropped only after `fd`
            // (field order of `Vm`), so KVM never sees a dangling range.
            unsafe { fd.set_user_memory_region(r) }.map_err(kvm_err("register guest memory"))?;
        }
        // A constant below 4 GiB.
        #[allow(clippy::cast_possible_truncation)]
        let tss = KVM_TSS_ADDRESS as usize;
        fd.set_tss_address(tss)
            .map_err(kvm_err("set the TSS address"))?;
        if fd.check_extension(Cap::SetIdentityMapAddr) {
            fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
                .map_err(kvm_err("set the identity map address"))?;
        }
        fd.create_irq_chip()
            .map_err(kvm_err("create the in-kernel interrupt controllers"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(kvm_err("create the in-kernel PIT"))?;

        Ok(Arc::new(Vm {
            pio_bus: Bus::new(),
            mmio_bus: Bus::new(),
            fd,
            memory,
            vcpus: cfg.vcpus,
            slots: Mutex::new(BTreeSet::new()),
            routing: Mutex::new(Routing::default()),
            routing_commits: AtomicU64::new(0),
            notes: Notes::new(cfg.name.as_str()),
            created,
            vac,
        }))
    }

    /// The `Vac` this VM runs on.
    pub fn vac(&self) -> &Arc<Vac> {
        &self.vac
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM, for attaching devices (VFIO) to it.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The port I/O bus.
    pub fn pio_bus(&self) -> &Bus {
        &self.pio_bus
    }

    /// The MMIO bus: what KVM does not map as memory.
    pub fn mmio_bus(&self) -> &Bus {
        &self.mmio_bus
    }

    /// The VMM's notes about this VM on the console, rate-limited.
    pub fn notes(&self) -> &Notes {
        &self.notes
    }

    /// When the VM was created.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// How many vCPUs the VM has.
    pub fn vcpu_count(&self) -> u8 {
        self.vcpus
    }

    /// Maps `size` bytes of host memory at `host` (device memory: a BAR)
    /// into the guest at `gpa`; returns the KVM slot, for [`Self::unmap_device_memory`].
    ///
    /// # Safety
    /// `host .. host + size` must stay mapped until the slot is unmapped.
    pub unsafe fn map_device_memory(&self, gpa: u64, size: u64, host: u64) -> Result<u32, VmError> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let first = u32::try_from(self.memory.num_regions()).map_err(|_| VmError::NoSlot)?;
        let slot = (first..u32::from(u16::MAX))
            .find(|s| !slots.contains(s))
            .ok_or(VmError::NoSlot)?;
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: the caller keeps the range mapped until the slot goes.
        unsafe { self.fd.set_user_memory_region(r) }.map_err(kvm_err("map device memory"))?;
        slots.insert(slot);
        Ok(slot)
    }

    /// Removes a slot made by [`Self::map_device_memory`].
    pub fn unmap_device_memory(&self, slot: u32) -> Result<(), VmError> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if !slots.remove(&slot) {
            return Ok(());
        }
        let r = kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: a size of zero deletes the slot; no memory is referenced.
        unsafe { self.fd.set_user_memory_region(r) }.map_err(kvm_err("unmap device memory"))
    }

    /// Routes a new GSI to each of `msgs` and returns them, in order; the
    /// table goes to KVM once.
    pub fn add_msi_routes(&self, msgs: &[MsiMessage]) -> Result<Vec<u32>, VmError> {
        let mut r = self.routing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut gsis = Vec::with_capacity(msgs.len());
        let mut added = || -> Result<(), VmError> {
            let mut next = 0;
            for &msg in msgs {
                let gsi = r.allocate_from(next)?;
                r.set_msi(gsi, msg);
                gsis.push(gsi);
                next = gsi + 1;
            }
            if !gsis.is_empty() {
                self.commit_routes(&r)?;
            }
            Ok(())
        };
        if let Err(e) = added() {
            for gsi in &gsis {
                r.remove(*gsi);
            }
            return Err(e);
        }
        Ok(gsis)
    }

    /// Points existing MSI GSIs at new messages; the table goes to KVM
    /// once, and only if one of them changed.
    pub fn update_msi_routes(&self, routes: &[(u32, MsiMessage)]) -> Result<(), VmError> {
        let mut r = self.routing.lock().unwrap_or_else(PoisonError::into_inner);
        let before: Vec<Option<MsiMessage>> = routes.iter().map(|&(gsi, _)| r.msi(gsi)).collect();
        let mut changed = false;
        for &(gsi, msg) in routes {
            changed |= r.set_msi(gsi, msg);
        }
        if changed {
            if let Err(e) = self.commit_routes(&r) {
                // Keep the table as KVM has it, so a retry sends the change.
                for (&(gsi, _), old) in routes.iter().zip(before).rev() {
                    match old {
                        Some(msg) => r.set_msi(gsi, msg),
                        None => r.remove(gsi),
                    };
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Frees GSIs from [`Self::add_msi_routes`]; the table goes to KVM once.
    pub fn remove_msi_routes(&self, gsis: &[u32]) -> Result<(), VmError> {
        let mut r = self.routing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changed = false;
        for &gsi in gsis {
            changed |= r.remove(gsi);
        }
        if changed {
            self.commit_routes(&r)?;
        }
        Ok(())
    }

    /// How many times the GSI routing table was sent to KVM.
    pub fn routing_commits(&self) -> u64 {
        self.routing_commits.load(Ordering::Relaxed)
    }

    fn commit_routes(&self, r: &Routing) -> Result<(), VmError> {
        self.routing_commits.fetch_add(1, Ordering::Relaxed);
        self.fd
            .set_gsi_routing(&r.to_kvm()?)
            .map_err(kvm_err("set the interrupt routes"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vac::tests::kvm_path;
    use kiln_schema::config::{parse, VmConfig};
    use std::path::Path;
    use std::sync::Weak;
    use vm_memory::{Bytes, GuestAddress};

    pub(crate) fn config(vcpus: u8, memory: &str) -> VmConfig {
        let src = format!(
            "name = \"t\"\nvcpus = {vcpus}\nmemory = \"{memory}\"\n[boot]\nkernel = \"k\"\n[console]\necho = false\n"
        );
        parse(Path::new("t.toml"), &src).unwrap()
    }

    #[test]
    fn a_vm_keeps_its_vac_alive_and_drops_it_last() {
        let vac = Vac::open(kvm_path()).unwrap();
        let weak_vac: Weak<Vac> = Arc::downgrade(&vac);
        let vm = Vm::new(vac, &config(1, "16M")).unwrap();
        // The caller's handle is gone; the VM's keeps the node open.
        assert!(weak_vac.upgrade().is_some());
        assert_eq!(vm.vac().path(), Path::new("/dev/kvm"));
        let weak_vm = Arc::downgrade(&vm);
        drop(vm);
        assert!(weak_vm.upgrade().is_none());
        assert!(
            weak_vac.upgrade().is_none(),
            "dropping the VM released its vac"
        );
    }

    #[test]
    fn a_vcpu_keeps_its_vm_and_vac_alive() {
        let vm = Vm::new(Vac::open(kvm_path()).unwrap(), &config(2, "16M")).unwrap();
        let vcpu = vcpu::Vcpu::new(&vm, 1).unwrap();
        let (weak_vm, weak_vac) = (Arc::downgrade(&vm), Arc::downgrade(vm.vac()));
        drop(vm);
        assert!(weak_vm.upgrade().is_some(), "the vCPU holds the VM");
        assert!(weak_vac.upgrade().is_some());
        assert_eq!(vcpu.index(), 1);
        drop(vcpu);
        assert!(weak_vm.upgrade().is_none());
        assert!(weak_vac.upgrade().is_none(), "teardown reached the vac");
    }

    #[test]
    fn two_vms_on_two_vacs_share_no_state() {
        let a = Vm::new(Vac::open(kvm_path()).unwrap(), &config(1, "16M")).unwrap();
        let b = Vm::new(Vac::open(kvm_path()).unwrap(), &config(1, "16M")).unwrap();
        assert!(!Arc::ptr_eq(a.vac(), b.vac()));
        a.memory()
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let seen: u32 = b.memory().read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(seen, 0);
        let weak_a = Arc::downgrade(a.vac());
        drop(a);
        assert!(weak_a.upgrade().is_none());
        // B is untouched by A's teardown.
        b.pio_bus().write(0x80, &[1]);
        assert_eq!(b.pio_bus().unclaimed().get(&0x80), Some(&1));
        let seen: u32 = b.memory().read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(seen, 0);
    }

    #[test]
    fn msi_routes_go_to_kvm_once_per_batch_and_only_when_changed() {
        let vm = Vm::new(Vac::open(kvm_path()).unwrap(), &config(1, "16M")).unwrap();
        let msg = |data| MsiMessage {
            address: 0xfee0_0000,
            data,
        };
        let gsis = vm.add_msi_routes(&[msg(1), msg(2), msg(3)]).unwrap();
        assert_eq!(gsis, [24, 25, 26]);
        assert_eq!(vm.routing_commits(), 1);
        let same: Vec<(u32, MsiMessage)> =
            gsis.iter().zip(1..).map(|(&g, d)| (g, msg(d))).collect();
        vm.update_msi_routes(&same).unwrap();
        assert_eq!(vm.routing_commits(), 1, "nothing changed");
        vm.update_msi_routes(&[(25, msg(2)), (26, msg(9))]).unwrap();
        assert_eq!(vm.routing_commits(), 2);
        vm.remove_msi_routes(&gsis).unwrap();
        assert_eq!(vm.routing_commits(), 3);
        vm.remove_msi_routes(&gsis).unwrap();
        assert_eq!(vm.routing_commits(), 3, "already gone");
        // Freed GSIs are handed out again, lowest first.
        assert_eq!(vm.add_msi_routes(&[msg(4)]).unwrap(), [24]);
    }

    #[test]
    fn too_many_vcpus_is_refused() {
        let vac = Vac::open(kvm_path()).unwrap();
        let max = vac.max_vcpus();
        if max >= 255 {
            return;
        }
        let e = Vm::new(vac, &config(255, "16M")).err().unwrap();
        assert!(e.to_string().contains("lower `vcpus`"), "{e}");
    }
}
