//! The initramfs tree being assembled by the build's steps, before it is
//! written: destination path → contents and mode. Directories are implied
//! by the paths.

use super::inputs::FileHashes;
use super::BuildError;
use crate::cpio::Archive;
use crate::manifest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A file of the initramfs before it is written.
enum Content {
    File(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Default)]
pub(super) struct Staging {
    files: BTreeMap<String, (Content, u32)>,
}

impl Staging {
    pub(super) fn file(&mut self, dest: impl Into<String>, src: &Path, mode: u32) {
        self.files
            .insert(dest.into(), (Content::File(src.to_path_buf()), mode));
    }

    pub(super) fn bytes(&mut self, dest: impl Into<String>, data: Vec<u8>, mode: u32) {
        self.files.insert(dest.into(), (Content::Bytes(data), mode));
    }

    /// A hash of every path, mode and content: the cache key of the archive.
    pub(super) fn digest(&self, extra: &str, hashes: &FileHashes) -> Result<String, BuildError> {
        let mut listing = String::from(extra);
        for (dest, (content, mode)) in &self.files {
            let hash = match content {
                Content::File(p) => hashes.of(p)?.0,
                Content::Bytes(b) => manifest::sha256_bytes(b),
            };
            listing.push_str(&format!("\n{dest} {mode:o} {hash}"));
        }
        Ok(manifest::sha256_bytes(listing.as_bytes()))
    }

    pub(super) fn into_archive(self, host_layout: bool) -> Archive {
        let mut ar = Archive::new();
        if host_layout {
            for dir in [
                "proc",
                "sys",
                "dev",
                "run",
                "etc/kiln",
                "lib/modules",
                "guests",
            ] {
                ar.add_dir(dir, 0o755);
            }
            ar.add_dir("tmp", 0o1777);
        }
        ar.add_char_device("dev/console", 0o600, 5, 1);
        for (dest, (content, mode)) in self.files {
            match content {
                Content::File(p) => ar.add_file(&dest, &p, mode),
                Content::Bytes(b) => ar.add_bytes(&dest, b, mode),
            }
        }
        ar
    }
}
