//! What a build read, for the manifest: each input file by kind, a name that
//! does not depend on the machine or the working directory, and its hash.

use super::{io, BuildError};
use crate::hashes::HashCache;
use crate::kernel::{Kernel, KernelOrigin};
use crate::manifest::{self, Input};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// SHA-256 and size of files, each read once per build: the runtime and
/// every payload are both a manifest record and part of the archive's cache
/// key, and a `debian:` guest kernel is also the image's own kernel. Files
/// that did not change since an earlier build are not read at all: their
/// hashes are remembered in the cache ([`HashCache`]).
pub(super) struct FileHashes {
    known: RefCell<HashMap<PathBuf, (String, u64)>>,
    cache: RefCell<HashCache>,
}

impl FileHashes {
    pub(super) fn new(cache: HashCache) -> FileHashes {
        FileHashes {
            known: RefCell::default(),
            cache: RefCell::new(cache),
        }
    }

    pub(super) fn of(&self, path: &Path) -> Result<(String, u64), BuildError> {
        if let Some(known) = self.known.borrow().get(path) {
            return Ok(known.clone());
        }
        let hashed = self
            .cache
            .borrow_mut()
            .sha256(path)
            .map_err(io(format!("read {}", path.display())))?;
        self.known
            .borrow_mut()
            .insert(path.to_path_buf(), hashed.clone());
        Ok(hashed)
    }

    /// Keeps the hashes learnt for the next build (best effort).
    pub(super) fn save(&self) {
        self.cache.borrow_mut().save();
    }
}

/// A config file read by the build, named relative to the image's folder so
/// the manifest is the same whichever directory kiln ran from.
pub(super) fn file(kind: &str, path: &Path, image_dir: &Path) -> Result<Input, BuildError> {
    let (sha256, _) =
        manifest::sha256_file(path).map_err(io(format!("read {}", path.display())))?;
    let name = match (
        std::fs::canonicalize(path),
        std::fs::canonicalize(image_dir),
    ) {
        (Ok(p), Ok(d)) => pathdiff(&p, &d),
        _ => relative(path, image_dir),
    };
    Ok(Input {
        kind: kind.to_string(),
        name,
        sha256,
    })
}

/// A file recorded under a fixed `name` (never its path on this machine).
pub(super) fn hashed(
    hashes: &FileHashes,
    kind: &str,
    name: &str,
    path: &Path,
) -> Result<Input, BuildError> {
    let (sha256, _) = hashes.of(path)?;
    Ok(Input {
        kind: kind.to_string(),
        name: name.to_string(),
        sha256,
    })
}

/// The kernel as build inputs: the package with its .deb hash, or each file
/// by name and hash (never by absolute path, which depends on the machine).
pub(super) fn kernel(kernel: &Kernel) -> Vec<Input> {
    match &kernel.origin {
        KernelOrigin::Debian {
            package,
            version,
            deb_sha256,
            packages,
            ..
        } if packages.is_empty() => vec![Input {
            kind: "kernel-package".into(),
            name: format!("{package}={version}"),
            sha256: deb_sha256.clone(),
        }],
        KernelOrigin::Debian { packages, .. } => packages
            .iter()
            .map(|p| Input {
                kind: "kernel-package".into(),
                name: format!("{}={}", p.package, p.version),
                sha256: p.sha256.clone(),
            })
            .collect(),
        KernelOrigin::Host { files } | KernelOrigin::Path { files } => files
            .iter()
            .map(|f| Input {
                kind: "kernel-file".into(),
                name: f
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha256: f.sha256.clone(),
            })
            .collect(),
    }
}

/// `path` relative to `base` when it is inside it, else its file name.
pub(super) fn relative(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| {
            path.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// `path` relative to `base`, with `..` where needed (both absolute).
fn pathdiff(path: &Path, base: &Path) -> String {
    let p: Vec<_> = path.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = std::iter::repeat_n("..".to_string(), b.len() - common).collect();
    parts.extend(
        p[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_for_inputs() {
        assert_eq!(
            pathdiff(Path::new("/a/configs/x.toml"), Path::new("/a/images")),
            "../configs/x.toml"
        );
        assert_eq!(
            pathdiff(Path::new("/a/images/h.toml"), Path::new("/a/images")),
            "h.toml"
        );
    }
}
