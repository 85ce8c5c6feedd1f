//! Outputs are never seen half-written: each is written under a temporary
//! name beside its destination (the same filesystem, so the final rename is
//! atomic) and renamed into place once complete. A failed or interrupted
//! write leaves what was there before.

use std::io;
use std::path::Path;
use tempfile::{NamedTempFile, TempDir};

/// The directory `path` lives in (`.` for a bare name), created if missing.
fn parent_of(path: &Path) -> io::Result<&Path> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    Ok(dir)
}

fn prefix(dest: &Path) -> String {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.")
}

/// A temporary file beside `dest`; `persist(dest)` puts it in place.
pub fn temp_file_beside(dest: &Path) -> io::Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&prefix(dest))
        .tempfile_in(parent_of(dest)?)
}

/// A temporary directory beside `dest`, to be renamed to it.
pub fn temp_dir_beside(dest: &Path) -> io::Result<TempDir> {
    tempfile::Builder::new()
        .prefix(&prefix(dest))
        .tempdir_in(parent_of(dest)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_sit_hidden_beside_their_destination() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("sub/report.xml");
        let f = temp_file_beside(&dest).unwrap();
        assert_eq!(f.path().parent(), dest.parent());
        assert!(f
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".report.xml."));
        f.persist(&dest).unwrap();
        assert!(dest.is_file());
        let t = temp_dir_beside(&d.path().join("out")).unwrap();
        assert_eq!(t.path().parent(), Some(d.path()));
    }
}
