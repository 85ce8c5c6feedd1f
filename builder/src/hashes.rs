//! SHA-256 of files remembered across builds, keyed by path and checked
//! against the file's [`Stamp`]: an unchanged kernel, module or payload is
//! hashed once, not at every build. Kept in `<cache>/hashes/files-v1.json`.
//!
//! A file's hash is remembered only when the file had [settled]
//! before it was read and did not change while it was read; anything else
//! is hashed again next time. The table is written whole, atomically, at
//! the end of a build; two builds at once may each lose the other's new
//! entries, which only costs hashing them again.
//!
//! [settled]: crate::stamp::Stamp::settled

use crate::stamp::Stamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The table's place under the cache directory.
pub const FILE: &str = "hashes/files-v1.json";

/// Entries beyond this many (the least recently used first) are dropped:
/// tests and throw-away trees leave paths that never come back.
const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    stamp: Stamp,
    sha256: String,
    /// When a build last used it (seconds since 1970), to drop stale ones.
    used: u64,
}

/// The remembered hashes, loaded once per build.
#[derive(Debug, Default)]
pub struct HashCache {
    file: Option<PathBuf>,
    entries: BTreeMap<PathBuf, Entry>,
    dirty: bool,
}

impl HashCache {
    /// The table under `cache_dir`; empty when it is missing or unreadable
    /// (the cache only ever saves time).
    pub fn open(cache_dir: &Path) -> HashCache {
        let file = cache_dir.join(FILE);
        let entries = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        HashCache {
            file: Some(file),
            entries,
            dirty: false,
        }
    }

    /// A table that is never saved (no cache directory).
    pub fn in_memory() -> HashCache {
        HashCache::default()
    }

    /// SHA-256 (hex) and size of `path`: remembered when its stamp is the
    /// one it was hashed with, else read and hashed.
    pub fn sha256(&mut self, path: &Path) -> io::Result<(String, u64)> {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let (Some(entry), Some(stamp)) = (self.entries.get_mut(path), Stamp::of(path)) {
            if entry.stamp == stamp {
                if entry.used != secs {
                    entry.used = secs;
                    self.dirty = true;
                }
                return Ok((entry.sha256.clone(), stamp.size));
            }
        }
        let (sha256, size, stamp) = hash_file(path)?;
        match stamp.filter(|s| s.settled(now)) {
            Some(stamp) => {
                self.entries.insert(
                    path.to_path_buf(),
                    Entry {
                        stamp,
                        sha256: sha256.clone(),
                        used: secs,
                    },
                );
                self.dirty = true;
            }
            None => {
                if self.entries.remove(path).is_some() {
                    self.dirty = true;
                }
            }
        }
        Ok((sha256, size))
    }

    /// Writes the table back if it changed. Best effort: a cache that
    /// cannot be written only costs hashing again next build.
    pub fn save(&mut self) {
        let Some(file) = &self.file else { return };
        if !self.dirty {
            return;
        }
        if self.entries.len() > MAX_ENTRIES {
            let mut by_use: Vec<(u64, PathBuf)> = self
                .entries
                .iter()
                .map(|(p, e)| (e.used, p.clone()))
                .collect();
            by_use.sort();
            let drop = self.entries.len() - MAX_ENTRIES;
            for (_, p) in by_use.into_iter().take(drop) {
                self.entries.remove(&p);
            }
        }
        let Ok(json) = serde_json::to_vec(&self.entries) else {
            return;
        };
        let write = || -> io::Result<()> {
            let mut tmp = crate::atomic::temp_file_beside(file)?;
            io::Write::write_all(&mut tmp, &json)?;
            tmp.persist(file).map_err(|e| e.error)?;
            Ok(())
        };
        if write().is_ok() {
            self.dirty = false;
        }
    }
}

/// Hashes the file open at `path`, with its stamp when it did not change
/// while it was read.
fn hash_file(path: &Path) -> io::Result<(String, u64, Option<Stamp>)> {
    let mut f = std::fs::File::open(path)?;
    let before = Stamp::of_metadata(&f.metadata()?);
    let (sha, size) = crate::manifest::sha256_read(&mut f)?;
    let after = Stamp::of_metadata(&f.metadata()?);
    let stamp = (before == after && after.size == size).then_some(after);
    Ok((sha, size, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn age(path: &Path) {
        crate::stamp::set_mtime(path, crate::stamp::SETTLE + Duration::from_secs(10));
    }

    #[test]
    fn a_settled_file_is_hashed_once_and_a_rewrite_is_noticed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("kernel");
        std::fs::write(&f, b"one").unwrap();
        age(&f);
        let mut c = HashCache::open(&d.path().join("cache"));
        let one = c.sha256(&f).unwrap();
        assert_eq!(one, crate::manifest::sha256_file(&f).unwrap());
        c.save();
        // A new build reads the table and uses the remembered hash, which
        // shows when the remembered value is not the file's.
        let mut c = HashCache::open(&d.path().join("cache"));
        assert_eq!(c.entries.len(), 1);
        c.entries.get_mut(&f).unwrap().sha256 = "remembered".into();
        assert_eq!(c.sha256(&f).unwrap(), ("remembered".to_string(), 3));
        // Rewritten with the same size: hashed again.
        std::fs::write(&f, b"two").unwrap();
        age(&f);
        let two = c.sha256(&f).unwrap();
        assert_eq!(two, crate::manifest::sha256_file(&f).unwrap());
        assert_ne!(two, one);
    }

    #[test]
    fn a_file_written_just_now_is_not_remembered() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("payload");
        std::fs::write(&f, b"one").unwrap();
        let mut c = HashCache::open(&d.path().join("cache"));
        c.sha256(&f).unwrap();
        assert!(c.entries.is_empty(), "a racily clean file is hashed again");
        age(&f);
        c.sha256(&f).unwrap();
        assert_eq!(c.entries.len(), 1);
    }
}
