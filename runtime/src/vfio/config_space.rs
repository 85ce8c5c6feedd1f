//! The config space a guest sees of a passed-through function: the
//! device's own registers, except what the VMM must own.
//!
//! Virtualized: the BARs (guest addresses, the sizing protocol), the
//! expansion ROM BAR (hidden, reading 0, unless the VM asks for the ROM:
//! then a guest address, the sizing protocol and the enable bit), the
//! interrupt line, the header
//! type's multi-function bit, the capability list (only capabilities kiln
//! can pass through stay linked; extended capabilities are hidden) and the
//! MSI and MSI-X capabilities (kept here, turned into routes by the caller).
//! Everything else, the command register included, goes to the device.
//!
//! Accesses of any width (1, 2, 4 or 8 bytes, aligned or not) are split
//! into the dwords they touch, and each piece goes through the same
//! virtualization: a wide write never reaches the device past the register
//! it starts in.

use super::host_function::{HostFunction, ROM_REGION};
use super::msi::{MsiCap, Msix, MsixChange, CAP_ID_MSI, CAP_ID_MSIX};
use crate::devices::pci::{for_each_dword, BarKind};

pub const COMMAND: u16 = 0x04;
pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;
const STATUS_CAP_LIST: u32 = 1 << (16 + 4);
const BAR0: u16 = 0x10;
const ROM_BAR: u16 = 0x30;
const CAP_PTR: u16 = 0x34;
const INTERRUPT_LINE: u16 = 0x3c;
/// The ROM BAR's address bits (31:11) and its enable bit; bits 10:1 are
/// reserved and read 0.
const ROM_ADDR_MASK: u64 = 0xffff_f800;
const ROM_ENABLE: u32 = 1;
/// The smallest ROM the BAR can describe (bit 11 is its lowest address bit).
const ROM_MIN_SIZE: u64 = 0x800;
const HEADER_TYPE_DWORD: u16 = 0x0c;
/// Capabilities a guest may see: power management, MSI, PCI Express, MSI-X,
/// vendor-specific. Others (debug ports, hot-plug, ...) are unlinked.
const KEPT_CAPS: &[u8] = &[0x01, CAP_ID_MSI, 0x09, 0x10, CAP_ID_MSIX];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    pub index: u8,
    pub kind: BarKind,
    pub size: u64,
    pub prefetchable: bool,
    /// The guest address (or port) the BAR register holds.
    pub addr: u64,
}

impl Bar {
    fn flags(&self) -> u64 {
        match self.kind {
            BarKind::Io => 1,
            BarKind::Mem32 => u64::from(self.prefetchable) << 3,
            BarKind::Mem64 => 0b100 | u64::from(self.prefetchable) << 3,
        }
    }

    fn field_max(&self) -> u64 {
        match self.kind {
            BarKind::Mem64 => u64::MAX,
            _ => u64::from(u32::MAX),
        }
    }

    /// Whether the register holds a usable address rather than zero or the
    /// all-ones sizing pattern.
    pub fn placed(&self) -> bool {
        let limit = if self.kind == BarKind::Io {
            0x1_0000
        } else {
            self.field_max()
        };
        self.addr != 0
            && (self.addr | self.size.saturating_sub(1)) != self.field_max()
            && self
                .addr
                .checked_add(self.size)
                .is_some_and(|end| end <= limit)
    }
}

/// The expansion ROM as the guest sees it, when the VM asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rom {
    /// The ROM region's size: a power of two from 2 KiB to 2 GiB.
    pub size: u64,
    /// The guest address the ROM BAR holds.
    pub addr: u64,
    /// The ROM BAR's enable bit.
    pub enabled: bool,
}

impl Rom {
    /// A ROM of `size` bytes, if the ROM BAR can describe that size.
    fn new(size: u64) -> Option<Self> {
        (size.is_power_of_two() && (ROM_MIN_SIZE..=1 << 31).contains(&size)).then_some(Rom {
            size,
            addr: 0,
            enabled: false,
        })
    }

    fn register(&self) -> u32 {
        // The mask keeps the value in 32 bits.
        (self.addr & ROM_ADDR_MASK & !self.size.saturating_sub(1)) as u32 | u32::from(self.enabled)
    }

