//! One passed-through function as the guest drives it: its virtual config
//! space, its BARs (mapped into KVM memory slots where the host region can
//! be mmapped, trapped and forwarded otherwise) and its interrupts (INTx
//! through a resampling irqfd, MSI and MSI-X through irqfds on KVM MSI
//! routes).
//!
//! It holds the VM (`Arc<Vm>`), so the slots and routes it made can always
//! be removed: its `Drop` takes them away before the host device (and the
//! mappings the slots point at) is closed.

use super::config::{BarKind, ConfigChange, VirtualConfig};
use super::msi::{MsixChange, MSIX_ENTRY_SIZE};
use super::root::{BarAllocator, PciRootError};
use super::{HostError, HostFunction, IrqKind};
use crate::arch::x86_64::layout::pci_intx_gsi;
use crate::vm::routing::MsiMessage;
use crate::vm::{Vm, VmError};
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("Cannot create an eventfd for the device's interrupts")]
    EventFd(#[source] std::io::Error),
    #[error("KVM refused to wire the device's INTx to GSI {gsi}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("The device refused to {what}")]
    Host {
        what: &'static str,
        #[source]
        source: HostError,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Space(#[from] PciRootError),
}

/// A BAR as it is placed in the guest now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub index: u8,
    pub kind: BarKind,
    pub gpa: u64,
    pub size: u64,
    /// The KVM slot when the BAR is mapped; `None` when accesses trap.
    pub slot: Option<u32>,
}

struct Vector {
    fd: EventFd,
    gsi: u32,
    /// Whether its irqfd is registered (the vector is not masked).
    live: bool,
}

struct Intx {
    trigger: EventFd,
    resample: EventFd,
    gsi: u32,
    /// Whether the host currently signals INTx (off while MSI/MSI-X is on).
    on: bool,
}

pub struct PassthroughFunction {
    config: VirtualConfig,
    placed: Vec<Placed>,
    msi: Vec<Vector>,
    msix: Vec<Vector>,
    intx: Option<Intx>,
    host: Box<dyn HostFunction>,
    vm: Arc<Vm>,
}

fn say(what: &str, e: &dyn std::error::Error) {
    eprintln!("kiln-runtime: passthrough: cannot {what}: {e}");
}

impl PassthroughFunction {
    /// Takes over `host` for `vm` as device `device` of bus 0: BARs placed
    /// by `bars`, memory decoding on (as firmware leaves it), INTx wired to
    /// the pin's GSI. `name` names the device in errors.
    pub fn new(
        vm: Arc<Vm>,
        host: Box<dyn HostFunction>,
        device: u8,
        bars: &mut BarAllocator,
        name: &str,
    ) -> Result<Self, PassthroughError> {
        host.reset();
        let mut config = VirtualConfig::new(host.as_ref());
        let wanted: Vec<(u8, BarKind, u64)> = config
            .bars()
            .iter()
            .map(|b| (b.index, b.kind, b.size))
            .collect();
        for (index, kind, size) in wanted {
            let gpa = bars
                .allocate(kind, size)
                .ok_or_else(|| PciRootError::NoSpace {
                    what: name.to_string(),
                    index,
                    size,
                })?;
            if let Some(b) = config.bar_mut(index) {
                b.addr = gpa;
            }
        }
        let mut pin = [0u8; 1];
        host.config_read(0x3d, &mut pin);
        let intx_gsi = pci_intx_gsi(device, pin[0]);
        let mut f = PassthroughFunction {
            config,
            placed: Vec::new(),
            msi: Vec::new(),
            msix: Vec::new(),
            intx: None,
            host,
            vm,
        };
        if pin[0] != 0 && f.host.irq_count(IrqKind::Intx) > 0 {
            f.wire_intx(intx_gsi)?;
        }
        let mut cmd = [0u8; 2];
        f.config.read(f.host.as_ref(), 0x04, &mut cmd);
        let has_io = f.config.bars().iter().any(|b| b.kind == BarKind::Io);
        let enable = super::config::CMD_MEMORY | if has_io { super::config::CMD_IO } else { 0 };
        let value = u16::from_le_bytes(cmd) | enable;
        f.config.write(f.host.as_ref(), 0x04, &value.to_le_bytes());
        f.place_bars();
        Ok(f)
    }

    fn wire_intx(&mut self, gsi: u32) -> Result<(), PassthroughError> {
        let trigger = EventFd::new(libc::EFD_NONBLOCK).map_err(PassthroughError::EventFd)?;
        let resample = EventFd::new(libc::EFD_NONBLOCK).map_err(PassthroughError::EventFd)?;
        self.vm
            .fd()
            .register_irqfd_with_resample(&trigger, &resample, gsi)
            .map_err(|source| PassthroughError::Irqfd { gsi, source })?;
        let intx = Intx {
            trigger,
            resample,
            gsi,
            on: false,
        };
        self.intx = Some(intx);
        self.set_intx(true)?;
        self.config.set_interrupt_line(gsi as u8);
        Ok(())
    }

    fn set_intx(&mut self, on: bool) -> Result<(), PassthroughError> {
        let Some(intx) = self.intx.as_mut() else {
            return Ok(());
        };
        if intx.on == on {
            return Ok(());
        }
        let host = &self.host;
        let r = if on {
            host.enable_irqs(IrqKind::Intx, &[&intx.trigger])
                .and_then(|()| host.intx_unmask_on(&intx.resample))
        } else {
            host.disable_irqs(IrqKind::Intx)
        };
        r.map_err(|source| PassthroughError::Host {
            what: "switch INTx",
            source,
        })?;
        intx.on = on;
        Ok(())
    }

    /// The BARs as placed now.
    pub fn placed(&self) -> &[Placed] {
        &self.placed
    }

    /// The guest's interrupt line for INTx, if wired.
    pub fn intx_gsi(&self) -> Option<u32> {
        self.intx.as_ref().map(|i| i.gsi)
    }

    /// Brings the KVM slots in line with the BAR registers and decode enables.
    fn place_bars(&mut self) {
        let table_bar = self.config.msix().map(|x| x.table_bar);
        let pba_bar = self.config.msix().map(|x| x.pba_bar);
        let want: Vec<(u8, BarKind, u64, u64)> = self
            .config
            .bars()
            .iter()
            .filter(|b| self.config.decodes(b) && b.placed())
            .map(|b| (b.index, b.kind, b.addr, b.size))
            .collect();
        // Drop what moved or went away.
        let mut kept = Vec::new();
        for p in std::mem::take(&mut self.placed) {
            if want.contains(&(p.index, p.kind, p.gpa, p.size)) {
                kept.push(p);
            } else if let Some(slot) = p.slot {
                if let Err(e) = self.vm.unmap_device_memory(slot) {
                    say("unmap a BAR", &e);
                }
            }
        }
        self.placed = kept;
        for (index, kind, gpa, size) in want {
            if self.placed.iter().any(|p| p.index == index) {
                continue;
            }
            let msix_here = Some(index) == table_bar || Some(index) == pba_bar;
            let mappable = kind != BarKind::Io && size >= 4096 && !msix_here;
            let slot = match self.host.region_mapping(u32::from(index)) {
                Some(host) if mappable => {
                    // SAFETY: the mapping lives as long as `self.host`, and
                    // `Drop` removes every slot before `host` is dropped.
                    match unsafe { self.vm.map_device_memory(gpa, size, host) } {
                        Ok(slot) => Some(slot),
                        Err(e) => {
                            say("map a BAR into the guest, trapping it instead", &e);
                            None
                        }
                    }
                }
                _ => None,
            };
            self.placed.push(Placed {
                index,
                kind,
                gpa,
                size,
                slot,
            });
        }
    }

    pub fn config_read(&self, offset: u16, data: &mut [u8]) {
        self.config.read(self.host.as_ref(), offset, data);
    }

    pub fn config_write(&mut self, offset: u16, data: &[u8]) {
        match self.config.write(self.host.as_ref(), offset, data) {
            ConfigChange::None => {}
            ConfigChange::Bars => self.place_bars(),
            ConfigChange::Msi => self.update_msi(),
            ConfigChange::Msix(c) => self.update_msix(c),
        }
    }

    /// The trapped BAR holding `addr` (memory or I/O space) and the offset.
    fn trapped(&self, io: bool, addr: u64) -> Option<(u8, u64)> {
        self.placed.iter().find_map(|p| {
            let is_io = p.kind == BarKind::Io;
            (is_io == io && addr >= p.gpa && addr - p.gpa < p.size).then(|| (p.index, addr - p.gpa))
        })
    }

    /// Whether `addr` falls in one of this function's BARs.
    pub fn claims(&self, io: bool, addr: u64) -> bool {
        self.trapped(io, addr).is_some()
    }

    pub fn bar_read(&self, io: bool, addr: u64, data: &mut [u8]) -> bool {
        let Some((index, offset)) = self.trapped(io, addr) else {
            return false;
        };
        if let Some(x) = self.config.msix() {
            if x.table_bar == index
                && offset >= x.table_offset
                && offset < x.table_offset + x.table_len()
            {
                x.read_table(offset - x.table_offset, data);
                return true;
            }
            let pba_len = (x.entries.len() as u64).div_ceil(64) * 8;
            if x.pba_bar == index && offset >= x.pba_offset && offset < x.pba_offset + pba_len {
                x.read_pba(data);
                return true;
            }
        }
        self.host.region_read(u32::from(index), offset, data);
        true
    }

    pub fn bar_write(&mut self, io: bool, addr: u64, data: &[u8]) -> bool {
        let Some((index, offset)) = self.trapped(io, addr) else {
            return false;
        };
        if let Some(x) = self.config.msix_mut() {
            if x.table_bar == index
                && offset >= x.table_offset
                && offset < x.table_offset + x.table_len()
            {
                let change = x.write_table(offset - x.table_offset, data);
                self.update_msix(change);
                return true;
            }
            if x.pba_bar == index
                && offset >= x.pba_offset
                && offset < x.pba_offset + MSIX_ENTRY_SIZE
            {
                return true;
            }
        }
        self.host.region_write(u32::from(index), offset, data);
        true
    }

    fn update_msi(&mut self) {
        let Some(cap) = self.config.msi().cloned() else {
            return;
        };
        if !cap.enabled() {
            if !self.msi.is_empty() {
                if let Err(e) = self.host.disable_irqs(IrqKind::Msi) {
                    say("disable MSI", e.as_ref());
                }
                let vectors = std::mem::take(&mut self.msi);
                self.drop_vectors(vectors);
                if let Err(e) = self.set_intx(true) {
                    say("re-enable INTx", &e);
                }
            }
            return;
        }
        let n = cap.vectors().min(self.host.irq_count(IrqKind::Msi).max(1));
        if self.msi.is_empty() {
            if let Err(e) = self.set_intx(false) {
                say("turn INTx off for MSI", &e);
            }
            match self.new_vectors((0..n).map(|i| cap.message(i)).collect()) {
                Ok(v) => self.msi = v,
                Err(e) => return say("route MSI", &e),
            }
            let fds: Vec<&EventFd> = self.msi.iter().map(|v| &v.fd).collect();
            if let Err(e) = self.host.enable_irqs(IrqKind::Msi, &fds) {
                say("enable MSI on the device", e.as_ref());
            }
        }
        for i in 0..self.msi.len() {
            let msg = cap.message(i as u32);
            let live = !cap.masked(i as u32);
            self.refresh_vector(IrqKind::Msi, i, msg, live);
        }
    }

    fn update_msix(&mut self, change: MsixChange) {
        let Some(x) = self.config.msix().cloned() else {
            return;
        };
        if change == MsixChange::None {
            return;
        }
        if !x.enabled() {
            if !self.msix.is_empty() {
                if let Err(e) = self.host.disable_irqs(IrqKind::Msix) {
                    say("disable MSI-X", e.as_ref());
                }
                let vectors = std::mem::take(&mut self.msix);
                self.drop_vectors(vectors);
                if let Err(e) = self.set_intx(true) {
                    say("re-enable INTx", &e);
                }
            }
            return;
        }
        if self.msix.is_empty() {
            if let Err(e) = self.set_intx(false) {
                say("turn INTx off for MSI-X", &e);
            }
            let n = x
                .entries
                .len()
                .min(self.host.irq_count(IrqKind::Msix) as usize);
            let msgs = x.entries.iter().take(n).map(|e| MsiMessage {
                address: e.address,
                data: e.data,
            });
            match self.new_vectors(msgs.collect()) {
                Ok(v) => self.msix = v,
                Err(e) => return say("route MSI-X", &e),
            }
            let fds: Vec<&EventFd> = self.msix.iter().map(|v| &v.fd).collect();
            if let Err(e) = self.host.enable_irqs(IrqKind::Msix, &fds) {
                say("enable MSI-X on the device", e.as_ref());
            }
        }
        let which: Vec<usize> = match change {
            MsixChange::Entry(i) => vec![usize::from(i)],
            _ => (0..self.msix.len()).collect(),
        };
        for i in which {
            if let Some(e) = x.entries.get(i) {
                let msg = MsiMessage {
                    address: e.address,
                    data: e.data,
                };
                self.refresh_vector(IrqKind::Msix, i, msg, x.live(i));
            }
        }
    }

    /// One eventfd and route per message; no irqfd yet.
    fn new_vectors(&self, msgs: Vec<MsiMessage>) -> Result<Vec<Vector>, PassthroughError> {
        let mut out: Vec<Vector> = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let made = EventFd::new(libc::EFD_NONBLOCK)
                .map_err(PassthroughError::EventFd)
                .and_then(|fd| Ok((fd, self.vm.add_msi_route(msg)?)));
            match made {
                Ok((fd, gsi)) => out.push(Vector {
                    fd,
                    gsi,
                    live: false,
                }),
                Err(e) => {
                    self.drop_vectors(out);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Points vector `i` at `msg` and registers or removes its irqfd.
    fn refresh_vector(&mut self, kind: IrqKind, i: usize, msg: MsiMessage, live: bool) {
        let vm = self.vm.clone();
        let list = if kind == IrqKind::Msi {
            &mut self.msi
        } else {
            &mut self.msix
        };
        let Some(v) = list.get_mut(i) else {
            return;
        };
        if let Err(e) = vm.update_msi_route(v.gsi, msg) {
            say("update an MSI route", &e);
        }
        if live && !v.live {
            match vm.fd().register_irqfd(&v.fd, v.gsi) {
                Ok(()) => v.live = true,
                Err(e) => say("register an MSI irqfd", &e),
            }
        } else if !live && v.live {
            let _ = vm.fd().unregister_irqfd(&v.fd, v.gsi);
            v.live = false;
        }
    }

    fn drop_vectors(&self, vectors: Vec<Vector>) {
        for v in vectors {
            if v.live {
                let _ = self.vm.fd().unregister_irqfd(&v.fd, v.gsi);
            }
            if let Err(e) = self.vm.remove_msi_route(v.gsi) {
                say("remove an MSI route", &e);
            }
        }
    }
}

impl Drop for PassthroughFunction {
    /// Takes everything back from KVM before the host device closes: the
    /// slots first (they point into the device's mappings), then the
    /// interrupts; the device is reset so the next user starts clean.
    fn drop(&mut self) {
        for p in std::mem::take(&mut self.placed) {
            if let Some(slot) = p.slot {
                let _ = self.vm.unmap_device_memory(slot);
            }
        }
        if !self.msix.is_empty() {
            let _ = self.host.disable_irqs(IrqKind::Msix);
        }
        if !self.msi.is_empty() {
            let _ = self.host.disable_irqs(IrqKind::Msi);
        }
        let msi = std::mem::take(&mut self.msi);
        let msix = std::mem::take(&mut self.msix);
        self.drop_vectors(msi);
        self.drop_vectors(msix);
        if let Some(intx) = self.intx.take() {
            if intx.on {
                let _ = self.host.disable_irqs(IrqKind::Intx);
            }
            let _ = self.vm.fd().unregister_irqfd(&intx.trigger, intx.gsi);
            drop(intx.resample);
        }
        self.host.reset();
    }
}
