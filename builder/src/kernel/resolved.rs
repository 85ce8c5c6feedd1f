//! What a `debian:` package last resolved to, so a build need not ask apt
//! every time: asking costs one to three `apt-cache` processes (a tenth of
//! a second each at best, seconds on a loaded machine).
//!
//! After apt resolved a package and its tree is unpacked, kiln writes
//! `<cache>/apt/resolved/<digest>.json` (the digest is of the apt state and
//! the name asked for): the tree's key, every package with its version and
//! SHA-256, when it was resolved, and the stamps of apt's state (its lists
//! folder and every file in it, `/etc/apt` and the files in it, and for a
//! private state its `sources.list`). The next build uses the record
//! without running apt when ([`Policy`]):
//!
//! - it is younger than the TTL ([`DEFAULT_TTL`], or `KILN_APT_TTL` in
//!   seconds; `0` always asks apt) and apt's state is unchanged since
//!   (no `apt-get update` brought new lists, no source or preference
//!   changed: apt would answer the same), and the tree is still cached;
//! - or `kiln build --offline`, whatever its age (apt is never run; a
//!   package never resolved is an error).
//!
//! `kiln build --refresh` always asks apt (and records the answer).

use super::debian::Unpacked;
use super::DebPackage;
use crate::stamp::StampSet;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the records live under the cache directory.
pub const DIR: &str = "apt/resolved";

/// How long a resolution is used without asking apt again, when apt's
/// state has not changed: a day.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// When a build asks apt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Only when no recent resolution with an unchanged apt state is
    /// recorded (the default).
    Recent,
    /// Always (`--refresh`).
    Refresh,
    /// Never: use the last resolution, however old (`--offline`).
    Offline,
}

static POLICY: AtomicU8 = AtomicU8::new(0);

/// Sets when this process asks apt (`kiln build --refresh`/`--offline`).
pub fn set_policy(policy: Policy) {
    let v = match policy {
        Policy::Recent => 0,
        Policy::Refresh => 1,
        Policy::Offline => 2,
    };
    POLICY.store(v, Ordering::Relaxed);
}

pub fn policy() -> Policy {
    match POLICY.load(Ordering::Relaxed) {
        1 => Policy::Refresh,
        2 => Policy::Offline,
        _ => Policy::Recent,
    }
}

/// The TTL in force: `KILN_APT_TTL` (seconds) when set and valid.
pub fn ttl() -> Duration {
    std::env::var("KILN_APT_TTL")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_TTL, Duration::from_secs)
}

/// One resolution as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Resolution {
    pub requested: String,
    /// Seconds since 1970.
    pub resolved_at: u64,
    /// The tree's name under `kernels/`.
    pub key: String,
    pub packages: Vec<DebPackage>,
    /// apt's state when it answered.
    pub apt_state: StampSet,
}

/// The record of `requested` resolved through the apt state named `state`
/// (`host`, or a private state's digest).
pub(super) fn record_path(cache: &Path, state: &str, requested: &str) -> PathBuf {
    let key = crate::manifest::sha256_bytes(format!("{state}\n{requested}\n").as_bytes());
    cache.join(DIR).join(format!("{key}.json"))
}

/// The files whose change may change apt's answer: the lists folder and
/// what is in it, the configuration under `/etc/apt`, and `extra` (a
/// private state's own sources.list).
pub(super) fn apt_state(lists: &Path, etc: &Path, extra: &[PathBuf]) -> StampSet {
    let mut paths = vec![lists.to_path_buf(), etc.to_path_buf()];
    paths.extend(extra.iter().cloned());
    let entries = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    paths.extend(entries(lists));
    for e in entries(etc) {
        if e.is_dir() {
            paths.extend(entries(&e));
        }
        paths.push(e);
    }
    StampSet::take(paths)
}

/// The recorded resolution of `path` if `policy` lets it be used at `now`,
/// its tree still being in `kernels`.
pub(super) fn usable(
    path: &Path,
    kernels: &Path,
    policy: Policy,
    ttl: Duration,
    now: SystemTime,
) -> Option<Unpacked> {
    let text = std::fs::read(path).ok()?;
    let r: Resolution = serde_json::from_slice(&text).ok()?;
    let dir = kernels.join(&r.key);
    if r.packages.is_empty() || !dir.join("root").is_dir() {
        return None;
    }
    let ok = match policy {
        Policy::Refresh => false,
        Policy::Offline => true,
        Policy::Recent => {
            let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let age = now.checked_sub(r.resolved_at);
            age.is_some_and(|a| a < ttl.as_secs()) && r.apt_state.unchanged()
        }
    };
    ok.then_some(Unpacked {
        packages: r.packages,
        dir,
    })
}

