//! Hostile modes: the hello unikernel written to misbehave, for kiln's
//! hostile-guest suite (tests/tests/hostile.rs; docs/testing.md, "Hostile
//! guests"). `hostile=<mode>` on the command line picks one; a mode never
//! returns to the normal checks.
//!
//! | mode | what the guest does | how it leaves |
//! |---|---|---|
//! | `forge` | prints status lines, runtime notes and `appliance done` by every route: whole line, mid-line, after a bare CR, after ANSI/VT escapes, after backspaces; and status lines where a reader cuts a line over 16 KiB and over 64 KiB | exit 3 |
//! | `panic` | prints `Kernel panic`/`BUG:` after a bare CR, and `Kernel panic` where a reader cuts a line over 16 KiB | exit 5 |
//! | `flood-lines` | prints `hostile.bytes` bytes in 100-byte lines | exit 6 |
//! | `flood-raw` | prints `hostile.bytes` bytes without a newline | exit 7 |
//! | `crash` | nothing | exit 8 at once |
//! | `never` | spins forever | never |
//! | `seccomp` | asks a `dev-hooks` build of the VMM (port `TEST_SECCOMP_PORT`) to make a system call its seccomp filter forbids, which must end the VMM | exit 9 if it is still running |
//! | `fuzz` | pseudo-random config, BAR and MSI-X table accesses to its devices, a BAR moved onto RAM over and over, an 8-byte ECAM write | exit 0 when the VMM kept the device whole, 3 if not |
//!
//! Options: `hostile.me=<vm>` (its own VM name), `hostile.victim=<vm>`
//! (the sibling to forge for), `hostile.bytes=<n>` (flood size),
//! `hostile.seed=<n>` and `hostile.rounds=<n>` (fuzz).

use core::fmt::Write as _;

use kiln_hello::edu;
use kiln_hello::exit::exit;
use kiln_hello::pci::{self, Bdf, ConfigAccess, Mechanism1};
use kiln_hello::port::outb;
use kiln_hello::println;

/// Exit codes, one per mode, so a verdict's code says which mode ended.
const FORGE_CODE: u32 = 3;
const PANIC_CODE: u32 = 5;
const FLOOD_LINES_CODE: u32 = 6;
const FLOOD_RAW_CODE: u32 = 7;
const CRASH_CODE: u32 = 8;
const FUZZ_FAILED_CODE: u32 = 3;
const SECCOMP_SURVIVED_CODE: u32 = 9;

/// The harness's longest console line, and a longer one (the runtime's).
const LONG_LINES: [usize; 2] = [16 * 1024, 64 * 1024];

const COM1: u16 = 0x3f8;

/// PCI Express ECAM of kiln's guests (bus 0), from the VMM's board layout.
const ECAM: u64 = 0xe000_0000;
/// NVMe (QEMU's, 1b36:0010): the device with an MSI-X table.
const NVME: (u16, u16) = (0x1b36, 0x0010);
/// Guest RAM hello never uses (the image sits at 1 MiB; the VM has 64 MiB):
/// where the BAR-on-RAM probe puts edu's BAR0.
const SPARE_RAM: u64 = 0x0200_0000;
/// How often the probe moves the BAR onto RAM and back.
const BAR_ON_RAM_MOVES: u32 = 200;

/// A chosen mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forge,
    Panic,
    FloodLines,
    FloodRaw,
    Crash,
    Never,
    Fuzz,
    Seccomp,
}

