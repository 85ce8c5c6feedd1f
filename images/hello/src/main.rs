//! The hello unikernel: boots through PVH, reports what the VMM gave it on
//! COM1 and leaves through the exit port.
//!
//! Build: `cargo build -p kiln-hello --profile guest`. Boot under QEMU:
//! `qemu-system-x86_64 -machine q35 -nographic -no-reboot -kernel kiln-hello
//! -append hello.exit=3 -device isa-debug-exit,iobase=0xf4,iosize=4`.
#![no_std]
#![no_main]

mod boot;
mod edu_hw;
mod exceptions;
mod hostile;
mod mem;
mod testdev_hw;

use core::ops::Range;

use kiln_abi::error::Chain;
use kiln_abi::exit::{GUEST_BAD_INPUT, GUEST_PANIC, HELLO_EDU_FAILED, HELLO_TESTDEV_FAILED};
use kiln_hello::cmdline::Options;
use kiln_hello::exit::exit;
use kiln_hello::memmap::{self, RamSummary};
use kiln_hello::pci::ConfigAccess;
use kiln_hello::pci::{self, Mechanism1};
use kiln_hello::phys::PhysMemory;
use kiln_hello::start_info::{self, StartInfo};
use kiln_hello::testdev::{self, FreeSpace, Space, Window};
use kiln_hello::{devtree, edu, println, serial};

/// Where guest-moved BARs may go up to: the end of kiln's 32-bit PCI
/// window, where its ECAM starts. The moves take space above every BAR the
/// VMM placed, which it fills from the window's start.
const MOVE_MEM_END: u64 = 0xe000_0000;
/// The end of the I/O space.
const MOVE_IO_END: u64 = 0x1_0000;

extern "C" {
    // Bounds of the loaded image, from linker.ld.
    static __image_start: u8;
    static __bss_end: u8;
}

fn image_range() -> Range<u64> {
    // Only the symbols' addresses are taken; nothing is read through them.
    let start = core::ptr::addr_of!(__image_start) as u64;
    let end = core::ptr::addr_of!(__bss_end) as u64;
    start..end
}

/// Called by the boot code in long mode with the start info's address.
extern "C" fn kmain(start_info_paddr: u64) -> ! {
    serial::init();
    println!("hello: kiln hello unikernel v{}", env!("CARGO_PKG_VERSION"));

    // SAFETY: boot.rs identity-maps [0, IDENTITY_MAP_END); this program runs
    // alone on one CPU with no DMA and writes only its own image (.data, .bss,
    // the stack in .bss), which `image_range` covers.
    let memory = unsafe { PhysMemory::new(boot::IDENTITY_MAP_END, image_range()) };

    let info = match StartInfo::read(&memory, start_info_paddr) {
        Ok(info) => info,
        Err(e) => {
            println!(
                "hello: unusable start info at {start_info_paddr:#x}: {}",
                Chain::new(&e).separator("\nhello:   caused by: ")
            );
            exit(GUEST_BAD_INPUT);
        }
    };
    let mut code = 0;

    report_memory(&memory, &info);
    let mut edu_required = false;
    let mut testdev_required = false;
    match report_cmdline(&memory, &info) {
        Some(o) => {
            if let Some(n) = o.exit_code {
                code = n;
            }
            edu_required = o.edu_required;
            testdev_required = o.testdev_required;
        }
        None => code = GUEST_BAD_INPUT,
    }
    // `hostile=<mode>`: a guest written to misbehave, for the hostile-guest suite.
    if let Some(o) = info.cmdline(&memory).ok().and_then(hostile::Options::parse) {
        hostile::run(&o);
    }
    report_device_tree(&memory, &info);
    let (bus, mut scan) = report_pci();
    let testdev_failed = drive_testdevs(bus.as_ref(), &mut scan, testdev_required);
    if testdev_failed == Some(true) {
        code = HELLO_TESTDEV_FAILED;
    }
    if let Some(failed) = drive_edus(bus.as_ref(), &scan.edus, edu_required) {
        if failed {
            code = HELLO_EDU_FAILED;
        }
    }
    exit(code)
}

