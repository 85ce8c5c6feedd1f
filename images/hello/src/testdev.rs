//! A driver for QEMU's `pci-testdev` (1b36:0005): BAR0 is 4 KiB of MMIO,
//! BAR1 256 I/O ports, and with QEMU's `membar=<size>` BAR2 is a 64-bit
//! prefetchable memory BAR with nothing behind it.
//!
//! BAR0 and BAR1 speak the same self-describing protocol (the one
//! kvm-unit-tests drives): writing a test number to byte 0 selects a test
//! and clears its count; the header then reads back the test's number,
//! access width, an offset, a data value, the count and a NUL-terminated
//! name; each write of the data at the offset (with that width) adds one
//! to the count, unless an ioeventfd registered for the test swallows it
//! (the `*-eventfd` tests, when the host hypervisor offers eventfds). A
//! number past the last test selects none: the header reads zero.
//!
//! The checks run against [`Window`] (one BAR's worth of registers), which
//! the unikernel implements with MMIO and port I/O and the unit tests with
//! a model of the device. They also check how the BARs size and how a BAR
//! moved by the guest behaves: see [`bar_checks`] and [`Check::Moved`].

use crate::pci::Bar;
use core::fmt;

pub const VENDOR: u16 = 0x1b36;
pub const DEVICE: u16 = 0x0005;

/// Offsets in a test's header.
pub mod hdr {
    pub const TEST: u32 = 0;
    pub const WIDTH: u32 = 1;
    pub const OFFSET: u32 = 4;
    pub const DATA: u32 = 8;
    pub const COUNT: u32 = 12;
    pub const NAME: u32 = 16;
}

/// BAR0's size: 4 KiB of MMIO (the header, then the test offsets at 2 KiB).
pub const MMIO_SIZE: u64 = 0x1000;
/// BAR1's size: 256 ports (the header, then the test offsets at 128).
pub const IO_SIZE: u32 = 0x100;
/// Writes per test.
pub const WRITES: u32 = 16;
/// Tests tried per BAR before the walk gives up (QEMU has 3 per BAR).
pub const MAX_TESTS: u8 = 16;
/// Longest name read (QEMU's longest is 24 bytes).
pub const NAME_MAX: usize = 32;
/// How many pci-testdev devices are driven; more are counted.
pub const MAX_DEVICES: usize = 4;

/// One BAR's registers, at byte offsets from its start.
pub trait Window {
    fn read8(&mut self, offset: u32) -> u8;
    fn read32(&mut self, offset: u32) -> u32;
    /// Writes the low `width` (1, 2 or 4) bytes of `value`.
    fn write(&mut self, offset: u32, width: u8, value: u32);
    /// The window's size in bytes.
    fn size(&self) -> u32;
}

/// Which address space a window is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Mem,
    Io,
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Space::Mem => "mem",
            Space::Io => "io",
        })
    }
}

/// A test's name as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Name {
    bytes: [u8; NAME_MAX],
    len: usize,
}

impl Name {
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the test registers no ioeventfd, so every write must count.
    fn counts_every_write(&self) -> bool {
        self.as_bytes().ends_with(b"no-eventfd") || !self.as_bytes().ends_with(b"eventfd")
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_bytes().escape_ascii())
    }
}

fn read_name(w: &mut impl Window) -> Name {
    let mut name = Name {
        bytes: [0; NAME_MAX],
        len: 0,
    };
    for (i, slot) in name.bytes.iter_mut().enumerate() {
        let b = w.read8(hdr::NAME + i as u32);
        if b == 0 {
            break;
        }
        *slot = b;
        name.len = i + 1;
    }
    name
}

/// What one run of a test saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestRun {
    /// The test number the header reports.
    pub number: u8,
    pub name: Name,
    pub width: u8,
    pub offset: u32,
    /// The count right after the test was selected (must be 0).
    pub count_before: u32,
    /// Writes done (0 when the header was unusable).
    pub writes: u32,
    pub count: u32,
}

