//! VFIO device assignment on the emulated target (QEMU q35 with
//! intel-iommu and edu): the hello unikernel drives edu, two edus in one VM
//! and one each in two VMs side by side, a Linux guest sees edu and
//! pci-testdev on its PCI bus, Linux guests drive NVMe controllers over
//! MSI-X and INTx, a Linux guest reads a device's expansion ROM only when
//! its VM asks for it, and bad assignments fail alone.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::{kiln, require_qemu, root, run_with_timeout};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Builds `image` (relative to the workspace) and runs `kiln test` on it;
/// returns the exit code and kiln's output followed by the target's
/// console log.
fn kiln_test(image: &str) -> (Option<i32>, String) {
    kiln_test_at(&root().join(image))
}

fn kiln_test_at(image: &Path) -> (Option<i32>, String) {
    require_qemu();
    let d = tempfile::tempdir().expect("tempdir");
    let out = d.path().join("image");
    kiln_tests::images::build(image, &out);
    let mut cmd = Command::new(kiln());
    cmd.current_dir(d.path()).arg("test").arg(&out);
    let run = run_with_timeout(cmd, Duration::from_secs(900));
    assert!(!run.timed_out, "kiln test hung:\n{}", run.output);
    eprintln!(
        "kiln test {}: {:.1} s",
        image.display(),
        run.elapsed.as_secs_f64()
    );
    let console = std::fs::read_to_string(out.join("test-console.log")).unwrap_or_default();
    (
        run.status.and_then(|s| s.code()),
        format!("{}\n{console}", run.output),
    )
}

/// Writes `dir/<name>.image.toml`: an image running `vms` (config paths) on
/// Debian's kernel with the IOMMU on, its emulated target given the extra
/// QEMU `devices` and `qemu_args`.
fn passthrough_image(
    dir: &Path,
    name: &str,
    vms: &[String],
    devices: &[String],
    qemu_args: &[String],
) -> std::path::PathBuf {
    // A TOML array of basic strings (Rust's escapes are TOML's for these).
    let array = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    kiln_tests::images::write(
        dir,
        &format!("{name}.image.toml"),
        &format!(
            "name = \"{name}\"\n\
             vms = {}\n\
             [kernel]\n\
             source = \"debian:linux-image-cloud-amd64\"\n\
             cmdline = \"console=ttyS0 panic=-1 quiet intel_iommu=on iommu=pt\"\n\
             [target]\n\
             devices = {}\n\
             qemu_args = {}\n",
            array(vms),
            array(devices),
            array(qemu_args),
        ),
    )
}

/// The row of kiln test's verdict table (IMAGE VM VERDICT TIME REASON)
/// for `vm`.
fn row(out: &str, vm: &str) -> String {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(vm))
        .unwrap_or_else(|| panic!("no verdict for {vm}:\n{out}"))
        .to_string()
}

