//! Guest RAM: anonymous host memory, optionally on huge pages, split around
//! the 32-bit MMIO hole.

use crate::arch::x86_64::layout::{MMIO_HOLE_END, MMIO_HOLE_START};
use std::ops::Deref;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

const HUGE_PAGE: u64 = 2 << 20;

/// `KILN_VMM_PREFAULT=1` makes every page of guest RAM resident before the
/// vCPUs start (`MADV_POPULATE_WRITE`), for bench/vmm.sh's prefault
/// measurement only: a runtime built without the `dev-hooks` feature
/// (every shipped one) ignores it (docs/benchmarks.md says why it is not
/// the behaviour).
pub const PREFAULT_ENV: &str = "KILN_VMM_PREFAULT";

fn prefault_asked() -> bool {
    cfg!(feature = "dev-hooks") && std::env::var_os(PREFAULT_ENV).is_some_and(|v| v == "1")
}

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
    #[error("Cannot reserve {size} bytes of guest memory; lower `memory` or free host memory")]
    Reserve {
        size: u64,
        #[source]
        source: std::io::Error,
    },
}

/// Guest RAM and the host mappings behind it. It reads as the
/// `GuestMemoryMmap`; the mappings it owns are unmapped only after that
/// memory is gone (fields drop in order).
#[derive(Debug)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    _mappings: Vec<AlignedMapping>,
}

impl Deref for GuestRam {
    type Target = GuestMemoryMmap;
    fn deref(&self) -> &GuestMemoryMmap {
        &self.memory
    }
}

/// Anonymous memory that starts on a 2 MiB boundary. KVM maps a guest with
/// 2 MiB pages only where guest-physical and host-virtual addresses agree
/// modulo 2 MiB and the host backs them with a huge page; with transparent
/// huge pages that needs an aligned mapping, which Linux before 6.7 does not
/// give large anonymous mappings by itself. Nested Linux guests boot about
/// twice as fast on such memory.
#[derive(Debug)]
struct AlignedMapping {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving the owner
// to another thread changes nothing about who may unmap it.
unsafe impl Send for AlignedMapping {}
// SAFETY: shared references only read `addr`/`len`; the memory itself is
// accessed through vm-memory, which handles concurrent guest access.
unsafe impl Sync for AlignedMapping {}

impl AlignedMapping {
    fn new(len: usize) -> std::io::Result<Self> {
        // A 2 MiB constant.
        #[allow(clippy::cast_possible_truncation)]
        let align = HUGE_PAGE as usize;
        let total = len
            .checked_add(align)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh anonymous private mapping at an address the kernel
        // picks (no MAP_FIXED): it cannot alias any existing memory.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = (base as usize).next_multiple_of(align);
        let head = start - base as usize;
        let tail = total - head - len;
        // SAFETY: both ranges lie inside the mapping just made and outside
        // [start, start + len), which is all that is kept; nothing refers to
        // them yet.
        unsafe {
            if head > 0 {
                libc::munmap(base, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
        }
        let addr = start as *mut libc::c_void;
        // Ask for huge pages also where the host's THP mode is `madvise`;
        // failure only costs speed.
        // SAFETY: advice on our own mapping; it changes no contents.
        let _ = unsafe { libc::madvise(addr, len, libc::MADV_HUGEPAGE) };
        Ok(AlignedMapping { addr, len })
    }
}

impl Drop for AlignedMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours, and `GuestRam` drops the guest memory
        // that points into it before this value.
        unsafe { libc::munmap(self.addr, self.len) };
    }
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
pub fn create(size: u64, hugepages: bool) -> Result<GuestRam, MemoryError> {
    if hugepages && size % HUGE_PAGE != 0 {
        return Err(MemoryError::HugePageSize(size));
    }
    let prefault = prefault_asked();
    let mut regions = Vec::new();
    let mut mappings = Vec::new();
    for (start, len) in ram_ranges(size) {
        let len_usize = usize::try_from(len).map_err(|_| MemoryError::TooLarge(size))?;
        let map_err = |source| MemoryError::Map {
            size,
            hugepages,
            source,
        };
        let mapping = if hugepages {
            // Huge pages are reserved at mmap time (no MAP_NORESERVE), so a
            // host without enough of them fails here instead of with SIGBUS
            // when the guest first touches a page. hugetlb mappings are
            // aligned to their page size by the kernel.
            MmapRegionBuilder::new(len_usize)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_HUGETLB)
                .with_hugetlbfs(true)
                .build()
                .map_err(map_err)?
        } else {
            let host = AlignedMapping::new(len_usize)
                .map_err(|source| MemoryError::Reserve { size, source })?;
            // SAFETY: `host` is a live mapping of exactly `len_usize` bytes,
            // kept alive by the `GuestRam` returned below for as long as the
            // region that points into it.
            let region = unsafe {
                MmapRegionBuilder::new(len_usize)
                    .with_raw_mmap_pointer(host.addr.cast())
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                    .build()
                    .map_err(map_err)?
            };
            mappings.push(host);
            region
        };
        if prefault {
            populate(mapping.as_ptr(), len_usize)
                .map_err(|source| MemoryError::Reserve { size, source })?;
        }
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or(MemoryError::TooLarge(size))?;
        regions.push(region);
    }
    let memory = GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)?;
    Ok(GuestRam {
        memory,
        _mappings: mappings,
    })
}

/// Faults in every page of `len` bytes at `addr` for writing, as the guest's
/// first touch of each would (Linux 5.14 and later).
fn populate(addr: *mut u8, len: usize) -> std::io::Result<()> {
    // SAFETY: `addr..addr + len` is a private anonymous or hugetlb mapping
    // this module just made; populating it only allocates zeroed pages, it
    // changes no contents anything has written.
    let r = unsafe { libc::madvise(addr.cast(), len, libc::MADV_POPULATE_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryRegion};

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
    fn ram_starts_on_a_huge_page_boundary() {
        let m = create(64 << 20, false).unwrap();
        for r in m.iter() {
            let host = r
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .unwrap() as usize;
            assert_eq!(
                host % usize::try_from(HUGE_PAGE).unwrap(),
                0,
                "region at {:#x}",
                r.start_addr().raw_value()
            );
        }
        // The memory works and is unmapped on drop (a second VM-sized
        // mapping succeeds; a leak would only show under address pressure).
        m.write_obj(0xdead_beef_u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
    }

    #[test]
    fn populate_makes_every_page_resident() {
        let m = create(8 << 20, false).unwrap();
        let r = m.iter().next().unwrap();
        let host = r
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .unwrap();
        let resident = |host: *mut u8| {
            let mut vec = vec![0u8; 2048];
            // SAFETY: the 8 MiB mapping `m` owns, one byte per 4 KiB page.
            let r = unsafe { libc::mincore(host.cast(), 8 << 20, vec.as_mut_ptr()) };
            assert_eq!(r, 0);
            vec.iter().filter(|b| **b & 1 == 1).count()
        };
        assert_eq!(resident(host), 0);
        populate(host, 8 << 20).unwrap();
        assert_eq!(resident(host), 2048);
    }

    #[test]
    fn huge_pages_need_whole_pages() {
        let e = create((2 << 20) + 4096, true).unwrap_err();
        assert!(e.to_string().contains("multiple of 2M"), "{e}");
    }
}
