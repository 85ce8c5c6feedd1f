//! Guest RAM: anonymous host memory, optionally on huge pages, split around
//! the 32-bit MMIO hole.

use crate::arch::x86_64::layout::{MMIO_HOLE_END, MMIO_HOLE_START};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

const HUGE_PAGE: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("Guest memory of {0} bytes is not a whole number of 2 MiB huge pages; round `memory` up to a multiple of 2M or turn `hugepages` off")]
    HugePageSize(u64),
    #[error("Guest memory of {0} bytes does not fit in this host's address space")]
    TooLarge(u64),
    #[error("Cannot reserve {size} bytes of guest memory{}", if *.hugepages { " on huge pages; reserve enough of them (/proc/sys/vm/nr_hugepages) or turn `hugepages` off" } else { "; lower `memory` or free host memory" })]
    Map {
        size: u64,
        hugepages: bool,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("Cannot assemble the guest memory map")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
}

/// The RAM ranges `(start, length)` of a guest with `size` bytes of memory:
/// everything from 0, except that what would fall in the MMIO hole moves
/// above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(0, size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, size - MMIO_HOLE_START),
        ]
    }
}

/// The end of RAM below 4 GiB: the highest address initrds and boot data
/// may reach.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

/// Maps `size` bytes of guest RAM. The pages are touched only when the guest
/// uses them, so an idle guest costs little host memory.
pub fn create(size: u64, hugepages: bool) -> Result<GuestMemoryMmap, MemoryError> {
    if hugepages && size % HUGE_PAGE != 0 {
        return Err(MemoryError::HugePageSize(size));
    }
    let mut regions = Vec::new();
    for (start, len) in ram_ranges(size) {
        let len_usize = usize::try_from(len).map_err(|_| MemoryError::TooLarge(size))?;
        // Huge pages are reserved at mmap time (no MAP_NORESERVE), so a host
        // without enough of them fails here instead of with SIGBUS when the
        // guest first touches a page.
        let flags = if hugepages {
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_HUGETLB
        } else {
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE
        };
        let mapping = MmapRegionBuilder::new(len_usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .with_hugetlbfs(hugepages)
            .build()
            .map_err(|source| MemoryError::Map {
                size,
                hugepages,
                source,
            })?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or(MemoryError::TooLarge(size))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_guests_are_one_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(3 << 30), vec![(0, 3 << 30)]);
        assert_eq!(low_ram_end(128 << 20), 128 << 20);
    }

    #[test]
    fn large_guests_skip_the_hole() {
        let r = ram_ranges(5 << 30);
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 2 << 30)]);
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 5 << 30);
        assert_eq!(low_ram_end(5 << 30), 3 << 30);
    }

    #[test]
    fn maps_around_the_hole_without_touching_memory() {
        let m = create((3 << 30) + (64 << 20), false).unwrap();
        let regions: Vec<(u64, u64)> = m
            .iter()
            .map(|r| (r.start_addr().raw_value(), r.len()))
            .collect();
        assert_eq!(regions, vec![(0, 3 << 30), (4 << 30, 64 << 20)]);
        assert!(!m.address_in_range(GuestAddress(MMIO_HOLE_START)));
    }

    #[test]
    fn missing_huge_pages_fail_at_creation() {
        let free: u64 =
            std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
        // Ask for more than the host has free: creation must fail cleanly.
        let size = (free + 1) * HUGE_PAGE;
        let e = create(size, true).unwrap_err();
        assert!(e.to_string().contains("nr_hugepages"), "{e}");
    }

    #[test]
    fn huge_pages_need_whole_pages() {
        let e = create((2 << 20) + 4096, true).unwrap_err();
        assert!(e.to_string().contains("multiple of 2M"), "{e}");
    }
}
