//! Reading what the VMM left in guest-physical memory.
//!
//! The boot code identity-maps the low gigabytes, so a physical address is a
//! pointer. [`PhysMemory`] is the one place that turns such addresses into
//! slices, after checking that they are mapped and do not overlap the
//! unikernel's own image (whose `.data`/`.bss` it writes).

use core::ops::Range;

/// Why a physical range cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("range {addr:#x}+{len:#x} is null or wraps around; the VMM passed a bad pointer")]
    Invalid { addr: u64, len: u64 },
    #[error("range {addr:#x}+{len:#x} lies outside the identity map (below {limit:#x}); extend the boot page tables")]
    Unmapped { addr: u64, len: u64, limit: u64 },
    #[error(
        "range {addr:#x}+{len:#x} overlaps the unikernel image; the VMM must place data elsewhere"
    )]
    OverlapsImage { addr: u64, len: u64 },
    #[error("string at {addr:#x} has no terminating NUL within {max} bytes")]
    Unterminated { addr: u64, max: usize },
}

/// Read access to guest-physical memory outside the unikernel image.
#[derive(Debug, Clone)]
pub struct PhysMemory {
    mapped_end: u64,
    image: Range<u64>,
}

impl PhysMemory {
    /// Describes the memory the boot code mapped.
    ///
    /// # Safety
    /// Every address in `[0, mapped_end)` must be identity-mapped and readable,
    /// and nothing but this program (single CPU, no DMA) may write memory
    /// outside `image` while the returned slices live: the VMM's boot data is
    /// treated as immutable `'static` data.
    pub const unsafe fn new(mapped_end: u64, image: Range<u64>) -> Self {
        Self { mapped_end, image }
    }

    fn check(&self, addr: u64, len: u64) -> Result<(), Error> {
        let end = addr
            .checked_add(len)
            .filter(|_| addr != 0)
            .ok_or(Error::Invalid { addr, len })?;
        if end > self.mapped_end {
            return Err(Error::Unmapped {
                addr,
                len,
                limit: self.mapped_end,
            });
        }
        if addr < self.image.end && self.image.start < end {
            return Err(Error::OverlapsImage { addr, len });
        }
        Ok(())
    }

    /// The `len` bytes at physical address `addr`.
    pub fn bytes(&self, addr: u64, len: u64) -> Result<&'static [u8], Error> {
        self.check(addr, len)?;
        // `check` bounded `addr + len` by `mapped_end`, a few GiB, so both fit in usize.
        let len = len as usize;
        // SAFETY: `check` proved the range non-null, mapped (contract of `new`)
        // and outside the image this program writes; by the same contract no one
        // else writes it, so an immutable 'static slice is sound. u8 has no
        // alignment or validity requirement.
        Ok(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }

    /// The NUL-terminated string at `addr`, without its NUL, at most `max` bytes.
    pub fn c_str(&self, addr: u64, max: usize) -> Result<&'static [u8], Error> {
        // Read at most up to the end of the mapping, then look for the NUL.
        let room = self.mapped_end.saturating_sub(addr).min(max as u64 + 1);
        // Shrink the window so it stops before the image when the string lies below it.
        let room = if addr < self.image.start {
            room.min(self.image.start - addr)
        } else {
            room
        };
        let window = self.bytes(addr, room)?;
        let len = window
            .iter()
            .position(|&b| b == 0)
            .ok_or(Error::Unterminated { addr, max })?;
        Ok(window.get(..len).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> PhysMemory {
        // SAFETY: only `check` is exercised; no slice is made.
        unsafe { PhysMemory::new(4 << 30, 0x10_0000..0x20_0000) }
    }

    #[test]
    fn accepts_ranges_outside_the_image() {
        assert_eq!(memory().check(0x1000, 0x1000), Ok(()));
        assert_eq!(memory().check(0x20_0000, 0x10), Ok(()));
        assert_eq!(memory().check(0xf_f000, 0x1000), Ok(()));
    }

    #[test]
    fn rejects_null_wrapping_unmapped_and_overlapping_ranges() {
        let m = memory();
        assert!(matches!(m.check(0, 8), Err(Error::Invalid { .. })));
        assert!(matches!(m.check(u64::MAX, 2), Err(Error::Invalid { .. })));
        assert!(matches!(
            m.check((4 << 30) - 4, 8),
            Err(Error::Unmapped { .. })
        ));
        assert!(matches!(
            m.check(0xf_fff0, 0x20),
            Err(Error::OverlapsImage { .. })
        ));
        assert!(matches!(
            m.check(0x1f_ffff, 1),
            Err(Error::OverlapsImage { .. })
        ));
    }
}