/// Records a resolution. Best effort: without it the next build asks apt.
pub(super) fn record(path: &Path, resolution: &Resolution) {
    let write = || -> std::io::Result<()> {
        let json = serde_json::to_vec(resolution).map_err(std::io::Error::other)?;
        let mut tmp = crate::atomic::temp_file_beside(path)?;
        std::io::Write::write_all(&mut tmp, &json)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    let _ = write();
}

/// Seconds since 1970 now.
pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _d: tempfile::TempDir,
        record: PathBuf,
        kernels: PathBuf,
        lists: PathBuf,
        etc: PathBuf,
    }

    fn fixture(resolved_ago: u64) -> Fixture {
        let d = tempfile::tempdir().unwrap();
        let kernels = d.path().join("kernels");
        std::fs::create_dir_all(kernels.join("abc/root")).unwrap();
        let lists = d.path().join("lists");
        let etc = d.path().join("etc");
        std::fs::create_dir_all(etc.join("sources.list.d")).unwrap();
        std::fs::create_dir_all(&lists).unwrap();
        std::fs::write(lists.join("deb_dists_bookworm_main_Packages"), "a").unwrap();
        std::fs::write(etc.join("sources.list"), "deb http://x/ b main\n").unwrap();
        let path = record_path(d.path(), "host", "linux-image-cloud-amd64");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let r = Resolution {
            requested: "linux-image-cloud-amd64".into(),
            resolved_at: now_secs() - resolved_ago,
            key: "abc".into(),
            packages: vec![DebPackage {
                package: "linux-image-6.1.0-57-cloud-amd64".into(),
                version: "6.1.192-3".into(),
                sha256: "abc".into(),
            }],
            apt_state: apt_state(&lists, &etc, &[]),
        };
        record(&path, &r);
        Fixture {
            _d: d,
            record: path,
            kernels,
            lists,
            etc,
        }
    }

    fn usable_now(f: &Fixture, policy: Policy) -> bool {
        usable(
            &f.record,
            &f.kernels,
            policy,
            DEFAULT_TTL,
            SystemTime::now(),
        )
        .is_some()
    }

    #[test]
    fn a_recent_resolution_is_used_until_refresh_or_apt_changes() {
        let f = fixture(60);
        let hit = usable(
            &f.record,
            &f.kernels,
            Policy::Recent,
            DEFAULT_TTL,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(hit.dir, f.kernels.join("abc"));
        assert_eq!(hit.main().version, "6.1.192-3");
        assert!(!usable_now(&f, Policy::Refresh), "--refresh asks apt");
        // apt-get update brought a new list: apt may answer otherwise.
        std::fs::write(f.lists.join("deb_dists_bookworm-updates_main_Packages"), "").unwrap();
        assert!(!usable_now(&f, Policy::Recent));
        assert!(usable_now(&f, Policy::Offline), "offline takes what it has");
    }

    #[test]
    fn a_changed_source_an_old_record_or_a_removed_tree_asks_apt() {
        let f = fixture(60);
        std::fs::write(
            f.etc.join("sources.list.d/new.list"),
            "deb http://y/ b main\n",
        )
        .unwrap();
        assert!(!usable_now(&f, Policy::Recent));

        let f = fixture(DEFAULT_TTL.as_secs() + 1);
        assert!(!usable_now(&f, Policy::Recent), "older than the TTL");
        assert!(usable_now(&f, Policy::Offline));
        assert!(usable(
            &f.record,
            &f.kernels,
            Policy::Recent,
            Duration::from_secs(u64::MAX / 2),
            SystemTime::now()
        )
        .is_some());

        let f = fixture(60);
        std::fs::remove_dir_all(f.kernels.join("abc")).unwrap();
        assert!(!usable_now(&f, Policy::Offline), "the tree is gone");
    }

    #[test]
    fn records_are_named_by_apt_state_and_package() {
        let c = Path::new("/c");
        assert_ne!(record_path(c, "host", "a"), record_path(c, "host", "b"));
        assert_ne!(record_path(c, "host", "a"), record_path(c, "0123", "a"));
        assert!(record_path(c, "host", "a").starts_with("/c/apt/resolved"));
    }
}
