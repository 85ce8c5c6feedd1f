//! The guest's PCI bus: a host bridge at 00:00.0, config space through
//! 0xCF8/0xCFC and ECAM, and the functions behind it.
//!
//! - [`root`]: the bus itself: config mechanisms, host bridge, BAR windows.
//!
//! Functions plug in through [`PciFunction`]; the VFIO passthrough model
//! ([`crate::vfio::passthrough`]) is the one kiln has.

pub mod root;

pub use root::{BarAllocator, PciRoot, PciRootError};

/// What kind of BAR, from the device's BAR register and region size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    /// Uses this BAR register and the next.
    Mem64,
}

/// The size of one function's config space.
pub const CONFIG_SPACE_SIZE: u16 = 0x1000;

/// Calls `f(at, range)` for each dword an access of `len` bytes at
/// `offset` of a config space touches, in order: `at` is where the piece
/// starts in config space, `range` its bytes in the access. Bytes past the
/// end of config space get no call. A wide or unaligned access is handled
/// one register at a time this way, never passed on whole.
pub fn for_each_dword(offset: u16, len: usize, mut f: impl FnMut(u16, std::ops::Range<usize>)) {
    let mut done = 0;
    while done < len {
        // Past u16 is past config space too.
        let Some(at) = u16::try_from(done)
            .ok()
            .and_then(|d| offset.checked_add(d))
            .filter(|&at| at < CONFIG_SPACE_SIZE)
        else {
            return;
        };
        // `at % 4` is below 4 and `done` below `len`; `done + n` is at
        // most `len`.
        let n = usize::from(4u16.saturating_sub(at % 4)).min(len.saturating_sub(done));
        let end = done.saturating_add(n);
        f(at, done..end);
        done = end;
    }
}

/// One function on the guest's PCI bus, as the root dispatches to it
/// (Cloud Hypervisor's `pci::PciDevice` has the same shape). The root
/// answers for the host bridge and for empty slots itself.
pub trait PciFunction: Send {
    /// Reads its config space at `offset` (0..4096): 1 to 8 bytes, any
    /// alignment, never past the end of its config space. An access may
    /// span registers; each one it touches must answer for its own bytes
    /// ([`for_each_dword`]).
    fn config_read(&self, offset: u16, data: &mut [u8]);
    /// Writes its config space, as [`Self::config_read`] reads it.
    fn config_write(&mut self, offset: u16, data: &[u8]);
    /// Whether `addr` (an I/O port with `io`, else a memory address) falls
    /// in one of its BARs as the guest placed them now.
    fn claims(&self, io: bool, addr: u64) -> bool;
    /// A trapped access to one of its BARs; false when `addr` is in none.
    fn bar_read(&self, io: bool, addr: u64, data: &mut [u8]) -> bool;
    fn bar_write(&mut self, io: bool, addr: u64, data: &[u8]) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(offset: u16, len: usize) -> Vec<(u16, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        for_each_dword(offset, len, |at, r| out.push((at, r)));
        out
    }

    #[test]
    fn accesses_split_at_dwords_and_stop_at_the_end() {
        assert_eq!(pieces(0x10, 4), [(0x10, 0..4)]);
        assert_eq!(pieces(0x12, 1), [(0x12, 0..1)]);
        assert_eq!(pieces(0x0c, 8), [(0x0c, 0..4), (0x10, 4..8)]);
        assert_eq!(pieces(0x0e, 8), [(0x0e, 0..2), (0x10, 2..6), (0x14, 6..8)]);
        assert_eq!(pieces(0x3, 2), [(0x3, 0..1), (0x4, 1..2)]);
        assert_eq!(pieces(0xffc, 8), [(0xffc, 0..4)]);
        assert_eq!(pieces(0xfff, 8), [(0xfff, 0..1)]);
        assert_eq!(pieces(u16::MAX, 8), []);
        assert_eq!(pieces(0, 0), []);
    }
}