/// The mode and its options, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    pub mode: Mode,
    me: &'a [u8],
    victim: &'a [u8],
    bytes: u64,
    seed: u64,
    rounds: u64,
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit()
            .then(|| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

impl<'a> Options<'a> {
    /// `None` without `hostile=`; an unknown mode or value is reported and
    /// ends the VM (as hello does for its own bad options).
    pub fn parse(cmdline: &'a [u8]) -> Option<Self> {
        let mut mode = None;
        let mut o = Options {
            mode: Mode::Never,
            me: b"hostile",
            victim: b"linux",
            bytes: 1 << 20,
            seed: 1,
            rounds: 2000,
        };
        for word in cmdline.split(u8::is_ascii_whitespace) {
            let Some((key, value)) = word
                .iter()
                .position(|&b| b == b'=')
                .map(|i| (&word[..i], &word[i + 1..]))
            else {
                continue;
            };
            let n = || match number(value) {
                Some(n) => n,
                None => {
                    println!("hostile: bad number in {}", word.escape_ascii());
                    exit(kiln_abi::exit::GUEST_BAD_INPUT)
                }
            };
            match key {
                b"hostile" => {
                    mode = Some(match value {
                        b"forge" => Mode::Forge,
                        b"panic" => Mode::Panic,
                        b"flood-lines" => Mode::FloodLines,
                        b"flood-raw" => Mode::FloodRaw,
                        b"crash" => Mode::Crash,
                        b"never" => Mode::Never,
                        b"fuzz" => Mode::Fuzz,
                        b"seccomp" => Mode::Seccomp,
                        _ => {
                            println!("hostile: unknown mode {}", value.escape_ascii());
                            exit(kiln_abi::exit::GUEST_BAD_INPUT)
                        }
                    })
                }
                b"hostile.me" => o.me = value,
                b"hostile.victim" => o.victim = value,
                b"hostile.bytes" => o.bytes = n(),
                b"hostile.seed" => o.seed = n(),
                b"hostile.rounds" => o.rounds = n(),
                _ => {}
            }
        }
        o.mode = mode?;
        Some(o)
    }
}

/// Runs the mode; never returns.
pub fn run(o: &Options) -> ! {
    println!("hostile: mode {:?}", o.mode);
    match o.mode {
        Mode::Forge => forge(o),
        Mode::Panic => fake_panic(o),
        Mode::FloodLines => flood_lines(o.bytes),
        Mode::FloodRaw => flood_raw(o.bytes),
        Mode::Crash => exit(CRASH_CODE),
        Mode::Never => loop {
            core::hint::spin_loop();
        },
        Mode::Fuzz => fuzz(o),
        Mode::Seccomp => {
            // SAFETY: a port write; a dev-hooks VMM answers it with a
            // forbidden system call, any other leaves the port unclaimed.
            unsafe { outb(kiln_abi::exit::TEST_SECCOMP_PORT, 1) };
            println!("hostile: the VMM survived a forbidden system call");
            exit(SECCOMP_SURVIVED_CODE)
        }
    }
}

/// Sends bytes to COM1 as they are: no CR before LF, any byte value, and
/// no wait on the line status (kiln's UART is always ready; a hostile guest
/// would not wait anyway), so each byte costs one VM exit.
fn raw(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: COM1's transmit register; writing it touches no memory.
        unsafe { outb(COM1, b) };
    }
}

/// `raw` for formatted text, counting the bytes sent.
#[derive(Default)]
struct Raw(usize);

impl core::fmt::Write for Raw {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        raw(s.as_bytes());
        self.0 += s.len();
        Ok(())
    }
}

/// Sends `count` copies of `byte`.
fn repeat(byte: u8, count: usize) {
    for _ in 0..count {
        raw(&[byte]);
    }
}

/// The routes a forged text takes to the console.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// At the start of a guest line.
    Whole,
    /// After other text on the line.
    MidLine,
    /// After a bare CR (a terminal returns to column 0).
    Cr,
    /// After "erase line" and "cursor to column 1" escapes.
    Escape,
    /// After backspaces over the runtime's `[vm] ` prefix.
    Backspace,
}

impl core::fmt::Display for Route {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Route::Whole => f.write_str("whole"),
            Route::MidLine => f.write_str("midline"),
            Route::Cr => f.write_str("cr"),
            Route::Escape => f.write_str("esc"),
            Route::Backspace => f.write_str("bs"),
        }
    }
}

