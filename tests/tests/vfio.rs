//! VFIO device assignment on the emulated target (QEMU q35 with
//! intel-iommu and edu): the hello unikernel drives edu, a Linux guest sees
//! it on its PCI bus, and bad assignments fail alone.

use kiln_tests::{kiln, require_qemu, root, run_with_timeout};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn build(image: &str, out: &Path) {
    kiln_tests::images::build(&root().join(image), out);
}

/// Builds `image` and runs `kiln test` on it; returns the exit code and
/// kiln's output followed by the target's console log.
fn kiln_test(image: &str) -> (Option<i32>, String) {
    require_qemu();
    let d = tempfile::tempdir().expect("tempdir");
    let out = d.path().join("image");
    build(image, &out);
    let mut cmd = Command::new(kiln());
    cmd.current_dir(d.path()).arg("test").arg(&out);
    let run = run_with_timeout(cmd, Duration::from_secs(900));
    assert!(!run.timed_out, "kiln test hung:\n{}", run.output);
    eprintln!("kiln test {image}: {:.1} s", run.elapsed.as_secs_f64());
    let console = std::fs::read_to_string(out.join("test-console.log")).unwrap_or_default();
    (
        run.status.and_then(|s| s.code()),
        format!("{}\n{console}", run.output),
    )
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

#[test]
fn a_linux_guest_lists_edu_with_its_bar_and_irq() {
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
    assert!(!out.contains("PCI: Fatal"), "{out}");
}

#[test]
fn bad_assignments_fail_alone() {
    let (code, out) = kiln_test("images/vfio-isolation.toml");
    // Two VMs fail by design; hello still passes.
    assert_eq!(code, Some(1), "{out}");
    // kiln test's verdict table: IMAGE VM VERDICT TIME REASON.
    let row = |vm: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(vm))
            .unwrap_or_else(|| panic!("no verdict for {vm}:\n{out}"))
            .to_string()
    };
    assert_eq!(
        row("hello").split_whitespace().nth(2),
        Some("pass"),
        "{out}"
    );
    let missing = row("missing");
    assert_eq!(missing.split_whitespace().nth(2), Some("fail"), "{missing}");
    assert!(
        missing.contains("No PCI device matches `pci.device = \"1234:dead\"`"),
        "{missing}"
    );
    let nonviable = row("nonviable");
    assert_eq!(
        nonviable.split_whitespace().nth(2),
        Some("fail"),
        "{nonviable}"
    );
    assert!(nonviable.contains("IOMMU group"), "{nonviable}");
    assert!(
        nonviable.contains("0000:00:1f.4 (serial) is still bound to a host driver"),
        "{nonviable}"
    );
    assert!(out.contains("1 passed, 2 failed, 0 errors"), "{out}");
}
