//! End to end: `kiln build` writes a unified kernel image (`kiln.efi`) and a
//! GPT disk image (`disk.img`); the disk boots under UEFI firmware (OVMF) on
//! the emulated target to the runtime's status lines, the way it would boot
//! a real machine from a USB stick, and rebuilding gives the same bytes.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::{require_qemu, root, run_kiln};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

fn require_ovmf() -> PathBuf {
    let p = PathBuf::from(OVMF);
    assert!(
        p.is_file(),
        "{OVMF} is missing: run tests/setup (apt-get install -y ovmf)"
    );
    p
}

fn build(out: &Path) -> serde_json::Value {
    kiln_tests::images::build(&root().join("images/hello.toml"), out)
}

fn inspect(path: &Path) -> String {
    let o = run_kiln(&root(), &["inspect", &path.to_string_lossy()]);
    assert!(
        o.status.success(),
        "kiln inspect {} failed:\n{}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The console of a UEFI boot of `disk`, read until `until` appears, QEMU
/// exits, or `timeout` passes; with the time each wanted line first appeared.
struct Boot {
    console: String,
    seen: Vec<(String, Duration)>,
    finished: bool,
}

fn boot_disk(disk: &Path, ovmf: &Path, until: &str, timeout: Duration) -> Boot {
    let drive = format!(
        "file={},format=raw,if=virtio,snapshot=on",
        disk.to_string_lossy()
    );
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35,accel=tcg", "-cpu", "max", "-m", "2048"])
        .args(["-smp", "1", "-display", "none", "-vga", "none"])
        .args(["-no-reboot", "-monitor", "none", "-serial", "stdio"])
        .args(["-device", "intel-iommu,intremap=on,caching-mode=on"])
        .arg("-bios")
        .arg(ovmf)
        // snapshot=on: the guest's writes never reach the built image.
        .args(["-drive", &drive])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("QEMU starts");
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line).replace('\r', "");
            if tx.send((text, start.elapsed())).is_err() {
                break;
            }
        }
    });
    let marks = [
        "BdsDxe: starting",
        "EFI stub:",
        "Linux version",
        "kiln: vm=hello state=starting",
        "kiln: appliance done",
    ];
    let mut boot = Boot {
        console: String::new(),
        seen: Vec::new(),
        finished: false,
    };
    while let Some(left) = timeout.checked_sub(start.elapsed()) {
        match rx.recv_timeout(left) {
            Ok((line, at)) => {
                for m in marks {
                    if line.contains(m) && !boot.seen.iter().any(|(s, _)| s == m) {
                        boot.seen.push((m.to_string(), at));
                    }
                }
                boot.console.push_str(&line);
                boot.console.push('\n');
                if line.contains(until) {
                    boot.finished = true;
                    break;
                }
            }
            Err(_) => break,
        }
    }
    // Give the appliance a moment to power off on its own, then stop QEMU.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    boot
}

#[test]
fn disk_image_boots_under_uefi_and_rebuilds_identically() {
    require_qemu();
    let ovmf = require_ovmf();
    let tmp = tempfile::Builder::new()
        .prefix("kiln-uki-")
        .tempdir()
        .expect("tempdir");
    let out = tmp.path().join("hello");
    let m = build(&out);

    // Both formats are artifacts of the manifest, with their sizes.
    let artifacts = m["artifacts"].as_array().expect("artifacts");
    for file in ["kiln.efi", "disk.img"] {
        let a = artifacts
            .iter()
            .find(|a| a["file"] == file)
            .unwrap_or_else(|| panic!("{file} is not in the manifest: {artifacts:?}"));
        let size = std::fs::metadata(out.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .len();
        assert_eq!(a["size"].as_u64(), Some(size), "{file} size");
    }

    // kiln inspect lists what is inside each.
    let uki = inspect(&out.join("kiln.efi"));
    for want in [
        "unified kernel image",
        ".linux",
        ".initrd",
        ".cmdline",
        ".osrel",
        "console=ttyS0",
        "kiln appliance hello",
    ] {
        assert!(uki.contains(want), "inspect kiln.efi lacks {want}:\n{uki}");
    }
    let disk = inspect(&out.join("disk.img"));
    for want in [
        "GPT disk image",
        "primary table valid, backup table valid",
        "EFI System",
        "EFI/BOOT/BOOTX64.EFI",
    ] {
        assert!(
            disk.contains(want),
            "inspect disk.img lacks {want}:\n{disk}"
        );
    }

    // The disk boots under UEFI firmware to the runtime's status lines.
    let boot = boot_disk(
        &out.join("disk.img"),
        &ovmf,
        "kiln: appliance done",
        Duration::from_secs(300),
    );
    let console = &boot.console;
    assert!(
        boot.finished,
        "no `kiln: appliance done` within 300 s:\n{console}"
    );
    assert!(
        console.contains("kiln: vm=hello state="),
        "no status line:\n{console}"
    );
    assert!(
        console.contains("kiln: vm=hello state=exited code=0"),
        "hello did not exit 0:\n{console}"
    );
    assert!(
        console.contains("kiln: appliance done ok=1 failed=0"),
        "the appliance did not finish cleanly:\n{console}"
    );
    for (mark, at) in &boot.seen {
        eprintln!("UEFI boot of disk.img: {:6.2} s  {mark}", at.as_secs_f64());
    }

    // A rebuild elsewhere gives the same bytes.
    let again = tmp.path().join("again");
    build(&again);
    for file in ["kiln.efi", "disk.img"] {
        let (a, b) = (
            std::fs::read(out.join(file)).expect("first build"),
            std::fs::read(again.join(file)).expect("second build"),
        );
        assert!(a == b, "{file} differs between two builds");
    }
}