impl TestRun {
    pub fn ok(&self) -> bool {
        let usable = matches!(self.width, 1 | 2 | 4) && self.writes == WRITES;
        let counted =
            self.count == self.writes || (self.count == 0 && !self.name.counts_every_write());
        usable && self.count_before == 0 && counted
    }
}

impl fmt::Display for TestRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "test {} {}", self.number, self.name)?;
        if self.count_before != 0 {
            return write!(f, " count {} after select", self.count_before);
        }
        if self.writes == 0 {
            return write!(
                f,
                " unusable width {} offset {:#x}",
                self.width, self.offset
            );
        }
        write!(f, " {} writes count {}", self.writes, self.count)
    }
}

/// Selects test `n` and runs it; `None` when no test has that number.
pub fn run_test(w: &mut impl Window, n: u8) -> Option<TestRun> {
    w.write(hdr::TEST, 1, u32::from(n));
    let name = read_name(w);
    if name.is_empty() {
        return None;
    }
    let mut run = TestRun {
        number: w.read8(hdr::TEST),
        name,
        width: w.read8(hdr::WIDTH),
        offset: w.read32(hdr::OFFSET),
        count_before: w.read32(hdr::COUNT),
        writes: 0,
        count: 0,
    };
    let data = w.read32(hdr::DATA);
    let fits = run
        .offset
        .checked_add(u32::from(run.width))
        .is_some_and(|end| end <= w.size() && run.offset >= hdr::NAME);
    if matches!(run.width, 1 | 2 | 4) && fits {
        for _ in 0..WRITES {
            w.write(run.offset, run.width, data);
        }
        run.writes = WRITES;
    }
    run.count = w.read32(hdr::COUNT);
    Some(run)
}

/// Runs every test the window describes, in number order, handing each
/// check to `report`; true when all passed and there was at least one.
pub fn walk(w: &mut impl Window, space: Space, mut report: impl FnMut(Check)) -> bool {
    let mut all = true;
    let mut tests = 0;
    for n in 0..MAX_TESTS {
        let Some(run) = run_test(w, n) else {
            break;
        };
        tests += 1;
        let c = Check::Test { space, run };
        all &= c.ok();
        report(c);
    }
    // Leave no test selected.
    w.write(hdr::TEST, 1, u32::from(MAX_TESTS));
    let c = Check::Tests { space, tests };
    report(c);
    all && c.ok()
}

/// The BAR layout pci-testdev has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Mem32(u64),
    Io(u32),
    /// Any power-of-two size (QEMU's `membar`).
    Mem64Prefetchable,
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Want::Mem32(size) => write!(f, "mem32 +{size:#x}"),
            Want::Io(size) => write!(f, "io +{size:#x}"),
            Want::Mem64Prefetchable => f.write_str("mem64 prefetchable"),
        }
    }
}

/// BAR0, BAR1 and BAR2 as pci-testdev has them.
pub const LAYOUT: [(u8, Want); 3] = [
    (0, Want::Mem32(MMIO_SIZE)),
    (1, Want::Io(IO_SIZE)),
    (2, Want::Mem64Prefetchable),
];

fn matches(want: Want, bar: Bar) -> bool {
    match (want, bar) {
        (
            Want::Mem32(s),
            Bar::Memory {
                size,
                prefetchable: false,
                is_64bit: false,
                ..
            },
        ) => size == s,
        (Want::Io(s), Bar::Io { size, .. }) => size == s,
        (
            Want::Mem64Prefetchable,
            Bar::Memory {
                size,
                prefetchable: true,
                is_64bit: true,
                ..
            },
        ) => size.is_power_of_two(),
        _ => false,
    }
}

