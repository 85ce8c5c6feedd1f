//! One passed-through function as the guest drives it: its virtual config
//! space, its BARs (mapped into KVM memory slots where the host region can
//! be mmapped, around the pages of the MSI-X table and PBA; trapped and
//! forwarded elsewhere), its expansion ROM when the VM asks for it (always
//! trapped, read-only) and its interrupts (INTx
//! through a resampling irqfd, MSI and MSI-X through irqfds on KVM MSI
//! routes).
//!
//! It holds the VM (`Arc<Vm>`), so the slots and routes it made can always
//! be removed: its `Drop` takes them away before the host device (and the
//! mappings the slots point at) is closed.

use super::bar_mapping;
use super::config_space::VirtualConfig;
use super::host_function::{HostError, HostFunction, IrqKind, ROM_REGION};
use super::msi::{Msix, MsixChange};
use crate::arch::x86_64::layout::pci_intx_gsi;
use crate::devices::pci::root::{BarAllocator, PciRootError};
use crate::devices::pci::{BarKind, PciFunction};
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

/// The [`Placed::index`] of the expansion ROM: its VFIO region index.
pub const ROM_INDEX: u8 = ROM_REGION as u8;

/// A BAR (or the expansion ROM) as it is placed in the guest now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// BAR 0-5, or [`ROM_INDEX`].
    pub index: u8,
    pub kind: BarKind,
    pub gpa: u64,
    pub size: u64,
    /// The KVM slots of its mapped pieces ([`bar_mapping::pieces`]); accesses
    /// elsewhere in the BAR trap.
    pub slots: Vec<u32>,
}

/// Where a trapped access to a BAR goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The emulated MSI-X table, at this offset in it.
    Table(u64),
    /// The emulated PBA.
    Pba,
    /// The device.
    Device,
}

/// Where an access at `offset` of BAR `index` goes, given the MSI-X state.
fn target(msix: Option<&Msix>, index: u8, offset: u64) -> Target {
    let Some(x) = msix else {
        return Target::Device;
    };
    let within = |start: u64, len: u64| offset >= start && offset - start < len;
    if x.table_bar == index && within(x.table_offset, x.table_len()) {
        Target::Table(offset - x.table_offset)
    } else if x.pba_bar == index && within(x.pba_offset, x.pba_len()) {
        Target::Pba
    } else {
        Target::Device
    }
}