/// `vm`'s verdict: pass, fail or error.
fn verdict(out: &str, vm: &str) -> String {
    row(out, vm)
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn hello_drives_edu_through_vfio() {
    let (code, out) = kiln_test("images/edu-passthrough.toml");
    assert_eq!(code, Some(0), "{out}");
    for line in [
        "hello: pci 00:01.0 1234:11e8 class 00ff00",
        "hello: fdt pci 00:01.0 device@1,0 compatible pci1234,11e8",
        "hello: edu 00:01.0 id 0x010000ed ok",
        "hello: edu 00:01.0 liveness ok",
        "hello: edu 00:01.0 factorial 5! = 120 ok",
        "hello: edu 00:01.0 dma round trip 4096 bytes ok",
        "hello: edu 00:01.0 msi vector 0x51 observed ok",
        "hello: edu devices 1",
        "hello: edu verdict pass",
        "hello: exit 0",
    ] {
        assert!(out.contains(line), "missing {line:?}:\n{out}");
    }
    assert!(!out.contains("FAILED"), "{out}");
}

/// The lines hello prints for the edu device it drives at guest address
/// `bdf` with MSI vector `vector`, each prefixed with the VM's name.
fn edu_lines(vm: &str, bdf: &str, vector: u8) -> Vec<String> {
    [
        "id 0x010000ed ok".to_string(),
        "liveness ok".to_string(),
        "factorial 5! = 120 ok".to_string(),
        "dma round trip 4096 bytes ok".to_string(),
        format!("msi vector {vector:#04x} observed ok"),
    ]
    .into_iter()
    .map(|check| format!("[{vm}] hello: edu {bdf} {check}"))
    .collect()
}

/// The host addresses PID 1 bound to vfio-pci for `vm`, in its order.
fn bound_for(out: &str, vm: &str) -> Vec<String> {
    let prefix = format!("kiln: vm {vm}: 1234:11e8 at ");
    out.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn assert_has(out: &str, lines: &[String]) {
    for line in lines {
        // Console lines end in CR LF, and the last may end in a bare CR.
        assert!(
            kiln_tests::lines(out).any(|l| l == line),
            "missing {line:?}:\n{out}"
        );
    }
}

#[test]
fn hello_drives_two_edus_in_one_vm() {
    let (code, out) = kiln_test("images/edu-two-devices.toml");
    assert_eq!(code, Some(0), "{out}");
    let bound = bound_for(&out, "edu-two");
    assert_eq!(bound.len(), 2, "{out}");
    assert_ne!(bound[0], bound[1], "{out}");
    let mut lines = vec![
        "[edu-two] hello: pci 00:01.0 1234:11e8 class 00ff00".to_string(),
        "[edu-two] hello: pci 00:02.0 1234:11e8 class 00ff00".to_string(),
    ];
    // Distinct vectors: the second device's message must not land on the
    // first one's (still pending) vector.
    lines.extend(edu_lines("edu-two", "00:01.0", 0x51));
    lines.extend(edu_lines("edu-two", "00:02.0", 0x52));
    lines.extend(
        [
            "[edu-two] hello: edu 00:01.0 liveness 0x12345651 kept ok",
            "[edu-two] hello: edu 00:02.0 liveness 0x12345652 kept ok",
            "[edu-two] hello: edu devices 2",
            "[edu-two] hello: edu verdict pass",
            "[edu-two] hello: exit 0",
            "kiln: appliance done ok=1 failed=0",
        ]
        .map(String::from),
    );
    assert_has(&out, &lines);
    // Two guest BARs, one per device, side by side in the 32-bit window.
    let bar = |bdf: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("[edu-two] hello: pci {bdf} bar0 mem32 ")))
            .unwrap_or_else(|| panic!("no BAR0 for {bdf}:\n{out}"))
            .trim_end()
            .to_string()
    };
    assert_ne!(bar("00:01.0"), bar("00:02.0"), "{out}");
    assert_eq!(out.matches("hello: edu verdict").count(), 1, "{out}");
    assert!(out.contains("1 passed, 0 failed, 0 errors"), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
}

#[test]
fn two_vms_each_drive_their_own_edu() {
    let (code, out) = kiln_test("images/edu-two-vms.toml");
    assert_eq!(code, Some(0), "{out}");
    let (a, b) = (bound_for(&out, "edu-a"), bound_for(&out, "edu-b"));
    assert_eq!(a.len(), 1, "{out}");
    assert_eq!(b.len(), 1, "{out}");
    assert_ne!(a, b, "the VMs got the same device:\n{out}");
    for vm in ["edu-a", "edu-b"] {
        let mut lines = vec![format!("[{vm}] hello: pci 00:01.0 1234:11e8 class 00ff00")];
        lines.extend(edu_lines(vm, "00:01.0", 0x51));
        lines.extend(
            [
                "hello: edu devices 1",
                "hello: edu verdict pass",
                "hello: exit 0",
            ]
            .map(|l| format!("[{vm}] {l}")),
        );
        lines.push(format!("kiln: vm={vm} state=exited code=0"));
        assert_has(&out, &lines);
    }
    assert_has(&out, &["kiln: appliance done ok=2 failed=0".to_string()]);
    assert!(out.contains("2 passed, 0 failed, 0 errors"), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
}

#[test]
fn a_linux_guest_lists_edu_and_pci_testdev_with_their_bars_and_irq() {
    let (code, out) = kiln_test("images/linux-edu.toml");
    assert_eq!(code, Some(0), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("guest-init: pci 0000:00:01.0 1234:11e8"))
        .unwrap_or_else(|| panic!("edu not listed:\n{out}"));
    let irq: u32 = line
        .split(" irq ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no irq in {line:?}"));
    assert_ne!(irq, 0, "{line}");
    let bar0 = line.split(" bar0 ").nth(1).unwrap_or("none");
    assert!(
        bar0.starts_with("0x") && !bar0.starts_with("0x0-"),
        "{line}"
    );
    // pci-testdev beside it: Linux takes its I/O BAR and its 64-bit
    // prefetchable BAR as the VMM placed them.
    let testdev = out
        .lines()
        .find(|l| l.contains("guest-init: pci 0000:00:02.0 1b36:0005"))
        .unwrap_or_else(|| panic!("pci-testdev not listed:\n{out}"));
    let bar = |n: u8| {
        let text = testdev.split(&format!(" bar{n} ")).nth(1).unwrap_or("");
        let mut words = text.split_whitespace();
        let range = words.next().unwrap_or("").to_string();
        let kind = words.next().unwrap_or("").to_string();
        (range, kind)
    };
    let span = |range: &str| -> u64 {
        let (start, end) = range.split_once('-').unwrap_or_else(|| panic!("{testdev}"));
        let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap();
        hex(end) - hex(start) + 1
    };
    let (mmio, kind) = bar(0);
    assert_eq!((span(&mmio), kind.as_str()), (0x1000, "mem32"), "{testdev}");
    let (io, kind) = bar(1);
    assert_eq!((span(&io), kind.as_str()), (0x100, "io"), "{testdev}");
    let (membar, kind) = bar(2);
    assert_eq!(
        (span(&membar), kind.as_str()),
        (16 << 20, "mem64-pref"),
        "{testdev}"
    );
    assert!(!out.contains("PCI: Fatal"), "{out}");
}

