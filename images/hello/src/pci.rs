//! PCI configuration space: access, enumeration, BARs and capabilities.
//!
//! [`Mechanism1`] reaches config space through ports 0xCF8/0xCFC, the access
//! every PC-compatible VMM emulates (ECAM would need the MCFG table). The
//! walk, BAR sizing and capability list are written against [`ConfigAccess`]
//! so device drivers reuse them and the host tests run them on a fake bus.

use core::fmt;

use crate::port::{inb, inl, inw, outb, outl, outw};

/// Register offsets in the common config header.
pub mod reg {
    pub const VENDOR_ID: u8 = 0x00;
    pub const DEVICE_ID: u8 = 0x02;
    pub const COMMAND: u8 = 0x04;
    pub const STATUS: u8 = 0x06;
    /// Revision (byte 0) and class code (bytes 1..4).
    pub const CLASS_REVISION: u8 = 0x08;
    pub const HEADER_TYPE: u8 = 0x0e;
    pub const BAR0: u8 = 0x10;
    /// Type 1 (bridge) header: the bus number behind the bridge.
    pub const SECONDARY_BUS: u8 = 0x19;
    pub const CAPABILITIES: u8 = 0x34;
    pub const INTERRUPT_LINE: u8 = 0x3c;
    pub const INTERRUPT_PIN: u8 = 0x3d;
}

/// Bits of the command register.
pub mod command {
    pub const IO: u16 = 1 << 0;
    pub const MEMORY: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register bit: the capability list at 0x34 is valid.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Capability ID of MSI.
pub const CAP_MSI: u8 = 0x05;
/// Capability ID of MSI-X.
pub const CAP_MSIX: u8 = 0x11;
/// Class code (base, sub) of a host bridge.
const CLASS_HOST_BRIDGE: u32 = 0x0600;

/// A PCI function address (bus, device 0..32, function 0..8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    bus: u8,
    device: u8,
    function: u8,
}