    /// Whether the register holds a usable address rather than zero or the
    /// sizing pattern.
    pub fn placed(&self) -> bool {
        self.addr != 0
            && (self.addr | self.size.saturating_sub(1)) != u64::from(u32::MAX)
            && self
                .addr
                .checked_add(self.size)
                .is_some_and(|end| end <= 1 << 32)
    }
}

/// What a config write changed, for the caller to act on; a write that
/// spans registers may change several things.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConfigChange {
    /// A BAR or ROM address or the decode enables changed: re-place the
    /// BARs.
    pub bars: bool,
    pub msi: bool,
    pub msix: MsixChange,
}

impl ConfigChange {
    pub const NONE: ConfigChange = ConfigChange {
        bars: false,
        msi: false,
        msix: MsixChange::None,
    };
    pub const BARS: ConfigChange = ConfigChange {
        bars: true,
        ..Self::NONE
    };
    pub const MSI: ConfigChange = ConfigChange {
        msi: true,
        ..Self::NONE
    };

    pub fn msix(change: MsixChange) -> ConfigChange {
        ConfigChange {
            msix: change,
            ..Self::NONE
        }
    }

    /// What `self` and then `other` changed together.
    pub fn and(self, other: ConfigChange) -> ConfigChange {
        ConfigChange {
            bars: self.bars || other.bars,
            msi: self.msi || other.msi,
            msix: self.msix.and(other.msix),
        }
    }
}

/// One kept capability: where, and the next kept one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cap {
    offset: u16,
    id: u8,
    next: u8,
}

#[derive(Debug, Clone)]
pub struct VirtualConfig {
    bars: Vec<Bar>,
    rom: Option<Rom>,
    command: u16,
    line: u8,
    caps: Vec<Cap>,
    msi: Option<(u16, MsiCap)>,
    msix: Option<(u16, Msix)>,
}

fn read_u32(dev: &dyn HostFunction, offset: u16) -> u32 {
    let mut b = [0u8; 4];
    dev.config_read(offset, &mut b);
    u32::from_le_bytes(b)
}

impl VirtualConfig {
    /// Reads the device's BARs (kinds from the BAR registers, sizes from the
    /// VFIO regions) and capability list. With `show_rom`, a device with a
    /// ROM region shows it through its ROM BAR; otherwise that reads 0.
    pub fn new(dev: &dyn HostFunction, show_rom: bool) -> Self {
        let mut bars = Vec::new();
        let mut i = 0u8;
        while i < 6 {
            let raw = read_u32(dev, BAR0.saturating_add(4u16.saturating_mul(u16::from(i))));
            let size = dev.region_size(u32::from(i));
            let kind = if raw & 1 == 1 {
                BarKind::Io
            } else if raw & 0b110 == 0b100 {
                BarKind::Mem64
            } else {
                BarKind::Mem32
            };
            if size.is_power_of_two() && size >= 4 {
                bars.push(Bar {
                    index: i,
                    kind,
                    size,
                    prefetchable: raw & 0b1000 != 0 && kind != BarKind::Io,
                    addr: 0,
                });
            }
            i = i.saturating_add(if kind == BarKind::Mem64 { 2 } else { 1 });
        }

        let mut found = Vec::new();
        let status = read_u32(dev, COMMAND);
        let mut next = if status & STATUS_CAP_LIST != 0 {
            (read_u32(dev, CAP_PTR) & 0xfc) as u16
        } else {
            0
        };
        // At most 48 capabilities fit in 192 bytes: a looping list ends.
        let mut left = 48u8;
        while next >= 0x40 && left > 0 {
            left = left.saturating_sub(1);
            let header = read_u32(dev, next);
            // The capability ID is the header's low byte.
            found.push((next, header.to_le_bytes()[0], header));
            next = ((header >> 8) & 0xfc) as u16;
        }
        let mut msi = None;
        let mut msix = None;
        let kept: Vec<(u16, u8)> = found
            .iter()
            .filter(|(_, id, _)| KEPT_CAPS.contains(id))
            .map(|&(off, id, header)| {
                if id == CAP_ID_MSI && msi.is_none() {
                    msi = Some((off, MsiCap::new((header >> 16) as u16)));
                }
                if id == CAP_ID_MSIX && msix.is_none() {
                    msix = Some((
                        off,
                        Msix::new(
                            header,
                            read_u32(dev, off.saturating_add(4)),
                            read_u32(dev, off.saturating_add(8)),
                        ),
                    ));
                }
                (off, id)
            })
            .collect();
        let caps = kept
            .iter()
            .enumerate()
            .map(|(i, &(offset, id))| Cap {
                offset,
                id,
                // Offsets are below 0x100 (masked to 0xfc when read).
                next: kept
                    .get(i.saturating_add(1))
                    .map_or(0, |n| u8::try_from(n.0).unwrap_or(0)),
            })
            .collect();
        let rom = if show_rom {
            Rom::new(dev.region_size(ROM_REGION))
        } else {
            None
        };
        VirtualConfig {
            bars,
            rom,
            // The command register is the low half of command/status.
            command: low_u16(status),
            line: 0,
            caps,
            msi,
            msix,
        }
    }