/// A real driver over MSI-X and over INTx: the Debian guest kernel's own
/// nvme driver brings up QEMU's NVMe controllers (taken from the host's
/// nvme driver by PID 1; 64-bit BAR0 with the MSI-X table beside the
/// doorbells) and reads the start of each namespace, which this test
/// wrote. VM linux-nvme uses MSI-X; VM linux-nvme-intx boots with
/// pci=nomsi, so each completion waits for the INTx line (irqfd, re-armed
/// through the resample eventfd at the guest's EOI).
#[test]
fn linux_guests_drive_nvme_controllers_over_msix_and_intx() {
    let dir = kiln_tests::images::scratch("linux-nvme");
    let disk = |name: &str, pattern: &[u8]| {
        let path = dir.join(name);
        let mut bytes = vec![0u8; 1 << 20];
        bytes[..pattern.len()].copy_from_slice(pattern);
        std::fs::write(&path, bytes).expect("disk image");
        path.display().to_string()
    };
    let msix_disk = disk("msix.img", b"kiln nvme passthrough");
    let intx_disk = disk("intx.img", b"kiln nvme over intx");
    let image = passthrough_image(
        &dir,
        "linux-nvme",
        &[
            root().join("configs/linux-nvme.toml").display().to_string(),
            root()
                .join("configs/linux-nvme-intx.toml")
                .display()
                .to_string(),
        ],
        &[
            "nvme,serial=kiln0,drive=nvme0".into(),
            "nvme,serial=kiln1,drive=nvme1".into(),
        ],
        &[
            "-drive".into(),
            format!("file={msix_disk},if=none,id=nvme0,format=raw"),
            "-drive".into(),
            format!("file={intx_disk},if=none,id=nvme1,format=raw"),
        ],
    );
    let (code, out) = kiln_test_at(&image);
    assert_eq!(code, Some(0), "{out}");
    for vm in ["linux-nvme", "linux-nvme-intx"] {
        assert_eq!(verdict(&out, vm), "pass", "{out}");
        // The host's nvme driver had it first; PID 1 took it for the VM.
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("kiln: vm {vm}: 1b36:0010 at "))
                    && l.contains(" bound to vfio-pci ")),
            "{out}"
        );
    }
    let listed = |vm: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("[{vm}] guest-init: pci 0000:00:01.0 1b36:0010")))
            .unwrap_or_else(|| panic!("{vm}: nvme not listed:\n{out}"))
    };
    let line = listed("linux-nvme");
    assert!(line.contains(" mem64 "), "{line}");
    let vectors: u32 = line
        .split(" msix ")
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MSI-X vectors in {line:?}"));
    // The admin queue's vector and at least one I/O queue's.
    assert!(vectors >= 2, "{line}");
    let line = listed("linux-nvme-intx");
    assert!(line.ends_with(" mem64"), "no MSI or MSI-X: {line}");
    let irq: u32 = line
        .split(" irq ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no irq in {line:?}"));
    assert_ne!(irq, 0, "{line}");
    for (vm, pattern) in [
        ("linux-nvme", "kiln nvme passthrough"),
        ("linux-nvme-intx", "kiln nvme over intx"),
    ] {
        let want = format!("[{vm}] guest-init: block nvme0n1 2048 sectors, starts \"{pattern}\"");
        assert!(out.lines().any(|l| l == want), "{want}:\n{out}");
    }
}

