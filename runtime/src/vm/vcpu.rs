//! vCPUs: creation and reset state (CPUID, MSRs, FPU, local APIC, and the
//! boot CPU's registers), and the run loop each vCPU thread executes: port
//! and MMIO exits go to the VM's buses, the console's coalesced writes are
//! drained before any exit is handled ([`TxRing`]), and how the VM ends
//! ([`VmExit`]) is reported to the [`RunControl`].

use super::exit::VmExit;
use super::Vm;
use crate::arch::x86_64::cpuid::{self, Topology};
use crate::arch::x86_64::msr;
use crate::arch::x86_64::regs::{self, EntryPoint, RegsError};
use crate::devices::pci::PciRoot;
use crate::devices::serial::flush_partial_line;
use crate::devices::tx_ring::TxRing;
use crate::devices::Access;
use crate::watchdog::VcpuClocks;
use kvm_bindings::{
    kvm_lapic_state, Msrs, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use vmm_sys_util::eventfd::EventFd;

/// Local APIC register offsets and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM refused to {what} for vCPU {index}")]
    Kvm {
        what: &'static str,
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM did not accept MSR {msr:#x} on vCPU {index}")]
    Msr { msr: u32, index: u8 },
    #[error("Too many MSRs for one KVM call")]
    MsrList,
    #[error(transparent)]
    Regs(#[from] RegsError),
}

/// Shared by the vCPU threads and the thread that waits for them: the
/// first reason to stop wins, and a stopped VM wakes the waiter.
#[derive(Debug)]
pub struct RunControl {
    stop: AtomicBool,
    exit: Mutex<Option<VmExit>>,
    wake: EventFd,
}

impl RunControl {
    pub fn new() -> std::io::Result<Self> {
        Ok(RunControl {
            stop: AtomicBool::new(false),
            exit: Mutex::new(None),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records why the VM ends (unless a reason is already recorded), tells
    /// every vCPU to stop and wakes the waiter.
    pub fn request_stop(&self, why: VmExit) {
        {
            let mut slot = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some(why);
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        // A full eventfd counter already means "wake up".
        let _ = self.wake.write(1);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The recorded reason, if any.
    pub fn exit(&self) -> Option<VmExit> {
        self.exit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Becomes readable when the VM stops.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }
}

/// Exits one vCPU took, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExitCounts {
    pub total: u64,
    pub pio: u64,
    pub mmio: u64,
    /// MMIO exits that landed in a passed-through device's BAR.
    pub mmio_bar: u64,
    pub interrupted: u64,
    pub other: u64,
    /// Console bytes taken from the coalesced ring (no exit of their own).
    pub coalesced: u64,
}

impl std::ops::AddAssign for ExitCounts {
    fn add_assign(&mut self, o: Self) {
        self.total += o.total;
        self.pio += o.pio;
        self.mmio += o.mmio;
        self.mmio_bar += o.mmio_bar;
        self.interrupted += o.interrupted;
        self.other += o.other;
        self.coalesced += o.coalesced;
    }
}

/// One vCPU. It holds its VM, so a running vCPU thread keeps the VM (and
/// through it the `Vac`) alive, and reaches the devices through the VM's
/// buses; the vCPU fd closes before that handle drops.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    vm: Arc<Vm>,
    /// The console's coalesced writes, drained by every vCPU.
    tx_ring: Option<Arc<TxRing>>,
}

impl Vcpu {
    /// Creates vCPU `index` of `vm` with its CPUID, MSRs, FPU and LAPIC set.
    /// Application processors then wait for the boot CPU's INIT/SIPI.
    pub fn new(vm: &Arc<Vm>, index: u8) -> Result<Vcpu, VcpuError> {
        let kvm = |what| {
            move |source| VcpuError::Kvm {
                what,
                index,
                source,
            }
        };
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(kvm("create the vCPU"))?;

        let mut cpuid = vm.vac().supported_cpuid().clone();
        cpuid::patch(
            cpuid.as_mut_slice(),
            Topology {
                index,
                count: vm.vcpu_count(),
            },
        );
        fd.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;

        let entries = msr::boot_msrs(vm.vac().msr_index_list());
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::MsrList)?;
        let set = fd.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
        if set < entries.len() {
            let msr = entries.get(set).map_or(0, |e| e.index);
            return Err(VcpuError::Msr { msr, index });
        }

        fd.set_fpu(&regs::boot_fpu())
            .map_err(kvm("set the FPU state"))?;

        let mut lapic = fd.get_lapic().map_err(kvm("read the local APIC"))?;
        set_lvt_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic).map_err(kvm("set the local APIC"))?;

        Ok(Vcpu {
            fd,
            index,
            vm: vm.clone(),
            tx_ring: None,
        })
    }

    /// Maps the VM's coalesced ring (before the seccomp filter: an `mmap`
    /// of the vCPU fd) so this vCPU drains `ring`.
    pub fn drain_tx_ring(&mut self, ring: Arc<TxRing>) -> Result<(), VcpuError> {
        self.fd
            .map_coalesced_mmio_ring()
            .map_err(|source| VcpuError::Kvm {
                what: "map the coalesced I/O ring",
                index: self.index,
                source,
            })?;
        self.tx_ring = Some(ring);
        Ok(())
    }

    /// Writes out what the ring holds; how many bytes.
    fn drain(&mut self) -> u64 {
        let Some(ring) = &self.tx_ring else {
            return 0;
        };
        let fd = &mut self.fd;
        ring.drain(|| fd.coalesced_mmio_read().ok().flatten())
    }

    /// Puts the boot CPU at the kernel's entry point.
    pub fn set_entry(&self, entry: EntryPoint) -> Result<(), VcpuError> {
        let index = self.index;
        let kvm = |what| {
            move |source| VcpuError::Kvm {
                what,
                index,
                source,
            }
        };
        let mut sregs = self.fd.get_sregs().map_err(kvm("read special registers"))?;
        regs::setup_sregs(self.vm.memory(), entry, &mut sregs)?;
        self.fd
            .set_sregs(&sregs)
            .map_err(kvm("set special registers"))?;
        self.fd
            .set_regs(&regs::boot_regs(entry))
            .map_err(kvm("set registers"))
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    /// Runs until the VM stops, handling port and MMIO exits. Any reason to
    /// end the VM is reported to `ctl`; `clocks` learns when this vCPU
    /// enters and leaves `KVM_RUN`.
    pub fn run(mut self, ctl: &RunControl, clocks: &VcpuClocks) -> ExitCounts {
        let mut counts = ExitCounts::default();
        let index = self.index;
        // A write exit's data, copied out of the exit so the ring can be
        // drained before it is handled.
        let mut written: Vec<u8> = Vec::with_capacity(8);
        while !ctl.stopping() {
            let mut internal_error = false;
            let mut write = None;
            let mut kicked = false;
            clocks.entering(usize::from(index));
            let ran = self.fd.run();
            clocks.left(usize::from(index));
            let mut outcome = match ran {
                Ok(exit) => {
                    counts.total += 1;
                    match exit {
                        VcpuExit::IoOut(port, data) => {
                            counts.pio += 1;
                            written.clear();
                            written.extend_from_slice(data);
                            write = Some(Write::Pio(port));
                            None
                        }
                        // Reads are handled here, before the ring is
                        // drained: no read depends on a queued write (the
                        // zone exists only while a transmit write changes
                        // nothing a read sees).
                        VcpuExit::IoIn(port, data) => {
                            counts.pio += 1;
                            self.vm.pio_bus().read(u64::from(port), data);
                            None
                        }
                        // The MMIO bus holds the PCI root alone: what it
                        // claims outside ECAM is a passed-through BAR.
                        VcpuExit::MmioRead(addr, data) => {
                            counts.mmio += 1;
                            if self.vm.mmio_bus().read(addr, data) {
                                counts.mmio_bar += u64::from(!PciRoot::is_ecam(addr));
                            }
                            None
                        }
                        VcpuExit::MmioWrite(addr, data) => {
                            counts.mmio += 1;
                            written.clear();
                            written.extend_from_slice(data);
                            write = Some(Write::Mmio(addr));
                            None
                        }
                        VcpuExit::Intr => {
                            counts.interrupted += 1;
                            kicked = true;
                            None
                        }
                        // With the in-kernel LAPIC, HLT stays in KVM; a HLT
                        // exit means the CPU halted for good.
                        VcpuExit::Hlt => Some(VmExit::Poweroff),
                        VcpuExit::Shutdown => Some(VmExit::TripleFault),
                        VcpuExit::SystemEvent(kind, _) => Some(match kind {
                            KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::Poweroff,
                            KVM_SYSTEM_EVENT_RESET => VmExit::Reboot,
                            KVM_SYSTEM_EVENT_CRASH => {
                                VmExit::InternalError(format!("guest crash reported by vCPU {index}"))
                            }
                            k => VmExit::InternalError(format!(
                                "unknown KVM system event {k} on vCPU {index}"
                            )),
                        }),
                        VcpuExit::InternalError => {
                            internal_error = true;
                            None
                        }
                        VcpuExit::FailEntry(reason, cpu) => Some(VmExit::InternalError(format!(
                            "vCPU {index} failed to enter the guest (hardware reason {reason:#x}, host CPU {cpu})"
                        ))),
                        other => {
                            counts.other += 1;
                            Some(VmExit::InternalError(format!(
                                "unexpected KVM exit on vCPU {index}: {other:?}"
                            )))
                        }
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    counts.interrupted += 1;
                    kicked = true;
                    self.fd.set_kvm_immediate_exit(0);
                    None
                }
                Err(e) => Some(VmExit::InternalError(format!(
                    "KVM_RUN failed on vCPU {index}: {e}"
                ))),
            };
            // The guest's queued console bytes come before anything this
            // exit does (a UART register write, the exit port, a stop).
            let drained = self.drain();
            counts.coalesced += drained;
            if kicked && drained > 0 {
                // Kicked at the watchdog tick: the end of a line the guest
                // has not finished shows now, not a tick later.
                flush_partial_line();
            }
            match write {
                Some(Write::Pio(port)) => {
                    #[cfg(any(test, feature = "dev-hooks"))]
                    test_triggers::on_out(port);
                    outcome = match self.vm.pio_bus().write(u64::from(port), &written) {
                        Access::Stop(stop) => Some(VmExit::from(stop)),
                        Access::Claimed | Access::Unclaimed => None,
                    };
                }
                Some(Write::Mmio(addr)) => {
                    let claimed = self.vm.mmio_bus().write(addr, &written) != Access::Unclaimed;
                    counts.mmio_bar += u64::from(claimed && !PciRoot::is_ecam(addr));
                }
                None => {}
            }
            if internal_error {
                let run = self.fd.get_kvm_run();
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, for
                // which KVM fills the `internal` member of the union.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                ctl.request_stop(VmExit::InternalError(format!(
                    "KVM internal error on vCPU {index}, suberror {suberror}"
                )));
            } else if let Some(why) = outcome {
                ctl.request_stop(why);
            }
        }
        // What the guest queued before the VM stopped is not lost.
        counts.coalesced += self.drain();
        counts
    }
}

/// A write exit, its data held apart.
#[derive(Debug, Clone, Copy)]
enum Write {
    Pio(u16),
    Mmio(u64),
}

/// Ports that misbehave on purpose, in unit tests and `dev-hooks` builds
/// only: a write to [`test_triggers::PANIC_PORT`] panics the vCPU thread,
/// one to [`test_triggers::STALL_PORT`] keeps it outside `KVM_RUN` for a
/// minute (unit tests), and one to [`test_triggers::SECCOMP_PORT`] makes
/// it attempt a system call its seccomp filter forbids (`socket`; without
/// a filter it gets a socket and closes it).
#[cfg(any(test, feature = "dev-hooks"))]
pub mod test_triggers {
    pub use kiln_abi::exit::TEST_SECCOMP_PORT as SECCOMP_PORT;
    #[cfg(test)]
    pub const PANIC_PORT: u16 = 0xf5;
    #[cfg(test)]
    pub const STALL_PORT: u16 = 0xf6;

    pub fn on_out(port: u16) {
        match port {
            #[cfg(test)]
            #[allow(clippy::panic)]
            PANIC_PORT => panic!("test-only vCPU panic"),
            #[cfg(test)]
            STALL_PORT => std::thread::sleep(std::time::Duration::from_secs(60)),
            SECCOMP_PORT => {
                // SAFETY: socket(2) and close(2) on its own result; no
                // memory is passed.
                unsafe {
                    let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
            }
            _ => {}
        }
    }
}

fn set_lvt_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let Some(bytes) = lapic.regs.get_mut(offset..offset + 4) else {
        return;
    };
    let mut raw = [0u8; 4];
    for (d, s) in raw.iter_mut().zip(bytes.iter()) {
        *d = u8::from_ne_bytes(s.to_ne_bytes());
    }
    let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (d, s) in bytes.iter_mut().zip(value.to_le_bytes()) {
        *d = std::os::raw::c_char::from_ne_bytes([s]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lvt(l: &kvm_lapic_state, off: usize) -> u32 {
        let b: Vec<u8> = l.regs[off..off + 4]
            .iter()
            .map(|c| u8::from_ne_bytes(c.to_ne_bytes()))
            .collect();
        u32::from_le_bytes(b.try_into().unwrap())
    }

    #[test]
    fn lint0_is_extint_and_lint1_is_nmi() {
        let mut l = kvm_lapic_state::default();
        // Masked, with a stale delivery mode and vector.
        for off in [APIC_LVT0, APIC_LVT1] {
            for (i, b) in 0x0001_0630u32.to_le_bytes().iter().enumerate() {
                l.regs[off + i] = std::os::raw::c_char::from_ne_bytes([*b]);
            }
        }
        set_lvt_mode(&mut l, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut l, APIC_LVT1, APIC_MODE_NMI);
        assert_eq!(lvt(&l, APIC_LVT0), 0x0001_0730);
        assert_eq!(lvt(&l, APIC_LVT1), 0x0001_0430);
    }

    #[test]
    fn first_stop_reason_wins() {
        let c = RunControl::new().unwrap();
        assert!(!c.stopping());
        c.request_stop(VmExit::Exited(3));
        c.request_stop(VmExit::Reboot);
        assert!(c.stopping());
        assert_eq!(c.exit(), Some(VmExit::Exited(3)));
        assert!(c.wake_fd().read().unwrap() >= 1);
    }
}