/// The sizing checks of BARs 0-2, from the BARs the guest sized (index,
/// decoded BAR): each must have its kind and size, and the 64-bit BAR must
/// size as one BAR (its upper half, BAR3, is not a BAR of its own).
pub fn bar_checks(sized: &[(u8, Bar)]) -> [Check; 3] {
    LAYOUT.map(|(index, want)| {
        let got = sized.iter().find(|(i, _)| *i == index).map(|(_, b)| *b);
        let upper_listed =
            matches!(want, Want::Mem64Prefetchable) && sized.iter().any(|(i, _)| *i == index + 1);
        Check::Sized {
            index,
            want,
            got,
            upper_listed,
        }
    })
}

/// One check's outcome, printed as `<what> ok|FAILED` (the caller names
/// the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// One protocol test through the BAR in `space`.
    Test { space: Space, run: TestRun },
    /// How many tests the BAR described (at least one is needed).
    Tests { space: Space, tests: u32 },
    /// BAR `index` as the guest's sizing found it.
    Sized {
        index: u8,
        want: Want,
        got: Option<Bar>,
        /// The next BAR register was listed as a BAR of its own.
        upper_listed: bool,
    },
    /// Sizing left the BAR registers as they were (`changed`: the first
    /// register that differs).
    Restored { changed: Option<u8> },
    /// BAR `index` moved from `from` to `to`; `answers` whether the device
    /// answered there (`run`: the protocol test run at the new place).
    Moved {
        index: u8,
        from: u64,
        to: u64,
        run: Option<TestRun>,
        answers: bool,
    },
    /// What a read at a moved BAR's old place returned (all-ones: nothing
    /// claims it any more).
    OldPlace { index: u8, at: u64, read: u32 },
}

impl Check {
    pub fn ok(&self) -> bool {
        match *self {
            Check::Test { run, .. } => run.ok(),
            Check::Tests { tests, .. } => tests > 0,
            Check::Sized {
                want,
                got,
                upper_listed,
                ..
            } => got.is_some_and(|b| matches(want, b)) && !upper_listed,
            Check::Restored { changed } => changed.is_none(),
            Check::Moved { run, answers, .. } => answers && run.is_none_or(|r| r.ok()),
            Check::OldPlace { read, .. } => read == u32::MAX,
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Check::Test { space, run } => write!(f, "{space} {run}")?,
            Check::Tests { space, tests } => write!(f, "{space} tests {tests}")?,
            Check::Sized {
                index,
                want,
                got,
                upper_listed,
            } => {
                match got {
                    Some(bar) => write!(f, "bar{index} {bar} sized")?,
                    None => write!(f, "bar{index} missing")?,
                }
                if !got.is_some_and(|b| matches(want, b)) {
                    write!(f, ", expected {want}")?;
                }
                if upper_listed {
                    write!(f, ", bar{} listed apart", index + 1)?;
                }
            }
            Check::Restored { changed: None } => f.write_str("bars restored after sizing")?,
            Check::Restored { changed: Some(i) } => write!(f, "bar{i} changed by sizing")?,
            Check::Moved {
                index,
                from,
                to,
                run,
                answers,
            } => {
                write!(f, "bar{index} moved {from:#x} -> {to:#x}")?;
                match run {
                    Some(run) => write!(f, ", {run}")?,
                    None if answers => f.write_str(", answers")?,
                    None => f.write_str(", no answer")?,
                }
            }
            Check::OldPlace { index, at, read } => {
                write!(f, "bar{index} old place {at:#x} reads {read:#010x}")?
            }
        }
        f.write_str(if self.ok() { " ok" } else { " FAILED" })
    }
}

/// Hands out naturally aligned places above `next`, below `end`: where
/// the guest moves BARs to (above every BAR the VMM placed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeSpace {
    pub next: u64,
    pub end: u64,
}

