//! The MSI and MSI-X state a guest programs, kept by the VMM rather than
//! written to the device: the VMM turns it into KVM routes and VFIO
//! eventfds (PCI Local Bus 3.0 §6.8, the capability layouts).

use crate::vm::routing::MsiMessage;

pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_MSIX: u8 = 0x11;

const MSI_CTL_ENABLE: u16 = 1 << 0;
const MSI_CTL_64BIT: u16 = 1 << 7;
const MSI_CTL_PER_VECTOR_MASK: u16 = 1 << 8;

/// The MSI capability (registers after the 2-byte header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsiCap {
    /// Message control; the read-only bits come from the device.
    control: u16,
    address: u64,
    data: u16,
    mask: u32,
}

impl MsiCap {
    /// From the device's message control word.
    pub fn new(device_control: u16) -> Self {
        MsiCap {
            // Enabled and the number of enabled vectors start at zero.
            control: device_control & !(MSI_CTL_ENABLE | 0x70),
            address: 0,
            data: 0,
            mask: 0,
        }
    }

    pub fn is_64bit(&self) -> bool {
        self.control & MSI_CTL_64BIT != 0
    }

    pub fn per_vector_mask(&self) -> bool {
        self.control & MSI_CTL_PER_VECTOR_MASK != 0
    }

    pub fn enabled(&self) -> bool {
        self.control & MSI_CTL_ENABLE != 0
    }

    /// Vectors the guest enabled (Multiple Message Enable, capped by Capable).
    pub fn vectors(&self) -> u32 {
        let capable = (self.control >> 1) & 7;
        let enabled = ((self.control >> 4) & 7).min(capable);
        1 << enabled
    }

    /// The message vector `i` sends: the low data bits carry the vector number.
    pub fn message(&self, i: u32) -> MsiMessage {
        let n = self.vectors();
        let low = n.saturating_sub(1);
        let data = (u32::from(self.data) & !low) | (i & low);
        MsiMessage {
            address: self.address,
            data,
        }
    }

    pub fn masked(&self, i: u32) -> bool {
        self.per_vector_mask() && i < 32 && self.mask & (1 << i) != 0
    }

    /// Length of the capability in config space, header included.
    pub fn size(&self) -> u16 {
        match (self.is_64bit(), self.per_vector_mask()) {
            (false, false) => 10,
            (true, false) => 14,
            (false, true) => 20,
            (true, true) => 24,
        }
    }

    fn data_offset(&self) -> u16 {
        if self.is_64bit() {
            12
        } else {
            8
        }
    }

    /// Reads the dword at `offset` (from the capability's start); the
    /// header's first two bytes are the caller's.
    pub fn read_dword(&self, offset: u16, header: u16) -> u32 {
        let d = self.data_offset();
        match offset & !3 {
            0 => u32::from(header) | u32::from(self.control) << 16,
            4 => (self.address & 0xffff_ffff) as u32,
            8 if self.is_64bit() => (self.address >> 32) as u32,
            o if o == d => u32::from(self.data),
            o if self.per_vector_mask() && o == d.saturating_add(4) => self.mask,
            _ => 0,
        }
    }

    /// Writes `value` (the whole dword after merging the guest's bytes).
    /// Returns whether anything the interrupt plumbing depends on changed.
    pub fn write_dword(&mut self, offset: u16, value: u32) -> bool {
        let before = self.clone();
        let d = self.data_offset();
        match offset & !3 {
            0 => {
                let ctl = (value >> 16) as u16;
                // Only Enable and Multiple Message Enable are writable.
                self.control =
                    (self.control & !(MSI_CTL_ENABLE | 0x70)) | (ctl & (MSI_CTL_ENABLE | 0x70));
            }
            4 => self.address = (self.address & !0xffff_ffff) | u64::from(value & !3),
            8 if self.is_64bit() => {
                self.address = (self.address & 0xffff_ffff) | u64::from(value) << 32
            }
            // Message data is 16 bits; the upper half is extended data.
            o if o == d => self.data = super::config_space::low_u16(value),
            o if self.per_vector_mask() && o == d.saturating_add(4) => self.mask = value,
            _ => {}
        }
        *self != before
    }
}

