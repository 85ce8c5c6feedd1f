//! Boots the hello unikernel under QEMU's PVH loader (no kiln VMM involved)
//! and checks what it reports on COM1 and the exit code it leaves with.
//!
//! Needs `qemu-system-x86_64` (`apt-get install qemu-system-x86`); fails,
//! never skips, without it.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use kiln_tests::direct_boot::run_qemu;
use kiln_tests::Finished;

const TIMEOUT: Duration = Duration::from_secs(60);

fn hello() -> &'static PathBuf {
    static HELLO: OnceLock<PathBuf> = OnceLock::new();
    HELLO.get_or_init(|| {
        kiln::payload::cargo_build("kiln-hello", &kiln_tests::root())
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Boots hello on q35 with 64 MiB, the exit device and an edu device.
fn boot(append: &str, extra: &[&str]) -> Finished {
    let kernel = hello().to_str().expect("target path is UTF-8");
    let mut args = vec![
        "-machine",
        "q35,accel=tcg",
        "-cpu",
        "max",
        "-m",
        "64",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        "-kernel",
        kernel,
        "-append",
        append,
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-device",
        "edu",
    ];
    args.extend_from_slice(extra);
    let run = run_qemu(&args, TIMEOUT);
    eprintln!(
        "QEMU ran {:.2?}, exit {:?}; console:\n{}",
        run.elapsed,
        run.code(),
        run.output
    );
    assert!(!run.timed_out, "QEMU did not exit within {TIMEOUT:?}");
    run
}

/// QEMU's isa-debug-exit turns a guest code into (code << 1) | 1.
fn qemu_status(guest_code: i32) -> Option<i32> {
    Some((guest_code << 1) | 1)
}

#[test]
fn reports_memory_cmdline_pci_and_propagates_the_exit_code() {
    let run = boot("hello.exit=3", &[]);
    let banner = format!("hello: kiln hello unikernel v{}", env!("CARGO_PKG_VERSION"));
    // SeaBIOS leaves "Booting from ROM.." unterminated just before it.
    assert!(
        run.lines().any(|l| l.ends_with(&banner)),
        "no banner line {banner:?}"
    );
    assert!(
        run.lines()
            .any(|l| l.starts_with("hello: memory 64 MiB in ")),
        "no 64 MiB memory line"
    );
    assert!(
        run.has_line("hello: cmdline \"hello.exit=3\""),
        "command line not echoed"
    );
    assert!(
        run.has_line("hello: no device tree"),
        "QEMU passes no FDT, yet hello found one"
    );
    let edu = run
        .lines()
        .find(|l| l.starts_with("hello: pci ") && l.ends_with(" 1234:11e8 class 00ff00"))
        .unwrap_or_else(|| panic!("edu (1234:11e8) missing from the PCI walk"));
    // edu's BAR0 is 1 MiB of MMIO.
    let bdf = edu.split(' ').nth(2).expect("line has a BDF");
    assert!(
        run.lines()
            .any(|l| l.starts_with(&format!("hello: pci {bdf} bar0 mem32 "))
                && l.ends_with("+0x100000")),
        "edu's 1 MiB BAR0 not decoded"
    );
    assert!(
        run.has_line("hello: pci 00:00.0 8086:29c0 class 060000"),
        "q35 host bridge missing"
    );
    assert_eq!(
        run.lines().last(),
        Some("hello: exit 3"),
        "exit line must come last"
    );
    assert_eq!(run.code(), qemu_status(3));
}

#[test]
fn rejects_a_malformed_exit_option_with_code_1() {
    let run = boot("hello.exit=three", &[]);
    assert!(run.has_line("hello: cmdline \"hello.exit=three\""));
    assert!(run
        .lines()
        .any(|l| l.starts_with("hello: bad command line: ")));
    assert!(run.has_line("hello: exit 1"));
    assert_eq!(run.code(), qemu_status(1));
}

/// A device tree shaped like the kiln VMM's.
fn device_tree() -> Vec<u8> {
    let mut w = vm_fdt::FdtWriter::new().expect("fdt writer");
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    let mem = w.begin_node("memory@0").unwrap();
    w.property_string("device_type", "memory").unwrap();
    w.property_array_u64("reg", &[0, 64 << 20]).unwrap();
    w.end_node(mem).unwrap();
    let serial = w.begin_node("serial@3f8").unwrap();
    w.property_string("compatible", "ns16550a").unwrap();
    w.property_array_u64("reg", &[0x3f8, 8]).unwrap();
    w.end_node(serial).unwrap();
    let pci = w.begin_node("pci").unwrap();
    w.property_string("device_type", "pci").unwrap();
    w.property_u32("#address-cells", 3).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    let edu = w.begin_node("edu@3,0").unwrap();
    w.property_string("compatible", "pci1234,11e8").unwrap();
    w.property_array_u32("reg", &[3 << 11, 0, 0, 0, 0]).unwrap();
    w.end_node(edu).unwrap();
    w.end_node(pci).unwrap();
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

#[test]
fn lists_the_devices_of_a_device_tree_module() {
    // QEMU hands an -initrd to a PVH guest as module 0; hello finds the FDT
    // by its magic, as it would the kiln VMM's "kiln,fdt" module.
    let dir = tempfile::tempdir().expect("temp dir");
    let dtb = dir.path().join("kiln.dtb");
    std::fs::write(&dtb, device_tree()).expect("write dtb");
    let run = boot("", &["-initrd", dtb.to_str().expect("UTF-8 temp path")]);
    assert!(
        run.lines().any(|l| l.starts_with("hello: device tree at ")),
        "device tree not found"
    );
    assert!(run.has_line("hello: fdt memory memory@0 reg 0x0+0x4000000"));
    assert!(run.has_line("hello: fdt serial serial@3f8 compatible ns16550a reg 0x3f8+0x8"));
    assert!(run.has_line("hello: fdt pci 00:03.0 edu@3,0 compatible pci1234,11e8"));
    assert!(!run.has_line("hello: no device tree"));
    assert!(run.has_line("hello: exit 0"));
    assert_eq!(run.code(), qemu_status(0));
}
