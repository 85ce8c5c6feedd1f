//! The whole console of every run, byte for byte, kept in a log file: the
//! report holds excerpts, the log holds everything. It is written under a
//! temporary name beside its place and renamed there when the test ends,
//! with mode 0666 less the umask, like any output.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("Cannot write the console log {}; check that its folder is writable", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct ConsoleLog {
    path: PathBuf,
    file: BufWriter<NamedTempFile>,
    /// The first write error: reported when the log is kept, not on every
    /// chunk, so a full disk does not stop the test being judged.
    failed: Option<std::io::Error>,
}

impl ConsoleLog {
    pub fn create(path: &Path) -> Result<Self, LogError> {
        let err = |source| LogError::Write {
            path: path.to_path_buf(),
            source,
        };
        let tmp = crate::atomic::output_file_beside(path).map_err(err)?;
        Ok(ConsoleLog {
            path: path.to_path_buf(),
            file: BufWriter::new(tmp),
            failed: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A line of kiln's own between runs, so one log can hold several.
    pub fn header(&mut self, text: &str) {
        self.write(format!("\n===== kiln test: {text} =====\n").as_bytes());
    }

    pub fn write(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            if let Err(e) = self.file.write_all(bytes) {
                self.failed = Some(e);
            }
        }
    }

    /// Renames the log into place.
    pub fn keep(mut self) -> Result<PathBuf, LogError> {
        let err = |source| LogError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(e) = self.failed.take() {
            return Err(err(e));
        }
        let tmp = self.file.into_inner().map_err(|e| err(e.into_error()))?;
        tmp.persist(&self.path).map_err(|e| err(e.error))?;
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appears_only_when_kept() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sub/r.xml.console.log");
        let mut log = ConsoleLog::create(&path).unwrap();
        log.header("hello on qemu, attempt 1 of 1");
        log.write(b"\x1b[1mraw\x1b[0m bytes\r\n");
        assert!(!path.exists());
        assert_eq!(log.keep().unwrap(), path);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"\n===== kiln test: hello on qemu, attempt 1 of 1 =====\n\x1b[1mraw\x1b[0m bytes\r\n"
        );
        let left: Vec<_> = std::fs::read_dir(d.path().join("sub")).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !crate::atomic::umask(), "mode {mode:o}");
    }
}