/// Runs the pci-testdev checks on every pci-testdev found; `None` when
/// there was nothing to check (and nothing was required), `Some(failed)`
/// otherwise. One verdict line covers all devices.
fn drive_testdevs(bus: Option<&Mechanism1>, scan: &mut Scan, required: bool) -> Option<bool> {
    let cfg = match bus {
        Some(cfg) if scan.testdevs_found > 0 => cfg,
        _ => {
            if required {
                println!("hello: pci-testdev device not found FAILED");
                println!("hello: pci-testdev verdict fail");
                return Some(true);
            }
            return None;
        }
    };
    if scan.testdevs_found > testdev::MAX_DEVICES {
        println!(
            "hello: pci-testdev {} more devices skipped (at most {})",
            scan.testdevs_found - testdev::MAX_DEVICES,
            testdev::MAX_DEVICES
        );
    }
    let mut pass = true;
    let functions = scan.testdevs;
    for f in functions.iter().flatten() {
        pass &= drive_testdev(cfg, f, scan);
    }
    println!("hello: pci-testdev devices {}", scan.testdevs_found);
    println!(
        "hello: pci-testdev verdict {}",
        if pass { "pass" } else { "fail" }
    );
    Some(!pass)
}

/// The BAR registers 0x10..0x28.
fn bar_registers(cfg: &Mechanism1, bdf: pci::Bdf) -> [u32; 6] {
    core::array::from_fn(|i| cfg.read32(bdf, pci::reg::BAR0 + 4 * i as u8))
}