const ROUTES: [Route; 5] = [
    Route::Whole,
    Route::MidLine,
    Route::Cr,
    Route::Escape,
    Route::Backspace,
];

/// Prints `text` (formatted) by `route`, as one guest line of VM `me`.
fn forged(route: Route, me: &[u8], text: core::fmt::Arguments) {
    match route {
        Route::Whole => {}
        Route::MidLine => raw(b"hostile: x "),
        Route::Cr => raw(b"hostile: 50%\r"),
        Route::Escape => raw(b"hostile: \x1b[2K\x1b[1G\x1b[999D"),
        Route::Backspace => repeat(0x08, me.len() + 3),
    }
    let _ = Raw::default().write_fmt(text);
    raw(b"\r\n");
}

/// One line longer than every cut in [`LONG_LINES`], with a forged text at
/// each cut: where a reader that cuts long lines there starts a new line.
/// Columns count the runtime's `[me] ` prefix.
fn forged_long(me: &[u8], texts: &[core::fmt::Arguments]) {
    let mut column = me.len() + 3;
    raw(b"hostile: long ");
    column += 14;
    for (cut, text) in LONG_LINES.into_iter().zip(texts) {
        let text = *text;
        repeat(b'.', cut.saturating_sub(column));
        let mut out = Raw::default();
        let _ = out.write_fmt(text);
        column = cut.max(column) + out.0;
    }
    raw(b"\r\n");
}

/// Forges, by every route, what only the runtime may say: this VM's pass,
/// the victim's failure (status line and a runtime note carrying its fail
/// pattern), a VM that does not exist, and the appliance's end.
fn forge(o: &Options) -> ! {
    let (me, victim) = (o.me.escape_ascii(), o.victim.escape_ascii());
    for route in ROUTES {
        println!("hostile: forging by route {route}");
        forged(
            route,
            o.me,
            format_args!("kiln: vm={me} state=exited code=0"),
        );
        forged(
            route,
            o.me,
            format_args!("kiln: vm={victim} state=failed reason=forged by {me} ({route})"),
        );
        forged(
            route,
            o.me,
            format_args!("kiln: vm={victim} state=exited code=1"),
        );
        forged(
            route,
            o.me,
            format_args!("kiln: vm {}: forged note", Ghost(route)),
        );
        forged(
            route,
            o.me,
            format_args!("kiln: vm={} state=exited code=0", Ghost(route)),
        );
        forged(
            route,
            o.me,
            format_args!("kiln: vm {victim}: forged Oops ({route})"),
        );
    }
    println!("hostile: forging by route long");
    forged_long(
        o.me,
        &[
            format_args!("kiln: vm={victim} state=failed reason=forged by {me} (16k)"),
            format_args!("kiln: vm=ghost-64k state=exited code=0"),
        ],
    );
    // Noise a terminal acts on: a C1 CSI, NUL, DEL, invalid UTF-8, a title.
    raw(b"hostile: noise \x00\x7f\xff\xfe\xc2\x9b2J\x1b]0;forged title\x07\x1bc end\r\n");
    for route in ROUTES {
        forged(
            route,
            o.me,
            format_args!("kiln: appliance done ok=9 failed=0"),
        );
    }
    println!("hostile: forger done");
    exit(FORGE_CODE)
}

/// The name of the VM that does not exist, per route.
struct Ghost(Route);

impl core::fmt::Display for Ghost {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ghost-{}", self.0)
    }
}

/// A host kernel's panic and BUG lines, by the routes that reach column 0
/// of a console reader.
fn fake_panic(o: &Options) -> ! {
    let me = o.me.escape_ascii();
    forged(
        Route::Cr,
        o.me,
        format_args!("Kernel panic - not syncing: forged by {me} (cr)"),
    );
    forged(
        Route::Cr,
        o.me,
        format_args!("BUG: kernel NULL pointer dereference, forged by {me} (cr)"),
    );
    forged_long(
        o.me,
        &[format_args!(
            "Kernel panic - not syncing: forged by {me} (16k)"
        )],
    );
    println!("hostile: panicker done");
    exit(PANIC_CODE)
}

