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
//!
//! A guest drives all of this as often as it likes, so the cost of each
//! access is bounded: an access that spans the MSI-X table's edge is split
//! where its target changes, a vector's KVM route is updated only when its
//! message changed and the vector is unmasked (a masked vector's route
//! waits until it is unmasked), the routes one access changes go to KVM in
//! one commit, and what fails is reported as a rate-limited note
//! ([`crate::vm::notes`]).

use super::bar_mapping;
use super::config_space::VirtualConfig;
use super::host_function::{HostError, HostFunction, IrqKind, ROM_REGION};
use super::msi::{Msix, MsixChange};
use crate::arch::x86_64::layout::pci_intx_gsi;
use crate::devices::pci::root::{BarAllocator, PciRootError};
use crate::devices::pci::{BarKind, PciFunction};
use crate::vm::routing::MsiMessage;
use crate::vm::{Vm, VmError};
use kiln_abi::error::Chain;
use std::ops::Range;
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
#[allow(clippy::cast_possible_truncation)] // VFIO's ROM region index is 6
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

/// Where the VMM emulates parts of the BARs: the MSI-X table and PBA, each
/// `(BAR index, offset, length)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Emulated {
    table: (u8, u64, u64),
    pba: (u8, u64, u64),
}

impl Emulated {
    fn of(msix: Option<&Msix>) -> Option<Emulated> {
        msix.map(|x| Emulated {
            table: (x.table_bar, x.table_offset, x.table_len()),
            pba: (x.pba_bar, x.pba_offset, x.pba_len()),
        })
    }

    /// The byte ranges `(offset, len)` of BAR `index` it emulates.
    fn ranges(self, index: u8) -> impl Iterator<Item = (u64, u64)> {
        [self.table, self.pba]
            .into_iter()
            .filter(move |&(bar, _, _)| bar == index)
            .map(|(_, offset, len)| (offset, len))
    }
}

/// Where an access at `offset` of BAR `index` goes.
fn target(emulated: Option<Emulated>, index: u8, offset: u64) -> Target {
    let Some(e) = emulated else {
        return Target::Device;
    };
    let within = |(bar, start, len): (u8, u64, u64)| {
        bar == index && offset.checked_sub(start).is_some_and(|o| o < len)
    };
    if within(e.table) {
        Target::Table(offset.saturating_sub(e.table.1))
    } else if within(e.pba) {
        Target::Pba
    } else {
        Target::Device
    }
}

/// Splits an access of `len` bytes at `offset` of BAR `index` where its
/// target changes (at the edges of the MSI-X table and PBA), so each byte
/// goes where it belongs: calls `f(target, offset of the piece, its bytes
/// in the access)` for each piece.
fn split_by_target(
    emulated: Option<Emulated>,
    index: u8,
    offset: u64,
    len: usize,
    mut f: impl FnMut(Target, u64, Range<usize>),
) {
    let mut done = 0usize;
    while done < len {
        let Some(at) = offset.checked_add(done as u64) else {
            return;
        };
        let edges = emulated
            .into_iter()
            .flat_map(|e| e.ranges(index))
            .flat_map(|(start, len)| [start, start.saturating_add(len)]);
        let rest = len.saturating_sub(done);
        // The piece ends at the next edge or at the end of the access,
        // whichever comes first, so it never exceeds `rest`.
        let n = edges
            .filter(|&edge| edge > at)
            .map(|edge| usize::try_from(edge.saturating_sub(at)).unwrap_or(usize::MAX))
            .fold(rest, usize::min);
        let end = done.saturating_add(n);
        f(target(emulated, index, at), at, done..end);
        done = end;
    }
}

struct Vector {
    fd: EventFd,
    gsi: u32,
    /// The message its KVM route holds.
    routed: MsiMessage,
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
    /// Whether MSI, MSI-X are on at the device (they may have no vectors).
    msi_on: bool,
    msix_on: bool,
    intx: Option<Intx>,
    host: Box<dyn HostFunction>,
    vm: Arc<Vm>,
    /// The host device, for notes.
    name: String,
}