/// Runs the checks on one pci-testdev: BAR sizing, the protocol through
/// BAR0 and BAR1, then moves BAR0, BAR1 and BAR2 to free space and checks
/// the device answers at the new places and not at the old ones.
fn drive_testdev(cfg: &Mechanism1, f: &pci::Function, scan: &mut Scan) -> bool {
    let bdf = f.bdf;
    let mut pass = true;
    let mut note = |c: testdev::Check| {
        pass &= c.ok();
        println!("hello: pci-testdev {bdf} {c}");
    };
    let cmd = cfg.read16(bdf, pci::reg::COMMAND);
    // SAFETY: pci-testdev masters nothing; decoding only makes its BARs
    // answer where the VMM placed them.
    unsafe {
        cfg.write16(
            bdf,
            pci::reg::COMMAND,
            cmd | pci::command::IO | pci::command::MEMORY,
        )
    };

    // Sizing, as the guest sees it through the VMM.
    let before = bar_registers(cfg, bdf);
    let mut sized = [(0u8, pci::Bar::Io { port: 0, size: 0 }); 6];
    let mut n = 0;
    pci::for_each_bar(cfg, f, |index, bar| {
        if let Some(slot) = sized.get_mut(n) {
            *slot = (index, bar);
            n += 1;
        }
    });
    let after = bar_registers(cfg, bdf);
    let changed = (0..6u8).find(|&i| before.get(usize::from(i)) != after.get(usize::from(i)));
    let sized = sized.get(..n).unwrap_or(&[]);
    for c in testdev::bar_checks(sized) {
        note(c);
    }
    note(testdev::Check::Restored { changed });
    let bar = |index: u8| sized.iter().find(|(i, _)| *i == index).map(|(_, b)| *b);

    // The protocol through each BAR.
    let mmio = match bar(0) {
        Some(pci::Bar::Memory { addr, size, .. }) if addr + size <= MOVE_MEM_END => {
            Some((addr, size))
        }
        _ => None,
    };
    if let Some((base, size)) = mmio {
        let mut w = testdev_hw::Mmio {
            base,
            size: size as u32,
        };
        testdev::walk(&mut w, Space::Mem, &mut note);
    }
    let ports = match bar(1) {
        Some(pci::Bar::Io { port, size }) => u16::try_from(port).ok().map(|p| (p, size)),
        _ => None,
    };
    if let Some((base, size)) = ports {
        testdev::walk(&mut testdev_hw::Ports { base, size }, Space::Io, &mut note);
    }

    // BAR0 (32-bit memory, mapped into a KVM slot) to free space.
    if let (Some((from, size)), Some(b)) = (mmio, bar(0)) {
        if let Some(to) = scan.free_mem.take(size) {
            // SAFETY: `to` lies above every BAR the walk saw and below the
            // ECAM, in the MMIO hole: no RAM, no other BAR.
            unsafe { pci::move_bar(cfg, bdf, 0, &b, to) };
            let mut w = testdev_hw::Mmio {
                base: to,
                size: size as u32,
            };
            let run = testdev::run_test(&mut w, 0);
            w.write(testdev::hdr::TEST, 1, u32::from(testdev::MAX_TESTS));
            note(testdev::Check::Moved {
                index: 0,
                from,
                to,
                run,
                answers: run.is_some(),
            });
            let mut old = testdev_hw::Mmio {
                base: from,
                size: size as u32,
            };
            let read = old.read32(0);
            note(testdev::Check::OldPlace {
                index: 0,
                at: from,
                read,
            });
        }
    }
    // BAR1 (I/O, trapped and forwarded) to free ports.
    if let (Some((from, size)), Some(b)) = (ports, bar(1)) {
        let to = scan
            .free_io
            .take(u64::from(size))
            .and_then(|p| u16::try_from(p).ok());
        if let Some(to) = to {
            // SAFETY: the ports lie above every I/O BAR the walk saw and
            // below 0x10000; nothing else is there.
            unsafe { pci::move_bar(cfg, bdf, 1, &b, u64::from(to)) };
            let mut w = testdev_hw::Ports { base: to, size };
            let run = testdev::run_test(&mut w, 0);
            w.write(testdev::hdr::TEST, 1, u32::from(testdev::MAX_TESTS));
            note(testdev::Check::Moved {
                index: 1,
                from: u64::from(from),
                to: u64::from(to),
                run,
                answers: run.is_some(),
            });
            let read = testdev_hw::Ports { base: from, size }.read32(0);
            note(testdev::Check::OldPlace {
                index: 1,
                at: u64::from(from),
                read,
            });
        }
    }
    // BAR2 (64-bit prefetchable, nothing behind it: the device reads zero
    // there) to free space, both halves written.
    if let Some(
        b @ pci::Bar::Memory {
            addr: from,
            size,
            is_64bit: true,
            ..
        },
    ) = bar(2)
    {
        let to = scan
            .free_mem
            .take(size)
            .filter(|_| from + size <= MOVE_MEM_END);
        if let Some(to) = to {
            // SAFETY: as for BAR0.
            unsafe { pci::move_bar(cfg, bdf, 2, &b, to) };
            let window = |base| testdev_hw::Mmio { base, size: 4 };
            let read = window(to).read32(0);
            note(testdev::Check::Moved {
                index: 2,
                from,
                to,
                run: None,
                answers: read != u32::MAX,
            });
            let read = window(from).read32(0);
            note(testdev::Check::OldPlace {
                index: 2,
                at: from,
                read,
            });
        }
    }
    pass
}