impl Bdf {
    /// The address, or `None` when device ≥ 32 or function ≥ 8.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        if device < 32 && function < 8 {
            Some(Self {
                bus,
                device,
                function,
            })
        } else {
            None
        }
    }

    pub const fn bus(self) -> u8 {
        self.bus
    }

    pub const fn device(self) -> u8 {
        self.device
    }

    pub const fn function(self) -> u8 {
        self.function
    }

    /// The CONFIG_ADDRESS value for the dword holding `offset`.
    const fn config_address(self, offset: u8) -> u32 {
        0x8000_0000
            | (self.bus as u32) << 16
            | (self.device as u32) << 11
            | (self.function as u32) << 8
            | (offset & 0xfc) as u32
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

/// Access to the 256-byte config space of each function.
///
/// Reads have no side effects in config space, so the narrow reads are
/// derived from the dword read. Writes are `unsafe`: a write can move a BAR
/// over RAM or let a device master the bus.
pub trait ConfigAccess {
    /// The dword at `offset & !3`.
    fn read32(&self, bdf: Bdf, offset: u8) -> u32;

    /// Writes the dword at `offset & !3`.
    ///
    /// # Safety
    /// The write must not let the device touch memory this program uses.
    unsafe fn write32(&self, bdf: Bdf, offset: u8, value: u32);

    /// Writes the word at `offset & !1`, leaving the neighbouring word alone
    /// (a read-modify-write would clear write-1-to-clear status bits).
    ///
    /// # Safety
    /// As for [`ConfigAccess::write32`].
    unsafe fn write16(&self, bdf: Bdf, offset: u8, value: u16);

    /// Writes the byte at `offset`.
    ///
    /// # Safety
    /// As for [`ConfigAccess::write32`].
    unsafe fn write8(&self, bdf: Bdf, offset: u8, value: u8);

    /// The word at `offset & !1`.
    fn read16(&self, bdf: Bdf, offset: u8) -> u16 {
        (self.read32(bdf, offset) >> ((offset & 2) * 8)) as u16
    }

    /// The byte at `offset`.
    fn read8(&self, bdf: Bdf, offset: u8) -> u8 {
        (self.read32(bdf, offset) >> ((offset & 3) * 8)) as u8
    }
}

/// Configuration mechanism #1: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC.
///
/// The address/data pair is not atomic; the unikernel runs on one CPU with
/// interrupts off, so no access can interleave with another. For the same
/// reason CONFIG_ADDRESS keeps what this handle last wrote there, which it
/// remembers: an access to the dword already selected skips the write (a
/// VM exit under a VMM; BAR sizing reads and writes one register four
/// times). Every CONFIG_ADDRESS write of the program goes through it.
#[derive(Debug)]
pub struct Mechanism1 {
    selected: Selected,
}

/// What CONFIG_ADDRESS holds, as far as the one handle that writes it knows.
#[derive(Debug)]
struct Selected(core::cell::Cell<u32>);

impl Selected {
    /// Whether `address` must be written to select it; from then on it counts
    /// as selected.
    fn change_to(&self, address: u32) -> bool {
        self.0.replace(address) != address
    }
}

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

impl Mechanism1 {
    /// Checks that CONFIG_ADDRESS latches what is written to it (the test
    /// Linux uses); `None` when no PCI host bridge answers.
    pub fn probe() -> Option<Self> {
        // SAFETY: CONFIG_ADDRESS only selects a register; reading and writing
        // it touches no device state and no memory. The old value is restored.
        unsafe {
            let saved = inl(CONFIG_ADDRESS);
            outl(CONFIG_ADDRESS, 0x8000_0000);
            let latched = inl(CONFIG_ADDRESS);
            outl(CONFIG_ADDRESS, saved);
            (latched == 0x8000_0000).then_some(Self {
                selected: Selected(core::cell::Cell::new(saved)),
            })
        }
    }

    /// Selects the dword holding `offset` of `bdf` in CONFIG_ADDRESS,
    /// unless it is selected already.
    fn select(&self, bdf: Bdf, offset: u8) {
        let address = bdf.config_address(offset);
        if self.selected.change_to(address) {
            // SAFETY: CONFIG_ADDRESS only selects a register; writing it
            // touches no device state and no memory.
            unsafe { outl(CONFIG_ADDRESS, address) };
        }
    }
}

impl ConfigAccess for Mechanism1 {
    fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
        self.select(bdf, offset);
        // SAFETY: reading a config register has no side effect (`probe`
        // established that the ports are the PCI config mechanism).
        unsafe { inl(CONFIG_DATA) }
    }

    fn read16(&self, bdf: Bdf, offset: u8) -> u16 {
        self.select(bdf, offset);
        // SAFETY: as in `read32`.
        unsafe { inw(CONFIG_DATA + u16::from(offset & 2)) }
    }

    fn read8(&self, bdf: Bdf, offset: u8) -> u8 {
        self.select(bdf, offset);
        // SAFETY: as in `read32`.
        unsafe { inb(CONFIG_DATA + u16::from(offset & 3)) }
    }

    unsafe fn write32(&self, bdf: Bdf, offset: u8, value: u32) {
        self.select(bdf, offset);
        // SAFETY: the caller vouches for the effect of the write.
        unsafe { outl(CONFIG_DATA, value) };
    }

    unsafe fn write16(&self, bdf: Bdf, offset: u8, value: u16) {
        self.select(bdf, offset);
        // SAFETY: the caller vouches for the effect of the write.
        unsafe { outw(CONFIG_DATA + u16::from(offset & 2), value) };
    }

    unsafe fn write8(&self, bdf: Bdf, offset: u8, value: u8) {
        self.select(bdf, offset);
        // SAFETY: the caller vouches for the effect of the write.
        unsafe { outb(CONFIG_DATA + u16::from(offset & 3), value) };
    }
}

/// The identity of a present function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// Base class, subclass and programming interface (24 bits).
    pub class: u32,
    pub revision: u8,
    /// Header layout (0 = device, 1 = PCI bridge, 2 = CardBus), without the
    /// multi-function bit.
    pub header_type: u8,
    pub multifunction: bool,
}

impl Function {
    /// Reads the function's header; `None` when nothing answers at `bdf`.
    pub fn read(cfg: &impl ConfigAccess, bdf: Bdf) -> Option<Self> {
        let ids = cfg.read32(bdf, reg::VENDOR_ID);
        let vendor = ids as u16;
        if vendor == 0xffff || vendor == 0 {
            return None;
        }
        let class_rev = cfg.read32(bdf, reg::CLASS_REVISION);
        let header = cfg.read8(bdf, reg::HEADER_TYPE);
        Some(Self {
            bdf,
            vendor,
            device: (ids >> 16) as u16,
            class: class_rev >> 8,
            revision: class_rev as u8,
            header_type: header & 0x7f,
            multifunction: header & 0x80 != 0,
        })
    }