/// A PCI expansion ROM of `len` bytes (a power of two, at least 1 KiB)
/// that Linux accepts (pci_map_rom checks the 55 AA signature and the
/// "PCIR" data structure, whose image length and last-image bit bound it)
/// and firmware leaves alone (its code type is EFI, not x86): 55 AA, then
/// `pattern`.
fn expansion_rom(len: usize, pattern: &[u8], vendor: u16, device: u16) -> Vec<u8> {
    const PCIR: usize = 0x40;
    let mut rom = vec![0u8; len];
    rom[..2].copy_from_slice(&[0x55, 0xaa]);
    rom[2..2 + pattern.len()].copy_from_slice(pattern);
    rom[0x18..0x1a].copy_from_slice(&u16::try_from(PCIR).unwrap().to_le_bytes());
    let pcir = &mut rom[PCIR..PCIR + 0x18];
    pcir[..4].copy_from_slice(b"PCIR");
    pcir[4..6].copy_from_slice(&vendor.to_le_bytes());
    pcir[6..8].copy_from_slice(&device.to_le_bytes());
    pcir[10..12].copy_from_slice(&0x18u16.to_le_bytes());
    pcir[12] = 3; // PCI 3.0 data structure
    pcir[16..18].copy_from_slice(&u16::try_from(len / 512).unwrap().to_le_bytes());
    pcir[20] = 3; // EFI image
    pcir[21] = 0x80; // the last image
    rom
}

/// The expansion ROM of a passed-through device, asked for with
/// `rom = true`: QEMU gives two edu devices a ROM (`romfile=`); VM
/// linux-rom asks for the first one's and its guest reads the ROM through
/// sysfs (ROM BAR sized, placed and enabled by Linux; reads trapped and
/// forwarded to VFIO's ROM region); VM linux-rom-hidden has the second
/// without `rom`, and its guest lists no ROM.
#[test]
fn a_linux_guest_reads_the_rom_of_a_device_only_when_asked_for() {
    let dir = kiln_tests::images::scratch("linux-rom");
    let rom = dir.join("edu-rom.bin");
    std::fs::write(&rom, expansion_rom(64 << 10, b"kiln rom", 0x1234, 0x11e8)).expect("ROM file");
    let vm = |name: &str, index: u32, rom: bool, check: &str| {
        kiln_tests::images::write(
            &dir,
            &format!("{name}.toml"),
            &format!(
                "name = \"{name}\"\n\
                 vcpus = 1\n\
                 memory = \"256M\"\n\
                 [boot]\n\
                 kernel = \"debian:linux-image-cloud-amd64\"\n\
                 initrd = {{ init = \"cargo:kiln-guest-init\" }}\n\
                 cmdline = \"console=ttyS0 reboot=k panic=-1 quiet\"\n\
                 [[pci]]\n\
                 device = \"1234:11e8\"\n\
                 index = {index}\n\
                 rom = {rom}\n\
                 [test]\n\
                 expect = [\"guest-init: pci 0000:00:01.0 1234:11e8 \", \"guest-init: exit 0\"]\n\
                 fail = [\"Kernel panic\", \"BUG:\", \"Oops\", \"PCI: Fatal\"{check}]\n\
                 timeout = \"240s\"\n"
            ),
        )
        .display()
        .to_string()
    };
    let shown = vm("linux-rom", 0, true, "");
    let hidden = vm("linux-rom-hidden", 1, false, ", \" rom 0x\"");
    let edu = format!("edu,dma_mask=0xffffffffffffffff,romfile={}", rom.display());
    let image = passthrough_image(
        &dir,
        "linux-rom",
        &[shown, hidden],
        &[edu.clone(), edu],
        &[],
    );
    let (code, out) = kiln_test_at(&image);
    assert_eq!(code, Some(0), "{out}");
    let listed = |vm: &str| {
        kiln_tests::lines(&out)
            .find(|l| l.starts_with(&format!("[{vm}] guest-init: pci 0000:00:01.0 1234:11e8 ")))
            .unwrap_or_else(|| panic!("{vm}: edu not listed:\n{out}"))
            .to_string()
    };
    let line = listed("linux-rom");
    let rom = line
        .split(" rom ")
        .nth(1)
        .unwrap_or_else(|| panic!("no ROM listed: {line}"));
    let (range, head) = rom.split_once(' ').unwrap_or_else(|| panic!("{line}"));
    assert_eq!(head, "starts \"\\x55\\xaakiln rom\"", "{line}");
    let (start, end) = range.split_once('-').unwrap_or_else(|| panic!("{line}"));
    let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap();
    let (start, end) = (hex(start), hex(end));
    assert_eq!(end - start + 1, 64 << 10, "{line}");
    assert_eq!(start % (64 << 10), 0, "{line}");
    assert!(end < 1 << 32, "{line}");
    // Its BARs are as without a ROM.
    assert!(
        line.contains(" bar0 0x") && line.contains(" mem32"),
        "{line}"
    );
    let line = listed("linux-rom-hidden");
    assert!(!line.contains(" rom "), "{line}");
    assert!(
        line.contains(" bar0 0x") && line.ends_with(" mem32"),
        "{line}"
    );
    for vm in ["linux-rom", "linux-rom-hidden"] {
        assert_eq!(verdict(&out, vm), "pass", "{out}");
    }
    eprintln!("{}\n{}", listed("linux-rom"), listed("linux-rom-hidden"));
}

