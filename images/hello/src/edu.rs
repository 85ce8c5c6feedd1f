//! A driver for QEMU's `edu` teaching device (1234:11e8), as QEMU's
//! docs/specs/edu.rst describes it: identification, liveness, factorial, a
//! DMA round trip through guest RAM and an MSI observed in the local APIC.
//! Every edu on the bus is driven, one after the other, each with its own
//! MSI vector, so a message routed to the wrong vector shows.
//!
//! The checks run against [`Hardware`], which the unikernel implements with
//! real MMIO and memory and the unit tests with a model of the device.

use crate::pci::Bdf;
use core::fmt;

pub const VENDOR: u16 = 0x1234;
pub const DEVICE: u16 = 0x11e8;

/// BAR0 registers.
pub mod reg {
    pub const ID: u64 = 0x00;
    pub const LIVENESS: u64 = 0x04;
    pub const FACTORIAL: u64 = 0x08;
    pub const STATUS: u64 = 0x20;
    pub const IRQ_STATUS: u64 = 0x24;
    pub const IRQ_RAISE: u64 = 0x60;
    pub const IRQ_ACK: u64 = 0x64;
    pub const DMA_SRC: u64 = 0x80;
    pub const DMA_DST: u64 = 0x88;
    pub const DMA_COUNT: u64 = 0x90;
    pub const DMA_CMD: u64 = 0x98;
}

/// The identification register of QEMU's edu: version 1.0, then 0xed.
pub const EXPECTED_ID: u32 = 0x0100_00ed;
const STATUS_COMPUTING: u32 = 1 << 0;
const DMA_START: u64 = 1 << 0;
const DMA_TO_RAM: u64 = 1 << 1;
/// Where the device's 4 KiB buffer sits in its DMA address space.
pub const DMA_BUFFER: u64 = 0x40000;
pub const DMA_SIZE: usize = 4096;
/// Bytes per transfer. QEMU 7.2's edu refuses a transfer that ends exactly
/// at the end of its buffer (an off-by-one in its range check, fatal to the
/// whole machine), so the 4 KiB round trip goes in two halves, each
/// through the start of the buffer.
pub const DMA_CHUNK: usize = 2048;
/// The vector the MSI check of the first device asks for; the next devices
/// take the vectors after it.
pub const MSI_VECTOR: u8 = 0x51;
/// How many edu devices are driven; more are listed but skipped. Keeps the
/// vectors within 0x51..0x59, clear of the exception and legacy IRQ ranges.
pub const MAX_DEVICES: usize = 8;
const LAPIC_ID: u32 = 0x20;
const LAPIC_TPR: u32 = 0x80;
const LAPIC_SVR: u32 = 0xf0;
const LAPIC_IRR: u32 = 0x200;
const LAPIC_BASE: u32 = 0xfee0_0000;

/// What the driver needs of the machine.
pub trait Hardware {
    fn read32(&mut self, offset: u64) -> u32;
    fn write32(&mut self, offset: u64, value: u32);
    /// A 64-bit register write (the DMA registers are 8 bytes wide).
    fn write64(&mut self, offset: u64, value: u64);
    fn lapic_read(&mut self, offset: u32) -> u32;
    fn lapic_write(&mut self, offset: u32, value: u32);
    /// Two DMA-able pages and their bus (= guest physical) addresses.
    fn dma_pages(&mut self) -> (&mut [u8; DMA_SIZE], u64, &mut [u8; DMA_SIZE], u64);
    /// Programs the device's MSI capability: message address and data, on.
    fn enable_msi(&mut self, address: u32, data: u16) -> bool;
    /// A monotonic clock in microseconds (an estimate is enough).
    fn now_us(&mut self) -> u64;
}

/// n! in 32 bits, as the device computes it (wrapping).
pub fn factorial(n: u32) -> u32 {
    (1..=n).fold(1u32, |a, k| a.wrapping_mul(k))
}