    /// Number of BARs in this header layout.
    pub fn bar_count(&self) -> u8 {
        match self.header_type {
            0 => 6,
            1 => 2,
            _ => 0,
        }
    }

    /// Whether a bus sits behind this function (PCI-to-PCI or CardBus bridge).
    pub fn is_bridge(&self) -> bool {
        matches!(self.header_type, 1 | 2)
    }
}

/// A set of bus numbers.
#[derive(Debug, Clone, Copy, Default)]
struct BusSet([u64; 4]);

impl BusSet {
    fn insert(&mut self, bus: u8) {
        if let Some(word) = self.0.get_mut(usize::from(bus / 64)) {
            *word |= 1 << (bus % 64);
        }
    }

    fn contains(&self, bus: u8) -> bool {
        self.0
            .get(usize::from(bus / 64))
            .is_some_and(|w| w & (1 << (bus % 64)) != 0)
    }
}

/// Visits every function on bus 0 and on every bus behind a bridge, bus by
/// bus in ascending order, each bus once (a misprogrammed bridge cannot loop).
/// Returns how many functions were visited.
pub fn walk(cfg: &impl ConfigAccess, mut visit: impl FnMut(&Function)) -> usize {
    let mut pending = BusSet::default();
    let mut scanned = BusSet::default();
    pending.insert(0);
    let mut count = 0;
    while let Some(bus) = (0..=255u8).find(|&b| pending.contains(b) && !scanned.contains(b)) {
        scanned.insert(bus);
        for device in 0..32 {
            for function in 0..8 {
                let Some(bdf) = Bdf::new(bus, device, function) else {
                    break;
                };
                let Some(f) = Function::read(cfg, bdf) else {
                    // Function 0 absent: no device. Other gaps are allowed.
                    if function == 0 {
                        break;
                    }
                    continue;
                };
                visit(&f);
                count += 1;
                if f.is_bridge() {
                    let secondary = cfg.read8(bdf, reg::SECONDARY_BUS);
                    // Bus 0 is never a secondary bus; it means "unconfigured".
                    if secondary != 0 {
                        pending.insert(secondary);
                    }
                }
                if function == 0 && !f.multifunction {
                    break;
                }
            }
        }
    }
    count
}

/// A decoded base address register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bar {
    Io {
        port: u32,
        size: u32,
    },
    Memory {
        addr: u64,
        size: u64,
        prefetchable: bool,
        is_64bit: bool,
    },
}

impl Bar {
    /// Decodes a BAR from its value and the value read back after all-ones
    /// was written. For a 64-bit memory BAR, `high` is the same pair for the
    /// next BAR. `None` for an unimplemented BAR (reads back zero).
    pub fn decode(value: u32, sized: u32, high: Option<(u32, u32)>) -> Option<Self> {
        if value & 1 == 1 {
            let mask = sized & !0x3;
            // The lowest writable bit is the size; devices decoding only 16
            // bits of I/O return zero in the upper half, which this tolerates.
            let size = mask & mask.wrapping_neg();
            return (size != 0).then_some(Self::Io {
                port: value & !0x3,
                size,
            });
        }
        let is_64bit = value & 0b110 == 0b100;
        let (high_value, high_sized) = if is_64bit {
            high.unwrap_or((0, 0))
        } else {
            (0, 0)
        };
        let mask = u64::from(high_sized) << 32 | u64::from(sized & !0xf);
        let size = mask & mask.wrapping_neg();
        (size != 0).then_some(Self::Memory {
            addr: u64::from(high_value) << 32 | u64::from(value & !0xf),
            size,
            prefetchable: value & 0b1000 != 0,
            is_64bit,
        })
    }
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Io { port, size } => write!(f, "io {port:#x}+{size:#x}"),
            Self::Memory {
                addr,
                size,
                prefetchable,
                is_64bit,
            } => {
                let width = if is_64bit { 64 } else { 32 };
                let pref = if prefetchable { " prefetchable" } else { "" };
                write!(f, "mem{width} {addr:#x}+{size:#x}{pref}")
            }
        }
    }
}

