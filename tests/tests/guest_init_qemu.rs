//! Boots the Debian cloud kernel under QEMU with an initramfs holding only
//! `/init` = kiln-guest-init and `/dev/console`, and checks its report and
//! that `guest_init.exit=<n>` reaches the exit port.
//!
//! Needs `qemu-system-x86_64`, GNU `cpio`, root (for mknod) and the kernel
//! image in KILN_TEST_KERNEL (e.g. the `boot/vmlinuz-*` of an unpacked
//! `linux-image-*-cloud-amd64` package); fails, never skips, without them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_tests::qemu::{cargo_build, run_qemu};

const TIMEOUT: Duration = Duration::from_secs(60);

fn kernel() -> PathBuf {
    let Some(path) = std::env::var_os("KILN_TEST_KERNEL") else {
        panic!(
            "KILN_TEST_KERNEL is not set: point it at a bzImage with PVH/8250 console support, e.g. \
             KILN_TEST_KERNEL=/work/scratch/kernel/root/boot/vmlinuz-6.1.0-56-cloud-amd64 \
             (from `apt-get download linux-image-cloud-amd64`'s versioned package, unpacked with dpkg -x)"
        )
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "KILN_TEST_KERNEL={} is not a file",
        path.display()
    );
    path
}

/// Writes a newc initramfs with `/init` and `/dev/console` (char 5:1).
fn initramfs(init: &Path, dir: &Path) -> PathBuf {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};

    let root = dir.join("root");
    std::fs::create_dir_all(root.join("dev")).expect("create dev/");
    std::fs::copy(init, root.join("init")).expect("copy kiln-guest-init to /init");
    mknod(
        &root.join("dev/console"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        makedev(5, 1),
    )
    .unwrap_or_else(|e| panic!("mknod dev/console failed ({e}); this test must run as root"));

    let archive = dir.join("initramfs.cpio");
    let out = std::fs::File::create(&archive).expect("create initramfs.cpio");
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run GNU cpio ({e}); install it with `apt-get install cpio`")
        });
    cpio.stdin
        .take()
        .expect("stdin is piped")
        .write_all(b".\ndev\ndev/console\ninit\n")
        .expect("feed cpio its file list");
    let status = cpio.wait().expect("wait for cpio");
    assert!(status.success(), "cpio failed: {status}");
    archive
}

#[test]
fn reports_the_guest_and_exits_through_the_port() {
    let kernel = kernel();
    let init = cargo_build("kiln-guest-init", "release", "kiln-guest-init");
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
        run.elapsed, run.code, run.console
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
            && l.ends_with("-0xfeafffff")),
        "edu (1234:11e8) with its 1 MiB BAR0 missing"
    );
    assert!(
        !run.lines().any(|l| l.starts_with("guest-init: error")),
        "guest-init reported an error"
    );
    assert!(run.has_line("guest-init: exit 5"));
    // isa-debug-exit: (5 << 1) | 1.
    assert_eq!(run.code, Some(11));
}
