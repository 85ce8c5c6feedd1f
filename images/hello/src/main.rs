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
    let edu = report_pci();
    if let Some(failed) = drive_edu(edu, edu_required) {
        if failed {
            code = EDU_FAILED_CODE;
        }
    }
    exit(code)
}

/// Runs the edu checks when an edu device is present (or required); `None`
/// when there was nothing to check, `Some(failed)` otherwise.
fn drive_edu(edu: Option<(Mechanism1, pci::Bdf)>, required: bool) -> Option<bool> {
    let Some((cfg, bdf)) = edu else {
        if required {
            println!("hello: edu device not found FAILED");
            println!("hello: edu verdict fail");
            return Some(true);
        }
        return None;
    };
    let bar0 = u64::from(cfg.read32(bdf, pci::reg::BAR0) & !0xf);
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
    let msi = pci::find_capability(&cfg, bdf, pci::CAP_MSI);
    let mut hw = edu_hw::EduHw::new(cfg, bdf, bar0, msi);
    let pass = edu::run(&mut hw, |c| println!("hello: {c}"));
    println!("hello: edu verdict {}", if pass { "pass" } else { "fail" });
    Some(!pass)
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

/// Lists the PCI functions; returns the bus and the edu device, if any.
fn report_pci() -> Option<(Mechanism1, pci::Bdf)> {
    let Some(cfg) = Mechanism1::probe() else {
        println!("hello: no PCI bus");
        return None;
    };
    let mut edu_at = None;
    let found = pci::walk(&cfg, |f| {
        if f.vendor == edu::VENDOR && f.device == edu::DEVICE && edu_at.is_none() {
            edu_at = Some(f.bdf);
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
    edu_at.map(|bdf| (cfg, bdf))
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("hello: panic: {info}");
    exit(PANIC_CODE)
}