/// Runs the edu checks on every edu device found, one after the other, each
/// with its own MSI vector; `None` when there was nothing to check (and
/// nothing was required), `Some(failed)` otherwise. One verdict line covers
/// all devices: pass only if every device passed.
fn drive_edus(bus: Option<&Mechanism1>, found: &edu::Found, required: bool) -> Option<bool> {
    let cfg = match bus {
        Some(cfg) if !found.is_empty() => cfg,
        _ => {
            if required {
                println!("hello: edu device not found FAILED");
                println!("hello: edu verdict fail");
                return Some(true);
            }
            return None;
        }
    };
    let Some(mut pages) = edu_hw::DmaPages::take() else {
        println!("hello: edu dma pages already in use FAILED");
        println!("hello: edu verdict fail");
        return Some(true);
    };
    if found.skipped() > 0 {
        println!(
            "hello: edu {} more devices skipped (at most {})",
            found.skipped(),
            edu::MAX_DEVICES
        );
    }
    let mut pass = true;
    for (index, bdf) in found.iter() {
        // `Found` keeps at most MAX_DEVICES, each of which has a vector.
        let Some(vector) = edu::msi_vector(index) else {
            continue;
        };
        pass &= drive_edu(cfg, bdf, vector, &mut pages);
    }
    // Each device wrote its own liveness value; with more than one, each
    // must still hold it (the guest addresses reach distinct devices).
    if found.len() > 1 {
        for (index, bdf) in found.iter() {
            let Some(vector) = edu::msi_vector(index) else {
                continue;
            };
            let mut hw = edu_hw::EduHw::new(cfg, bdf, bar0(cfg, bdf), None, &mut pages);
            let kept = edu::recheck(&mut hw, vector);
            pass &= kept.ok();
            println!("hello: edu {bdf} {kept}");
        }
    }
    println!("hello: edu devices {}", found.len());
    println!("hello: edu verdict {}", if pass { "pass" } else { "fail" });
    Some(!pass)
}

/// Runs the edu checks on the device at `bdf`; true when all passed.
fn drive_edu(cfg: &Mechanism1, bdf: pci::Bdf, vector: u8, pages: &mut edu_hw::DmaPages) -> bool {
    let cmd = cfg.read16(bdf, pci::reg::COMMAND);
    // SAFETY: the device only masters the two DMA pages this program hands
    // it (edu_hw::EduHw::dma_pages), and only while a check waits for it.
    unsafe {
        cfg.write16(
            bdf,
            pci::reg::COMMAND,
            cmd | pci::command::MEMORY | pci::command::BUS_MASTER | pci::command::INTX_DISABLE,
        )
    };
    let msi = pci::find_capability(cfg, bdf, pci::CAP_MSI);
    let mut hw = edu_hw::EduHw::new(cfg, bdf, bar0(cfg, bdf), msi, pages);
    edu::run(&mut hw, vector, |c| println!("hello: edu {bdf} {c}"))
}

/// Where edu's BAR0 (32-bit memory) is.
fn bar0(cfg: &Mechanism1, bdf: pci::Bdf) -> u64 {
    u64::from(cfg.read32(bdf, pci::reg::BAR0) & !0xf)
}

fn report_memory(memory: &PhysMemory, info: &StartInfo) {
    let Some((paddr, entries)) = info.memmap else {
        println!("hello: no memory map (start info version {})", info.version);
        return;
    };
    let len = u64::from(entries.min(memmap::MAX_ENTRIES)) * memmap::ENTRY_SIZE as u64;
    match memory.bytes(paddr, len) {
        Ok(raw) => {
            let ram = RamSummary::of(memmap::entries(raw));
            println!(
                "hello: memory {} MiB in {} ranges ({} KiB usable)",
                ram.mib_rounded_up(),
                ram.ranges,
                ram.bytes >> 10
            );
        }
        Err(e) => println!("hello: unreadable memory map: {e}"),
    }
}

/// Echoes the command line and returns its options; `None` when unusable.
fn report_cmdline(memory: &PhysMemory, info: &StartInfo) -> Option<Options> {
    let cmdline = match info.cmdline(memory) {
        Ok(cmdline) => cmdline,
        Err(e) => {
            println!("hello: unreadable command line: {e}");
            return None;
        }
    };
    println!("hello: cmdline \"{}\"", cmdline.escape_ascii());
    match Options::parse(cmdline) {
        Ok(options) => Some(options),
        Err(e) => {
            println!("hello: bad command line: {e}");
            None
        }
    }
}