/// The MSI address that targets local APIC `apic_id` (physical mode).
pub fn msi_address(apic_id: u8) -> u32 {
    LAPIC_BASE | u32::from(apic_id) << 12
}

/// The MSI vector of the `index`-th device driven (`index < MAX_DEVICES`).
pub fn msi_vector(index: usize) -> Option<u8> {
    (index < MAX_DEVICES)
        .then(|| u8::try_from(index).ok())
        .flatten()
        .and_then(|i| MSI_VECTOR.checked_add(i))
}

/// The value the device driven with `vector` writes to its liveness
/// register: distinct per device, so re-reading it once the other devices
/// ran shows whether they really are other devices.
pub fn liveness_value(vector: u8) -> u32 {
    0x1234_5600 | u32::from(vector)
}

/// The edu functions found on the bus, in bus order: the first
/// [`MAX_DEVICES`] are kept, the rest only counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    at: [Option<Bdf>; MAX_DEVICES],
    len: usize,
    skipped: usize,
}

impl Found {
    pub fn push(&mut self, bdf: Bdf) {
        match self.at.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(bdf);
                self.len += 1;
            }
            None => self.skipped += 1,
        }
    }

    /// The kept devices with their index (which picks the MSI vector).
    pub fn iter(&self) -> impl Iterator<Item = (usize, Bdf)> + '_ {
        self.at.iter().flatten().copied().enumerate()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Devices found beyond [`MAX_DEVICES`].
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

/// The IRR register (offset from the LAPIC base) and bit holding `vector`.
pub fn irr_bit(vector: u8) -> (u32, u32) {
    (
        LAPIC_IRR + 0x10 * u32::from(vector / 32),
        u32::from(vector % 32),
    )
}

/// The byte pattern the DMA check sends.
pub fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7) + 13) as u8
}

/// One check's outcome, printed as `<what> ok|FAILED` (the caller names
/// the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Id(u32),
    Liveness {
        wrote: u32,
        read: u32,
    },
    Factorial {
        n: u32,
        got: Option<u32>,
    },
    Dma {
        bytes: usize,
        mismatch: Option<usize>,
        timed_out: bool,
    },
    /// The liveness register re-read after the other devices ran.
    Kept {
        wrote: u32,
        read: u32,
    },
    Msi {
        vector: u8,
        /// The vector was already pending before the device raised it (an
        /// earlier device's message landed on it): nothing can be observed.
        pending_before: bool,
        seen: bool,
    },
}

impl Check {
    pub fn ok(&self) -> bool {
        match *self {
            Check::Id(id) => id == EXPECTED_ID,
            Check::Liveness { wrote, read } | Check::Kept { wrote, read } => read == !wrote,
            Check::Factorial { n, got } => got == Some(factorial(n)),
            Check::Dma {
                mismatch,
                timed_out,
                ..
            } => mismatch.is_none() && !timed_out,
            Check::Msi {
                seen,
                pending_before,
                ..
            } => seen && !pending_before,
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Check::Id(id) => write!(f, "id {id:#010x}")?,
            Check::Liveness { wrote, read } if read != !wrote => {
                write!(f, "liveness wrote {wrote:#x} read {read:#x}")?
            }
            Check::Liveness { .. } => write!(f, "liveness")?,
            Check::Kept { wrote, read } if read == !wrote => write!(f, "liveness {wrote:#x} kept")?,
            Check::Kept { wrote, read } => {
                write!(f, "liveness {wrote:#x} overwritten, reads {read:#x}")?
            }
            Check::Factorial { n, got: Some(v) } => write!(f, "factorial {n}! = {v}")?,
            Check::Factorial { n, got: None } => write!(f, "factorial {n}! timed out")?,
            Check::Dma {
                bytes,
                mismatch,
                timed_out,
            } => {
                write!(f, "dma round trip {bytes} bytes")?;
                if timed_out {
                    write!(f, " timed out")?;
                } else if let Some(at) = mismatch {
                    write!(f, " differ at byte {at}")?;
                }
            }
            Check::Msi {
                vector,
                pending_before: true,
                ..
            } => write!(f, "msi vector {vector:#04x} already pending")?,
            Check::Msi {
                vector, seen: true, ..
            } => write!(f, "msi vector {vector:#04x} observed")?,
            Check::Msi {
                vector,
                seen: false,
                ..
            } => write!(f, "msi vector {vector:#04x} not observed")?,
        }
        f.write_str(if self.ok() { " ok" } else { " FAILED" })
    }
}