    pub fn bars(&self) -> &[Bar] {
        &self.bars
    }

    pub fn bar_mut(&mut self, index: u8) -> Option<&mut Bar> {
        self.bars.iter_mut().find(|b| b.index == index)
    }

    /// The expansion ROM, when the guest is shown one.
    pub fn rom(&self) -> Option<&Rom> {
        self.rom.as_ref()
    }

    pub fn rom_mut(&mut self) -> Option<&mut Rom> {
        self.rom.as_mut()
    }

    /// Whether the guest lets the ROM decode: memory space and the ROM
    /// BAR's own enable bit.
    pub fn rom_decodes(&self) -> bool {
        self.command & CMD_MEMORY != 0 && self.rom.is_some_and(|r| r.enabled)
    }

    pub fn command(&self) -> u16 {
        self.command
    }

    /// Whether the guest lets the BAR decode (command register enables).
    pub fn decodes(&self, bar: &Bar) -> bool {
        let bit = if bar.kind == BarKind::Io {
            CMD_IO
        } else {
            CMD_MEMORY
        };
        self.command & bit != 0
    }

    pub fn set_interrupt_line(&mut self, line: u8) {
        self.line = line;
    }

    pub fn msi(&self) -> Option<&MsiCap> {
        self.msi.as_ref().map(|(_, m)| m)
    }

    pub fn msix(&self) -> Option<&Msix> {
        self.msix.as_ref().map(|(_, m)| m)
    }

    pub fn msix_mut(&mut self) -> Option<&mut Msix> {
        self.msix.as_mut().map(|(_, m)| m)
    }

    /// The BAR register at `reg` (0x10..0x28), if it belongs to a BAR.
    fn bar_reg(&self, reg: u16) -> Option<(usize, bool)> {
        let n = u8::try_from(reg.checked_sub(BAR0)? / 4).ok()?;
        self.bars.iter().enumerate().find_map(|(i, b)| {
            if b.index == n {
                Some((i, false))
            } else if b.kind == BarKind::Mem64 && b.index.checked_add(1) == Some(n) {
                Some((i, true))
            } else {
                None
            }
        })
    }

    /// The dword at `reg` (dword-aligned) as the guest sees it.
    pub fn read_dword(&self, dev: &dyn HostFunction, reg: u16) -> u32 {
        if reg >= 0x100 {
            // Extended capabilities are hidden: a zero header ends the list.
            return 0;
        }
        if let Some((o, msi)) = &self.msi {
            if reg.checked_sub(*o).is_some_and(|r| r < msi.size()) {
                let next = self.next_of(*o);
                return msi.read_dword(
                    reg.saturating_sub(*o),
                    u16::from(CAP_ID_MSI) | u16::from(next) << 8,
                );
            }
        }
        if let Some((o, x)) = &self.msix {
            if reg == *o {
                let next = self.next_of(*o);
                return u32::from(CAP_ID_MSIX)
                    | u32::from(next) << 8
                    | u32::from(x.control()) << 16;
            }
        }
        match reg {
            BAR0..=0x24 => match self.bar_reg(reg) {
                Some((i, high)) => {
                    let b = self.bars[i];
                    let value = (b.addr & !b.size.saturating_sub(1) & b.field_max()) | b.flags();
                    if high {
                        (value >> 32) as u32
                    } else {
                        (value & 0xffff_ffff) as u32
                    }
                }
                None => 0,
            },
            ROM_BAR => self.rom.map_or(0, |r| r.register()),
            CAP_PTR => {
                let dev_value = read_u32(dev, reg);
                (dev_value & !0xff)
                    | u32::from(
                        self.caps
                            .first()
                            .map_or(0, |c| u8::try_from(c.offset).unwrap_or(0)),
                    )
            }
            INTERRUPT_LINE => (read_u32(dev, reg) & !0xff) | u32::from(self.line),
            HEADER_TYPE_DWORD => read_u32(dev, reg) & !(0x80 << 16),
            COMMAND => {
                let v = read_u32(dev, reg);
                if self.caps.is_empty() {
                    v & !STATUS_CAP_LIST
                } else {
                    v
                }
            }
            _ => {
                let v = read_u32(dev, reg);
                match self.caps.iter().find(|c| c.offset == reg) {
                    Some(c) => (v & !0xff00) | u32::from(c.next) << 8,
                    None => v,
                }
            }
        }
    }

