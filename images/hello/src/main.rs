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
mod mem;

use core::ops::Range;

use kiln_hello::cmdline::Options;
use kiln_hello::exit::{exit, PANIC_CODE};
use kiln_hello::memmap::{self, RamSummary};
use kiln_hello::pci::ConfigAccess;
use kiln_hello::pci::{self, Mechanism1};
use kiln_hello::phys::PhysMemory;
use kiln_hello::start_info::{self, StartInfo};
use kiln_hello::{devtree, edu, println, serial};

/// Exit code when the VMM's boot data or the command line is unusable.
const BAD_INPUT_CODE: u32 = 1;
/// Exit code when an edu check fails.
const EDU_FAILED_CODE: u32 = 3;

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
            println!("hello: unusable start info at {start_info_paddr:#x}: {e}");
            report_source(&e);
            exit(BAD_INPUT_CODE);
        }
    };
    let mut code = 0;

    report_memory(&memory, &info);
    let mut edu_required = false;
    match report_cmdline(&memory, &info) {
        Some(o) => {
            if let Some(n) = o.exit_code {
                code = n;
            }
            edu_required = o.edu_required;
        }
        None => code = BAD_INPUT_CODE,
    }
    report_device_tree(&memory, &info);
    let (bus, edus) = report_pci();
    if let Some(failed) = drive_edus(bus.as_ref(), &edus, edu_required) {
        if failed {
            code = EDU_FAILED_CODE;
        }
    }
    exit(code)
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

/// Prints the cause chain of an error, one `caused by` line each.
fn report_source(error: &dyn core::error::Error) {
    let mut source = error.source();
    while let Some(cause) = source {
        println!("hello:   caused by: {cause}");
        source = cause.source();
    }
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

/// Lists the PCI functions; returns the bus and the edu devices on it.
fn report_pci() -> (Option<Mechanism1>, edu::Found) {
    let mut edus = edu::Found::default();
    let Some(cfg) = Mechanism1::probe() else {
        println!("hello: no PCI bus");
        return (None, edus);
    };
    let found = pci::walk(&cfg, |f| {
        if f.vendor == edu::VENDOR && f.device == edu::DEVICE {
            edus.push(f.bdf);
        }
        println!(
            "hello: pci {} {:04x}:{:04x} class {:06x}",
            f.bdf, f.vendor, f.device, f.class
        );
        pci::for_each_bar(&cfg, f, |index, bar| {
            println!("hello: pci {} bar{index} {bar}", f.bdf)
        });
        if let Some(msi) = pci::find_capability(&cfg, f.bdf, pci::CAP_MSI) {
            println!("hello: pci {} msi capability at {msi:#x}", f.bdf);
        }
    });
    if found == 0 {
        println!("hello: no PCI bus");
    }
    (Some(cfg), edus)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("hello: panic: {info}");
    exit(PANIC_CODE)
}