fn report_device_tree(memory: &PhysMemory, info: &StartInfo) {
    let list = match info.module_list(memory) {
        Ok(list) => list,
        Err(e) => {
            println!("hello: unreadable module list: {e}");
            &[]
        }
    };
    for module in start_info::modules(list) {
        let cmdline = match module.cmdline_paddr {
            0 => Ok(&[][..]),
            addr => memory.c_str(addr, start_info::MAX_CMDLINE),
        };
        let contents = memory.bytes(module.paddr, module.size);
        let (cmdline, contents) = match (cmdline, contents) {
            (Ok(c), Ok(d)) => (c, d),
            (Err(e), _) | (_, Err(e)) => {
                println!("hello: unreadable module at {:#x}: {e}", module.paddr);
                continue;
            }
        };
        if !devtree::is_device_tree(cmdline, contents) {
            continue;
        }
        match devtree::parse(contents) {
            Ok(tree) => {
                println!(
                    "hello: device tree at {:#x}, {} bytes",
                    module.paddr,
                    tree.total_size()
                );
                devtree::devices(&tree, |device| println!("hello: fdt {device}"));
            }
            Err(e) => println!("hello: bad device tree at {:#x}: {e}", module.paddr),
        }
        return;
    }
    println!("hello: no device tree");
}

/// What the PCI walk found: the devices hello drives, and the space above
/// every BAR, where BARs can be moved to.
struct Scan {
    edus: edu::Found,
    testdevs: [Option<pci::Function>; testdev::MAX_DEVICES],
    testdevs_found: usize,
    free_mem: FreeSpace,
    free_io: FreeSpace,
}

/// Lists the PCI functions; returns the bus and what is on it.
fn report_pci() -> (Option<Mechanism1>, Scan) {
    let mut scan = Scan {
        edus: edu::Found::default(),
        testdevs: [None; testdev::MAX_DEVICES],
        testdevs_found: 0,
        free_mem: FreeSpace {
            next: 0,
            end: MOVE_MEM_END,
        },
        free_io: FreeSpace {
            next: 0,
            end: MOVE_IO_END,
        },
    };
    let Some(cfg) = Mechanism1::probe() else {
        println!("hello: no PCI bus");
        return (None, scan);
    };
    let found = pci::walk(&cfg, |f| {
        if f.vendor == edu::VENDOR && f.device == edu::DEVICE {
            scan.edus.push(f.bdf);
        }
        if f.vendor == testdev::VENDOR && f.device == testdev::DEVICE {
            if let Some(slot) = scan.testdevs.get_mut(scan.testdevs_found) {
                *slot = Some(*f);
            }
            scan.testdevs_found += 1;
        }
        println!(
            "hello: pci {} {:04x}:{:04x} class {:06x}",
            f.bdf, f.vendor, f.device, f.class
        );
        pci::for_each_bar(&cfg, f, |index, bar| {
            match bar {
                pci::Bar::Memory { addr, size, .. } if addr < MOVE_MEM_END => {
                    scan.free_mem.next = scan.free_mem.next.max(addr.saturating_add(size));
                }
                pci::Bar::Io { port, size } => {
                    let end = u64::from(port) + u64::from(size);
                    scan.free_io.next = scan.free_io.next.max(end);
                }
                pci::Bar::Memory { .. } => {}
            }
            println!("hello: pci {} bar{index} {bar}", f.bdf)
        });
        if let Some(msi) = pci::find_capability(&cfg, f.bdf, pci::CAP_MSI) {
            println!("hello: pci {} msi capability at {msi:#x}", f.bdf);
        }
    });
    if found == 0 {
        println!("hello: no PCI bus");
    }
    (Some(cfg), scan)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("hello: panic: {info}");
    exit(GUEST_PANIC)
}