/// A note about device `name` of `vm`: `what` (the kind of note) failed.
fn say(vm: &Vm, name: &str, what: &'static str, e: &dyn std::error::Error) {
    vm.notes().note(
        what,
        format_args!("{name}: cannot {what}: {}", Chain::new(e)),
    );
}

/// Brings vectors `range` of `list` in line with what the guest wants,
/// `want(i)` = (message, unmasked): the routes of unmasked vectors whose
/// message changed go to KVM in one commit (a masked vector's route is
/// updated when it is unmasked), then irqfds are registered or removed.
fn sync_vectors(
    vm: &Vm,
    name: &str,
    list: &mut [Vector],
    range: Range<usize>,
    want: impl Fn(usize) -> (MsiMessage, bool),
) {
    let range = range.start.min(list.len())..range.end.min(list.len());
    let route_of = |i: usize, v: &Vector| {
        let (msg, live) = want(i);
        (live && v.routed != msg).then_some((v.gsi, msg))
    };
    let stale: Vec<usize> = range
        .clone()
        .filter(|&i| list.get(i).and_then(|v| route_of(i, v)).is_some())
        .collect();
    if !stale.is_empty() {
        let routes: Vec<(u32, MsiMessage)> = stale
            .iter()
            .filter_map(|&i| route_of(i, list.get(i)?))
            .collect();
        match vm.update_msi_routes(&routes) {
            Ok(()) => {
                for (&i, &(_, msg)) in stale.iter().zip(&routes) {
                    if let Some(v) = list.get_mut(i) {
                        v.routed = msg;
                    }
                }
            }
            Err(e) => say(vm, name, "update MSI routes", &e),
        }
    }
    for (i, v) in list
        .iter_mut()
        .enumerate()
        .take(range.end)
        .skip(range.start)
    {
        let (_, live) = want(i);
        if live && !v.live {
            match vm.fd().register_irqfd(&v.fd, v.gsi) {
                Ok(()) => v.live = true,
                Err(e) => say(vm, name, "register an MSI irqfd", &e),
            }
        } else if !live && v.live {
            let _ = vm.fd().unregister_irqfd(&v.fd, v.gsi);
            v.live = false;
        }
    }
}

// The host function is a trait object and the vectors hold eventfds: the
// virtual config space and the placed BARs describe the function.
impl std::fmt::Debug for PassthroughFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughFunction")
            .field("config", &self.config)
            .field("placed", &self.placed)
            .finish_non_exhaustive()
    }
}

impl PassthroughFunction {
    /// Takes over `host` for `vm` as device `device` of bus 0: BARs placed
    /// by `bars`, memory decoding on (as firmware leaves it), INTx wired to
    /// the pin's GSI. With `rom`, a device with an expansion ROM shows it
    /// (placed by `bars` in the 32-bit window, its enable bit off as
    /// firmware leaves it). `name` names the device in errors and notes.
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
            msi_on: false,
            msix_on: false,
            intx: None,
            host,
            vm,
            name: name.to_string(),
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

