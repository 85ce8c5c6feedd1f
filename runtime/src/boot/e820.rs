//! The guest memory map (E820), shared by the Linux zero page and the PVH
//! memory map table: RAM, with the EBDA and BIOS area (MP table, ACPI
//! tables) reserved and the 32-bit MMIO hole left out.

use crate::arch::x86_64::layout::{EBDA_START, HIMEM_START, PCI_ECAM_SIZE, PCI_ECAM_START};
use crate::vm::memory::ram_ranges;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The map for a guest with `mem_size` bytes of RAM.
pub fn memory_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = Vec::new();
    for (start, len) in ram_ranges(mem_size) {
        let end = start + len;
        if start < HIMEM_START {
            // The first range starts at 0: base memory, then the legacy
            // area, then the rest of it.
            map.push(E820Entry {
                addr: start,
                size: EBDA_START - start,
                kind: E820_RAM,
            });
            map.push(E820Entry {
                addr: EBDA_START,
                size: HIMEM_START - EBDA_START,
                kind: E820_RESERVED,
            });
            if end > HIMEM_START {
                map.push(E820Entry {
                    addr: HIMEM_START,
                    size: end - HIMEM_START,
                    kind: E820_RAM,
                });
            }
        } else {
            map.push(E820Entry {
                addr: start,
                size: len,
                kind: E820_RAM,
            });
        }
    }
    // The PCI ECAM window is reserved, as Linux wants MCFG areas to be
    // before it trusts them.
    let at = map.partition_point(|e| e.addr < PCI_ECAM_START);
    map.insert(
        at,
        E820Entry {
            addr: PCI_ECAM_START,
            size: PCI_ECAM_SIZE,
            kind: E820_RESERVED,
        },
    );
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

    fn ram_total(m: &[E820Entry]) -> u64 {
        m.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn without_the_hole() {
        let m = memory_map(128 << 20);
        assert_eq!(
            m,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x60400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x100000,
                    size: (128 << 20) - 0x100000,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: PCI_ECAM_START,
                    size: PCI_ECAM_SIZE,
                    kind: E820_RESERVED
                },
            ]
        );
        assert_eq!(ram_total(&m), (128 << 20) - 0x60400);
    }

    #[test]
    fn with_the_hole() {
        let size = 4u64 << 30;
        let m = memory_map(size);
        assert_eq!(m.len(), 5);
        assert_eq!(m[2].addr + m[2].size, MMIO_HOLE_START);
        assert_eq!((m[3].addr, m[3].kind), (PCI_ECAM_START, E820_RESERVED));
        assert_eq!(
            m[4],
            E820Entry {
                addr: MMIO_HOLE_END,
                size: 1 << 30,
                kind: E820_RAM
            }
        );
        assert_eq!(ram_total(&m), size - 0x60400);
        // Sorted, no overlaps, nothing inside the hole.
        for w in m.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr);
        }
        assert!(m.iter().all(|e| e.kind != E820_RAM
            || e.addr + e.size <= MMIO_HOLE_START
            || e.addr >= MMIO_HOLE_END));
    }
}
