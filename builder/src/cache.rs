//! `kiln cache`: lists, prunes and cleans kiln's cache directory
//! (`$KILN_CACHE_DIR`, else `~/.cache/kiln`).
//!
//! Only the areas kiln writes ([`AREAS`]) are ever touched: anything else
//! in the directory is listed as not kiln's and left alone. An entry is one
//! child of an area (a downloaded .deb, an unpacked kernel, a cached
//! initramfs, a private apt state); every build recreates what it misses, so
//! removing an entry costs time, never correctness.

use crate::progress::human_bytes;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The cache's areas, relative to the cache directory, with what they hold.
/// A nested area (`kernels/by-version`) is listed on its own, not as an
/// entry of its parent.
/// docs/config.md ("Rebuilds and the cache") lists what each holds.
pub const AREAS: &[(&str, &str)] = &[
    ("apt", "apt's binary package cache"),
    ("apt/repos", "private apt states of [kernel.apt] sources"),
    ("apt/resolved", "what each debian: name last resolved to"),
    ("cargo", "what each payload's last cargo build read"),
    ("hashes", "SHA-256 of input files by their stamps"),
    ("debs", "downloaded kernel and boot packages"),
    (
        "kernels",
        "unpacked kernel packages and their module indexes",
    ),
    (
        "kernels/by-version",
        "which unpacked tree each package version went into",
    ),
    (
        "initramfs",
        "compressed initramfs archives by content digest",
    ),
    (
        "vmlinux",
        "guest kernels unpacked from their bzImages, for PVH",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Dir(#[from] crate::kernel::KernelError),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {}; check its permissions", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the listing")]
    Output(#[source] io::Error),
}

/// One entry of an area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub area: &'static str,
    pub path: PathBuf,
    /// Bytes of every file under it.
    pub size: u64,
    /// The newest access or modification time among its files (to the day
    /// on a `relatime` mount): when a build last used it.
    pub used: SystemTime,
}

/// The cache directory kiln uses.
pub fn dir() -> Result<PathBuf, CacheError> {
    Ok(crate::kernel::cache_dir()?)
}

/// Every entry of every area of the cache at `root`, oldest use first.
pub fn entries(root: &Path) -> Result<Vec<Entry>, CacheError> {
    let mut all = Vec::new();
    for (area, _) in AREAS {
        let dir = root.join(area);
        let list = match fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CacheError::Read { path: dir, source }),
        };
        for child in list {
            let path = child
                .map_err(|source| CacheError::Read {
                    path: dir.clone(),
                    source,
                })?
                .path();
            if is_area(root, &path) {
                continue;
            }
            let (size, used) = measure(&path)?;
            all.push(Entry {
                area,
                path,
                size,
                used,
            });
        }
    }
    all.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.path.cmp(&b.path)));
    Ok(all)
}

