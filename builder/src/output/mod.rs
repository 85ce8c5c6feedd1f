//! Bootable outputs for real hardware, built from an image's kernel and
//! initramfs: `kiln.efi`, a unified kernel image (UKI) that any UEFI
//! firmware or boot manager starts, and `disk.img`, a GPT disk whose EFI
//! system partition boots that UKI from a USB stick or disk.
//!
//! Both are reproducible: the same inputs and SOURCE_DATE_EPOCH give the
//! same bytes. Both are written to a temporary file and renamed into place.

pub mod disk;
pub mod fat;
pub mod measure;
pub mod uki;

pub use disk::{build_disk, list_disk, DiskListing, EspFile, PartitionListing};
pub use measure::{predict_pcr11, Pcr11};
pub use uki::{build_uki, list_uki, os_release, PeSection};

use std::io::Read;
use std::path::{Path, PathBuf};

/// Where Debian's `systemd-boot-efi` package installs the x86-64 systemd-stub.
pub const STUB_PATH: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("No UEFI stub: fetching systemd-boot-efi through apt failed ({fetch}) and {} is not installed; run `apt-get update` or `apt-get install systemd-boot-efi`", path.display())]
    StubMissing { path: PathBuf, fetch: String },
    #[error("{} is not a valid PE image; expected an EFI application such as systemd-stub", path.display())]
    Pe {
        path: PathBuf,
        #[source]
        source: object::Error,
    },
    #[error("{} cannot be used as the UKI stub: {reason}", path.display())]
    Stub { path: PathBuf, reason: String },
    #[error("{} is not a Linux bzImage; expected a kernel such as the vmlinuz of a build", path.display())]
    NotBzImage { path: PathBuf },
    #[error(
        "{what} is {size} bytes, beyond the 4 GiB a PE image can hold; use a smaller initramfs"
    )]
    TooLarge { what: String, size: u64 },
    #[error("{} is not a GPT disk image; expected a disk.img written by `kiln build`", path.display())]
    NotGpt {
        path: PathBuf,
        #[source]
        source: gpt::GptError,
    },
    #[error("{} has GPT partition entries of {size} bytes; kiln reads disks with the standard 128-byte entries", path.display())]
    GptEntrySize { path: PathBuf, size: u32 },
    #[error("Cannot write the partition table of {}", path.display())]
    Gpt {
        path: PathBuf,
        #[source]
        source: gpt::GptError,
    },
    #[error("Cannot write the protective MBR of {}", path.display())]
    Mbr {
        path: PathBuf,
        #[source]
        source: gpt::mbr::MBRError,
    },
    #[error("Cannot {what}")]
    Fat {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot {what}")]
    FatVolume {
        what: String,
        #[source]
        source: fat::FatError,
    },
    #[error("Cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot sign {}", path.display())]
    Sign {
        path: PathBuf,
        #[source]
        source: crate::secureboot::SecureBootError,
    },
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OutputError {
    let what = what.into();
    move |source| OutputError::Io { what, source }
}

/// The Debian package that ships systemd-stub.
pub const STUB_PACKAGE: &str = "systemd-boot-efi";

/// The systemd-stub a UKI is built on, with the name and hash the manifest
/// records. It comes from Debian's `systemd-boot-efi`, fetched and cached
/// like the kernel, so the build does not depend on what this host has
/// installed; a host without apt falls back to the installed stub.
pub fn stub() -> Result<(PathBuf, String), OutputError> {
    let rel = STUB_PATH.trim_start_matches('/');
    match crate::kernel::fetch_package(STUB_PACKAGE) {
        Ok(pkg) if pkg.root.join(rel).is_file() => Ok((
            pkg.root.join(rel),
            format!("{}={}", pkg.package, pkg.version),
        )),
        fetched => {
            let path = PathBuf::from(STUB_PATH);
            if path.is_file() {
                crate::progress::note(format!("using the installed {STUB_PATH}"));
                return Ok((path, STUB_PACKAGE.to_string()));
            }
            Err(OutputError::StubMissing {
                path,
                fetch: fetched
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "the package has no stub".into()),
            })
        }
    }
}

