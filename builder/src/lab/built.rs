//! A built image directory as the lab engines receive it: its manifest
//! (VMs, expectations, machine shape), its boot files, and the artifacts a
//! lab fetches, each with its SHA-256.

use crate::emulator::{BootFiles, QemuError};
use crate::manifest::Manifest;
use std::path::{Path, PathBuf};

/// The disk image and UKI file names `kiln build` writes (output formats
/// `disk` and `uki`).
pub const DISK: &str = "disk.img";
pub const UKI: &str = "kiln.efi";

#[derive(Debug, thiserror::Error)]
pub enum BuiltError {
    #[error("Cannot read {}; build the image with `kiln build`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a kiln manifest; rebuild the image with `kiln build`", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} lists no VMs (it was written by a kiln without `kiln test`); rebuild the image with `kiln build`", path.display())]
    NoVms { path: PathBuf },
    #[error(transparent)]
    Files(#[from] QemuError),
}

/// A built image directory.
#[derive(Debug, Clone)]
pub struct Built {
    /// Absolute.
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub files: BootFiles,
}

impl Built {
    pub fn load(dir: &Path) -> Result<Built, BuiltError> {
        let dir = std::path::absolute(dir).map_err(|source| BuiltError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("manifest.json");
        let bytes = std::fs::read(&path).map_err(|source| BuiltError::Read {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| BuiltError::Manifest {
                path: path.clone(),
                source,
            })?;
        if manifest.vms.is_empty() {
            return Err(BuiltError::NoVms { path });
        }
        let files = BootFiles::from_dir(&dir)?;
        Ok(Built {
            dir,
            manifest,
            files,
        })
    }

    /// The initramfs's file name, e.g. `initramfs.cpio.zst`.
    pub fn initrd_name(&self) -> String {
        file_name(&self.files.initrd)
    }

    /// The SHA-256 the manifest records for `file`, if it lists it.
    pub fn sha256(&self, file: &str) -> Option<&str> {
        self.manifest
            .artifacts
            .iter()
            .find(|a| a.file == file)
            .map(|a| a.sha256.as_str())
    }

    /// Whether the image was built with `file` (e.g. [`DISK`]).
    pub fn has(&self, file: &str) -> bool {
        self.dir.join(file).is_file()
    }

    /// What identifies the image's contents: its initramfs's SHA-256, as in
    /// `kiln test`'s reports.
    pub fn digest(&self) -> String {
        self.sha256(&self.initrd_name())
            .map_or_else(|| "unknown".to_string(), |h| format!("sha256:{h}"))
    }

    /// The longest `[test] timeout` of its VMs.
    pub fn longest_vm_timeout(&self) -> std::time::Duration {
        self.manifest
            .vms
            .iter()
            .map(|v| {
                v.test
                    .timeout
                    .map_or(crate::harness::judge::DEFAULT_VM_TIMEOUT, |d| d.get())
            })
            .max()
            .unwrap_or(crate::harness::judge::DEFAULT_VM_TIMEOUT)
    }
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A built image directory with a manifest and stand-in boot files.
    pub fn fake_built(dir: &Path, vms: serde_json::Value) -> PathBuf {
        let image = dir.join("img");
        std::fs::create_dir_all(&image).unwrap();
        std::fs::write(image.join("vmlinuz"), b"k").unwrap();
        std::fs::write(image.join("initramfs.cpio.zst"), b"i").unwrap();
        std::fs::write(image.join("cmdline"), b"console=ttyS0 panic=-1 quiet\n").unwrap();
        let manifest = serde_json::json!({
            "name": "img",
            "kiln_version": "0.1.0",
            "source_date_epoch": 0,
            "kernel": {"release": "6.1.0-test-amd64", "source": "test"},
            "cmdline": "console=ttyS0 panic=-1 quiet",
            "compression": "zstd",
            "artifacts": [
                {"file": "vmlinuz", "size": 1, "sha256": "aa"},
                {"file": "initramfs.cpio.zst", "size": 1, "sha256": "bb"},
            ],
            "modules": [],
            "payloads": [],
            "inputs": [],
            "target": {"memory": "1G", "smp": 2, "devices": ["edu"], "qemu_args": ["-s"]},
            "vms": vms,
        });
        std::fs::write(image.join("manifest.json"), manifest.to_string()).unwrap();
        image
    }

    #[test]
    fn loads_a_built_directory() {
        let d = tempfile::tempdir().unwrap();
        let dir = fake_built(
            d.path(),
            serde_json::json!([{"name": "a", "test": {"timeout": "30s"}}, {"name": "b"}]),
        );
        let b = Built::load(&dir).unwrap();
        assert!(b.dir.is_absolute());
        assert_eq!(b.initrd_name(), "initramfs.cpio.zst");
        assert_eq!(b.digest(), "sha256:bb");
        assert_eq!(b.sha256("vmlinuz"), Some("aa"));
        assert!(!b.has(DISK));
        assert_eq!(
            b.longest_vm_timeout(),
            crate::harness::judge::DEFAULT_VM_TIMEOUT
        );
    }

    #[test]
    fn refuses_what_is_not_a_built_image() {
        let d = tempfile::tempdir().unwrap();
        let e = Built::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("manifest.json; build the image"), "{e}");
        let dir = fake_built(d.path(), serde_json::json!([]));
        let e = Built::load(&dir).unwrap_err().to_string();
        assert!(e.contains("lists no VMs"), "{e}");
    }
}
