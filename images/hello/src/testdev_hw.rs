//! The machine side of the pci-testdev driver: a BAR's registers through
//! MMIO or port I/O, bounded by the BAR's size.

use kiln_hello::port::{inb, inl, outb, outl, outw};
use kiln_hello::testdev::Window;

/// A memory BAR below 4 GiB (identity-mapped by boot.rs).
pub struct Mmio {
    pub base: u64,
    pub size: u32,
}

/// An I/O BAR.
pub struct Ports {
    pub base: u16,
    pub size: u32,
}

/// Whether `width` bytes at `offset` lie inside a window of `size` bytes.
fn inside(offset: u32, width: u32, size: u32) -> bool {
    offset.checked_add(width).is_some_and(|end| end <= size)
}

impl Window for Mmio {
    fn read8(&mut self, offset: u32) -> u8 {
        if !inside(offset, 1, self.size) {
            return 0xff;
        }
        // SAFETY: the byte lies in the BAR (checked above), which the caller
        // placed in the identity-mapped 32-bit hole over no RAM.
        unsafe { core::ptr::read_volatile((self.base + u64::from(offset)) as *const u8) }
    }

    fn read32(&mut self, offset: u32) -> u32 {
        if !inside(offset, 4, self.size) || !offset.is_multiple_of(4) {
            return u32::MAX;
        }
        // SAFETY: as in `read8`; the dword is aligned.
        unsafe { core::ptr::read_volatile((self.base + u64::from(offset)) as *const u32) }
    }

    fn write(&mut self, offset: u32, width: u8, value: u32) {
        let aligned = offset.is_multiple_of(u32::from(width.max(1)));
        if !aligned || !inside(offset, u32::from(width), self.size) {
            return;
        }
        let at = self.base + u64::from(offset);
        // SAFETY: as in `read8`; the access is aligned and inside the BAR,
        // and the device's registers write no memory.
        unsafe {
            match width {
                1 => core::ptr::write_volatile(at as *mut u8, value as u8),
                2 => core::ptr::write_volatile(at as *mut u16, value as u16),
                4 => core::ptr::write_volatile(at as *mut u32, value),
                _ => {}
            }
        }
    }

    fn size(&self) -> u32 {
        self.size
    }
}

impl Ports {
    fn port(&self, offset: u32, width: u32) -> Option<u16> {
        if !inside(offset, width, self.size) {
            return None;
        }
        u16::try_from(offset)
            .ok()
            .and_then(|o| self.base.checked_add(o))
    }
}

impl Window for Ports {
    fn read8(&mut self, offset: u32) -> u8 {
        match self.port(offset, 1) {
            // SAFETY: the port is the device's (inside its I/O BAR).
            Some(p) => unsafe { inb(p) },
            None => 0xff,
        }
    }

    fn read32(&mut self, offset: u32) -> u32 {
        match self.port(offset, 4) {
            // SAFETY: as in `read8`.
            Some(p) => unsafe { inl(p) },
            None => u32::MAX,
        }
    }

    fn write(&mut self, offset: u32, width: u8, value: u32) {
        let Some(p) = self.port(offset, u32::from(width)) else {
            return;
        };
        // SAFETY: as in `read8`; the device's registers write no memory.
        unsafe {
            match width {
                1 => outb(p, value as u8),
                2 => outw(p, value as u16),
                4 => outl(p, value),
                _ => {}
            }
        }
    }

    fn size(&self) -> u32 {
        self.size
    }
}