impl FreeSpace {
    pub fn take(&mut self, size: u64) -> Option<u64> {
        let start = self.next.checked_next_multiple_of(size.max(1))?;
        let end = start.checked_add(size)?;
        (end <= self.end).then(|| {
            self.next = end;
            start
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// The device's protocol as QEMU implements it: tests `first..first+3`
    /// (mem: 0..3, io: 3..6), offsets at `half + n`, the eventfd tests
    /// swallowing writes when `eventfds` is set.
    struct Model {
        first: u8,
        half: u32,
        size: u32,
        eventfds: bool,
        current: Option<u8>,
        count: u32,
        /// Break the device: writes never count.
        deaf: bool,
    }

    const NAMES: [&str; 3] = ["no-eventfd", "wildcard-eventfd", "datamatch-eventfd"];

    impl Model {
        fn mem() -> Self {
            Model {
                first: 0,
                half: 2048,
                size: 4096,
                eventfds: true,
                current: None,
                count: 0,
                deaf: false,
            }
        }

        fn io() -> Self {
            Model {
                first: 3,
                half: 128,
                size: 256,
                ..Self::mem()
            }
        }

        fn header(&self) -> Vec<u8> {
            let Some(t) = self.current else {
                return Vec::new();
            };
            let n = t - self.first;
            let kind = if self.first == 0 { "mmio" } else { "portio" };
            let mut h = vec![0u8; 16];
            h[0] = t;
            h[1] = 1;
            h[4..8].copy_from_slice(&(self.half + u32::from(t)).to_le_bytes());
            h[8] = if n == 1 { 0xce } else { 0xfa };
            h[12..16].copy_from_slice(&self.count.to_le_bytes());
            h.extend_from_slice(format!("{kind}-{}", NAMES[usize::from(n)]).as_bytes());
            h.push(0);
            h
        }
    }

    impl Window for Model {
        fn read8(&mut self, offset: u32) -> u8 {
            self.header()
                .get(offset as usize)
                .copied()
                .unwrap_or_default()
        }

        fn read32(&mut self, offset: u32) -> u32 {
            u32::from_le_bytes([0, 1, 2, 3].map(|i| self.read8(offset + i)))
        }

        fn write(&mut self, offset: u32, width: u8, value: u32) {
            if offset == hdr::TEST {
                self.current = (value < 3).then(|| self.first + value as u8);
                self.count = 0;
                return;
            }
            let Some(t) = self.current else { return };
            let n = t - self.first;
            if offset != self.half + u32::from(t) || self.deaf {
                return;
            }
            if n > 0 && self.eventfds {
                return;
            }
            if n != 1 && (width != 1 || value & 0xff != 0xfa) {
                return;
            }
            self.count += 1;
        }

        fn size(&self) -> u32 {
            self.size
        }
    }

    fn lines(w: &mut Model, space: Space) -> (bool, Vec<String>) {
        let mut out = Vec::new();
        let ok = walk(w, space, |c| out.push(c.to_string()));
        (ok, out)
    }

    #[test]
    fn walks_the_mmio_and_io_tests() {
        let (ok, out) = lines(&mut Model::mem(), Space::Mem);
        assert!(ok, "{out:?}");
        assert_eq!(
            out,
            [
                "mem test 0 mmio-no-eventfd 16 writes count 16 ok",
                "mem test 1 mmio-wildcard-eventfd 16 writes count 0 ok",
                "mem test 2 mmio-datamatch-eventfd 16 writes count 0 ok",
                "mem tests 3 ok",
            ]
        );
        let mut io = Model::io();
        io.eventfds = false;
        let (ok, out) = lines(&mut io, Space::Io);
        assert!(ok, "{out:?}");
        assert_eq!(out[0], "io test 3 portio-no-eventfd 16 writes count 16 ok");
        assert_eq!(
            out[1],
            "io test 4 portio-wildcard-eventfd 16 writes count 16 ok"
        );
        assert_eq!(out[3], "io tests 3 ok");
    }

    #[test]
    fn writes_that_do_not_count_fail() {
        let mut m = Model::mem();
        m.deaf = true;
        let (ok, out) = lines(&mut m, Space::Mem);
        assert!(!ok);
        assert_eq!(
            out[0],
            "mem test 0 mmio-no-eventfd 16 writes count 0 FAILED"
        );
    }

    #[test]
    fn a_window_that_reads_nothing_has_no_tests() {
        struct Dead;
        impl Window for Dead {
            fn read8(&mut self, _: u32) -> u8 {
                0xff
            }
            fn read32(&mut self, _: u32) -> u32 {
                u32::MAX
            }
            fn write(&mut self, _: u32, _: u8, _: u32) {}
            fn size(&self) -> u32 {
                4096
            }
        }
        // All-ones (nothing behind the address) is a name but an unusable test.
        let mut out = Vec::new();
        assert!(!walk(&mut Dead, Space::Mem, |c| out.push(c.to_string())));
        assert!(out[0].ends_with("FAILED"), "{out:?}");
        let c = Check::Tests {
            space: Space::Io,
            tests: 0,
        };
        assert_eq!(c.to_string(), "io tests 0 FAILED");
    }

    fn mem(addr: u64, size: u64, prefetchable: bool, is_64bit: bool) -> Bar {
        Bar::Memory {
            addr,
            size,
            prefetchable,
            is_64bit,
        }
    }

    #[test]
    fn bars_size_as_pci_testdev_has_them() {
        let sized = [
            (0, mem(0xc000_0000, 0x1000, false, false)),
            (
                1,
                Bar::Io {
                    port: 0xc000,
                    size: 0x100,
                },
            ),
            (2, mem(0xc100_0000, 0x100_0000, true, true)),
        ];
        let checks = bar_checks(&sized).map(|c| c.to_string());
        assert_eq!(
            checks,
            [
                "bar0 mem32 0xc0000000+0x1000 sized ok",
                "bar1 io 0xc000+0x100 sized ok",
                "bar2 mem64 0xc1000000+0x1000000 prefetchable sized ok",
            ]
        );
        // A 64-bit BAR sized as two 32-bit ones.
        let split = [
            (2, mem(0xc100_0000, 0x100_0000, true, false)),
            (3, mem(0, 0x1000, false, false)),
        ];
        let [a, b, c] = bar_checks(&split).map(|c| c.to_string());
        assert_eq!(a, "bar0 missing, expected mem32 +0x1000 FAILED");
        assert_eq!(b, "bar1 missing, expected io +0x100 FAILED");
        assert_eq!(
            c,
            "bar2 mem32 0xc1000000+0x1000000 prefetchable sized, expected mem64 prefetchable, bar3 listed apart FAILED"
        );
    }

    #[test]
    fn moves_and_old_places() {
        let mut m = Model::mem();
        let run = run_test(&mut m, 0);
        let moved = Check::Moved {
            index: 0,
            from: 0xc000_0000,
            to: 0xc210_0000,
            run,
            answers: run.is_some(),
        };
        assert_eq!(
            moved.to_string(),
            "bar0 moved 0xc0000000 -> 0xc2100000, test 0 mmio-no-eventfd 16 writes count 16 ok"
        );
        let gone = Check::Moved {
            index: 2,
            from: 1,
            to: 2,
            run: None,
            answers: false,
        };
        assert_eq!(gone.to_string(), "bar2 moved 0x1 -> 0x2, no answer FAILED");
        let old = |read| Check::OldPlace {
            index: 1,
            at: 0xc000,
            read,
        };
        assert_eq!(
            old(u32::MAX).to_string(),
            "bar1 old place 0xc000 reads 0xffffffff ok"
        );
        assert!(!old(0).ok());
        assert_eq!(
            Check::Restored { changed: Some(3) }.to_string(),
            "bar3 changed by sizing FAILED"
        );
    }

    #[test]
    fn free_space_is_aligned_and_bounded() {
        let mut s = FreeSpace {
            next: 0xc210_0000,
            end: 0xe000_0000,
        };
        assert_eq!(s.take(0x1000), Some(0xc210_0000));
        assert_eq!(s.take(0x100_0000), Some(0xc300_0000));
        assert_eq!(s.take(0x2000_0000), None);
        assert_eq!(s.next, 0xc400_0000);
    }
}