/// Sizes one BAR the standard way: write all-ones, read back, restore.
///
/// # Safety
/// Nothing may use the device's BARs meanwhile (single CPU, no interrupts,
/// no driver active on it); memory and I/O decoding must be off unless the
/// function is a host bridge, whose decoding must never be turned off.
unsafe fn size_bar(cfg: &impl ConfigAccess, bdf: Bdf, offset: u8) -> (u32, u32) {
    let value = cfg.read32(bdf, offset);
    // SAFETY: with decoding off (caller), a BAR holding all-ones claims no
    // address; the original value is written back right after.
    let sized = unsafe {
        cfg.write32(bdf, offset, 0xffff_ffff);
        let sized = cfg.read32(bdf, offset);
        cfg.write32(bdf, offset, value);
        sized
    };
    (value, sized)
}

/// Reads and sizes the BARs of `function`, calling `visit(index, bar)` for
/// each implemented one. Memory and I/O decoding are off while sizing and
/// restored after (left alone on host bridges, as Linux does).
pub fn for_each_bar(cfg: &impl ConfigAccess, function: &Function, mut visit: impl FnMut(u8, Bar)) {
    let bdf = function.bdf;
    let host_bridge = function.class >> 8 == CLASS_HOST_BRIDGE;
    let cmd = cfg.read16(bdf, reg::COMMAND);
    if !host_bridge {
        // SAFETY: turning decoding off only makes the device stop answering
        // at its BARs; nothing in this program uses them while sizing.
        unsafe { cfg.write16(bdf, reg::COMMAND, cmd & !(command::IO | command::MEMORY)) };
    }
    let mut index = 0;
    while index < function.bar_count() {
        let offset = reg::BAR0 + 4 * index;
        // SAFETY: decoding is off (or the function is a host bridge), and
        // nothing else runs.
        let (value, sized) = unsafe { size_bar(cfg, bdf, offset) };
        let is_64bit = value & 0b111 == 0b100;
        let high = if is_64bit && index + 1 < function.bar_count() {
            // SAFETY: as above.
            Some(unsafe { size_bar(cfg, bdf, offset + 4) })
        } else {
            None
        };
        if let Some(bar) = Bar::decode(value, sized, high) {
            visit(index, bar);
        }
        index += if high.is_some() { 2 } else { 1 };
    }
    if !host_bridge {
        // SAFETY: restores the command register the firmware or VMM set.
        unsafe { cfg.write16(bdf, reg::COMMAND, cmd) };
    }
}

/// Moves `bar`, BAR `index` of `bdf`, to `addr` (a port for an I/O BAR)
/// the way an OS does: decoding of the BAR's space off, the register (both
/// halves of a 64-bit BAR) written, the command register restored.
///
/// # Safety
/// Nothing may use the BAR meanwhile, and at `addr` it must overlap no RAM
/// and no other device's BAR.
pub unsafe fn move_bar(cfg: &impl ConfigAccess, bdf: Bdf, index: u8, bar: &Bar, addr: u64) {
    let offset = reg::BAR0 + 4 * index;
    let (decode, is_64bit) = match *bar {
        Bar::Io { .. } => (command::IO, false),
        Bar::Memory { is_64bit, .. } => (command::MEMORY, is_64bit),
    };
    let cmd = cfg.read16(bdf, reg::COMMAND);
    // SAFETY: with decoding off the BAR claims nothing while its halves
    // change; the caller vouches for the new place.
    unsafe {
        cfg.write16(bdf, reg::COMMAND, cmd & !decode);
        cfg.write32(bdf, offset, addr as u32);
        if is_64bit {
            cfg.write32(bdf, offset + 4, (addr >> 32) as u32);
        }
        cfg.write16(bdf, reg::COMMAND, cmd);
    }
}

/// A capability in the list at 0x34: its ID and offset in config space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub id: u8,
    pub offset: u8,
}