/// `bytes` bytes in lines of 100 (99 and the LF; the CR hello adds is not counted).
fn flood_lines(bytes: u64) -> ! {
    let lines = bytes / 100;
    for n in 0..lines {
        let _ = write!(Raw::default(), "hostile: flood line {n:>10} ");
        repeat(b'=', 99 - 31);
        raw(b"\n");
    }
    println!("\nhostile: flood-lines done, {lines} lines");
    exit(FLOOD_LINES_CODE)
}

/// `bytes` bytes without a newline.
fn flood_raw(bytes: u64) -> ! {
    raw(b"hostile: flood ");
    for _ in 0..bytes {
        raw(b"~");
    }
    println!("\nhostile: flood-raw done, {bytes} bytes");
    exit(FLOOD_RAW_CODE)
}

/// xorshift64*: a fixed sequence for a seed, so a failing fuzz run repeats.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// 1, 2, 4 or (when `wide`) 8.
    fn width(&mut self, wide: bool) -> u64 {
        1 << self.below(if wide { 4 } else { 3 })
    }
}

/// A device the fuzzer owns, and the registers it must not write.
struct Target {
    bdf: Bdf,
    /// Config bytes left alone: the power-management control (D3 would
    /// switch the device off) and the PCIe device control (FLR).
    keep: [Option<(u8, u8)>; 2],
    /// BAR registers 0x10..0x28 and the command register, as the VMM set them.
    bars: [u32; 6],
    command: u16,
}

impl Target {
    fn new(cfg: &Mechanism1, bdf: Bdf) -> Self {
        let cap = |id| pci::find_capability(cfg, bdf, id);
        Target {
            bdf,
            keep: [cap(0x01).map(|c| (c + 4, 4)), cap(0x10).map(|c| (c + 8, 2))],
            bars: core::array::from_fn(|i| cfg.read32(bdf, pci::reg::BAR0 + 4 * i as u8)),
            command: cfg.read16(bdf, pci::reg::COMMAND),
        }
    }

    /// Whether a write of `width` bytes at `offset` may be made.
    fn allowed(&self, offset: u64, width: u64) -> bool {
        let end = offset + width;
        end <= 256
            && self
                .keep
                .iter()
                .flatten()
                .all(|&(at, len)| end <= u64::from(at) || offset >= u64::from(at) + u64::from(len))
    }

    /// Puts the BARs and command register back (bus mastering off).
    fn restore(&self, cfg: &Mechanism1) {
        // SAFETY: the values the VMM chose; bus mastering stays off, so the
        // device can write no memory.
        unsafe {
            cfg.write16(self.bdf, pci::reg::COMMAND, 0);
            for (i, v) in self.bars.iter().enumerate() {
                cfg.write32(self.bdf, pci::reg::BAR0 + 4 * i as u8, *v);
            }
            cfg.write16(
                self.bdf,
                pci::reg::COMMAND,
                (self.command | pci::command::MEMORY) & !pci::command::BUS_MASTER,
            );
        }
    }
}

/// An ECAM address of bus 0.
fn ecam(bdf: Bdf, offset: u64) -> u64 {
    ECAM | u64::from(bdf.device()) << 15 | u64::from(bdf.function()) << 12 | offset
}

/// A read of `width` bytes at `addr` (MMIO, identity-mapped).
///
/// # Safety
/// `addr` must be device memory or RAM this program does not use.
unsafe fn mmio_read(addr: u64, width: u64) -> u64 {
    // SAFETY: the caller's promise; the accesses are naturally aligned.
    unsafe {
        match width {
            1 => u64::from(core::ptr::read_volatile(addr as *const u8)),
            2 => u64::from(core::ptr::read_volatile(addr as *const u16)),
            4 => u64::from(core::ptr::read_volatile(addr as *const u32)),
            _ => core::ptr::read_volatile(addr as *const u64),
        }
    }
}

