//! Which parts of a passed-through memory BAR the guest reaches without
//! exits: the areas of the region the host could mmap, minus the pages
//! holding the MSI-X table or PBA (the VMM emulates those, so they must
//! trap). Each piece becomes one KVM memory slot; the rest of the BAR
//! traps and is forwarded to the device.

use super::host_function::HostArea;

/// KVM maps whole host pages; the table's and PBA's pages trap whole.
pub const PAGE_SIZE: u64 = 4096;

fn down(x: u64) -> u64 {
    x & !(PAGE_SIZE - 1)
}

fn up(x: u64) -> u64 {
    // Saturates: a range reaching the top of the address space ends there.
    x.checked_add(PAGE_SIZE - 1).map_or(u64::MAX, down)
}

/// The pieces of a BAR of `size` bytes to map into the guest, in offset
/// order, each non-empty and page-aligned (offset, length and host
/// address): the host's `areas` of the region clipped to the BAR and to
/// whole pages, with every page that touches one of the `trapped` byte
/// ranges `(offset, len)` cut out.
pub fn pieces(size: u64, areas: &[HostArea], trapped: &[(u64, u64)]) -> Vec<HostArea> {
    let mut holes: Vec<(u64, u64)> = trapped
        .iter()
        .filter(|&&(_, len)| len > 0)
        .map(|&(offset, len)| (down(offset), up(offset.saturating_add(len))))
        .collect();
    holes.sort_unstable();
    let mut out = Vec::new();
    for area in areas {
        let start = up(area.offset);
        let end = down(area.offset.saturating_add(area.len).min(size));
        // The host address of the piece must be page-aligned too.
        let Some(base) = area.addr.checked_add(start.saturating_sub(area.offset)) else {
            continue;
        };
        if start >= end || base % PAGE_SIZE != 0 {
            continue;
        }
        let mut push = |from: u64, to: u64| {
            if from < to {
                out.push(HostArea {
                    offset: from,
                    len: to.saturating_sub(from),
                    addr: base.saturating_add(from.saturating_sub(start)),
                });
            }
        };
        let mut at = start;
        for &(hole_start, hole_end) in &holes {
            if hole_end <= at || hole_start >= end {
                continue;
            }
            push(at, hole_start);
            at = hole_end;
        }
        push(at, end);
    }
    out.sort_unstable_by_key(|p| p.offset);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: u64 = 0x7f00_0000_0000;

    fn whole(size: u64) -> Vec<HostArea> {
        vec![HostArea {
            offset: 0,
            len: size,
            addr: HOST,
        }]
    }

    /// `(offset, len)` of each piece, after checking each maps the host
    /// address that belongs to its offset.
    fn spans(size: u64, areas: &[HostArea], trapped: &[(u64, u64)]) -> Vec<(u64, u64)> {
        pieces(size, areas, trapped)
            .iter()
            .map(|p| {
                let area = areas
                    .iter()
                    .find(|a| {
                        p.offset >= a.offset && p.offset + p.len <= a.offset.saturating_add(a.len)
                    })
                    .expect("a piece lies in one host area");
                assert_eq!(p.addr, area.addr + (p.offset - area.offset));
                assert_eq!(p.offset % PAGE_SIZE, 0);
                assert_eq!(p.len % PAGE_SIZE, 0);
                assert_eq!(p.addr % PAGE_SIZE, 0);
                (p.offset, p.len)
            })
            .collect()
    }

    #[test]
    fn a_bar_without_msix_is_one_piece() {
        assert_eq!(spans(0x10_0000, &whole(0x10_0000), &[]), [(0, 0x10_0000)]);
    }

    #[test]
    fn a_table_at_the_start_leaves_the_rest() {
        // 64 entries: 1 KiB of table, its page trapped.
        assert_eq!(
            spans(0x4000, &whole(0x4000), &[(0, 0x400)]),
            [(0x1000, 0x3000)]
        );
    }

    #[test]
    fn a_table_in_the_middle_splits_the_bar() {
        // QEMU's nvme: registers and doorbells, table at 0x2000, PBA at 0x3000.
        assert_eq!(
            spans(0x4000, &whole(0x4000), &[(0x2000, 0x20), (0x3000, 8)]),
            [(0, 0x2000)]
        );
        assert_eq!(
            spans(0x8000, &whole(0x8000), &[(0x2000, 0x20), (0x5008, 8)]),
            [(0, 0x2000), (0x3000, 0x2000), (0x6000, 0x2000)]
        );
    }

    #[test]
    fn a_table_at_the_end_keeps_the_front() {
        assert_eq!(
            spans(0x4000, &whole(0x4000), &[(0x3800, 0x800)]),
            [(0, 0x3000)]
        );
    }

    #[test]
    fn table_and_pba_in_one_page_trap_one_page() {
        assert_eq!(
            spans(0x4000, &whole(0x4000), &[(0x1000, 0x30), (0x1800, 8)]),
            [(0, 0x1000), (0x2000, 0x2000)]
        );
    }

    #[test]
    fn a_table_across_a_page_boundary_traps_both_pages() {
        assert_eq!(
            spans(0x4000, &whole(0x4000), &[(0xf00, 0x200)]),
            [(0x2000, 0x2000)]
        );
    }

    #[test]
    fn a_pba_in_another_bar_leaves_this_one_to_its_table() {
        // The caller passes only this BAR's ranges: the table alone.
        assert_eq!(
            spans(0x4000, &whole(0x4000), &[(0x1000, 0x100)]),
            [(0, 0x1000), (0x2000, 0x2000)]
        );
        // And the other BAR, holding only the PBA.
        assert_eq!(spans(0x2000, &whole(0x2000), &[(0, 8)]), [(0x1000, 0x1000)]);
    }

    #[test]
    fn sparse_areas_are_mapped_each_and_cut_by_the_table() {
        // An old kernel's sparse areas around the table at 0x2000.
        let areas = [
            HostArea {
                offset: 0x3000,
                len: 0x5000,
                addr: HOST + 0x10_0000,
            },
            HostArea {
                offset: 0,
                len: 0x2000,
                addr: HOST,
            },
        ];
        assert_eq!(
            spans(0x8000, &areas, &[(0x2000, 0x100), (0x6000, 8)]),
            [(0, 0x2000), (0x3000, 0x3000), (0x7000, 0x1000)]
        );
        // Areas that are not page-aligned shrink to their whole pages.
        let odd = [HostArea {
            offset: 0x800,
            len: 0x2000,
            addr: HOST + 0x800,
        }];
        assert_eq!(spans(0x4000, &odd, &[]), [(0x1000, 0x1000)]);
    }

    #[test]
    fn an_area_past_the_bar_is_clipped() {
        assert_eq!(spans(0x2000, &whole(0x4000), &[]), [(0, 0x2000)]);
    }

    #[test]
    fn a_bar_smaller_than_a_page_is_never_mapped() {
        assert_eq!(spans(0x100, &whole(0x100), &[]), []);
        assert_eq!(spans(0x100, &whole(0x1000), &[]), []);
    }

    #[test]
    fn a_table_page_that_is_the_whole_bar_leaves_nothing() {
        assert_eq!(spans(0x1000, &whole(0x1000), &[(0, 0x10)]), []);
        assert_eq!(spans(0x1000, &whole(0x1000), &[(0, 0x10), (0x800, 8)]), []);
    }

    #[test]
    fn no_host_areas_no_pieces() {
        assert_eq!(spans(0x4000, &[], &[(0, 0x10)]), []);
    }

    #[test]
    fn ranges_at_the_top_of_the_address_space_do_not_overflow() {
        assert_eq!(
            spans(0x4000, &whole(0x4000), &[(u64::MAX - 4, 8)]),
            [(0, 0x4000)]
        );
        let top = [HostArea {
            offset: 0,
            len: u64::MAX,
            addr: HOST,
        }];
        assert_eq!(spans(0x2000, &top, &[(0x1000, 1)]), [(0, 0x1000)]);
    }
}