const MSIX_CTL_ENABLE: u16 = 1 << 15;
const MSIX_CTL_FUNCTION_MASK: u16 = 1 << 14;
pub const MSIX_ENTRY_SIZE: u64 = 16;

/// One MSI-X table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntry {
    pub address: u64,
    pub data: u32,
    pub masked: bool,
}

impl Default for MsixEntry {
    fn default() -> Self {
        // Entries come out of reset masked.
        MsixEntry {
            address: 0,
            data: 0,
            masked: true,
        }
    }
}

/// The MSI-X capability's control word and the vector table, which the
/// VMM traps in its BAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msix {
    control: u16,
    pub table_bar: u8,
    pub table_offset: u64,
    pub pba_bar: u8,
    pub pba_offset: u64,
    pub entries: Vec<MsixEntry>,
}

/// What a guest write to MSI-X state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MsixChange {
    #[default]
    None,
    /// Enable or function mask flipped: every vector may have changed.
    Control,
    /// The message or mask of entries `first..=last` changed (a write that
    /// spans entries changes each it touches).
    Entries { first: u16, last: u16 },
}

impl MsixChange {
    /// What `self` and then `other` changed together.
    pub fn and(self, other: MsixChange) -> MsixChange {
        match (self, other) {
            (MsixChange::None, x) | (x, MsixChange::None) => x,
            (MsixChange::Control, _) | (_, MsixChange::Control) => MsixChange::Control,
            (
                MsixChange::Entries { first: a, last: b },
                MsixChange::Entries { first: c, last: d },
            ) => MsixChange::Entries {
                first: a.min(c),
                last: b.max(d),
            },
        }
    }

    /// The entries changed, as a range of indexes into `0..len`.
    pub fn entries(self, len: usize) -> std::ops::Range<usize> {
        match self {
            MsixChange::None => 0..0,
            MsixChange::Control => 0..len,
            MsixChange::Entries { first, last } => {
                usize::from(first).min(len)..(usize::from(last) + 1).min(len)
            }
        }
    }
}

impl Msix {
    /// From the capability's three dwords as the device has them.
    pub fn new(dword0: u32, table: u32, pba: u32) -> Self {
        let control = (dword0 >> 16) as u16;
        let size = usize::from(control & 0x7ff) + 1;
        Msix {
            control: control & 0x7ff,
            table_bar: (table & 7) as u8,
            table_offset: u64::from(table & !7),
            pba_bar: (pba & 7) as u8,
            pba_offset: u64::from(pba & !7),
            entries: vec![MsixEntry::default(); size],
        }
    }

    pub fn enabled(&self) -> bool {
        self.control & MSIX_CTL_ENABLE != 0
    }

    pub fn function_masked(&self) -> bool {
        self.control & MSIX_CTL_FUNCTION_MASK != 0
    }

    /// Whether vector `i` may fire: enabled, neither it nor the function masked.
    pub fn live(&self, i: usize) -> bool {
        self.enabled() && !self.function_masked() && self.entries.get(i).is_some_and(|e| !e.masked)
    }

    pub fn control(&self) -> u16 {
        self.control
    }

    pub fn write_control(&mut self, value: u16) -> MsixChange {
        let new = (self.control & 0x7ff) | (value & (MSIX_CTL_ENABLE | MSIX_CTL_FUNCTION_MASK));
        if new == self.control {
            return MsixChange::None;
        }
        self.control = new;
        MsixChange::Control
    }

    pub fn table_len(&self) -> u64 {
        (self.entries.len() as u64).saturating_mul(MSIX_ENTRY_SIZE)
    }

    /// The PBA's length in bytes: one bit per entry, in whole qwords.
    pub fn pba_len(&self) -> u64 {
        (self.entries.len() as u64).div_ceil(64).saturating_mul(8)
    }