    fn next_of(&self, offset: u16) -> u8 {
        self.caps
            .iter()
            .find(|c| c.offset == offset)
            .map_or(0, |c| c.next)
    }

    /// Reads `data.len()` bytes at `offset`, each dword they touch as the
    /// guest sees it; bytes past config space read all-ones.
    pub fn read(&self, dev: &dyn HostFunction, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        for_each_dword(offset, data.len(), |at, range| {
            let value = self.read_dword(dev, at & !3).to_le_bytes();
            let start = usize::from(at & 3);
            if let Some(piece) = data.get_mut(range) {
                for (i, b) in piece.iter_mut().enumerate() {
                    *b = value.get(start.saturating_add(i)).copied().unwrap_or(0xff);
                }
            }
        });
    }

    /// Writes `data` at `offset`: each dword it touches goes through the
    /// virtualization on its own; bytes past config space are dropped.
    pub fn write(&mut self, dev: &dyn HostFunction, offset: u16, data: &[u8]) -> ConfigChange {
        let mut change = ConfigChange::NONE;
        for_each_dword(offset, data.len(), |at, range| {
            if let Some(piece) = data.get(range) {
                change = change.and(self.write_within(dev, at, piece));
            }
        });
        change
    }

    /// Writes `data` at `offset`, within one dword.
    fn write_within(&mut self, dev: &dyn HostFunction, offset: u16, data: &[u8]) -> ConfigChange {
        let reg = offset & !3;
        let start = usize::from(offset & 3);
        let merge = |old: u32| {
            let mut bytes = old.to_le_bytes();
            for (i, b) in data.iter().enumerate() {
                if let Some(slot) = bytes.get_mut(start.saturating_add(i)) {
                    *slot = *b;
                }
            }
            u32::from_le_bytes(bytes)
        };
        if reg >= 0x100 {
            return ConfigChange::NONE;
        }
        if let Some((o, _)) = &self.msi {
            let o = *o;
            let len = self.msi.as_ref().map_or(0, |(_, m)| m.size());
            if reg.checked_sub(o).is_some_and(|r| r < len) {
                let value = merge(self.read_dword(dev, reg));
                let changed = self
                    .msi
                    .as_mut()
                    .is_some_and(|(_, m)| m.write_dword(reg.saturating_sub(o), value));
                return if changed {
                    ConfigChange::MSI
                } else {
                    ConfigChange::NONE
                };
            }
        }
        if let Some((o, _)) = &self.msix {
            let o = *o;
            if reg == o {
                let value = merge(self.read_dword(dev, reg));
                let change = self.msix.as_mut().map_or(MsixChange::None, |(_, x)| {
                    x.write_control((value >> 16) as u16)
                });
                return ConfigChange::msix(change);
            }
            if reg > o && reg < o.saturating_add(12) {
                return ConfigChange::NONE; // table/PBA locations are read-only
            }
        }
        match reg {
            BAR0..=0x24 => {
                let Some((i, high)) = self.bar_reg(reg) else {
                    return ConfigChange::NONE;
                };
                let value = u64::from(merge(self.read_dword(dev, reg)));
                let b = &mut self.bars[i];
                let old = b.addr;
                let addr = if high {
                    (b.addr & 0xffff_ffff) | value << 32
                } else {
                    (b.addr & !0xffff_ffff) | value
                };
                let mask = match b.kind {
                    BarKind::Io => !3u64,
                    _ => !0xfu64,
                };
                b.addr = addr & mask & !b.size.saturating_sub(1) & b.field_max();
                if b.addr != old {
                    ConfigChange::BARS
                } else {
                    ConfigChange::NONE
                }
            }
            ROM_BAR => {
                let value = merge(self.read_dword(dev, reg));
                let Some(rom) = self.rom.as_mut() else {
                    return ConfigChange::NONE;
                };
                let old = *rom;
                rom.addr = u64::from(value) & ROM_ADDR_MASK & !rom.size.saturating_sub(1);
                rom.enabled = value & ROM_ENABLE != 0;
                if *rom != old {
                    ConfigChange::BARS
                } else {
                    ConfigChange::NONE
                }
            }
            CAP_PTR => ConfigChange::NONE,
            INTERRUPT_LINE => {
                if start == 0 {
                    if let Some(b) = data.first() {
                        self.line = *b;
                    }
                }
                ConfigChange::NONE
            }
            COMMAND => {
                dev.config_write(offset, data);
                let old = self.command;
                if start < 2 {
                    self.command = low_u16(merge(u32::from(old)));
                }
                if (old ^ self.command) & (CMD_IO | CMD_MEMORY) != 0 {
                    ConfigChange::BARS
                } else {
                    ConfigChange::NONE
                }
            }
            _ => {
                // A capability header's ID and next pointer are the VMM's;
                // the bytes after them are the device's.
                if self.caps.iter().any(|c| c.offset == reg) && start < 2 {
                    if let Some(rest) = data
                        .get(2usize.saturating_sub(start)..)
                        .filter(|r| !r.is_empty())
                    {
                        dev.config_write(reg.saturating_add(2), rest);
                    }
                    return ConfigChange::NONE;
                }
                dev.config_write(offset, data);
                ConfigChange::NONE
            }
        }
    }
}