/// How long the device may take: its DMA timer fires after 100 ms.
const TIMEOUT_US: u64 = 5_000_000;

fn wait_until<H: Hardware>(hw: &mut H, mut done: impl FnMut(&mut H) -> bool) -> bool {
    let start = hw.now_us();
    // Also bounded by count, in case the clock does not advance.
    for _ in 0..200_000_000u32 {
        if done(hw) {
            return true;
        }
        if hw.now_us().saturating_sub(start) > TIMEOUT_US {
            return done(hw);
        }
        core::hint::spin_loop();
    }
    false
}

fn dma(hw: &mut impl Hardware, src: u64, dst: u64, to_ram: bool) -> bool {
    hw.write64(reg::DMA_SRC, src);
    hw.write64(reg::DMA_DST, dst);
    hw.write64(reg::DMA_COUNT, DMA_CHUNK as u64);
    let cmd = DMA_START | if to_ram { DMA_TO_RAM } else { 0 };
    hw.write64(reg::DMA_CMD, cmd);
    wait_until(hw, |h| h.read32(reg::DMA_CMD) & DMA_START as u32 == 0)
}

/// Runs every check on one device, handing each to `report` as it
/// finishes; the MSI check asks for `vector`.
pub fn run(hw: &mut impl Hardware, vector: u8, mut report: impl FnMut(Check)) -> bool {
    let mut all = true;
    let mut note = |c: Check| {
        all &= c.ok();
        report(c);
    };

    note(Check::Id(hw.read32(reg::ID)));

    let wrote = liveness_value(vector);
    hw.write32(reg::LIVENESS, wrote);
    note(Check::Liveness {
        wrote,
        read: hw.read32(reg::LIVENESS),
    });

    let n = 5;
    hw.write32(reg::FACTORIAL, n);
    let done = wait_until(hw, |h| h.read32(reg::STATUS) & STATUS_COMPUTING == 0);
    note(Check::Factorial {
        n,
        got: done.then(|| hw.read32(reg::FACTORIAL)),
    });

    let (src, src_addr, _, dst_addr) = hw.dma_pages();
    for (i, b) in src.iter_mut().enumerate() {
        *b = pattern(i);
    }
    let (_, _, dst, _) = hw.dma_pages();
    dst.fill(0);
    let mut timed_out = false;
    for off in (0..DMA_SIZE).step_by(DMA_CHUNK) {
        let off = off as u64;
        timed_out = !dma(hw, src_addr + off, DMA_BUFFER, false)
            || !dma(hw, DMA_BUFFER, dst_addr + off, true);
        if timed_out {
            break;
        }
    }
    let (_, _, dst, _) = hw.dma_pages();
    // The device wrote the page behind the compiler's back.
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    let mismatch = dst
        .iter()
        .enumerate()
        .position(|(i, b)| core::hint::black_box(*b) != pattern(i));
    note(Check::Dma {
        bytes: DMA_SIZE,
        mismatch,
        timed_out,
    });

    // MSI to this CPU's local APIC, seen in its IRR with interrupts off.
    let apic_id = (hw.lapic_read(LAPIC_ID) >> 24) as u8;
    hw.lapic_write(LAPIC_TPR, 0);
    hw.lapic_write(LAPIC_SVR, 0x100 | 0xff);
    let (irr, bit) = irr_bit(vector);
    let pending_before = hw.lapic_read(irr) & (1 << bit) != 0;
    let mut seen = false;
    if !pending_before && hw.enable_msi(msi_address(apic_id), u16::from(vector)) {
        hw.write32(reg::IRQ_RAISE, 1);
        seen = wait_until(hw, |h| h.lapic_read(irr) & (1 << bit) != 0);
        let status = hw.read32(reg::IRQ_STATUS);
        hw.write32(reg::IRQ_ACK, status);
    }
    note(Check::Msi {
        vector,
        pending_before,
        seen,
    });
    all
}

