//! Outputs are never seen half-written: each is written under a temporary
//! name beside its destination (the same filesystem, so the final rename is
//! atomic) and renamed into place once complete. A failed or interrupted
//! write leaves what was there before.

use std::io;
use std::os::unix::fs::PermissionsExt;
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

/// A temporary file beside `dest`; `persist(dest)` puts it in place. It is
/// private to its owner (mode 0600), like every temporary file.
pub fn temp_file_beside(dest: &Path) -> io::Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&prefix(dest))
        .tempfile_in(parent_of(dest)?)
}

/// [`temp_file_beside`] for a file that others read (a report, a log): it
/// is created with mode 0666 less the umask, as `touch` or a shell's `>`
/// would create it (0644 under the usual umask 022).
pub fn output_file_beside(dest: &Path) -> io::Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&prefix(dest))
        // The umask applies to a file's creation mode, as for open(2).
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(parent_of(dest)?)
}

/// A temporary directory beside `dest`, to be renamed to it.
pub fn temp_dir_beside(dest: &Path) -> io::Result<TempDir> {
    tempfile::Builder::new()
        .prefix(&prefix(dest))
        .tempdir_in(parent_of(dest)?)
}

/// This process's umask, which only /proc tells without changing it.
#[cfg(test)]
pub(crate) fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
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

    #[test]
    fn outputs_honour_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("report.xml");
        let f = output_file_beside(&dest).unwrap();
        f.persist(&dest).unwrap();
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask(), "mode {mode:o}");
    }
}