/// A write of `width` bytes at `addr`.
///
/// # Safety
/// As for [`mmio_read`], and the write must not make a device master memory.
unsafe fn mmio_write(addr: u64, width: u64, value: u64) {
    // SAFETY: the caller's promise; the accesses are naturally aligned.
    unsafe {
        match width {
            1 => core::ptr::write_volatile(addr as *mut u8, value as u8),
            2 => core::ptr::write_volatile(addr as *mut u16, value as u16),
            4 => core::ptr::write_volatile(addr as *mut u32, value as u32),
            _ => core::ptr::write_volatile(addr as *mut u64, value),
        }
    }
}

/// Clears the bus-master bit in a write of `width` bytes at `offset` that
/// covers the command register, so no fuzzed write lets the device DMA.
fn no_bus_master(offset: u64, width: u64, value: u64) -> u64 {
    let bit = u64::from(pci::command::BUS_MASTER);
    let at = u64::from(pci::reg::COMMAND);
    if offset <= at && at < offset + width {
        value & !(bit << ((at - offset) * 8))
    } else {
        value
    }
}

/// One pseudo-random config access to `t`: mechanism #1 (1, 2, 4 bytes) or
/// ECAM (1, 2, 4, 8 bytes), a read or a write anywhere in the 256 bytes.
fn fuzz_config(cfg: &Mechanism1, t: &Target, rng: &mut Rng) {
    let by_ecam = rng.below(2) == 0;
    let width = rng.width(by_ecam);
    let offset = rng.below(256) & !(width - 1);
    let write = rng.below(3) != 0;
    let value = no_bus_master(offset, width, rng.next());
    if write && !t.allowed(offset, width) {
        return;
    }
    let o = offset as u8;
    // SAFETY: bus mastering is never set (`no_bus_master`), the power and
    // reset controls are skipped (`allowed`), so the device writes no
    // memory and stays on; a BAR moved over RAM is refused by the VMM, which
    // is what this tests. ECAM is the VMM's, identity-mapped.
    unsafe {
        match (by_ecam, write, width) {
            (true, true, _) => mmio_write(ecam(t.bdf, offset), width, value),
            (true, false, _) => {
                mmio_read(ecam(t.bdf, offset), width);
            }
            (false, true, 1) => cfg.write8(t.bdf, o, value as u8),
            (false, true, 2) => cfg.write16(t.bdf, o, value as u16),
            (false, true, _) => cfg.write32(t.bdf, o, value as u32),
            (false, false, _) => {
                cfg.read32(t.bdf, o);
            }
        }
    }
}

/// Where a memory BAR register points now, if decoded below 4 GiB.
fn bar_base(cfg: &Mechanism1, bdf: Bdf, index: u8) -> Option<u64> {
    let low = cfg.read32(bdf, pci::reg::BAR0 + 4 * index);
    if low & 1 != 0 {
        return None;
    }
    let high = if low & 0b110 == 0b100 {
        cfg.read32(bdf, pci::reg::BAR0 + 4 * index + 4)
    } else {
        0
    };
    let addr = u64::from(high) << 32 | u64::from(low & !0xf);
    (addr != 0 && addr < ECAM).then_some(addr)
}

/// The MSI-X table and PBA of `bdf`: (capability, table address, table
/// bytes, PBA address, PBA bytes), with the BARs where the VMM put them.
fn msix(cfg: &Mechanism1, bdf: Bdf) -> Option<(u8, u64, u64, u64, u64)> {
    let cap = pci::find_capability(cfg, bdf, pci::CAP_MSIX)?;
    let control = cfg.read16(bdf, cap + 2);
    let entries = u64::from(control & 0x7ff) + 1;
    let table = cfg.read32(bdf, cap + 4);
    let pba = cfg.read32(bdf, cap + 8);
    let at = |reg: u32| Some(bar_base(cfg, bdf, (reg & 7) as u8)? + u64::from(reg & !7));
    Some((
        cap,
        at(table)?,
        entries * 16,
        at(pba)?,
        entries.div_ceil(64) * 8,
    ))
}

