//! Mounting the kernel's pseudo filesystems: proc, sysfs and devtmpfs.

use std::path::PathBuf;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create mount point {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount {fstype} on {path}; is it enabled in the guest kernel's config?")]
    Mount {
        fstype: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// (filesystem type, mount point, flags): what guest-init needs mounted.
const MOUNTS: [(&str, &str, MsFlags); 3] = [
    (
        "proc",
        "/proc",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
    ),
    (
        "sysfs",
        "/sys",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
    ),
    ("devtmpfs", "/dev", MsFlags::MS_NOSUID),
];

/// Mounts each filesystem, creating its mount point; one already mounted
/// (EBUSY) is fine. Returns the errors; a failed mount does not stop the others.
pub fn mount_all() -> Vec<Error> {
    let mut errors = Vec::new();
    for (fstype, target, flags) in MOUNTS {
        if let Err(source) = std::fs::create_dir_all(target) {
            errors.push(Error::CreateDir {
                path: target.into(),
                source,
            });
            continue;
        }
        match mount(Some(fstype), target, Some(fstype), flags, None::<&str>) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(source) => errors.push(Error::Mount {
                fstype,
                path: target.into(),
                source,
            }),
        }
    }
    errors
}