/// The function's capability list. At most 48 entries are followed (the
/// most that fit in 192 bytes), so a looping list ends.
pub fn capabilities(cfg: &impl ConfigAccess, bdf: Bdf) -> impl Iterator<Item = Capability> + '_ {
    let has_list = cfg.read16(bdf, reg::STATUS) & STATUS_CAP_LIST != 0;
    let mut next = if has_list {
        cfg.read8(bdf, reg::CAPABILITIES) & 0xfc
    } else {
        0
    };
    let mut left = 48;
    core::iter::from_fn(move || {
        if next < 0x40 || left == 0 {
            return None;
        }
        left -= 1;
        let offset = next;
        let header = cfg.read16(bdf, offset);
        next = (header >> 8) as u8 & 0xfc;
        Some(Capability {
            id: header as u8,
            offset,
        })
    })
}

/// The offset of the first capability with `id`.
pub fn find_capability(cfg: &impl ConfigAccess, bdf: Bdf, id: u8) -> Option<u8> {
    capabilities(cfg, bdf)
        .find(|c| c.id == id)
        .map(|c| c.offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    #[test]
    fn config_address_is_written_only_when_another_dword_is_selected() {
        let selected = Selected(core::cell::Cell::new(0));
        let bar0 = Bdf::new(0, 3, 0).unwrap().config_address(reg::BAR0);
        // BAR sizing: read, write all-ones, read, restore: one selection.
        assert!(selected.change_to(bar0));
        assert!(!selected.change_to(bar0));
        assert!(!selected.change_to(bar0));
        // Another byte of the same dword needs none either; another dword does.
        let cmd = Bdf::new(0, 3, 0).unwrap();
        assert_eq!(
            cmd.config_address(reg::COMMAND),
            cmd.config_address(reg::STATUS)
        );
        assert!(selected.change_to(cmd.config_address(reg::COMMAND)));
        assert!(!selected.change_to(cmd.config_address(reg::STATUS)));
        assert!(selected.change_to(bar0));
    }

    /// A fake bus: 256 bytes of config space per function, BARs that size
    /// like hardware (`bar_sizes` holds the writable mask per BAR offset).
    #[derive(Default)]
    struct FakeBus {
        space: RefCell<BTreeMap<Bdf, [u8; 256]>>,
        bar_masks: BTreeMap<(Bdf, u8), u32>,
    }

    fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
        Bdf::new(bus, device, function).unwrap()
    }

    impl FakeBus {
        fn add(&mut self, at: Bdf, vendor: u16, device: u16, class: u32, header: u8) {
            let mut s = [0u8; 256];
            s[0..2].copy_from_slice(&vendor.to_le_bytes());
            s[2..4].copy_from_slice(&device.to_le_bytes());
            s[8..12].copy_from_slice(&(class << 8 | 0x10).to_le_bytes());
            s[0x0e] = header;
            self.space.borrow_mut().insert(at, s);
        }

        fn poke(&self, at: Bdf, offset: u8, bytes: &[u8]) {
            let mut space = self.space.borrow_mut();
            let s = space.get_mut(&at).unwrap();
            s[usize::from(offset)..usize::from(offset) + bytes.len()].copy_from_slice(bytes);
        }

        fn bar(&mut self, at: Bdf, index: u8, value: u32, mask: u32) {
            self.poke(at, reg::BAR0 + 4 * index, &value.to_le_bytes());
            self.bar_masks.insert((at, reg::BAR0 + 4 * index), mask);
        }

        fn dword(&self, at: Bdf, offset: u8) -> u32 {
            let space = self.space.borrow();
            let s = space.get(&at).unwrap();
            let o = usize::from(offset & 0xfc);
            u32::from_le_bytes(s[o..o + 4].try_into().unwrap())
        }
    }

    impl ConfigAccess for FakeBus {
        fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
            match self.space.borrow().get(&bdf) {
                None => 0xffff_ffff,
                Some(s) => {
                    let o = usize::from(offset & 0xfc);
                    u32::from_le_bytes(s[o..o + 4].try_into().unwrap())
                }
            }
        }

        unsafe fn write32(&self, bdf: Bdf, offset: u8, value: u32) {
            let offset = offset & 0xfc;
            let is_bar = (reg::BAR0..reg::BAR0 + 24).contains(&offset);
            let value = match self.bar_masks.get(&(bdf, offset)) {
                // Only the mask bits are writable; the low flag bits stay.
                Some(&mask) => (value & mask) | (self.dword(bdf, offset) & !mask & 0xf),
                // An unimplemented BAR is hardwired to zero.
                None if is_bar => 0,
                None => value,
            };
            self.poke(bdf, offset, &value.to_le_bytes());
        }

        unsafe fn write16(&self, bdf: Bdf, offset: u8, value: u16) {
            self.poke(bdf, offset & 0xfe, &value.to_le_bytes());
        }

        unsafe fn write8(&self, bdf: Bdf, offset: u8, value: u8) {
            self.poke(bdf, offset, &[value]);
        }
    }

    #[test]
    fn formats_bdf_and_rejects_out_of_range() {
        assert_eq!(bdf(0, 3, 0).to_string(), "00:03.0");
        assert_eq!(bdf(0x1a, 0x1f, 7).to_string(), "1a:1f.7");
        assert_eq!(Bdf::new(0, 32, 0), None);
        assert_eq!(Bdf::new(0, 0, 8), None);
        assert_eq!(bdf(1, 2, 3).config_address(0x3e), 0x8001_133c);
    }

    #[test]
    fn walks_multifunction_devices_and_buses_behind_bridges() {
        let mut bus = FakeBus::default();
        bus.add(bdf(0, 0, 0), 0x8086, 0x29c0, 0x060000, 0);
        bus.add(bdf(0, 3, 0), 0x1234, 0x11e8, 0x00ff00, 0);
        // Function 1 of a single-function device must not be looked at.
        bus.add(bdf(0, 3, 1), 0xdead, 0xbeef, 0, 0);
        bus.add(bdf(0, 0x1f, 0), 0x8086, 0x2918, 0x060100, 0x80);
        bus.add(bdf(0, 0x1f, 3), 0x8086, 0x2930, 0x0c0500, 0);
        bus.add(bdf(0, 0x1c, 0), 0x1b36, 0x000c, 0x060400, 1);
        bus.poke(bdf(0, 0x1c, 0), reg::SECONDARY_BUS, &[2]);
        bus.add(bdf(2, 0, 0), 0x1af4, 0x1041, 0x020000, 0);
        // A bridge naming its own bus must not loop the walk.
        bus.add(bdf(2, 1, 0), 0x1b36, 0x000c, 0x060400, 1);
        bus.poke(bdf(2, 1, 0), reg::SECONDARY_BUS, &[2]);

        let mut seen = Vec::new();
        let n = walk(&bus, |f| seen.push((f.bdf.to_string(), f.vendor, f.class)));
        assert_eq!(n, seen.len());
        assert_eq!(
            seen,
            [
                ("00:00.0".to_string(), 0x8086, 0x060000),
                ("00:03.0".to_string(), 0x1234, 0x00ff00),
                ("00:1c.0".to_string(), 0x1b36, 0x060400),
                ("00:1f.0".to_string(), 0x8086, 0x060100),
                ("00:1f.3".to_string(), 0x8086, 0x0c0500),
                ("02:00.0".to_string(), 0x1af4, 0x020000),
                ("02:01.0".to_string(), 0x1b36, 0x060400),
            ]
        );
    }

    #[test]
    fn an_empty_bus_visits_nothing() {
        assert_eq!(
            walk(&FakeBus::default(), |_| panic!("no function expected")),
            0
        );
    }

    #[test]
    fn decodes_bars() {
        assert_eq!(
            Bar::decode(0xfea0_0000, 0xfff0_0000, None),
            Some(Bar::Memory {
                addr: 0xfea0_0000,
                size: 0x10_0000,
                prefetchable: false,
                is_64bit: false
            })
        );
        assert_eq!(
            Bar::decode(0xc000_000c, 0xffff_c00c, Some((0x8, 0xffff_ffff))),
            Some(Bar::Memory {
                addr: 0x8_c000_0000,
                size: 0x4000,
                prefetchable: true,
                is_64bit: true
            })
        );
        // A 16-bit I/O decoder reads back zero in the upper half.
        assert_eq!(
            Bar::decode(0xc041, 0x0000_ffc1, None),
            Some(Bar::Io {
                port: 0xc040,
                size: 0x40
            })
        );
        assert_eq!(Bar::decode(0, 0, None), None);
        assert_eq!(
            Bar::Memory {
                addr: 0xfea0_0000,
                size: 0x10_0000,
                prefetchable: false,
                is_64bit: false
            }
            .to_string(),
            "mem32 0xfea00000+0x100000"
        );
    }

    #[test]
    fn sizes_bars_and_restores_values_and_command() {
        let mut bus = FakeBus::default();
        let at = bdf(0, 3, 0);
        bus.add(at, 0x1234, 0x11e8, 0x00ff00, 0);
        bus.poke(
            at,
            reg::COMMAND,
            &(command::MEMORY | command::BUS_MASTER).to_le_bytes(),
        );
        bus.bar(at, 0, 0xfea0_0000, 0xfff0_0000);
        bus.bar(at, 2, 0xc000_000c, 0xffff_c000);
        bus.bar(at, 3, 0x0000_0001, 0xffff_ffff);
        bus.bar(at, 4, 0x0000_c041, 0x0000_ffc0);
        let function = Function::read(&bus, at).unwrap();

        let mut bars = Vec::new();
        for_each_bar(&bus, &function, |i, bar| bars.push((i, bar)));
        assert_eq!(
            bars,
            [
                (
                    0,
                    Bar::Memory {
                        addr: 0xfea0_0000,
                        size: 0x10_0000,
                        prefetchable: false,
                        is_64bit: false
                    }
                ),
                (
                    2,
                    Bar::Memory {
                        addr: 0x1_c000_0000,
                        size: 0x4000,
                        prefetchable: true,
                        is_64bit: true
                    }
                ),
                (
                    4,
                    Bar::Io {
                        port: 0xc040,
                        size: 0x40
                    }
                ),
            ]
        );
        assert_eq!(bus.dword(at, reg::BAR0), 0xfea0_0000);
        assert_eq!(bus.dword(at, reg::BAR0 + 8), 0xc000_000c);
        assert_eq!(bus.dword(at, reg::BAR0 + 12), 1);
        assert_eq!(
            bus.read16(at, reg::COMMAND),
            command::MEMORY | command::BUS_MASTER
        );
    }

    #[test]
    fn moves_a_64_bit_bar_with_decoding_off_and_restores_the_command() {
        let mut bus = FakeBus::default();
        let at = bdf(0, 1, 0);
        bus.add(at, 0x1b36, 0x0005, 0x00ff00, 0);
        let cmd = command::MEMORY | command::IO;
        bus.poke(at, reg::COMMAND, &cmd.to_le_bytes());
        bus.bar(at, 2, 0xc100_000c, 0xff00_0000);
        bus.bar(at, 3, 0, 0xffff_ffff);
        let function = Function::read(&bus, at).unwrap();
        let mut bars = Vec::new();
        for_each_bar(&bus, &function, |i, bar| bars.push((i, bar)));
        let (index, bar) = bars[0];
        // SAFETY: a fake bus.
        unsafe { move_bar(&bus, at, index, &bar, 0x1_c300_0000) };
        let mut moved = Vec::new();
        for_each_bar(&bus, &function, |i, bar| moved.push((i, bar)));
        assert_eq!(
            moved,
            [(
                2,
                Bar::Memory {
                    addr: 0x1_c300_0000,
                    size: 0x100_0000,
                    prefetchable: true,
                    is_64bit: true
                }
            )]
        );
        assert_eq!(bus.read16(at, reg::COMMAND), cmd);
    }

    #[test]
    fn follows_the_capability_list_and_stops_on_a_loop() {
        let mut bus = FakeBus::default();
        let at = bdf(0, 3, 0);
        bus.add(at, 0x1234, 0x11e8, 0x00ff00, 0);
        bus.poke(at, reg::STATUS, &STATUS_CAP_LIST.to_le_bytes());
        bus.poke(at, reg::CAPABILITIES, &[0x40]);
        bus.poke(at, 0x40, &[CAP_MSI, 0x50]);
        bus.poke(at, 0x50, &[0x10, 0x00]);
        let caps: Vec<_> = capabilities(&bus, at).map(|c| (c.id, c.offset)).collect();
        assert_eq!(caps, [(CAP_MSI, 0x40), (0x10, 0x50)]);
        assert_eq!(find_capability(&bus, at, 0x10), Some(0x50));
        assert_eq!(find_capability(&bus, at, CAP_MSIX), None);

        bus.poke(at, 0x50, &[0x10, 0x40]);
        assert_eq!(capabilities(&bus, at).count(), 48);
        // Without the status bit the pointer is not trusted.
        bus.poke(at, reg::STATUS, &[0, 0]);
        assert_eq!(capabilities(&bus, at).count(), 0);
    }
}