/// The file beside `kiln.efi` holding its predicted PCR 11.
pub const PCRS_FILE: &str = "kiln.pcrs.json";

/// Finishes a freshly built `kiln.efi`: signs it when `signing` is given
/// (signing time `epoch`), then writes its predicted PCR 11 to
/// [`PCRS_FILE`] beside it. What the manifest records of both.
pub fn seal_uki(
    efi: &Path,
    signing: Option<&crate::secureboot::Signing>,
    epoch: u64,
) -> Result<crate::manifest::UkiInfo, OutputError> {
    let signer = signing
        .map(|s| crate::secureboot::sign_uki(efi, s, epoch))
        .transpose()
        .map_err(|source| OutputError::Sign {
            path: efi.to_path_buf(),
            source,
        })?;
    let bytes = std::fs::read(efi).map_err(io_err(format!("read {}", efi.display())))?;
    let pcr11 = match predict_pcr11(&bytes) {
        Ok(p) => {
            let out = efi.with_file_name(PCRS_FILE);
            write_atomically(&out, |f| {
                use std::io::Write;
                f.write_all(p.to_json().as_bytes())
                    .map_err(io_err(format!("write {}", out.display())))
            })?;
            Some(p.sha256)
        }
        Err(e) => {
            crate::progress::note(format!("PCR 11 is not predicted: {e}"));
            None
        }
    };
    Ok(crate::manifest::UkiInfo { signer, pcr11 })
}

/// A human listing of `path` when it is a PE image (a UKI, or any EFI
/// application) or a GPT disk image; `None` when it is neither, so
/// `kiln inspect` can try other formats.
pub fn describe(path: &Path) -> Option<Result<String, OutputError>> {
    let mut head = [0u8; 520];
    let n = std::fs::File::open(path)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .ok()?;
    let head = head.get(..n)?;
    if head.starts_with(b"MZ") {
        Some(uki::describe(path))
    } else if head.get(512..520) == Some(b"EFI PART".as_slice()) {
        Some(list_disk(path).map(|l| l.to_string()))
    } else {
        None
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Writes `out` through a temporary file beside it, renamed into place once
/// complete, so a failed build never leaves a truncated image behind.
pub(crate) fn write_atomically(
    out: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<(), OutputError>,
) -> Result<(), OutputError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = crate::atomic::temp_file_beside(out).map_err(io_err(format!(
        "create a temporary file beside {}",
        out.display()
    )))?;
    write(tmp.as_file_mut())?;
    tmp.as_file_mut()
        .flush()
        .map_err(io_err(format!("write {}", out.display())))?;
    // Temporary files are created 0600; an image is a plain readable file.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_err(format!("set the mode of {}", out.display())))?;
    tmp.persist(out)
        .map_err(|e| e.error)
        .map_err(io_err(format!("rename the new image to {}", out.display())))?;
    Ok(())
}

pub(crate) fn round_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_ignores_other_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        std::fs::write(&p, b"070701 not a PE nor a disk").unwrap();
        assert!(describe(&p).is_none());
        assert!(describe(&d.path().join("missing")).is_none());
    }

    #[test]
    fn atomic_write_leaves_nothing_on_failure() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("img");
        std::fs::write(&out, b"old").unwrap();
        let r = write_atomically(&out, |f| {
            use std::io::Write;
            f.write_all(b"partial").unwrap();
            Err(OutputError::StubMissing {
                path: PathBuf::from("x"),
                fetch: "test".into(),
            })
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&out).unwrap(), b"old");
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "the temporary file was removed");

        write_atomically(&out, |f| {
            use std::io::Write;
            f.write_all(b"new").map_err(io_err("write"))
        })
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}
