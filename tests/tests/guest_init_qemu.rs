//! Boots the Debian cloud kernel under QEMU with an initramfs holding only
//! `/init` = kiln-guest-init and `/dev/console`, and checks its report and
//! that `guest_init.exit=<n>` reaches the exit port.
//!
//! Needs `qemu-system-x86_64` and apt (the kernel comes from Debian's
//! `linux-image-cloud-amd64`, cached); fails, never skips, without them.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_tests::direct_boot::run_qemu;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The Debian cloud kernel, resolved, downloaded and cached exactly as
/// `kiln build` does for `debian:linux-image-cloud-amd64`.
fn kernel() -> PathBuf {
    let source = kiln::kernel::KernelSource::Debian("linux-image-cloud-amd64".into());
    kiln::kernel::resolve(&source)
        .unwrap_or_else(|e| panic!("cannot get the Debian cloud kernel through apt: {e}"))
        .vmlinuz
}

/// Writes a newc initramfs with `/init` and `/dev/console` (char 5:1) with
/// kiln's own writer, as `kiln build` makes a guest's one-binary initramfs.
fn initramfs(init: &Path, dir: &Path) -> PathBuf {
    let mut ar = kiln::cpio::Archive::new();
    ar.add_char_device("dev/console", 0o600, 5, 1);
    ar.add_file("init", init, 0o755);
    let archive = dir.join("initramfs.cpio");
    let out = std::fs::File::create(&archive).expect("create initramfs.cpio");
    ar.write(std::io::BufWriter::new(out), 0)
        .expect("write the initramfs");
    archive
}

#[test]
fn reports_the_guest_and_exits_through_the_port() {
    let kernel = kernel();
    let init = kiln::payload::cargo_build("kiln-guest-init", &kiln_tests::root())
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let initrd = initramfs(&init, dir.path());

    let run = run_qemu(
        &[
            "-machine",
            "q35,accel=tcg",
            "-cpu",
            "max",
            "-m",
            "256",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-kernel",
            kernel.to_str().expect("UTF-8 kernel path"),
            "-initrd",
            initrd.to_str().expect("UTF-8 temp path"),
            "-append",
            "console=ttyS0 panic=-1 guest_init.exit=5",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-device",
            "edu",
        ],
        TIMEOUT,
    );
    eprintln!(
        "QEMU ran {:.2?}, exit {:?}; console:\n{}",
        run.elapsed,
        run.code(),
        run.output
    );
    assert!(!run.timed_out, "QEMU did not exit within {TIMEOUT:?}");

    assert!(
        run.lines()
            .any(|l| l.starts_with("guest-init: hello from Linux 6.")),
        "no marker line"
    );
    assert!(run.has_line("guest-init: cpus online 1"));
    assert!(
        run.lines().any(|l| l.starts_with("guest-init: pci ")
            && l.contains(" 1234:11e8 class 00ff00 irq ")
            && l.ends_with(" bar0 0xfea00000-0xfeafffff mem32")),
        "edu (1234:11e8) with its 1 MiB 32-bit BAR0 missing"
    );
    assert!(
        !run.lines().any(|l| l.starts_with("guest-init: error")),
        "guest-init reported an error"
    );
    assert!(run.has_line("guest-init: exit 5"));
    // isa-debug-exit: (5 << 1) | 1.
    assert_eq!(run.code(), Some(11));
}