/// The low 16 bits of a register: a word within a dword.
pub(crate) fn low_u16(v: u32) -> u16 {
    let [a, b, ..] = v.to_le_bytes();
    u16::from_le_bytes([a, b])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::host_function::tests::FakeFunction;
    use super::*;

    /// edu's config space: BAR0 mem32 1 MiB, MSI (64-bit) at 0x40 followed by
    /// a hidden capability (ID 0x0c) at 0x50 and a PCIe one at 0x60.
    pub fn edu() -> FakeFunction {
        let f = FakeFunction::new(0x1234, 0x11e8);
        f.set32(0x04, 0x0010_0000); // status: capability list
        f.set32(0x0c, 0x0080_0000); // multi-function bit set
        f.set32(0x10, 0x0000_0000);
        f.set32(0x30, 0xfffe_0001); // a ROM the guest must not see
        f.set32(0x34, 0x40);
        f.set32(0x3c, 0x0000_0100); // INTA
        f.set32(0x40, 0x0080_5005);
        f.set32(0x50, 0x0000_600c);
        f.set32(0x60, 0x0000_0010);
        f.region_sizes.lock().unwrap()[0] = 1 << 20;
        f
    }

    fn rd(c: &VirtualConfig, f: &FakeFunction, reg: u16) -> u32 {
        c.read_dword(f, reg)
    }

    #[test]
    fn bars_size_and_move_like_hardware() {
        let f = edu();
        let mut c = VirtualConfig::new(&f, false);
        assert_eq!(c.bars().len(), 1);
        assert_eq!(c.bars()[0].kind, BarKind::Mem32);
        c.bar_mut(0).unwrap().addr = 0xc000_0000;
        assert_eq!(rd(&c, &f, 0x10), 0xc000_0000);
        // Sizing: all-ones reads back the size mask, and is not "placed".
        assert_eq!(c.write(&f, 0x10, &[0xff; 4]), ConfigChange::BARS);
        assert_eq!(rd(&c, &f, 0x10), 0xfff0_0000);
        assert!(!c.bars()[0].placed());
        // Unimplemented BARs read zero and stay zero.
        c.write(&f, 0x14, &[0xff; 4]);
        assert_eq!(rd(&c, &f, 0x14), 0);
        // A new address moves the BAR; low bits are dropped.
        assert_eq!(
            c.write(&f, 0x10, &0xd012_3456u32.to_le_bytes()),
            ConfigChange::BARS
        );
        assert_eq!(c.bars()[0].addr, 0xd010_0000);
        assert!(c.bars()[0].placed());
        // Nothing reached the device's own BAR register.
        assert!(f.writes().is_empty());
    }

    #[test]
    fn sixty_four_bit_prefetchable_and_io_bars() {
        let f = FakeFunction::new(0x8086, 0x1234);
        f.set32(0x10, 0x0000_000c); // 64-bit prefetchable
        f.set32(0x18, 0x0000_0001); // I/O
        f.region_sizes.lock().unwrap()[0] = 1 << 32;
        f.region_sizes.lock().unwrap()[2] = 0x20;
        let mut c = VirtualConfig::new(&f, false);
        let kinds: Vec<_> = c
            .bars()
            .iter()
            .map(|b| (b.index, b.kind, b.prefetchable))
            .collect();
        assert_eq!(kinds, [(0, BarKind::Mem64, true), (2, BarKind::Io, false)]);
        c.write(&f, 0x10, &[0xff; 4]);
        c.write(&f, 0x14, &[0xff; 4]);
        assert_eq!(rd(&c, &f, 0x10), 0x0000_000c);
        assert_eq!(rd(&c, &f, 0x14), 0xffff_ffff);
        c.write(&f, 0x10, &0u32.to_le_bytes());
        c.write(&f, 0x14, &0x10u32.to_le_bytes());
        assert_eq!(c.bars()[0].addr, 0x10_0000_0000);
        c.write(&f, 0x18, &[0xff; 4]);
        assert_eq!(rd(&c, &f, 0x18), 0xffff_ffe1);
        c.write(&f, 0x18, &0xc020u32.to_le_bytes());
        assert_eq!(rd(&c, &f, 0x18), 0xc021);
        assert!(c.bars()[1].placed());
        // Decoding follows the command register, which reaches the device.
        assert!(!c.decodes(&c.bars()[1]));
        assert_eq!(c.write(&f, 0x04, &[0x03, 0x00]), ConfigChange::BARS);
        assert!(c.decodes(&c.bars()[0]) && c.decodes(&c.bars()[1]));
        assert_eq!(f.writes(), [(0x04, vec![0x03, 0x00])]);
    }

    #[test]
    fn rom_hidden_caps_filtered_msi_emulated() {
        let f = edu();
        let mut c = VirtualConfig::new(&f, false);
        assert_eq!(rd(&c, &f, 0x30), 0);
        assert_eq!(rd(&c, &f, 0x0c) & 0x0080_0000, 0, "single function");
        assert_eq!(rd(&c, &f, 0x34) & 0xff, 0x40);
        // MSI links straight to the PCIe capability: 0x0c is unlinked.
        assert_eq!(rd(&c, &f, 0x40) & 0xffff, 0x6005);
        assert_eq!(rd(&c, &f, 0x60) & 0xffff, 0x0010);
        assert_eq!(rd(&c, &f, 0x100), 0);
        // MSI programming stays in the VMM.
        assert_eq!(
            c.write(&f, 0x44, &0xfee0_0000u32.to_le_bytes()),
            ConfigChange::MSI
        );
        assert_eq!(c.write(&f, 0x4c, &0x41u16.to_le_bytes()), ConfigChange::MSI);
        assert_eq!(
            c.write(&f, 0x42, &0x0001u16.to_le_bytes()),
            ConfigChange::MSI
        );
        let msi = c.msi().unwrap();
        assert!(msi.enabled());
        assert_eq!(msi.message(0).data, 0x41);
        let mut b = [0u8; 2];
        c.read(&f, 0x42, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x0081);
        // The interrupt line is the VMM's; the pin is the device's.
        c.set_interrupt_line(10);
        c.write(&f, 0x3c, &[5]);
        assert_eq!(rd(&c, &f, 0x3c) & 0xffff, 0x0105);
        assert!(f.writes().is_empty());
        // Other registers reach the device.
        c.write(&f, 0x48, &[1, 2, 3, 4]);
        c.write(&f, 0x70, &[9]);
        assert_eq!(f.writes(), [(0x70, vec![9])]);
    }

    #[test]
    fn the_rom_bar_sizes_enables_and_moves_when_asked_for() {
        let f = edu();
        f.region_sizes.lock().unwrap()[6] = 64 << 10;
        let mut c = VirtualConfig::new(&f, true);
        assert_eq!(c.rom().map(|r| r.size), Some(64 << 10));
        c.rom_mut().unwrap().addr = 0xc010_0000;
        assert_eq!(rd(&c, &f, 0x30), 0xc010_0000);
        // Sizing as Linux does it (all ones but the enable bit): the address
        // bits of a 64 KiB ROM, the reserved bits 10:1 read 0.
        assert_eq!(
            c.write(&f, 0x30, &0xffff_fffeu32.to_le_bytes()),
            ConfigChange::BARS
        );
        assert_eq!(rd(&c, &f, 0x30), 0xffff_0000);
        assert!(!c.rom().unwrap().placed());
        c.write(&f, 0x30, &[0xff; 4]);
        assert_eq!(rd(&c, &f, 0x30), 0xffff_0001);
        // A new address moves it, dropping the bits below its size; it
        // decodes only with both the enable bit and memory space on.
        assert_eq!(
            c.write(&f, 0x30, &0xd012_3400u32.to_le_bytes()),
            ConfigChange::BARS
        );
        assert_eq!(rd(&c, &f, 0x30), 0xd012_0000);
        assert!(c.rom().unwrap().placed());
        assert!(!c.rom_decodes());
        assert_eq!(c.write(&f, 0x30, &[0x01]), ConfigChange::BARS);
        assert_eq!(rd(&c, &f, 0x30), 0xd012_0001);
        assert!(!c.rom_decodes(), "memory space is off");
        c.write(&f, 0x04, &CMD_MEMORY.to_le_bytes());
        assert!(c.rom_decodes());
        assert_eq!(c.write(&f, 0x30, &[0x00]), ConfigChange::BARS);
        assert!(!c.rom_decodes());
        // Rewriting the same value changes nothing.
        assert_eq!(c.write(&f, 0x30, &[0x00]), ConfigChange::NONE);
        // Only the command register reached the device.
        assert_eq!(f.writes(), [(0x04, CMD_MEMORY.to_le_bytes().to_vec())]);
    }

    #[test]
    fn the_rom_stays_hidden_unless_asked_for_and_present() {
        let f = edu();
        f.region_sizes.lock().unwrap()[6] = 64 << 10;
        // Present but not asked for.
        let mut c = VirtualConfig::new(&f, false);
        assert!(c.rom().is_none());
        assert_eq!(c.write(&f, 0x30, &[0xff; 4]), ConfigChange::NONE);
        assert_eq!(rd(&c, &f, 0x30), 0);
        // Asked for, but the device has no ROM region, or one the ROM BAR
        // cannot describe.
        for size in [0, 0x400, 0x3000] {
            f.region_sizes.lock().unwrap()[6] = size;
            let mut c = VirtualConfig::new(&f, true);
            assert!(c.rom().is_none(), "{size:#x}");
            c.write(&f, 0x30, &[0xff; 4]);
            assert_eq!(rd(&c, &f, 0x30), 0, "{size:#x}");
        }
        // The smallest ROM: 2 KiB, bit 11 its lowest address bit.
        f.region_sizes.lock().unwrap()[6] = 0x800;
        let mut c = VirtualConfig::new(&f, true);
        c.write(&f, 0x30, &0xffff_fffeu32.to_le_bytes());
        assert_eq!(rd(&c, &f, 0x30), 0xffff_f800);
        assert!(f.writes().is_empty());
    }

    #[test]
    fn msix_capability_control_is_virtual() {
        let f = FakeFunction::new(0x8086, 0x10ca);
        f.set32(0x04, 0x0010_0000);
        f.set32(0x34, 0x70);
        f.set32(0x70, 0x0002_0011); // MSI-X, 3 entries, last capability
        f.set32(0x74, 0x0000_3000);
        f.set32(0x78, 0x0000_3800);
        f.region_sizes.lock().unwrap()[0] = 0x4000;
        let mut c = VirtualConfig::new(&f, false);
        let x = c.msix().unwrap();
        assert_eq!(
            (x.table_bar, x.table_offset, x.entries.len()),
            (0, 0x3000, 3)
        );
        assert_eq!(
            c.write(&f, 0x72, &0x8000u16.to_le_bytes()),
            ConfigChange::msix(MsixChange::Control)
        );
        assert!(c.msix().unwrap().enabled());
        assert_eq!(rd(&c, &f, 0x70), 0x8002_0011);
        c.write(&f, 0x74, &[0; 4]);
        assert_eq!(rd(&c, &f, 0x74), 0x3000);
        assert!(f.writes().is_empty());
    }

    fn qword(low: u32, high: u32) -> [u8; 8] {
        (u64::from(low) | u64::from(high) << 32).to_le_bytes()
    }

    #[test]
    fn an_eight_byte_write_is_virtualized_per_register() {
        let f = edu();
        let mut c = VirtualConfig::new(&f, false);
        c.bar_mut(0).unwrap().addr = 0xc000_0000;
        // The header dword (the device's: cache line size, latency timer,
        // BIST) and BAR0 (the VMM's) in one store: BAR0 moves, and only the
        // header dword reaches the device.
        let q = qword(0x0000_0010, 0xd000_0000);
        assert_eq!(c.write(&f, 0x0c, &q), ConfigChange::BARS);
        assert_eq!(c.bars()[0].addr, 0xd000_0000);
        assert_eq!(f.writes(), [(0x0c, q[..4].to_vec())]);
        // Read back the same way: the header without the multi-function
        // bit, then BAR0 as the VMM keeps it.
        let mut r = [0u8; 8];
        c.read(&f, 0x0c, &mut r);
        assert_eq!(r, qword(0x0000_0000, 0xd000_0000));
        f.writes.lock().unwrap().clear();

        // The vendor and device IDs (the device's) and the command
        // register (passed on, and tracked): memory decoding goes on.
        let q = qword(0xffff_ffff, u32::from(CMD_MEMORY));
        assert_eq!(c.write(&f, 0x00, &q), ConfigChange::BARS);
        assert_eq!(c.command(), CMD_MEMORY);
        assert_eq!(
            f.writes(),
            [(0x00, q[..4].to_vec()), (0x04, q[4..].to_vec())]
        );
        f.writes.lock().unwrap().clear();

        // MSI's control word and address in one store: both the VMM's, one
        // change, nothing for the device.
        let q = qword(0x0001_0000, 0xfee0_0000);
        assert_eq!(c.write(&f, 0x40, &q), ConfigChange::MSI);
        assert!(c.msi().unwrap().enabled());
        assert_eq!(c.msi().unwrap().message(0).address, 0xfee0_0000);
        // MSI's data (the VMM's) and the hidden capability after it (the
        // device's).
        assert_eq!(
            c.write(&f, 0x4c, &qword(0x41, 0x0403_0201)),
            ConfigChange::MSI
        );
        assert_eq!(c.msi().unwrap().message(0).data, 0x41);
        assert_eq!(f.writes(), [(0x50, vec![1, 2, 3, 4])]);
        f.writes.lock().unwrap().clear();

        // Unaligned: the device ID (the device's) and the command register
        // (passed on, and tracked), split where the dword ends.
        assert_eq!(c.write(&f, 0x02, &[0x11, 0x22, 0, 0]), ConfigChange::BARS);
        assert_eq!(c.command(), 0);
        assert_eq!(f.writes(), [(0x02, vec![0x11, 0x22]), (0x04, vec![0, 0])]);
        f.writes.lock().unwrap().clear();

        // Past the end of config space: dropped, and reads all-ones.
        assert_eq!(c.write(&f, 0xffc, &[1; 8]), ConfigChange::NONE);
        assert!(f.writes().is_empty());
        c.read(&f, 0xffc, &mut r);
        assert_eq!(r, [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn a_capability_header_keeps_its_links_and_passes_the_rest() {
        let f = edu();
        let mut c = VirtualConfig::new(&f, false);
        // The PCIe capability at 0x60 is kept: its ID and next pointer are
        // the VMM's, its capabilities register (bytes 2-3) the device's.
        assert_eq!(c.write(&f, 0x60, &[0xaa, 0xbb, 1, 2]), ConfigChange::NONE);
        assert_eq!(rd(&c, &f, 0x60) & 0xffff, 0x0010);
        assert_eq!(f.writes(), [(0x62, vec![1, 2])]);
        assert_eq!(c.write(&f, 0x61, &[0xbb]), ConfigChange::NONE);
        assert_eq!(f.writes().len(), 1);
    }
}