/// What lies in the cache directory that kiln did not write there.
pub fn foreign(root: &Path) -> Result<Vec<PathBuf>, CacheError> {
    let list = match fs::read_dir(root) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CacheError::Read {
                path: root.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for child in list.flatten() {
        if !is_area(root, &child.path()) {
            out.push(child.path());
        }
    }
    out.sort();
    Ok(out)
}

fn is_area(root: &Path, path: &Path) -> bool {
    AREAS.iter().any(|(a, _)| root.join(a) == path)
}

/// Size and last use of everything under `path`, without following links.
fn measure(path: &Path) -> Result<(u64, SystemTime), CacheError> {
    let read_err = |source| CacheError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(read_err)?;
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if !meta.is_dir() {
        let accessed = meta.accessed().unwrap_or(modified);
        return Ok((meta.len(), modified.max(accessed)));
    }
    // A directory's own times say nothing of use (listing it, as this
    // does, touches its access time): its files' do.
    let mut size = 0;
    let mut used = None;
    for child in fs::read_dir(path).map_err(read_err)? {
        let (s, u) = measure(&child.map_err(read_err)?.path())?;
        size += s;
        used = used.max(Some(u));
    }
    Ok((size, used.unwrap_or(modified)))
}

/// Removes the entries last used more than `older_than` ago (all with
/// zero); returns what was removed.
pub fn prune(root: &Path, older_than: Duration, now: SystemTime) -> Result<Vec<Entry>, CacheError> {
    let cutoff = now
        .checked_sub(older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut removed = Vec::new();
    for e in entries(root)? {
        if e.used < cutoff || older_than.is_zero() {
            remove(&e.path)?;
            removed.push(e);
        }
    }
    Ok(removed)
}

/// Removes every area kiln writes, and nothing else; returns the bytes
/// freed.
pub fn clean(root: &Path) -> Result<u64, CacheError> {
    let mut freed = 0;
    for (area, _) in AREAS {
        let path = root.join(area);
        if fs::symlink_metadata(&path).is_ok() {
            freed += measure(&path)?.0;
            remove(&path)?;
        }
    }
    Ok(freed)
}

fn remove(path: &Path) -> Result<(), CacheError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CacheError::Remove {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// "3d", "5h", "12m", "now": how long ago `then` was.
pub fn age(then: SystemTime, now: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    match secs {
        0..60 => "now".into(),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// `kiln cache list`: every entry with its size and age, then the totals.
pub fn list(root: &Path, out: &mut dyn Write) -> Result<(), CacheError> {
    let now = SystemTime::now();
    let entries = entries(root)?;
    let w = |r: io::Result<()>| r.map_err(CacheError::Output);
    w(writeln!(out, "cache: {}", root.display()))?;
    w(writeln!(
        out,
        "{:<20} {:>10} {:>6}  ENTRY",
        "AREA", "SIZE", "USED"
    ))?;
    for e in &entries {
        let name = e.path.strip_prefix(root).unwrap_or(&e.path);
        w(writeln!(
            out,
            "{:<20} {:>10} {:>6}  {}",
            e.area,
            human_bytes(e.size),
            age(e.used, now),
            name.display()
        ))?;
    }
    for (area, what) in AREAS {
        let (n, size) = entries
            .iter()
            .filter(|e| e.area == *area)
            .fold((0, 0), |(n, s), e| (n + 1, s + e.size));
        if n > 0 {
            w(writeln!(
                out,
                "{area:<20} {:>10} in {n} entries: {what}",
                human_bytes(size)
            ))?;
        }
    }
    let total: u64 = entries.iter().map(|e| e.size).sum();
    w(writeln!(
        out,
        "total {} in {} entries",
        human_bytes(total),
        entries.len()
    ))?;
    for f in foreign(root)? {
        w(writeln!(out, "not kiln's, left alone: {}", f.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, bytes: usize) -> PathBuf {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, vec![0u8; bytes]).unwrap();
        p
    }

    fn set_used(path: &Path, t: SystemTime) {
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap();
    }

    #[test]
    fn entries_are_the_children_of_each_area() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        put(r, "debs/a.deb", 100);
        put(r, "kernels/k1/root/vmlinuz", 30);
        put(r, "kernels/k1/modindex-v1/index", 20);
        put(r, "kernels/by-version/linux-image_1", 64);
        put(r, "initramfs/x-initramfs.cpio.zst", 7);
        put(r, "mine/notes.txt", 5);
        let got: Vec<(String, u64)> = entries(r)
            .unwrap()
            .into_iter()
            .map(|e| {
                let rel = e.path.strip_prefix(r).unwrap().display().to_string();
                (rel, e.size)
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            got,
            vec![
                ("debs/a.deb".into(), 100),
                ("initramfs/x-initramfs.cpio.zst".into(), 7),
                ("kernels/by-version/linux-image_1".into(), 64),
                ("kernels/k1".into(), 50),
            ]
        );
        assert_eq!(foreign(r).unwrap(), vec![r.join("mine")]);
    }

    #[test]
    fn prune_removes_only_entries_unused_for_long() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let now = SystemTime::now();
        let old = put(r, "initramfs/old-initramfs.cpio.zst", 10);
        set_used(&old, now - Duration::from_secs(40 * 86400));
        let tree = put(r, "kernels/k1/root/vmlinuz", 10);
        set_used(&tree, now - Duration::from_secs(40 * 86400));
        // A tree with one recently used file is in use.
        let fresh_tree = put(r, "kernels/k2/root/vmlinuz", 10);
        set_used(&fresh_tree, now - Duration::from_secs(40 * 86400));
        put(r, "kernels/k2/root/config", 10);
        let fresh = put(r, "initramfs/new-initramfs.cpio.zst", 10);
        let foreign_file = put(r, "mine/old.txt", 10);
        set_used(&foreign_file, now - Duration::from_secs(400 * 86400));
        let removed = prune(r, Duration::from_secs(30 * 86400), now).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!old.exists() && !r.join("kernels/k1").exists());
        assert!(fresh.exists() && fresh_tree.exists() && foreign_file.exists());
    }

    #[test]
    fn clean_removes_every_area_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        put(r, "debs/a.deb", 100);
        put(r, "apt/repos/x/sources.list", 10);
        put(r, "initramfs/y", 1);
        let mine = put(r, "mine/notes.txt", 5);
        let top = put(r, "README", 5);
        assert_eq!(clean(r).unwrap(), 111);
        assert!(entries(r).unwrap().is_empty());
        assert!(mine.exists() && top.exists());
        assert!(!r.join("debs").exists());
    }

    #[test]
    fn ages_read_briefly() {
        let now = SystemTime::now();
        assert_eq!(age(now, now), "now");
        assert_eq!(age(now - Duration::from_secs(300), now), "5m");
        assert_eq!(age(now - Duration::from_secs(7200), now), "2h");
        assert_eq!(age(now - Duration::from_secs(3 * 86400), now), "3d");
    }
}
