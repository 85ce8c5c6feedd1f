//! The PVH memory map (`struct hvm_memmap_table_entry`, E820 types).
//!
//! An entry is `{u64 addr, u64 size, u32 type, u32 reserved}`, little-endian.

/// Size of one memory map entry.
pub const ENTRY_SIZE: usize = 24;
/// E820 type of usable RAM.
pub const TYPE_RAM: u32 = 1;
/// Most entries looked at; more is surely a corrupt map.
pub const MAX_ENTRIES: u32 = 128;

/// One memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The entries of a raw memory map.
pub fn entries(raw: &[u8]) -> impl Iterator<Item = Entry> + '_ {
    raw.chunks_exact(ENTRY_SIZE).filter_map(|e| {
        Some(Entry {
            addr: u64::from_le_bytes(e.get(0..8)?.try_into().ok()?),
            size: u64::from_le_bytes(e.get(8..16)?.try_into().ok()?),
            kind: u32::from_le_bytes(e.get(16..20)?.try_into().ok()?),
        })
    })
}

/// Total RAM in a memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RamSummary {
    pub bytes: u64,
    pub ranges: u32,
}

impl RamSummary {
    /// Sums the type-1 (RAM) entries.
    pub fn of(entries: impl Iterator<Item = Entry>) -> Self {
        entries
            .filter(|e| e.kind == TYPE_RAM)
            .fold(Self::default(), |acc, e| Self {
                bytes: acc.bytes.saturating_add(e.size),
                ranges: acc.ranges.saturating_add(1),
            })
    }

    /// The size rounded up to whole MiB: firmware carves holes smaller than
    /// 1 MiB (the legacy VGA/BIOS area, ACPI tables) out of the RAM the VM was
    /// given, and "64 MiB" is what it was given.
    pub fn mib_rounded_up(&self) -> u64 {
        self.bytes.div_ceil(1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(entries: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(addr, size, kind) in entries {
            v.extend_from_slice(&addr.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&kind.to_le_bytes());
            v.extend_from_slice(&0u32.to_le_bytes());
        }
        v
    }

    #[test]
    fn sums_only_ram_entries() {
        // What QEMU 7.2 q35 hands a PVH guest for `-m 64`.
        let map = raw(&[
            (0, 0x9fc00, 1),
            (0x9fc00, 0x400, 2),
            (0xf0000, 0x10000, 2),
            (0x10_0000, 0x3ed_f000, 1),
            (0x3fd_f000, 0x2_1000, 2),
            (0xb000_0000, 0x1000_0000, 2),
            (0xfed1_c000, 0x4000, 2),
            (0xfffc_0000, 0x4_0000, 2),
            (0xfd_0000_0000, 0x3_0000_0000, 2),
        ]);
        let sum = RamSummary::of(entries(&map));
        assert_eq!(sum.ranges, 2);
        assert_eq!(sum.bytes, 0x9fc00 + 0x3ed_f000);
        assert_eq!(sum.mib_rounded_up(), 64);
    }

    #[test]
    fn ignores_a_trailing_partial_entry() {
        let mut map = raw(&[(0x10_0000, 0x100_0000, 1)]);
        map.extend_from_slice(&[1, 2, 3]);
        let all: Vec<Entry> = entries(&map).collect();
        assert_eq!(
            all,
            [Entry {
                addr: 0x10_0000,
                size: 0x100_0000,
                kind: 1
            }]
        );
        assert_eq!(RamSummary::of(entries(&map)).mib_rounded_up(), 16);
    }
}
