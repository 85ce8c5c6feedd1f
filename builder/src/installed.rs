//! What an installed kiln ships beside itself, found relative to its own
//! executable (`PREFIX/bin/kiln`), so no source tree is needed:
//!
//! - `PREFIX/lib/kiln/`: the static runtime (`kiln-runtime`) and prebuilt
//!   payloads, one executable per package (`kiln-hello`);
//! - `PREFIX/share/kiln/`: the built-in default image's files
//!   (`images/hello.toml`, `configs/hello.toml`). A `cargo:<package>`
//!   payload named by a config there is the prebuilt one in `lib/kiln/`.
//!
//! `install.sh` writes this layout; docs/install.md describes it.

use std::path::{Path, PathBuf};

/// The built-in default image, relative to the data directory.
const DEFAULT_IMAGE: &str = "images/hello.toml";

#[derive(Debug, thiserror::Error)]
pub enum InstalledError {
    #[error(
        "kiln has no built-in default image here: {} is missing (kiln is not installed with \
         its files) and so is the source tree it was built from ({}); install kiln with \
         `./install.sh` from its source tree (docs/install.md), or give an IMAGE",
        share.join(DEFAULT_IMAGE).display(),
        tree.display()
    )]
    NoDefaultImage { share: PathBuf, tree: PathBuf },
}

/// The built-in default image's file: the installed one when kiln runs from
/// an installation, else the one in the source tree kiln was built from.
pub fn default_image() -> Result<PathBuf, InstalledError> {
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let layout = Layout::current();
    default_image_in(layout.as_ref(), &tree)
}

fn default_image_in(layout: Option<&Layout>, tree: &Path) -> Result<PathBuf, InstalledError> {
    if let Some(file) = layout.and_then(Layout::default_image) {
        return Ok(file);
    }
    let file = tree.join(DEFAULT_IMAGE);
    if file.is_file() {
        return Ok(file);
    }
    Err(InstalledError::NoDefaultImage {
        share: layout.map(|l| l.share.clone()).unwrap_or_default(),
        tree: tree.to_path_buf(),
    })
}

/// Where an installed kiln's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `PREFIX/lib/kiln`: the runtime and prebuilt payloads.
    pub lib: PathBuf,
    /// `PREFIX/share/kiln`: the built-in default image's files.
    pub share: PathBuf,
}

impl Layout {
    /// The layout around the running kiln (symlinks to it resolved).
    pub fn current() -> Option<Layout> {
        let exe = std::env::current_exe().ok()?;
        Some(Self::around(&std::fs::canonicalize(&exe).unwrap_or(exe)))
    }

    /// The layout around a kiln executable at `exe` (`PREFIX/bin/kiln`).
    pub fn around(exe: &Path) -> Layout {
        let prefix = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| Path::new("/"));
        Layout {
            lib: prefix.join("lib/kiln"),
            share: prefix.join("share/kiln"),
        }
    }

    /// The installed runtime, if there is one.
    pub fn runtime(&self) -> Option<PathBuf> {
        Some(self.lib.join("kiln-runtime")).filter(|p| p.is_file())
    }

    /// The installed built-in default image, if there is one.
    pub fn default_image(&self) -> Option<PathBuf> {
        Some(self.share.join(DEFAULT_IMAGE)).filter(|p| p.is_file())
    }

    /// Where the prebuilt payload of `package` is (it may be missing).
    pub fn payload(&self, package: &str) -> PathBuf {
        self.lib.join(package)
    }

    /// Whether `dir` is inside the installed data directory: its configs'
    /// `cargo:` payloads are the prebuilt ones.
    pub fn holds(&self, dir: &Path) -> bool {
        match (
            std::fs::canonicalize(dir),
            std::fs::canonicalize(&self.share),
        ) {
            (Ok(d), Ok(s)) => d.starts_with(s),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lib_and_share_beside_bin() {
        let l = Layout::around(Path::new("/opt/kiln/bin/kiln"));
        assert_eq!(l.lib, PathBuf::from("/opt/kiln/lib/kiln"));
        assert_eq!(l.share, PathBuf::from("/opt/kiln/share/kiln"));
        assert_eq!(
            l.payload("kiln-hello"),
            PathBuf::from("/opt/kiln/lib/kiln/kiln-hello")
        );
    }

    #[test]
    fn holds_only_what_is_under_share() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::around(&d.path().join("bin/kiln"));
        std::fs::create_dir_all(l.share.join("configs")).unwrap();
        std::fs::create_dir_all(d.path().join("elsewhere")).unwrap();
        assert!(l.holds(&l.share.join("configs")));
        assert!(l.holds(&l.share.join("configs/../configs")));
        assert!(!l.holds(&d.path().join("elsewhere")));
        assert!(!l.holds(&d.path().join("missing")));
        assert_eq!(l.default_image(), None);
        assert_eq!(l.runtime(), None);
        std::fs::create_dir_all(l.share.join("images")).unwrap();
        std::fs::write(l.share.join("images/hello.toml"), "").unwrap();
        assert_eq!(l.default_image(), Some(l.share.join("images/hello.toml")));
    }

    #[test]
    fn the_installed_default_image_comes_before_the_source_tree() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("src");
        std::fs::create_dir_all(tree.join("images")).unwrap();
        let l = Layout::around(&d.path().join("prefix/bin/kiln"));
        let e = default_image_in(Some(&l), &d.path().join("gone"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("prefix/share/kiln/images/hello.toml is missing"),
            "{e}"
        );
        assert!(e.contains("install kiln with `./install.sh`"), "{e}");

        std::fs::write(tree.join("images/hello.toml"), "").unwrap();
        assert_eq!(
            default_image_in(Some(&l), &tree).unwrap(),
            tree.join("images/hello.toml")
        );
        std::fs::create_dir_all(l.share.join("images")).unwrap();
        std::fs::write(l.share.join("images/hello.toml"), "").unwrap();
        assert_eq!(
            default_image_in(Some(&l), &tree).unwrap(),
            l.share.join("images/hello.toml")
        );
    }
}