    fn say(&self, what: &'static str, e: &dyn std::error::Error) {
        say(&self.vm, &self.name, what, e);
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
        // INTx GSIs are IOAPIC pins (< 24); 0xff means "not connected".
        self.config
            .set_interrupt_line(u8::try_from(gsi).unwrap_or(0xff));
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
    /// may reach directly; returns their slots. A piece KVM refuses (the
    /// guest put the BAR over its RAM or another BAR) is left out: accesses
    /// there trap, if they reach the VMM at all.
    fn map_pieces(&self, index: u8, gpa: u64, size: u64) -> Vec<u32> {
        if gpa % bar_mapping::PAGE_SIZE != 0 {
            return Vec::new();
        }
        let areas = self.host.region_mappings(u32::from(index));
        let trapped: Vec<(u64, u64)> = Emulated::of(self.config.msix())
            .into_iter()
            .flat_map(|e| e.ranges(index))
            .collect();
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
                Err(e) => self.vm.notes().note(
                    "map a BAR into the guest",
                    format_args!(
                        "{}: cannot map BAR {index} at {at:#x} ({:#x} bytes) into the guest, leaving it to trap: {}",
                        self.name,
                        piece.len,
                        Chain::new(&e)
                    ),
                ),
            }
        }
        slots
    }

    fn unmap(&self, slots: &[u32]) {
        for &slot in slots {
            if let Err(e) = self.vm.unmap_device_memory(slot) {
                self.say("unmap part of a BAR", &e);
            }
        }
    }

    /// The trapped BAR (or ROM) holding `addr` (memory or I/O space): its
    /// index, the offset and the bytes left in it from there. A BAR wins
    /// over a ROM the guest placed on top of it.
    fn trapped(&self, io: bool, addr: u64) -> Option<(u8, u64, u64)> {
        let hit = |p: &Placed| {
            let is_io = p.kind == BarKind::Io;
            let offset = addr.checked_sub(p.gpa)?;
            (is_io == io && offset < p.size)
                .then(|| (p.index, offset, p.size.saturating_sub(offset)))
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
            if self.msi_on {
                self.stop_msi(IrqKind::Msi);
            }
            return;
        }
        if !self.msi_on {
            let n = cap.vectors().min(self.host.irq_count(IrqKind::Msi).max(1));
            let msgs: Vec<MsiMessage> = (0..n).map(|i| cap.message(i)).collect();
            if !self.start_msi(IrqKind::Msi, &msgs) {
                return;
            }
        }
        let all = 0..self.msi.len();
        sync_vectors(&self.vm, &self.name, &mut self.msi, all, |i| {
            // MSI has at most 32 vectors.
            let n = u32::try_from(i).unwrap_or(u32::MAX);
            (cap.message(n), !cap.masked(n))
        });
    }

    fn update_msix(&mut self, mut change: MsixChange) {
        let Some(enabled) = self.config.msix().map(|x| x.enabled()) else {
            return;
        };
        if change == MsixChange::None {
            return;
        }
        if !enabled {
            if self.msix_on {
                self.stop_msi(IrqKind::Msix);
            }
            return;
        }
        if !self.msix_on {
            let n = self.host.irq_count(IrqKind::Msix) as usize;
            let msgs: Vec<MsiMessage> = self.config.msix().map_or_else(Vec::new, |x| {
                x.entries
                    .iter()
                    .take(n)
                    .map(|e| MsiMessage {
                        address: e.address,
                        data: e.data,
                    })
                    .collect()
            });
            if !self.start_msi(IrqKind::Msix, &msgs) {
                return;
            }
            change = MsixChange::Control;
        }
        let Some(x) = self.config.msix() else {
            return;
        };
        let which = change.entries(self.msix.len());
        sync_vectors(&self.vm, &self.name, &mut self.msix, which, |i| {
            let msg = x
                .entries
                .get(i)
                .map_or_else(MsiMessage::default, |e| MsiMessage {
                    address: e.address,
                    data: e.data,
                });
            (msg, x.live(i))
        });
    }

    /// Turns MSI or MSI-X on: INTx off, a vector per message, the device
    /// signalling their eventfds. False when the routes could not be made
    /// (said), and the kind stays off.
    fn start_msi(&mut self, kind: IrqKind, msgs: &[MsiMessage]) -> bool {
        let msix = kind == IrqKind::Msix;
        let (intx_off, route, enable) = if msix {
            (
                "turn INTx off for MSI-X",
                "route MSI-X",
                "enable MSI-X on the device",
            )
        } else {
            (
                "turn INTx off for MSI",
                "route MSI",
                "enable MSI on the device",
            )
        };
        if let Err(e) = self.set_intx(false) {
            self.say(intx_off, &e);
        }
        let vectors = match self.new_vectors(msgs) {
            Ok(v) => v,
            Err(e) => {
                self.say(route, &e);
                return false;
            }
        };
        if !vectors.is_empty() {
            let fds: Vec<&EventFd> = vectors.iter().map(|v| &v.fd).collect();
            if let Err(e) = self.host.enable_irqs(kind, &fds) {
                self.say(enable, e.as_ref());
            }
        }
        if msix {
            (self.msix, self.msix_on) = (vectors, true);
        } else {
            (self.msi, self.msi_on) = (vectors, true);
        }
        true
    }

    /// Turns MSI or MSI-X off: the device's, then its routes, then INTx
    /// back on.
    fn stop_msi(&mut self, kind: IrqKind) {
        let msix = kind == IrqKind::Msix;
        let disable = if msix { "disable MSI-X" } else { "disable MSI" };
        if let Err(e) = self.host.disable_irqs(kind) {
            self.say(disable, e.as_ref());
        }
        let vectors = if msix {
            self.msix_on = false;
            std::mem::take(&mut self.msix)
        } else {
            self.msi_on = false;
            std::mem::take(&mut self.msi)
        };
        self.drop_vectors(vectors);
        if let Err(e) = self.set_intx(true) {
            self.say("re-enable INTx", &e);
        }
    }

    /// One eventfd and route per message, the routes committed together;
    /// no irqfd yet.
    fn new_vectors(&self, msgs: &[MsiMessage]) -> Result<Vec<Vector>, PassthroughError> {
        let fds = msgs
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(PassthroughError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let gsis = self.vm.add_msi_routes(msgs)?;
        Ok(fds
            .into_iter()
            .zip(gsis)
            .zip(msgs)
            .map(|((fd, gsi), &routed)| Vector {
                fd,
                gsi,
                routed,
                live: false,
            })
            .collect())
    }

    fn drop_vectors(&self, vectors: Vec<Vector>) {
        for v in vectors.iter().filter(|v| v.live) {
            let _ = self.vm.fd().unregister_irqfd(&v.fd, v.gsi);
        }
        let gsis: Vec<u32> = vectors.iter().map(|v| v.gsi).collect();
        if let Err(e) = self.vm.remove_msi_routes(&gsis) {
            self.say("remove MSI routes", &e);
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

    /// Reads up to the end of the BAR (bytes past it read all-ones), each
    /// piece from where it belongs: the emulated table or PBA, or the
    /// device.
    fn bar_read(&self, io: bool, addr: u64, data: &mut [u8]) -> bool {
        let Some((index, offset, left)) = self.trapped(io, addr) else {
            return false;
        };
        data.fill(0xff);
        let len = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let Some(data) = data.get_mut(..len) else {
            return true;
        };
        if index == ROM_INDEX {
            self.host.region_read(ROM_REGION, offset, data);
            return true;
        }
        let msix = self.config.msix();
        split_by_target(Emulated::of(msix), index, offset, len, |t, at, range| {
            let Some(piece) = data.get_mut(range) else {
                return;
            };
            match (t, msix) {
                (Target::Table(at), Some(x)) => x.read_table(at, piece),
                (Target::Pba, Some(x)) => x.read_pba(piece),
                _ => self.host.region_read(u32::from(index), at, piece),
            }
        });
        true
    }

    /// Writes up to the end of the BAR, each piece where it belongs; the
    /// MSI-X entries it changed (all of them, when it spans several) are
    /// acted on once.
    fn bar_write(&mut self, io: bool, addr: u64, data: &[u8]) -> bool {
        let Some((index, offset, left)) = self.trapped(io, addr) else {
            return false;
        };
        // The ROM is read-only: writes to it are dropped.
        if index == ROM_INDEX {
            return true;
        }
        let len = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let mut change = MsixChange::None;
        let (host, config) = (&self.host, &mut self.config);
        split_by_target(
            Emulated::of(config.msix()),
            index,
            offset,
            len,
            |t, at, range| {
                let Some(piece) = data.get(range) else {
                    return;
                };
                match t {
                    Target::Table(at) => {
                        if let Some(x) = config.msix_mut() {
                            change = change.and(x.write_table(at, piece));
                        }
                    }
                    // The PBA is read-only.
                    Target::Pba => {}
                    Target::Device => host.region_write(u32::from(index), at, piece),
                }
            },
        );
        self.update_msix(change);
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
        if self.msix_on {
            let _ = self.host.disable_irqs(IrqKind::Msix);
        }
        if self.msi_on {
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
// Tests split addresses into BAR dwords on purpose, and map small BARs.
#[allow(clippy::cast_possible_truncation)]
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
        nvme_with(host, 2)
    }

    /// [`nvme`] with `entries` MSI-X table entries (at most 256, so the
    /// table stays below the PBA) and as many vectors on the host.
    fn nvme_with(host: &HostBar, entries: u16) -> Arc<FakeFunction> {
        let mut f = FakeFunction::new(0x1b36, 0x0010);
        f.set32(0x04, 0x0010_0000);
        f.set32(0x10, 0x0000_0004);
        f.set32(0x34, 0x40);
        f.set32(0x40, 0x0000_0011 | u32::from(entries - 1) << 16);
        f.msix_vectors = u32::from(entries);
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

    fn function(vm: &Arc<Vm>, fake: &Arc<FakeFunction>) -> PassthroughFunction {
        let mut bars = BarAllocator::new(16 << 20);
        PassthroughFunction::new(
            vm.clone(),
            Box::new(fake.clone()),
            1,
            false,
            &mut bars,
            "nvme",
        )
        .unwrap()
    }

    /// Writes MSI-X table entry `i` (table at guest address `table`) the
    /// way Linux does: address, upper address, data, vector control.
    fn program(f: &mut PassthroughFunction, table: u64, i: u64, data: u32, masked: bool) {
        let e = table + 16 * i;
        assert!(f.bar_write(false, e, &0xfee0_1000u32.to_le_bytes()));
        assert!(f.bar_write(false, e + 4, &0u32.to_le_bytes()));
        assert!(f.bar_write(false, e + 8, &data.to_le_bytes()));
        assert!(f.bar_write(false, e + 12, &u32::from(masked).to_le_bytes()));
    }

    fn live(f: &PassthroughFunction) -> Vec<bool> {
        f.msix.iter().map(|v| v.live).collect()
    }

    const MSIX_ON: u16 = 0x8000;
    const MSIX_ON_MASKED: u16 = 0xc000;

    #[test]
    fn rewriting_an_msix_entry_unchanged_commits_the_routes_at_most_once() {
        let host = HostBar::new();
        let fake = nvme(&host);
        let vm = vm();
        let mut f = function(&vm, &fake);
        let table = f.placed()[0].gpa + 0x2000;
        f.config_write(0x42, &MSIX_ON.to_le_bytes());
        let before = vm.routing_commits();
        for _ in 0..1000 {
            program(&mut f, table, 0, 0x41, false);
        }
        let commits = vm.routing_commits() - before;
        assert!(commits <= 1, "{commits} routing commits");
        assert_eq!(live(&f), [true, false]);
    }

    #[test]
    fn masking_and_unmasking_commits_no_routes() {
        let host = HostBar::new();
        let fake = nvme(&host);
        let vm = vm();
        let mut f = function(&vm, &fake);
        let table = f.placed()[0].gpa + 0x2000;
        f.config_write(0x42, &MSIX_ON.to_le_bytes());
        program(&mut f, table, 0, 0x41, false);
        program(&mut f, table, 1, 0x42, false);
        let before = vm.routing_commits();
        for _ in 0..1000 {
            f.config_write(0x42, &MSIX_ON_MASKED.to_le_bytes());
            assert_eq!(live(&f), [false, false]);
            f.config_write(0x42, &MSIX_ON.to_le_bytes());
            assert!(f.bar_write(false, table + 12, &1u32.to_le_bytes()));
            assert_eq!(live(&f), [false, true]);
            assert!(f.bar_write(false, table + 12, &0u32.to_le_bytes()));
            assert_eq!(live(&f), [true, true]);
        }
        let commits = vm.routing_commits() - before;
        assert_eq!(commits, 0, "{commits} routing commits");
    }

    #[test]
    fn setting_up_many_msix_vectors_commits_once_per_vector_at_most() {
        let host = HostBar::new();
        let fake = nvme_with(&host, 64);
        let vm = vm();
        let mut f = function(&vm, &fake);
        let table = f.placed()[0].gpa + 0x2000;
        let before = vm.routing_commits();
        // Enabled with the function masked, as Linux does: one commit for
        // all 64 routes.
        f.config_write(0x42, &MSIX_ON_MASKED.to_le_bytes());
        assert_eq!(f.msix.len(), 64);
        assert_eq!(vm.routing_commits() - before, 1);
        // Each entry programmed while masked, then unmasked: the route goes
        // to KVM once, when the vector goes live.
        for i in 0..64 {
            program(&mut f, table, i, 0x40 + i as u32, true);
        }
        assert_eq!(vm.routing_commits() - before, 1, "masked entries wait");
        f.config_write(0x42, &MSIX_ON.to_le_bytes());
        for i in 0..64 {
            assert!(f.bar_write(false, table + 16 * i + 12, &0u32.to_le_bytes()));
        }
        assert!(live(&f).iter().all(|&l| l));
        assert_eq!(vm.routing_commits() - before, 1 + 64);
        // Disabling takes every route away in one commit.
        f.config_write(0x42, &0u16.to_le_bytes());
        assert!(f.msix.is_empty());
        assert_eq!(vm.routing_commits() - before, 1 + 64 + 1);
    }

    fn qword(low: u32, high: u32) -> [u8; 8] {
        (u64::from(low) | u64::from(high) << 32).to_le_bytes()
    }

    #[test]
    fn an_msix_write_spanning_two_entries_updates_both_vectors() {
        let host = HostBar::new();
        let fake = nvme(&host);
        let vm = vm();
        let mut f = function(&vm, &fake);
        let table = f.placed()[0].gpa + 0x2000;
        f.config_write(0x42, &MSIX_ON.to_le_bytes());
        program(&mut f, table, 0, 0x41, true);
        // One 8-byte store: entry 0's vector control (unmasked) and entry
        // 1's address.
        assert!(f.bar_write(false, table + 12, &qword(0, 0xfee0_2000)));
        assert_eq!(live(&f), [true, false]);
        assert_eq!(f.config.msix().unwrap().entries[1].address, 0xfee0_2000);
        // Entry 1's data and vector control in one store: it goes live on
        // the message it was given.
        assert!(f.bar_write(false, table + 24, &qword(0x43, 0)));
        assert_eq!(live(&f), [true, true]);
        let routed: Vec<MsiMessage> = f.msix.iter().map(|v| v.routed).collect();
        assert_eq!(
            routed,
            [
                MsiMessage {
                    address: 0xfee0_1000,
                    data: 0x41
                },
                MsiMessage {
                    address: 0xfee0_2000,
                    data: 0x43
                }
            ]
        );
    }

    #[test]
    fn a_bar_access_across_the_table_edge_goes_where_each_byte_belongs() {
        let host = HostBar::new();
        let fake = nvme(&host);
        let vm = vm();
        let mut f = function(&vm, &fake);
        let gpa = f.placed()[0].gpa;
        // The table is 0x2000..0x2020. Entry 1's vector control and the
        // device's dword after the table, in one store.
        assert!(f.bar_write(false, gpa + 0x201c, &qword(0, 0x0403_0201)));
        assert!(!f.config.msix().unwrap().entries[1].masked);
        // The device's dword before the table and entry 0's address.
        assert!(f.bar_write(false, gpa + 0x1ffc, &qword(0x0807_0605, 0xfee0_0000)));
        assert_eq!(f.config.msix().unwrap().entries[0].address, 0xfee0_0000);
        assert_eq!(
            *fake.regions.lock().unwrap(),
            [(0, 0x2020, vec![1, 2, 3, 4]), (0, 0x1ffc, vec![5, 6, 7, 8])]
        );
        // Reads likewise (the fake answers the low byte of the offset).
        let mut q = [0u8; 8];
        assert!(f.bar_read(false, gpa + 0x201c, &mut q));
        assert_eq!(q, [0, 0, 0, 0, 0x20, 0x20, 0x20, 0x20]);
        assert!(f.bar_read(false, gpa + 0x1ffc, &mut q));
        assert_eq!(q, [0xfc, 0xfc, 0xfc, 0xfc, 0, 0, 0xe0, 0xfe]);
        // An access reaching past the end of the BAR stops there.
        fake.regions.lock().unwrap().clear();
        assert!(f.bar_write(false, gpa + BAR_SIZE - 4, &[9; 8]));
        assert_eq!(
            *fake.regions.lock().unwrap(),
            [(0, BAR_SIZE - 4, vec![9; 4])]
        );
        assert!(f.bar_read(false, gpa + BAR_SIZE - 4, &mut q));
        assert_eq!(q, [0xfc, 0xfc, 0xfc, 0xfc, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn a_bar_moved_onto_ram_over_and_over_is_noted_three_times() {
        let host = HostBar::new();
        let fake = nvme(&host);
        let vm = vm();
        let mut f = function(&vm, &fake);
        let gpa = f.placed()[0].gpa;
        for _ in 0..100 {
            // Onto the guest's RAM (1 MiB), which KVM refuses to cover...
            f.config_write(0x10, &qword(0x10_0004, 0));
            assert_eq!(f.placed()[0].gpa, 0x10_0000);
            assert!(f.placed()[0].slots.is_empty());
            // ...and back.
            f.config_write(0x10, &qword(gpa as u32 | 4, (gpa >> 32) as u32));
            assert_eq!(f.placed()[0].slots.len(), 1);
        }
        assert_eq!(
            vm.notes().held(),
            100 - u64::from(crate::vm::notes::SHOWN_PER_KIND)
        );
    }

    /// A function with a 64-bit MSI capability with per-vector masks at
    /// 0x40 (mask bits at 0x50), one vector, no BARs.
    fn msi_device() -> Arc<FakeFunction> {
        let f = FakeFunction::new(0x1234, 0x5678);
        f.set32(0x04, 0x0010_0000);
        f.set32(0x34, 0x40);
        f.set32(0x40, 0x0180_0005);
        Arc::new(f)
    }

    #[test]
    fn msi_masking_commits_no_routes_and_a_wide_store_commits_once() {
        let fake = msi_device();
        let vm = vm();
        let mut f = function(&vm, &fake);
        f.config_write(0x44, &qword(0xfee0_0000, 0));
        f.config_write(0x4c, &0x41u32.to_le_bytes());
        f.config_write(0x42, &1u16.to_le_bytes());
        assert_eq!(f.msi.iter().map(|v| v.live).collect::<Vec<_>>(), [true]);
        let before = vm.routing_commits();
        for _ in 0..1000 {
            f.config_write(0x50, &1u32.to_le_bytes());
            assert!(!f.msi[0].live);
            f.config_write(0x50, &0u32.to_le_bytes());
            assert!(f.msi[0].live);
        }
        assert_eq!(vm.routing_commits() - before, 0);
        // A new address in one 8-byte store: one commit, nothing for the
        // device.
        f.config_write(0x44, &qword(0xfee0_1000, 0));
        assert_eq!(vm.routing_commits() - before, 1);
        assert_eq!(f.msi[0].routed.address, 0xfee0_1000);
        assert!(
            fake.writes().iter().all(|(o, _)| *o == 0x04),
            "{:?}",
            fake.writes()
        );
    }
}
