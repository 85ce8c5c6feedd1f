//! Cheap identities of files: a [`Stamp`] is what `stat` says of a file
//! (device, inode, size, modification time in nanoseconds). Two equal stamps
//! taken at different times mean the file was not replaced or rewritten in
//! between, unless someone put back its old modification time by hand (as
//! cargo and make, kiln trusts modification times).
//!
//! A file written moments before its stamp is taken may be written again
//! within the same clock tick without its stamp changing ("racily clean",
//! as git calls it): [`Stamp::settled`] tells whether a stamp is old enough
//! to be remembered.

use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a file must have been left alone before its stamp is trusted:
/// larger than any filesystem's timestamp granularity kiln may meet (FAT
/// keeps two seconds) and than the kernel's coarse clock tick.
pub const SETTLE: Duration = Duration::from_secs(3);

/// What `stat` says of a file, enough to notice any rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Nanoseconds since 1970 (negative before it).
    pub mtime_ns: i128,
}

impl Stamp {
    pub fn of_metadata(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }

    /// The stamp of `path` (following symlinks), or `None` when it is absent
    /// or unreadable: an absent file is an input too (its appearing changes
    /// a build).
    pub fn of(path: &Path) -> Option<Stamp> {
        std::fs::metadata(path).ok().map(|m| Stamp::of_metadata(&m))
    }

    /// True when the file was last modified at least [`SETTLE`] before
    /// `now`, so a later write cannot leave the same stamp.
    pub fn settled(&self, now: SystemTime) -> bool {
        let now_ns = now
            .duration_since(UNIX_EPOCH)
            .map(|d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
            .unwrap_or(0);
        let settle = i128::try_from(SETTLE.as_nanos()).unwrap_or(i128::MAX);
        self.mtime_ns < now_ns.saturating_sub(settle)
    }
}

/// Stamps of a set of paths, each present or absent, compared as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampSet(pub Vec<(PathBuf, Option<Stamp>)>);

impl StampSet {
    /// Stamps every path now (duplicates once, in sorted order).
    pub fn take<I: IntoIterator<Item = PathBuf>>(paths: I) -> StampSet {
        let mut paths: Vec<PathBuf> = paths.into_iter().collect();
        paths.sort();
        paths.dedup();
        StampSet(
            paths
                .into_iter()
                .map(|p| {
                    let s = Stamp::of(&p);
                    (p, s)
                })
                .collect(),
        )
    }

    /// True when every path still has the stamp recorded for it (present
    /// files unchanged, absent ones still absent).
    pub fn unchanged(&self) -> bool {
        self.0.iter().all(|(p, s)| Stamp::of(p) == *s)
    }

    /// True when every present file had settled before `now`.
    pub fn settled(&self, now: SystemTime) -> bool {
        self.0.iter().all(|(_, s)| s.is_none_or(|s| s.settled(now)))
    }

    /// The first path whose stamp differs from the recorded one, for notes.
    pub fn first_changed(&self) -> Option<&Path> {
        self.0
            .iter()
            .find(|(p, s)| Stamp::of(p) != *s)
            .map(|(p, _)| p.as_path())
    }
}

/// Sets `path`'s modification time to `ago` before now (a file or a
/// folder), for the tests of what trusts stamps.
#[cfg(test)]
pub(crate) fn set_mtime(path: &Path, ago: Duration) {
    std::fs::File::open(path)
        .unwrap()
        .set_modified(SystemTime::now() - ago)
        .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_changes_the_stamp_and_an_absent_file_is_stamped_absent() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a");
        std::fs::write(&f, b"one").unwrap();
        let before = Stamp::of(&f).unwrap();
        assert_eq!(Stamp::of(&f), Some(before));
        // Same size, new contents: only the time tells, and it moves.
        std::fs::write(&f, b"two").unwrap();
        set_mtime(&f, Duration::from_secs(0));
        let mut after = Stamp::of(&f).unwrap();
        if after == before {
            // Within one clock tick: the set_modified below must move it.
            set_mtime(&f, Duration::from_secs(5));
            after = Stamp::of(&f).unwrap();
        }
        assert_ne!(after, before);
        assert_eq!(Stamp::of(&d.path().join("missing")), None);
    }

    #[test]
    fn a_stamp_set_notices_changed_appeared_and_removed_files() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        let set = StampSet::take([a.clone(), b.clone(), a.clone()]);
        assert_eq!(set.0.len(), 2);
        assert!(set.unchanged());
        std::fs::write(&b, b"b").unwrap();
        assert!(!set.unchanged(), "an absent input that appears");
        assert_eq!(set.first_changed(), Some(b.as_path()));
        std::fs::remove_file(&b).unwrap();
        assert!(set.unchanged());
        std::fs::remove_file(&a).unwrap();
        assert!(!set.unchanged(), "a removed input");
    }

    #[test]
    fn only_files_left_alone_for_a_while_are_settled() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a");
        std::fs::write(&f, b"a").unwrap();
        let now = SystemTime::now();
        assert!(!Stamp::of(&f).unwrap().settled(now));
        set_mtime(&f, SETTLE + Duration::from_secs(1));
        assert!(Stamp::of(&f).unwrap().settled(now));
        let set = StampSet::take([f.clone(), d.path().join("absent")]);
        assert!(set.settled(now));
    }
}