/// Re-reads the liveness register of the device driven with `vector`,
/// after the other devices ran: it must still hold what [`run`] wrote.
pub fn recheck(hw: &mut impl Hardware, vector: u8) -> Check {
    Check::Kept {
        wrote: liveness_value(vector),
        read: hw.read32(reg::LIVENESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    /// A model of edu and a local APIC: registers answer as the spec says,
    /// DMA completes after a few status reads, an MSI sets the IRR bit.
    struct Model {
        id: u32,
        live: u32,
        fact: u32,
        busy: u32,
        dma: [u64; 4],
        dma_busy: u32,
        buffer: Box<[u8; DMA_SIZE]>,
        pages: Box<[[u8; DMA_SIZE]; 2]>,
        msi: Option<(u32, u16)>,
        lapic: Vec<(u32, u32)>,
        irq_status: u32,
        clock: u64,
        break_dma: bool,
        /// Added to the MSI data on delivery: a VMM routing the message
        /// to the wrong vector.
        misroute: u8,
    }

    const PAGE0: u64 = 0x10_0000;
    const PAGE1: u64 = 0x10_1000;

    impl Model {
        fn new() -> Self {
            Model {
                id: EXPECTED_ID,
                live: 0,
                fact: 0,
                busy: 0,
                dma: [0; 4],
                dma_busy: 0,
                buffer: Box::new([0; DMA_SIZE]),
                pages: Box::new([[0; DMA_SIZE]; 2]),
                msi: None,
                lapic: Vec::from([(LAPIC_ID, 3 << 24)]),
                irq_status: 0,
                clock: 0,
                break_dma: false,
                misroute: 0,
            }
        }
        fn page(&mut self, addr: u64) -> &mut [u8; DMA_SIZE] {
            &mut self.pages[usize::from(addr == PAGE1)]
        }
        fn finish_dma(&mut self) {
            let [src, dst, count, cmd] = self.dma;
            let n = count as usize;
            // edu's own range check, off-by-one included.
            let dev = if cmd & DMA_TO_RAM != 0 { src } else { dst };
            assert!(dev >= DMA_BUFFER && dev + count < DMA_BUFFER + DMA_SIZE as u64);
            let d = (dev - DMA_BUFFER) as usize;
            if cmd & DMA_TO_RAM != 0 {
                let data = self.buffer[d..d + n].to_vec();
                let base = dst & !0xfff;
                let o = (dst - base) as usize;
                self.page(base)[o..o + n].copy_from_slice(&data);
                if self.break_dma && o == 0 {
                    self.page(base)[100] ^= 1;
                }
            } else {
                let base = src & !0xfff;
                let o = (src - base) as usize;
                let data = self.page(base)[o..o + n].to_vec();
                self.buffer[d..d + n].copy_from_slice(&data);
            }
            self.dma[3] &= !DMA_START;
        }
    }

    impl Hardware for Model {
        fn read32(&mut self, offset: u64) -> u32 {
            match offset {
                reg::ID => self.id,
                reg::LIVENESS => !self.live,
                reg::FACTORIAL => self.fact,
                reg::STATUS => {
                    self.busy = self.busy.saturating_sub(1);
                    u32::from(self.busy > 0)
                }
                reg::IRQ_STATUS => self.irq_status,
                reg::DMA_CMD => {
                    if self.dma[3] & DMA_START != 0 {
                        self.dma_busy = self.dma_busy.saturating_sub(1);
                        if self.dma_busy == 0 {
                            self.finish_dma();
                        }
                    }
                    self.dma[3] as u32
                }
                _ => 0,
            }
        }
        fn write32(&mut self, offset: u64, value: u32) {
            match offset {
                reg::LIVENESS => self.live = value,
                reg::FACTORIAL => {
                    self.fact = factorial(value);
                    self.busy = 3;
                }
                reg::IRQ_RAISE => {
                    self.irq_status |= value;
                    if let Some((addr, data)) = self.msi {
                        let apic = self.lapic_read(LAPIC_ID) >> 24;
                        if addr == LAPIC_BASE | apic << 12 {
                            let (irr, bit) = irr_bit(data as u8 + self.misroute);
                            let old = self.lapic_read(irr);
                            self.lapic_write(irr, old | 1 << bit);
                        }
                    }
                }
                reg::IRQ_ACK => self.irq_status &= !value,
                _ => {}
            }
        }
        fn write64(&mut self, offset: u64, value: u64) {
            let i = ((offset - reg::DMA_SRC) / 8) as usize;
            self.dma[i] = value;
            if offset == reg::DMA_CMD {
                self.dma_busy = 5;
            }
        }
        fn lapic_read(&mut self, offset: u32) -> u32 {
            self.lapic
                .iter()
                .find(|(o, _)| *o == offset)
                .map_or(0, |(_, v)| *v)
        }
        fn lapic_write(&mut self, offset: u32, value: u32) {
            self.lapic.retain(|(o, _)| *o != offset);
            self.lapic.push((offset, value));
        }
        fn dma_pages(&mut self) -> (&mut [u8; DMA_SIZE], u64, &mut [u8; DMA_SIZE], u64) {
            let [a, b] = &mut *self.pages;
            (a, PAGE0, b, PAGE1)
        }
        fn enable_msi(&mut self, address: u32, data: u16) -> bool {
            self.msi = Some((address, data));
            true
        }
        fn now_us(&mut self) -> u64 {
            self.clock += 1;
            self.clock
        }
    }

    fn lines(m: &mut Model) -> (bool, Vec<std::string::String>) {
        let mut out = Vec::new();
        let pass = run(m, MSI_VECTOR, |c| out.push(std::format!("{c}")));
        (pass, out)
    }

    #[test]
    fn every_check_passes_on_a_working_device() {
        let mut m = Model::new();
        let (pass, out) = lines(&mut m);
        assert_eq!(
            out,
            [
                "id 0x010000ed ok",
                "liveness ok",
                "factorial 5! = 120 ok",
                "dma round trip 4096 bytes ok",
                "msi vector 0x51 observed ok",
            ]
        );
        assert!(pass);
        // The interrupt was acknowledged and the APIC enabled.
        assert_eq!(m.irq_status, 0);
        assert_eq!(m.lapic_read(LAPIC_SVR), 0x1ff);
        assert_eq!(m.msi, Some((0xfee0_3000, 0x51)));
    }

    #[test]
    fn failures_are_named() {
        let mut m = Model::new();
        m.id = 0x0100_00ee;
        m.break_dma = true;
        let (pass, out) = lines(&mut m);
        assert!(!pass);
        assert_eq!(out[0], "id 0x010000ee FAILED");
        assert_eq!(
            out[3],
            "dma round trip 4096 bytes differ at byte 100 FAILED"
        );
    }

    #[test]
    fn a_device_that_never_finishes_times_out() {
        let mut m = Model::new();
        m.write32(reg::FACTORIAL, 1);
        m.busy = u32::MAX;
        // Status stays busy for far longer than the clock allows.
        let done = wait_until(&mut m, |h| h.read32(reg::STATUS) & 1 == 0);
        assert!(!done);
        assert!(m.clock > TIMEOUT_US);
    }

    #[test]
    fn a_second_device_is_seen_on_its_own_vector() {
        let mut m = Model::new();
        assert!(run(&mut m, msi_vector(0).unwrap(), |_| {}));
        // The first vector stays pending (interrupts are off): the second
        // device must not be judged by it.
        let mut out = Vec::new();
        let pass = run(&mut m, msi_vector(1).unwrap(), |c| {
            out.push(std::format!("{c}"))
        });
        assert!(pass, "{out:?}");
        assert_eq!(out[4], "msi vector 0x52 observed ok");
        assert_eq!(m.msi, Some((0xfee0_3000, 0x52)));
        assert_eq!(m.lapic_read(0x220), (1 << 17) | (1 << 18));
    }

    #[test]
    fn two_devices_keep_their_own_registers() {
        let (mut a, mut b) = (Model::new(), Model::new());
        assert!(run(&mut a, 0x51, |_| {}));
        assert!(run(&mut b, 0x52, |_| {}));
        let kept = recheck(&mut a, 0x51);
        assert_eq!(std::format!("{kept}"), "liveness 0x12345651 kept ok");
        // One device behind both addresses: the second run overwrote it.
        let mut shared = Model::new();
        assert!(run(&mut shared, 0x51, |_| {}));
        assert!(run(&mut shared, 0x52, |_| {}));
        assert_eq!(
            std::format!("{}", recheck(&mut shared, 0x51)),
            "liveness 0x12345651 overwritten, reads 0xedcba9ad FAILED"
        );
    }

    #[test]
    fn a_vector_already_pending_cannot_prove_delivery() {
        let mut m = Model::new();
        assert!(run(&mut m, MSI_VECTOR, |_| {}));
        let mut last = None;
        assert!(!run(&mut m, MSI_VECTOR, |c| last = Some(c)));
        assert_eq!(
            std::format!("{}", last.unwrap()),
            "msi vector 0x51 already pending FAILED"
        );
    }

    #[test]
    fn a_message_on_the_wrong_vector_is_not_observed() {
        let mut m = Model::new();
        m.misroute = 1;
        let mut last = None;
        assert!(!run(&mut m, MSI_VECTOR, |c| last = Some(c)));
        assert_eq!(
            std::format!("{}", last.unwrap()),
            "msi vector 0x51 not observed FAILED"
        );
    }

    #[test]
    fn found_keeps_the_first_devices_in_order_and_counts_the_rest() {
        let mut found = Found::default();
        assert!(found.is_empty());
        for d in 1..=10 {
            found.push(Bdf::new(0, d, 0).unwrap());
        }
        assert_eq!(found.len(), MAX_DEVICES);
        assert_eq!(found.skipped(), 2);
        let kept: Vec<_> = found.iter().collect();
        assert_eq!(kept.len(), MAX_DEVICES);
        assert_eq!(kept[0], (0, Bdf::new(0, 1, 0).unwrap()));
        assert_eq!(kept[7], (7, Bdf::new(0, 8, 0).unwrap()));
    }

    #[test]
    fn helpers() {
        assert_eq!(msi_vector(0), Some(0x51));
        assert_eq!(msi_vector(1), Some(0x52));
        assert_eq!(msi_vector(MAX_DEVICES - 1), Some(0x58));
        assert_eq!(msi_vector(MAX_DEVICES), None);
        assert_eq!(factorial(5), 120);
        assert_eq!(factorial(0), 1);
        assert_eq!(factorial(13), 1_932_053_504); // wraps like the device
        assert_eq!(msi_address(0), 0xfee0_0000);
        assert_eq!(irr_bit(0x51), (0x220, 17));
        assert_eq!(irr_bit(0x20), (0x210, 0));
    }
}