#[test]
fn bad_assignments_fail_alone() {
    let (code, out) = kiln_test("images/vfio-isolation.toml");
    // Three VMs fail by design; hello and edu still pass.
    assert_eq!(code, Some(1), "{out}");
    let row = |vm: &str| row(&out, vm);
    let verdict = |vm: &str| verdict(&out, vm);
    assert_eq!(verdict("hello"), "pass", "{out}");
    // The device in use stays with its first owner, which drives it.
    assert_eq!(verdict("edu"), "pass", "{out}");
    let taken = row("taken");
    assert_eq!(verdict("taken"), "fail", "{taken}");
    assert!(
        taken.contains("which VM \"edu\" already has; VM \"taken\" cannot have it too"),
        "{taken}"
    );
    let missing = row("missing");
    assert_eq!(verdict("missing"), "fail", "{missing}");
    assert!(
        missing.contains("No PCI device matches `pci.device = \"1234:dead\"`"),
        "{missing}"
    );
    let nonviable = row("nonviable");
    assert_eq!(verdict("nonviable"), "fail", "{nonviable}");
    assert!(nonviable.contains("IOMMU group"), "{nonviable}");
    assert!(
        nonviable.contains("0000:00:1f.4 (serial) is still bound to a host driver"),
        "{nonviable}"
    );
    assert!(out.contains("2 passed, 3 failed, 0 errors"), "{out}");
}

#[test]
fn forced_iommufd_on_a_kernel_without_it_fails_alone() {
    let (code, out) = kiln_test("images/edu-iommufd-refused.toml");
    // edu-iommufd fails by design (Debian's 6.1 has no iommufd); edu-b passes.
    assert_eq!(code, Some(1), "{out}");
    let refused = row(&out, "edu-iommufd");
    assert_eq!(verdict(&out, "edu-iommufd"), "fail", "{refused}");
    for needed in [
        "/dev/iommu does not exist",
        "CONFIG_IOMMUFD",
        "CONFIG_VFIO_DEVICE_CDEV",
        "`backend = \"legacy\"`",
    ] {
        assert!(refused.contains(needed), "{needed}: {refused}");
    }
    // Refused by init before its device was touched, not by its VMM.
    assert!(
        !out.lines()
            .any(|l| l.starts_with("kiln: vm edu-iommufd: ") && l.contains("bound to vfio-pci")),
        "{out}"
    );
    assert_eq!(verdict(&out, "edu-b"), "pass", "{out}");
    // auto took the legacy path for edu-b: the kernel has no cdevs.
    let attached: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("kiln: vm edu-b: ") && l.contains(" attached through "))
        .collect();
    assert_eq!(attached.len(), 1, "{out}");
    assert!(
        attached[0].contains(" attached through the legacy VFIO container (/dev/vfio/"),
        "{}",
        attached[0]
    );
    assert!(!out.contains("/dev/vfio/devices/"), "{out}");
    assert!(out.contains("1 passed, 1 failed, 0 errors"), "{out}");
}
