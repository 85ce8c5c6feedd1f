//! The machine side of the edu driver: BAR0 MMIO, the local APIC, two
//! DMA pages in `.bss`, the MSI capability and the TSC.

use core::sync::atomic::{AtomicBool, Ordering};
use kiln_hello::edu::{Hardware, DMA_SIZE};
use kiln_hello::pci::{Bdf, ConfigAccess, Mechanism1};

const LAPIC_BASE: u64 = 0xfee0_0000;

#[repr(C, align(4096))]
struct Pages([[u8; DMA_SIZE]; 2]);

/// The DMA pages. Only [`DmaPages::take`] hands them out, once.
static mut PAGES: Pages = Pages([[0; DMA_SIZE]; 2]);
static PAGES_TAKEN: AtomicBool = AtomicBool::new(false);

/// The one handle on the DMA pages. Each [`EduHw`] borrows it mutably, so
/// the devices, driven one after the other, share the pages and no two
/// borrows of them live at once.
pub struct DmaPages(&'static mut Pages);

impl DmaPages {
    /// The pages, the first time; `None` after.
    pub fn take() -> Option<Self> {
        if PAGES_TAKEN.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the flag lets this line run once, so this is the only
        // reference to `PAGES` ever made.
        Some(DmaPages(unsafe { &mut *core::ptr::addr_of_mut!(PAGES) }))
    }
}

pub struct EduHw<'p> {
    cfg: &'p Mechanism1,
    bdf: Bdf,
    bar0: u64,
    pages: &'p mut DmaPages,
    msi: Option<u8>,
    /// TSC ticks per microsecond, assumed (1 GHz: a slower TSC only makes
    /// the timeouts longer).
    ticks_per_us: u64,
}

impl<'p> EduHw<'p> {
    pub fn new(
        cfg: &'p Mechanism1,
        bdf: Bdf,
        bar0: u64,
        msi: Option<u8>,
        pages: &'p mut DmaPages,
    ) -> Self {
        EduHw {
            cfg,
            bdf,
            bar0,
            pages,
            msi,
            ticks_per_us: 1000,
        }
    }
}

impl Hardware for EduHw<'_> {
    fn read32(&mut self, offset: u64) -> u32 {
        // SAFETY: BAR0 (1 MiB) lies in the identity-mapped 32-bit hole and
        // `offset` is one of the driver's register offsets within it.
        unsafe { core::ptr::read_volatile((self.bar0 + offset) as *const u32) }
    }

    fn write32(&mut self, offset: u64, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile((self.bar0 + offset) as *mut u32, value) }
    }

    fn write64(&mut self, offset: u64, value: u64) {
        // SAFETY: as in `read32`; the DMA registers are 8-byte aligned.
        unsafe { core::ptr::write_volatile((self.bar0 + offset) as *mut u64, value) }
    }

    fn lapic_read(&mut self, offset: u32) -> u32 {
        // SAFETY: the local APIC page is identity-mapped (below 4 GiB).
        unsafe { core::ptr::read_volatile((LAPIC_BASE + u64::from(offset)) as *const u32) }
    }

    fn lapic_write(&mut self, offset: u32, value: u32) {
        // SAFETY: as in `lapic_read`.
        unsafe { core::ptr::write_volatile((LAPIC_BASE + u64::from(offset)) as *mut u32, value) }
    }

    fn dma_pages(&mut self) -> (&mut [u8; DMA_SIZE], u64, &mut [u8; DMA_SIZE], u64) {
        // The addresses are physical (identity map).
        let [a, b] = &mut self.pages.0 .0;
        let (pa, pb) = (a.as_ptr() as u64, b.as_ptr() as u64);
        (a, pa, b, pb)
    }

    fn enable_msi(&mut self, address: u32, data: u16) -> bool {
        let Some(cap) = self.msi else {
            return false;
        };
        let control = self.cfg.read16(self.bdf, cap + 2);
        let is_64 = control & (1 << 7) != 0;
        let data_at = if is_64 { cap + 12 } else { cap + 8 };
        // SAFETY: the message targets this CPU's local APIC; no memory is
        // written by an MSI.
        unsafe {
            self.cfg.write32(self.bdf, cap + 4, address);
            if is_64 {
                self.cfg.write32(self.bdf, cap + 8, 0);
            }
            self.cfg.write16(self.bdf, data_at, data);
            // One vector (MME = 0), enabled.
            self.cfg.write16(self.bdf, cap + 2, (control & !0x70) | 1);
        }
        true
    }

    fn now_us(&mut self) -> u64 {
        // SAFETY: rdtsc has no side effects.
        let t = unsafe { core::arch::x86_64::_rdtsc() };
        t / self.ticks_per_us
    }
}