/// The byte ranges `(offset, len)` of BAR `index` the VMM emulates.
fn emulated(msix: Option<&Msix>, index: u8) -> Vec<(u64, u64)> {
    let Some(x) = msix else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if x.table_bar == index {
        out.push((x.table_offset, x.table_len()));
    }
    if x.pba_bar == index {
        out.push((x.pba_offset, x.pba_len()));
    }
    out
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
    /// the pin's GSI. With `rom`, a device with an expansion ROM shows it
    /// (placed by `bars` in the 32-bit window, its enable bit off as
    /// firmware leaves it). `name` names the device in errors.
    pub fn new(
        vm: Arc<Vm>,
        host: Box<dyn HostFunction>,
        device: u8,
        rom: bool,
        bars: &mut BarAllocator,
        name: &str,
    ) -> Result<Self, PassthroughError> {
        host.reset();
        let mut config = VirtualConfig::new(host.as_ref(), rom);
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
        if let Some(r) = config.rom_mut() {
            let size = r.size;
            r.addr =
                bars.allocate(BarKind::Mem32, size)
                    .ok_or_else(|| PciRootError::NoRomSpace {
                        what: name.to_string(),
                        size,
                    })?;
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
        let enable = super::config_space::CMD_MEMORY
            | if has_io {
                super::config_space::CMD_IO
            } else {
                0
            };
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

    /// Brings the KVM slots in line with the BAR registers and decode
    /// enables: a BAR that moved or stopped decoding loses all its slots; a
    /// new placement gets one slot per mappable piece.
    fn place_bars(&mut self) {
        let mut want: Vec<(u8, BarKind, u64, u64)> = self
            .config
            .bars()
            .iter()
            .filter(|b| self.config.decodes(b) && b.placed())
            .map(|b| (b.index, b.kind, b.addr, b.size))
            .collect();
        if let Some(r) = self.config.rom().filter(|r| r.placed()) {
            if self.config.rom_decodes() {
                want.push((ROM_INDEX, BarKind::Mem32, r.addr, r.size));
            }
        }
        // Drop what moved or went away.
        let mut kept = Vec::new();
        for p in std::mem::take(&mut self.placed) {
            if want.contains(&(p.index, p.kind, p.gpa, p.size)) {
                kept.push(p);
            } else {
                self.unmap(&p.slots);
            }
        }
        self.placed = kept;
        for (index, kind, gpa, size) in want {
            if self.placed.iter().any(|p| p.index == index) {
                continue;
            }
            // The ROM gets no slot: drivers read it rarely (once, at probe),
            // so every read traps and is forwarded to the device's ROM
            // region; that also keeps guest writes from reaching it.
            let slots = if kind == BarKind::Io || index == ROM_INDEX {
                Vec::new()
            } else {
                self.map_pieces(index, gpa, size)
            };
            self.placed.push(Placed {
                index,
                kind,
                gpa,
                size,
                slots,
            });
        }
    }

    /// Maps the pieces of memory BAR `index` (placed at `gpa`) the guest
    /// may reach directly; returns their slots. A piece KVM refuses traps.
    fn map_pieces(&self, index: u8, gpa: u64, size: u64) -> Vec<u32> {
        if gpa % bar_mapping::PAGE_SIZE != 0 {
            return Vec::new();
        }
        let areas = self.host.region_mappings(u32::from(index));
        let trapped = emulated(self.config.msix(), index);
        let mut slots = Vec::new();
        for piece in bar_mapping::pieces(size, areas, &trapped) {
            let Some(at) = gpa.checked_add(piece.offset) else {
                continue;
            };
            // SAFETY: the piece lies in a host mapping that lives as long
            // as `self.host`; every slot is removed when the BAR moves and
            // in `Drop`, before `host` is dropped.
            match unsafe { self.vm.map_device_memory(at, piece.len, piece.addr) } {
                Ok(slot) => slots.push(slot),
                Err(e) => say("map part of a BAR into the guest, trapping it instead", &e),
            }
        }
        slots
    }

    fn unmap(&self, slots: &[u32]) {
        for &slot in slots {
            if let Err(e) = self.vm.unmap_device_memory(slot) {
                say("unmap part of a BAR", &e);
            }
        }
    }

    /// The trapped BAR (or ROM) holding `addr` (memory or I/O space) and
    /// the offset. A BAR wins over a ROM the guest placed on top of it.
    fn trapped(&self, io: bool, addr: u64) -> Option<(u8, u64)> {
        let hit = |p: &Placed| {
            let is_io = p.kind == BarKind::Io;
            (is_io == io && addr >= p.gpa && addr - p.gpa < p.size).then(|| (p.index, addr - p.gpa))
        };
        let bars = self.placed.iter().filter(|p| p.index != ROM_INDEX);
        let rom = self.placed.iter().filter(|p| p.index == ROM_INDEX);
        bars.chain(rom).find_map(hit)
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

impl PciFunction for PassthroughFunction {
    fn config_read(&self, offset: u16, data: &mut [u8]) {
        self.config.read(self.host.as_ref(), offset, data);
    }

    /// A write of any width: every register it touches is virtualized (see
    /// [`VirtualConfig::write`]), and what it changed is acted on once.
    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let change = self.config.write(self.host.as_ref(), offset, data);
        if change.bars {
            self.place_bars();
        }
        if change.msi {
            self.update_msi();
        }
        self.update_msix(change.msix);
    }

    /// Whether `addr` falls in one of this function's BARs.
    fn claims(&self, io: bool, addr: u64) -> bool {
        self.trapped(io, addr).is_some()
    }

    fn bar_read(&self, io: bool, addr: u64, data: &mut [u8]) -> bool {
        let Some((index, offset)) = self.trapped(io, addr) else {
            return false;
        };
        if index == ROM_INDEX {
            self.host.region_read(ROM_REGION, offset, data);
            return true;
        }
        let msix = self.config.msix();
        match (target(msix, index, offset), msix) {
            (Target::Table(at), Some(x)) => x.read_table(at, data),
            (Target::Pba, Some(x)) => x.read_pba(data),
            _ => self.host.region_read(u32::from(index), offset, data),
        }
        true
    }

    fn bar_write(&mut self, io: bool, addr: u64, data: &[u8]) -> bool {
        let Some((index, offset)) = self.trapped(io, addr) else {
            return false;
        };
        // The ROM is read-only: writes to it are dropped.
        if index == ROM_INDEX {
            return true;
        }
        match target(self.config.msix(), index, offset) {
            Target::Table(at) => {
                if let Some(x) = self.config.msix_mut() {
                    let change = x.write_table(at, data);
                    self.update_msix(change);
                }
            }
            // The PBA is read-only.
            Target::Pba => {}
            Target::Device => self.host.region_write(u32::from(index), offset, data),
        }
        true
    }
}

impl Drop for PassthroughFunction {
    /// Takes everything back from KVM before the host device closes: the
    /// slots first (they point into the device's mappings), then the
    /// interrupts; the device is reset so the next user starts clean.
    fn drop(&mut self) {
        for p in std::mem::take(&mut self.placed) {
            self.unmap(&p.slots);
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

#[cfg(test)]
mod tests {
    use super::super::config_space::CMD_MEMORY;
    use super::super::host_function::tests::FakeFunction;
    use super::*;
    use crate::vac::tests::kvm_path;
    use crate::vac::Vac;
    use crate::vfio::HostArea;
    use kiln_schema::config::parse;
    use std::path::Path;

    const BAR_SIZE: u64 = 0x4000;

    /// Anonymous memory standing in for the device's mmapped BAR.
    struct HostBar(u64);

    impl HostBar {
        fn new() -> Self {
            // SAFETY: a fresh private anonymous mapping; only KVM slots of
            // the test point into it, and they go before it is unmapped.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    BAR_SIZE as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            HostBar(p as u64)
        }
    }

    impl Drop for HostBar {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, no longer in any slot.
            unsafe { libc::munmap(self.0 as *mut libc::c_void, BAR_SIZE as usize) };
        }
    }

    /// An NVMe-like function: BAR0 mem64 16 KiB, mmapped whole, with a
    /// 2-entry MSI-X table at 0x2000 and the PBA at 0x3000; no INTx pin.
    fn nvme(host: &HostBar) -> Arc<FakeFunction> {
        let mut f = FakeFunction::new(0x1b36, 0x0010);
        f.set32(0x04, 0x0010_0000);
        f.set32(0x10, 0x0000_0004);
        f.set32(0x34, 0x40);
        f.set32(0x40, 0x0001_0011);
        f.set32(0x44, 0x0000_2000);
        f.set32(0x48, 0x0000_3000);
        f.region_sizes.lock().unwrap()[0] = BAR_SIZE;
        f.areas[0] = vec![HostArea {
            offset: 0,
            len: BAR_SIZE,
            addr: host.0,
        }];
        Arc::new(f)
    }

    fn vm() -> Arc<Vm> {
        let cfg = parse(
            Path::new("t.toml"),
            "name = \"t\"\nmemory = \"16M\"\n[boot]\nkernel = \"k\"\n[console]\necho = false\n",
        )
        .unwrap();
        Vm::new(Vac::open(kvm_path()).unwrap(), &cfg).unwrap()
    }

    /// Whether KVM has a slot over the page at `gpa`: a new slot there is
    /// refused while one overlaps it.
    fn slot_at(vm: &Vm, gpa: u64, host: &HostBar) -> bool {
        // SAFETY: `host` outlives the slot, which is removed at once.
        match unsafe { vm.map_device_memory(gpa, 0x1000, host.0) } {
            Ok(slot) => {
                vm.unmap_device_memory(slot).unwrap();
                false
            }
            Err(_) => true,
        }
    }

    fn rd32(f: &PassthroughFunction, addr: u64) -> u32 {
        let mut b = [0u8; 4];
        assert!(f.bar_read(false, addr, &mut b));
        u32::from_le_bytes(b)
    }

    #[test]
    fn a_bar_with_the_msix_table_is_mapped_around_it_and_the_table_still_traps() {
        let host = HostBar::new();
        let fake = nvme(&host);
        let vm = vm();
        let mut bars = BarAllocator::new(16 << 20);
        let mut f = PassthroughFunction::new(
            vm.clone(),
            Box::new(fake.clone()),
            1,
            false,
            &mut bars,
            "nvme",
        )
        .unwrap();
        let gpa = f.placed()[0].gpa;
        // One slot: the registers and doorbells below the table's page.
        assert_eq!(f.placed()[0].slots.len(), 1);
        assert!(slot_at(&vm, gpa, &host));
        assert!(slot_at(&vm, gpa + 0x1000, &host));
        assert!(!slot_at(&vm, gpa + 0x2000, &host), "the table's page traps");
        assert!(!slot_at(&vm, gpa + 0x3000, &host), "the PBA's page traps");

        // MSI-X on; the guest programs entry 0 through the trapped page.
        f.config_write(0x42, &0x8000u16.to_le_bytes());
        assert!(f.bar_write(false, gpa + 0x2000, &0xfee0_0000u32.to_le_bytes()));
        assert!(f.bar_write(false, gpa + 0x2008, &0x41u32.to_le_bytes()));
        assert_eq!(rd32(&f, gpa + 0x2000), 0xfee0_0000);
        assert_eq!(rd32(&f, gpa + 0x2008), 0x41);
        assert_eq!(rd32(&f, gpa + 0x201c), 1, "entry 1 stays masked");
        assert_eq!(f.config.msix().unwrap().entries[0].address, 0xfee0_0000);
        // The PBA is emulated and read-only.
        assert!(f.bar_write(false, gpa + 0x3000, &[0xff; 4]));
        assert_eq!(rd32(&f, gpa + 0x3000), 0);
        assert!(
            fake.regions.lock().unwrap().is_empty(),
            "nothing reached the device"
        );
        // The rest of the trapped page, and any trapped access elsewhere,
        // goes to the device.
        assert!(f.bar_write(false, gpa + 0x2800, &[7]));
        assert!(f.bar_write(false, gpa + 0x1000, &[9]));
        assert_eq!(
            *fake.regions.lock().unwrap(),
            [(0, 0x2800, vec![7]), (0, 0x1000, vec![9])]
        );
        // The fake answers reads with the low byte of the offset.
        assert_eq!(rd32(&f, gpa + 0x3801), 0x0101_0101);

        // Decoding off takes every slot away; on brings them back.
        f.config_write(0x04, &0u16.to_le_bytes());
        assert!(f.placed().is_empty());
        assert!(!slot_at(&vm, gpa, &host));
        f.config_write(0x04, &CMD_MEMORY.to_le_bytes());
        assert_eq!(f.placed()[0].slots.len(), 1);
        assert!(slot_at(&vm, gpa, &host));

        // Moving the BAR moves its slots.
        let to = gpa + 0x10_0000;
        f.config_write(0x10, &((to as u32) | 4).to_le_bytes());
        f.config_write(0x14, &((to >> 32) as u32).to_le_bytes());
        assert_eq!(f.placed()[0].gpa, to);
        assert!(!slot_at(&vm, gpa, &host));
        assert!(slot_at(&vm, to, &host));
        assert!(!slot_at(&vm, to + 0x2000, &host));
        assert_eq!(rd32(&f, to + 0x2008), 0x41, "the table moved along");

        // Dropping the function removes its slots.
        drop(f);
        assert!(!slot_at(&vm, to, &host));
        assert!(!slot_at(&vm, to + 0x1000, &host));
    }

    fn rd_rom(f: &PassthroughFunction, addr: u64) -> Option<[u8; 4]> {
        let mut b = [0u8; 4];
        f.bar_read(false, addr, &mut b).then_some(b)
    }

    #[test]
    fn a_rom_asked_for_decodes_when_enabled_moves_and_forwards_reads_only() {
        let host = HostBar::new();
        let fake = nvme(&host);
        fake.region_sizes.lock().unwrap()[6] = 64 << 10;
        let vm = vm();
        let mut bars = BarAllocator::new(16 << 20);
        let mut f = PassthroughFunction::new(
            vm.clone(),
            Box::new(fake.clone()),
            1,
            true,
            &mut bars,
            "nvme",
        )
        .unwrap();
        // Placed beside BAR0 by the same allocator, naturally aligned, but
        // off (as firmware leaves it): nothing answers there yet.
        let mut reg = [0u8; 4];
        f.config_read(0x30, &mut reg);
        let at = u64::from(u32::from_le_bytes(reg));
        assert_eq!(at & 1, 0);
        assert_eq!(at % (64 << 10), 0);
        assert_ne!(at, f.placed()[0].gpa);
        assert_eq!(
            bars.allocate(BarKind::Mem32, 0x1000).map(|a| a > at),
            Some(true)
        );
        assert_eq!(rd_rom(&f, at), None);
        // Enabled: reads anywhere in it trap and reach the ROM region (the
        // fake answers index + offset); no KVM slot.
        f.config_write(0x30, &((at as u32) | 1).to_le_bytes());
        let rom = f
            .placed()
            .iter()
            .find(|p| p.index == ROM_INDEX)
            .cloned()
            .unwrap();
        assert_eq!((rom.gpa, rom.size), (at, 64 << 10));
        assert!(rom.slots.is_empty());
        assert!(!slot_at(&vm, at, &host));
        assert_eq!(rd_rom(&f, at), Some([6; 4]));
        assert_eq!(rd_rom(&f, at + 0xfff0), Some([0xf6; 4]));
        assert_eq!(rd_rom(&f, at + (64 << 10)), None);
        // Writes are dropped.
        assert!(f.bar_write(false, at + 0x10, &[1, 2, 3, 4]));
        assert!(fake.regions.lock().unwrap().is_empty());
        // Memory space off stops it too.
        f.config_write(0x04, &0u16.to_le_bytes());
        assert_eq!(rd_rom(&f, at), None);
        f.config_write(0x04, &CMD_MEMORY.to_le_bytes());
        assert_eq!(rd_rom(&f, at + 1), Some([7; 4]));
        // Moved: answers at the new address only.
        let to = at + (1 << 20);
        f.config_write(0x30, &((to as u32) | 1).to_le_bytes());
        assert_eq!(rd_rom(&f, at), None);
        assert_eq!(rd_rom(&f, to + 2), Some([8; 4]));
        // Enable bit off: gone.
        f.config_write(0x30, &(to as u32).to_le_bytes());
        assert_eq!(rd_rom(&f, to), None);
    }

    #[test]
    fn a_rom_not_asked_for_stays_hidden() {
        let host = HostBar::new();
        let fake = nvme(&host);
        fake.region_sizes.lock().unwrap()[6] = 64 << 10;
        let vm = vm();
        let mut bars = BarAllocator::new(16 << 20);
        let mut f =
            PassthroughFunction::new(vm, Box::new(fake.clone()), 1, false, &mut bars, "nvme")
                .unwrap();
        let gpa = f.placed()[0].gpa;
        let mut reg = [0u8; 4];
        f.config_read(0x30, &mut reg);
        assert_eq!(reg, [0; 4]);
        // The guest cannot place and enable it either.
        let at = gpa + (1 << 20);
        f.config_write(0x30, &((at as u32) | 1).to_le_bytes());
        f.config_read(0x30, &mut reg);
        assert_eq!(reg, [0; 4]);
        assert!(f.placed().iter().all(|p| p.index != ROM_INDEX));
        assert_eq!(rd_rom(&f, at), None);
        // No address was taken for it: the next BAR goes right after BAR0.
        assert_eq!(
            bars.allocate(BarKind::Mem32, 0x1000),
            Some(gpa + BAR_SIZE.max(0x1000))
        );
    }
}