/// Fuzzes edu's and the NVMe controller's config space, edu's registers and
/// the NVMe MSI-X table, then moves edu's BAR0 onto RAM again and again and
/// writes edu's MSI capability with 8-byte ECAM stores; checks the VMM kept
/// each device whole.
fn fuzz(o: &Options) -> ! {
    let Some(cfg) = Mechanism1::probe() else {
        println!("hostile: no PCI bus FAILED");
        exit(FUZZ_FAILED_CODE)
    };
    let mut edu_bdf = None;
    let mut nvme_bdf = None;
    pci::walk(&cfg, |f| {
        if (f.vendor, f.device) == (edu::VENDOR, edu::DEVICE) {
            edu_bdf = Some(f.bdf);
        }
        if (f.vendor, f.device) == NVME {
            nvme_bdf = Some(f.bdf);
        }
    });
    let (Some(edu_bdf), Some(nvme_bdf)) = (edu_bdf, nvme_bdf) else {
        println!("hostile: fuzz needs an edu and an NVMe device FAILED");
        exit(FUZZ_FAILED_CODE)
    };
    let edu_t = Target::new(&cfg, edu_bdf);
    let nvme_t = Target::new(&cfg, nvme_bdf);
    let mut rng = Rng::new(o.seed);
    let mut accesses = 0u64;

    // Config space: BARs anywhere, MSI and MSI-X on and off, random bytes.
    for _ in 0..o.rounds {
        let t = if rng.below(2) == 0 { &edu_t } else { &nvme_t };
        fuzz_config(&cfg, t, &mut rng);
        accesses += 1;
    }
    edu_t.restore(&cfg);
    nvme_t.restore(&cfg);
    println!("hostile: fuzz config {accesses} accesses");

    // edu's registers below its DMA block, and the MSI-X table and PBA with
    // MSI-X switched on and off under them.
    let Some(edu_bar) = bar_base(&cfg, edu_bdf, 0) else {
        println!("hostile: edu BAR0 unplaced after restore FAILED");
        exit(FUZZ_FAILED_CODE)
    };
    let Some((cap, table, table_len, pba, pba_len)) = msix(&cfg, nvme_bdf) else {
        println!("hostile: no MSI-X table on the NVMe device FAILED");
        exit(FUZZ_FAILED_CODE)
    };
    let mut bar_accesses = 0u64;
    for _ in 0..o.rounds {
        let width = rng.width(true);
        let (base, len) = match rng.below(8) {
            0 => (edu_bar, edu::reg::DMA_SRC),
            1 => (pba, pba_len),
            _ => (table, table_len),
        };
        let offset = rng.below(len) & !(width - 1);
        if offset + width > len {
            continue;
        }
        if rng.below(16) == 0 {
            // MSI-X enable and function mask (bits 15, 14 of its control).
            let control = cfg.read16(nvme_bdf, cap + 2) & 0x3fff;
            // SAFETY: bus mastering is off: no vector can fire into memory.
            unsafe { cfg.write16(nvme_bdf, cap + 2, control | (rng.below(4) as u16) << 14) };
        }
        // SAFETY: the accesses lie inside edu's register block below its
        // DMA registers, the MSI-X table or the PBA, all of them device
        // memory (or the VMM's emulation of it); bus mastering is off.
        unsafe {
            if rng.below(2) == 0 {
                mmio_write(base + offset, width, rng.next());
            } else {
                mmio_read(base + offset, width);
            }
        }
        bar_accesses += 1;
    }
    // SAFETY: MSI-X off again; bus mastering stays off.
    unsafe { cfg.write16(nvme_bdf, cap + 2, 0) };
    println!("hostile: fuzz bars and msi-x table {bar_accesses} accesses");

    let mut pass = bar_on_ram(&cfg, &edu_t, edu_bar);
    pass &= ecam_wide_write(&cfg, edu_bdf);
    // SAFETY: reading edu's identity register, in its BAR0.
    let id = unsafe { mmio_read(edu_bar + edu::reg::ID, 4) } as u32;
    let alive = id == edu::EXPECTED_ID;
    pass &= alive;
    println!(
        "hostile: edu id {id:#010x} after the fuzz {}",
        if alive { "ok" } else { "FAILED" }
    );
    println!(
        "hostile: fuzz done, {} accesses",
        accesses + bar_accesses + u64::from(BAR_ON_RAM_MOVES)
    );
    exit(if pass { 0 } else { FUZZ_FAILED_CODE })
}

