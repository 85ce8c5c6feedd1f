//! Block devices as the guest kernel sees them: their size, and the first
//! bytes the device returns, which shows a disk's controller works end to
//! end (its queues, its DMA into guest memory and its interrupts).

use crate::console::Quoted;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where the kernel lists block devices.
pub const SYSFS_BLOCK: &str = "/sys/block";
/// Where their nodes are (devtmpfs).
pub const DEV: &str = "/dev";

/// How many leading bytes are shown.
const HEAD: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot list block devices in {path}; is /sys mounted?")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One disk: its name, its size in 512-byte sectors, and what reading its
/// first bytes gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    pub sectors: Option<u64>,
    pub head: Result<Vec<u8>, String>,
}

impl fmt::Display for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block {} ", self.name)?;
        match self.sectors {
            Some(n) => write!(f, "{n} sectors")?,
            None => f.write_str("? sectors")?,
        }
        match &self.head {
            Ok(bytes) => write!(f, ", starts {}", Quoted { bytes, hex: 0 }),
            Err(e) => write!(f, ", unreadable: {e}"),
        }
    }
}

/// Disks under `sys` (a `/sys/block`) in name order, read through their
/// nodes under `dev`. RAM, loop and zram devices are left out: they are
/// not hardware.
pub fn disks(sys: &Path, dev: &Path) -> Result<Vec<Disk>, Error> {
    let entries = fs::read_dir(sys).map_err(|source| Error::List {
        path: sys.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !["ram", "loop", "zram"].iter().any(|p| n.starts_with(p)))
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| Disk {
            sectors: fs::read_to_string(sys.join(&name).join("size"))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            head: read_head(&dev.join(&name)),
            name,
        })
        .collect())
}

fn read_head(node: &Path) -> Result<Vec<u8>, String> {
    let mut head = Vec::with_capacity(HEAD);
    fs::File::open(node)
        .and_then(|f| f.take(HEAD as u64).read_to_end(&mut head))
        .map_err(|e| format!("{}: {e}", node.display()))?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_disks_with_size_and_first_bytes() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path().join("sys");
        let dev = root.path().join("dev");
        for name in ["nvme0n1", "loop0", "ram0", "vda"] {
            fs::create_dir_all(sys.join(name)).unwrap();
            fs::write(sys.join(name).join("size"), "2048\n").unwrap();
        }
        fs::create_dir(&dev).unwrap();
        fs::write(dev.join("nvme0n1"), b"kiln nvme\x01\0rest").unwrap();
        let lines: Vec<String> = disks(&sys, &dev)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0],
            "block nvme0n1 2048 sectors, starts \"kiln nvme\\x01\""
        );
        assert!(
            lines[1].starts_with("block vda 2048 sectors, unreadable: "),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn a_missing_block_directory_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            disks(&root.path().join("absent"), root.path()),
            Err(Error::List { .. })
        ));
    }
}
