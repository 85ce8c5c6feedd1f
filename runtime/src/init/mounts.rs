//! The filesystems init needs before anything else.

use nix::mount::{mount, MsFlags};

/// /run holds the VMs' configs and logs (each log at most twice
/// `console::LOG_MAX`): its size is bounded so that logs can never take the
/// RAM that PID 1 and the VMs need.
pub const RUN_OPTIONS: &str = "mode=0755,size=64m";

/// Mounts proc, sysfs, devtmpfs and tmpfs on /run (64 MiB) and /tmp. A mount that is
/// already there (EBUSY) is fine; any other failure is reported and init
/// goes on, so the console still tells what happened.
pub fn mount_early() {
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 5] = [
        (
            "proc",
            "/proc",
            "proc",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(RUN_OPTIONS),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (src, target, fstype, flags, data) in table {
        let _ = std::fs::create_dir_all(target);
        match mount(Some(src), target, Some(fstype), flags, data) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => super::say(&format!("error: cannot mount {fstype} on {target}: {e}")),
        }
    }
}