/// Moves edu's BAR0 onto guest RAM and back, [`BAR_ON_RAM_MOVES`] times:
/// RAM must stay RAM (the guest reads what it wrote there), and at its own
/// place the device must answer again.
fn bar_on_ram(cfg: &Mechanism1, t: &Target, bar: u64) -> bool {
    const PATTERN: u32 = 0x6b69_6c6e;
    // SAFETY: SPARE_RAM is RAM of this VM no code or data of hello uses.
    unsafe { mmio_write(SPARE_RAM, 4, u64::from(PATTERN)) };
    let mut ram_kept = true;
    let mut answers = true;
    for _ in 0..BAR_ON_RAM_MOVES {
        // SAFETY: a hostile move the VMM must refuse to map; bus mastering
        // is off.
        unsafe { cfg.write32(t.bdf, pci::reg::BAR0, SPARE_RAM as u32) };
        // SAFETY: RAM as above.
        ram_kept &= unsafe { mmio_read(SPARE_RAM, 4) } as u32 == PATTERN;
        // SAFETY: back where the VMM put it.
        unsafe { cfg.write32(t.bdf, pci::reg::BAR0, bar as u32) };
        // SAFETY: edu's identity register, in its BAR0.
        answers &= unsafe { mmio_read(bar + edu::reg::ID, 4) } as u32 == edu::EXPECTED_ID;
    }
    let verdict = |ok| if ok { "ok" } else { "FAILED" };
    println!(
        "hostile: bar on ram {BAR_ON_RAM_MOVES} moves, ram kept {}",
        verdict(ram_kept)
    );
    println!(
        "hostile: bar on ram, device answers at home {}",
        verdict(answers)
    );
    ram_kept && answers
}

/// An 8-byte ECAM store to two dwords of edu's MSI capability (address
/// low and high, or address high and data, whichever pair is 8-byte
/// aligned): both must read back as written, through mechanism #1, as two
/// 4-byte stores would leave them. MSI stays disabled.
fn ecam_wide_write(cfg: &Mechanism1, bdf: Bdf) -> bool {
    let Some(cap) = pci::find_capability(cfg, bdf, pci::CAP_MSI) else {
        println!("hostile: edu has no MSI capability FAILED");
        return false;
    };
    // SAFETY: MSI off: the message is only stored, never sent.
    unsafe { cfg.write16(bdf, cap + 2, 0) };
    if cfg.read16(bdf, cap + 2) & (1 << 7) == 0 {
        println!("hostile: edu's MSI address is 32-bit FAILED");
        return false;
    }
    // (offset, value): address high 1 and data 0x4151, or address low
    // 0xfee01000 and address high 1.
    let (at, want): (u8, u64) = if cap % 8 == 0 {
        (cap + 8, 0x4151 << 32 | 1)
    } else {
        (cap + 4, 1 << 32 | 0xfee0_1000)
    };
    // SAFETY: as above; the store is 8-byte aligned, in ECAM.
    unsafe { mmio_write(ecam(bdf, u64::from(at)), 8, want) };
    let got = u64::from(cfg.read32(bdf, at + 4)) << 32 | u64::from(cfg.read32(bdf, at));
    let ok = got == want;
    println!(
        "hostile: ecam 8-byte write at {at:#x} reads back {got:#018x}, wrote {want:#018x} {}",
        if ok { "ok" } else { "FAILED" }
    );
    ok
}