    /// Reads the table at `offset` (from the table's start); bytes past
    /// its end read 0.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                *b = 0;
                continue;
            };
            let Some(e) = self.entries.get((at / MSIX_ENTRY_SIZE) as usize) else {
                *b = 0;
                continue;
            };
            let dword = match (at % MSIX_ENTRY_SIZE) / 4 {
                0 => (e.address & 0xffff_ffff) as u32,
                1 => (e.address >> 32) as u32,
                2 => e.data,
                _ => u32::from(e.masked),
            };
            *b = dword.to_le_bytes()[(at % 4) as usize];
        }
    }

    /// Writes the table at `offset` (from the table's start); bytes past
    /// its end are dropped. Returns the entries that changed: every one
    /// the write touched and changed, when it spans several.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> MsixChange {
        let mut change = MsixChange::None;
        for (i, b) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                continue;
            };
            // MSI-X tables hold at most 2048 entries: a larger index is
            // outside the table.
            let Ok(index) = u16::try_from(at / MSIX_ENTRY_SIZE) else {
                continue;
            };
            let Some(e) = self.entries.get_mut(usize::from(index)) else {
                continue;
            };
            let before = *e;
            let shift = (at % 4).saturating_mul(8);
            let byte_mask = !(0xffu32 << shift);
            let put = |v: u32| (v & byte_mask) | u32::from(*b) << shift;
            match (at % MSIX_ENTRY_SIZE) / 4 {
                0 => {
                    e.address = (e.address & !0xffff_ffff)
                        | u64::from(put((e.address & 0xffff_ffff) as u32))
                }
                1 => {
                    e.address =
                        (e.address & 0xffff_ffff) | u64::from(put((e.address >> 32) as u32)) << 32
                }
                2 => e.data = put(e.data),
                _ => e.masked = put(u32::from(e.masked)) & 1 != 0,
            }
            if *e != before {
                change = change.and(MsixChange::Entries {
                    first: index,
                    last: index,
                });
            }
        }
        change
    }

    /// The pending bit array: what a guest reads there. Kiln delivers or
    /// drops, it never holds a vector pending, so it reads as zero.
    pub fn read_pba(&self, data: &mut [u8]) {
        data.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_enable_address_and_data() {
        // edu's control: 64-bit capable, one vector.
        let mut m = MsiCap::new(0x0080);
        assert!(m.is_64bit() && !m.per_vector_mask() && !m.enabled());
        assert_eq!(m.size(), 14);
        assert!(m.write_dword(4, 0xfee0_1000));
        assert!(!m.write_dword(8, 0), "the high half is already zero");
        assert!(m.write_dword(12, 0x41));
        assert!(!m.write_dword(12, 0x41), "same value: no change");
        assert!(m.write_dword(0, 0x0001_0000 | 0x1234));
        assert!(m.enabled());
        assert_eq!(m.vectors(), 1);
        assert_eq!(
            m.message(0),
            MsiMessage {
                address: 0xfee0_1000,
                data: 0x41
            }
        );
        // The header bytes are the caller's; control reads back with enable.
        assert_eq!(m.read_dword(0, 0x5005), 0x0081_5005);
        assert_eq!(m.read_dword(12, 0), 0x41);
    }

    #[test]
    fn msi_multiple_vectors_and_masks() {
        // 32-bit, per-vector mask, 4 vectors capable (MMC = 2).
        let mut m = MsiCap::new(0x0104);
        assert_eq!(m.size(), 20);
        m.write_dword(8, 0x60); // data at 8 for 32-bit
        m.write_dword(0, (0x0001 | 0x0030) << 16); // enable, MME = 3 (capped to 2)
        assert_eq!(m.vectors(), 4);
        assert_eq!(m.message(3).data, 0x63);
        assert!(!m.masked(1));
        m.write_dword(12, 0b10);
        assert!(m.masked(1) && !m.masked(0));
        assert_eq!(m.read_dword(12, 0), 0b10);
        // Read-only capability bits cannot be written.
        m.write_dword(0, 0xffff_0000);
        assert!(!m.is_64bit() && m.per_vector_mask());
    }

    #[test]
    fn msix_control_and_table() {
        // 3 entries, table in BAR 2 at 0x1000, PBA in BAR 2 at 0x2000.
        let mut x = Msix::new(0x0002_0011, 0x1002, 0x2002);
        assert_eq!(
            (x.table_bar, x.table_offset, x.entries.len()),
            (2, 0x1000, 3)
        );
        assert_eq!((x.pba_bar, x.pba_offset), (2, 0x2000));
        assert!(!x.live(0));
        assert_eq!(x.write_control(0x8000), MsixChange::Control);
        assert!(!x.live(0), "entries start masked");
        let one = MsixChange::Entries { first: 1, last: 1 };
        assert_eq!(x.write_table(16, &0xfee0_0000u32.to_le_bytes()), one);
        x.write_table(24, &0x33u32.to_le_bytes());
        assert_eq!(x.write_table(28, &0u32.to_le_bytes()), one);
        assert!(x.live(1) && !x.live(0));
        assert_eq!(
            x.entries[1],
            MsixEntry {
                address: 0xfee0_0000,
                data: 0x33,
                masked: false
            }
        );
        let mut b = [0u8; 4];
        x.read_table(24, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x33);
        x.read_table(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1, "entry 0 still masked");
        assert_eq!(x.write_control(0xc000), MsixChange::Control);
        assert!(!x.live(1), "function mask");
        assert_eq!(
            x.write_table(0x1000, &[1]),
            MsixChange::None,
            "beyond the table"
        );
    }

    #[test]
    fn a_write_spanning_entries_changes_each_it_touches() {
        let mut x = Msix::new(0x0003_0011, 0, 0x1000);
        // 8 bytes at the last dword of entry 0 and the first of entry 1:
        // entry 0 unmasked, entry 1's address written.
        let mut qword = [0u8; 8];
        qword[4..].copy_from_slice(&0xfee0_2000u32.to_le_bytes());
        assert_eq!(
            x.write_table(12, &qword),
            MsixChange::Entries { first: 0, last: 1 }
        );
        assert!(!x.entries[0].masked);
        assert_eq!(x.entries[1].address, 0xfee0_2000);
        assert!(x.entries[1].masked, "its vector control was not written");
        // Misaligned: the last 2 bytes of entry 1's data and vector
        // control, then entry 2's address, through entry 3.
        let bytes = [0xaa; 40];
        assert_eq!(
            x.write_table(16 + 10, &bytes),
            MsixChange::Entries { first: 1, last: 3 }
        );
        assert_eq!(x.entries[1].data, 0xaaaa_0000);
        assert_eq!(x.entries[2].address, 0xaaaa_aaaa_aaaa_aaaa);
        assert_eq!(x.entries[3].address & 0xffff, 0xaaaa);
        // Rewriting the same bytes changes nothing.
        assert_eq!(x.write_table(16 + 10, &bytes), MsixChange::None);
        // Reaching past the table, or the top of the address space, drops
        // the bytes there.
        assert_eq!(
            x.write_table(60, &[1; 8]),
            MsixChange::Entries { first: 3, last: 3 }
        );
        assert!(x.entries[3].masked);
        assert_eq!(x.write_table(u64::MAX - 3, &[1; 8]), MsixChange::None);
        let mut b = [0xffu8; 8];
        x.read_table(u64::MAX - 3, &mut b);
        assert_eq!(b, [0; 8]);
    }

    #[test]
    fn changes_combine() {
        let e = |first, last| MsixChange::Entries { first, last };
        assert_eq!(MsixChange::None.and(e(3, 3)), e(3, 3));
        assert_eq!(e(3, 3).and(e(1, 1)), e(1, 3));
        assert_eq!(e(3, 3).and(MsixChange::Control), MsixChange::Control);
        assert_eq!(e(2, 5).entries(4), 2..4);
        assert_eq!(MsixChange::Control.entries(4), 0..4);
        assert_eq!(MsixChange::None.entries(4), 0..0);
        assert_eq!(e(7, 9).entries(4), 4..4);
    }
}
