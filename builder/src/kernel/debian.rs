//! `debian:<package>` kernels: the package's current version from apt, the
//! .debs downloaded once into the cache, unpacked once per set of .debs.
//!
//! A kernel may come in several packages: Ubuntu's `linux-image-<rel>`
//! depends on `linux-modules-<rel>`, Debian 7.x's on `linux-base-<rel>`,
//! `linux-binary-<rel>` and `linux-modules-<rel>`. Every dependency named
//! `linux-*-<rel>` (the image's release) is fetched with it and unpacked
//! into the same tree.
//!
//! Cache layout (under [`super::cache_dir`]):
//! - `debs/<file>.deb`: downloaded packages, as apt names them;
//! - `kernels/<key>/root/`: the unpacked tree, `<key>` being the .deb's
//!   SHA-256 for a kernel in one package, else a digest of all the .debs';
//! - `kernels/<key>/modindex-v1/`: the derived module index;
//! - `kernels/by-version/[<apt state>/]<package>_<version>`: the key of the
//!   tree a versioned image package went into, and its packages;
//! - `apt/resolved/<digest>.json`: what a requested name last resolved to
//!   ([`resolved`]), so a recent answer is used without asking apt.
//!
//! Everything is written under a temporary name and renamed into place, so
//! an interrupted or concurrent build never sees half an entry.

use super::apt::{output_text, Apt};
use super::{resolved, DebPackage, KernelError};
use crate::progress::{human_bytes, CountingReader, Task};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// A package version apt can download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Candidate {
    pub package: String,
    pub version: String,
    /// `SHA256:` from the package index, when the repository gives it.
    pub sha256: Option<String>,
}

/// An unpacked set of packages in the cache.
#[derive(Debug, Clone)]
pub(super) struct Unpacked {
    /// Every package in the tree, the one `requested` resolved to first.
    pub packages: Vec<DebPackage>,
    /// `kernels/<key>/`.
    pub dir: PathBuf,
}

impl Unpacked {
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The package `requested` resolved to.
    pub fn main(&self) -> DebPackage {
        self.packages.first().cloned().unwrap_or_default()
    }
}

/// Resolves `requested` to the versioned package it stands for, downloads
/// and unpacks it with its split-off parts (each only if not cached).
/// A private apt state is updated when it has no lists yet, and once more
/// when the package is not found or its download fails (old versions leave
/// the archive); the host's lists are updated in that case only by root.
/// A recent resolution of `requested` is used without asking apt at all
/// ([`resolved`]); each answer apt gives is recorded for the next build.
pub(super) fn fetch(requested: &str, cache: &Path, apt: &Apt) -> Result<Unpacked, KernelError> {
    let record = resolved::record_path(cache, &apt.state_name(), requested);
    let policy = resolved::policy();
    let now = std::time::SystemTime::now();
    if let Some(hit) = resolved::usable(
        &record,
        &cache.join("kernels"),
        policy,
        resolved::ttl(),
        now,
    ) {
        let main = hit.main();
        crate::progress::note(format!(
            "{requested} is {} {} (resolved before; `kiln build --refresh` asks apt again)",
            main.package, main.version
        ));
        return Ok(hit);
    }
    if policy == resolved::Policy::Offline {
        return Err(KernelError::NotResolvedOffline {
            package: requested.to_string(),
        });
    }
    let _lock = apt.lock()?;
    // Taken before apt answers: lists that change meanwhile make the
    // record stale rather than wrong.
    let apt_state = apt.state_stamps();
    let resolved_at = resolved::now_secs();
    let mut updated = false;
    if apt.is_private() && apt.has_no_lists() {
        apt.update(None)?;
        updated = true;
    }
    let unpacked = match fetch_once(requested, cache, apt) {
        Err(e) if !updated && may_update(apt, &e) => {
            apt.update(Some(e))?;
            fetch_once(requested, cache, apt)
        }
        other => other,
    }?;
    if let Some(key) = unpacked.dir.file_name() {
        resolved::record(
            &record,
            &resolved::Resolution {
                requested: requested.to_string(),
                resolved_at,
                key: key.to_string_lossy().into_owned(),
                packages: unpacked.packages.clone(),
                apt_state,
            },
        );
    }
    Ok(unpacked)
}

fn may_update(apt: &Apt, e: &KernelError) -> bool {
    if apt.is_private() {
        matches!(
            e,
            KernelError::NotInSources { .. } | KernelError::DownloadFailed { .. }
        )
    } else {
        matches!(
            e,
            KernelError::AptNoLists | KernelError::DownloadFailed { .. }
        ) && nix::unistd::geteuid().is_root()
    }
}

fn fetch_once(requested: &str, cache: &Path, apt: &Apt) -> Result<Unpacked, KernelError> {
    let kernels = cache.join("kernels");
    let records = apt.records(&kernels);
    let first = apt.show(requested)?;
    // A metapackage pins its image's version (`(= 6.1.192-2)`): if that
    // version is unpacked already, one apt query was enough.
    if let Some((package, Some(version))) = first.get("Depends").and_then(|d| versioned_image(d)) {
        if let Some(hit) = cached_by_version(&records, &kernels, &package, &version) {
            return Ok(hit);
        }
    }
    let (main, stanza) = resolve(apt, requested, first)?;
    let mut wanted = vec![main];
    if let Some(release) = wanted[0].package.strip_prefix("linux-image-") {
        let depends = stanza.get("Depends").map(String::as_str).unwrap_or("");
        for (name, pin) in split_parts(release, depends) {
            let spec = pin.map_or_else(|| name.clone(), |v| format!("{name}={v}"));
            wanted.push(candidate(&name, &apt.show(&spec)?)?);
        }
    }
    // The index gives the digests: a cached tree needs neither the .debs
    // nor hashing them.
    let indexed: Option<Vec<String>> = wanted.iter().map(|c| c.sha256.clone()).collect();
    let cached = indexed.filter(|shas| kernels.join(tree_key(shas)).join("root").is_dir());
    let shas = match cached {
        Some(shas) => shas,
        None => {
            let debs_dir = cache.join("debs");
            let mut debs = Vec::new();
            for c in &wanted {
                debs.push((download(apt, c, &debs_dir)?, c.package.as_str()));
            }
            let shas: Vec<String> = debs.iter().map(|((_, sha), _)| sha.clone()).collect();
            let dir = kernels.join(tree_key(&shas));
            if !dir.join("root").is_dir() {
                let files: Vec<(&Path, &str)> = debs
                    .iter()
                    .map(|((deb, _), package)| (deb.as_path(), *package))
                    .collect();
                unpack(&files, &kernels, &dir)?;
            }
            shas
        }
    };
    let packages: Vec<DebPackage> = wanted
        .iter()
        .zip(&shas)
        .map(|(c, sha)| DebPackage {
            package: c.package.clone(),
            version: c.version.clone(),
            sha256: sha.clone(),
        })
        .collect();
    let key = tree_key(&shas);
    record_version(&records, &key, &packages);
    Ok(Unpacked {
        dir: kernels.join(&key),
        packages,
    })
}

/// The name of the tree holding .debs with these digests: the digest
/// itself for one package (so trees cached before kernels came in several
/// packages stay valid), else a digest of the sorted digests.
pub(super) fn tree_key(shas: &[String]) -> String {
    match shas {
        [one] => one.clone(),
        _ => {
            let mut sorted: Vec<&String> = shas.iter().collect();
            sorted.sort();
            let mut h = Sha256::new();
            h.update(b"kiln kernel tree\n");
            for s in sorted {
                h.update(s.as_bytes());
                h.update(b"\n");
            }
            hex(&h.finalize())
        }
    }
}

/// `<records>/<package>_<version>` holds the key of the tree that version
/// went into, then a line `<package> <version> <sha256>` per package. The
/// archive never reuses a version number for other contents, so name and
/// version identify the files.
fn version_record(records: &Path, package: &str, version: &str) -> PathBuf {
    records.join(format!("{package}_{}", version.replace(':', "%3a")))
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn cached_by_version(
    records: &Path,
    kernels: &Path,
    package: &str,
    version: &str,
) -> Option<Unpacked> {
    let text = std::fs::read_to_string(version_record(records, package, version)).ok()?;
    let mut lines = text.lines();
    let key = lines.next()?.trim();
    let mut packages = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            [p, v, sha] if is_digest(sha) => packages.push(DebPackage {
                package: p.to_string(),
                version: v.to_string(),
                sha256: sha.to_string(),
            }),
            _ => return None,
        }
    }
    // A record of one line (older kiln): the tree of that one .deb.
    if packages.is_empty() {
        packages.push(DebPackage {
            package: package.to_string(),
            version: version.to_string(),
            sha256: key.to_string(),
        });
    }
    let dir = kernels.join(key);
    (is_digest(key) && dir.join("root").is_dir()).then_some(Unpacked { packages, dir })
}

/// Best effort: without the record the next build asks apt once more.
fn record_version(records: &Path, key: &str, packages: &[DebPackage]) {
    let Some(main) = packages.first() else { return };
    let path = version_record(records, &main.package, &main.version);
    let mut text = format!("{key}\n");
    for p in packages {
        text.push_str(&format!("{} {} {}\n", p.package, p.version, p.sha256));
    }
    if std::fs::read_to_string(&path).is_ok_and(|s| s == text) {
        return;
    }
    let write = || -> io::Result<()> {
        let mut tmp = crate::atomic::temp_file_beside(&path)?;
        io::Write::write_all(&mut tmp, text.as_bytes())?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    };
    if let Err(e) = write() {
        crate::progress::note(format!("Cannot write {}: {e}", path.display()));
    }
}

fn candidate(name: &str, stanza: &BTreeMap<String, String>) -> Result<Candidate, KernelError> {
    let field = |k: &str| stanza.get(k).map(String::as_str);
    let version = field("Version").ok_or_else(|| KernelError::PackageNotFound {
        package: name.to_string(),
    })?;
    Ok(Candidate {
        package: field("Package").unwrap_or(name).to_string(),
        version: version.to_string(),
        sha256: field("SHA256").map(str::to_ascii_lowercase),
    })
}

/// Follows a metapackage (`linux-image-cloud-amd64`), whose candidate
/// stanza is `first`, to the versioned package it depends on
/// (`linux-image-6.1.0-56-cloud-amd64`), at the version the metapackage
/// pins or else apt's candidate. A versioned name resolves to itself.
/// Returns that package and its stanza.
fn resolve(
    apt: &Apt,
    requested: &str,
    first: BTreeMap<String, String>,
) -> Result<(Candidate, BTreeMap<String, String>), KernelError> {
    let mut name = requested.to_string();
    let mut stanza = first;
    // Metapackages point straight at the image; a few hops are plenty and
    // bound the walk should a repository loop.
    for _ in 0..4 {
        match stanza.get("Depends").and_then(|d| versioned_image(d)) {
            Some((next, pin)) if next != name => {
                let spec = pin.map_or_else(|| next.clone(), |v| format!("{next}={v}"));
                stanza = apt.show(&spec)?;
                name = next;
            }
            _ => return Ok((candidate(&name, &stanza)?, stanza)),
        }
    }
    Err(KernelError::PackageNotFound {
        package: requested.to_string(),
    })
}

/// One alternative of a Depends field: its name (without `:arch`) and the
/// version it pins with `(= <version>)`, if any.
fn alternative(alt: &str) -> (String, Option<String>) {
    let alt = alt.trim();
    let (name, rest) = alt.split_at(alt.find([' ', '(']).unwrap_or(alt.len()));
    let name = name.split(':').next().unwrap_or(name);
    let pinned = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|r| r.trim().strip_prefix('='))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    (name.to_string(), pinned)
}

/// The first dependency named `linux-image-<digit>...` (the versioned
/// kernel image package a metapackage stands for), with the version it
/// pins, if any. Debian 7.x metapackages list `linux-base-<flavour>` first.
pub fn versioned_image(depends: &str) -> Option<(String, Option<String>)> {
    depends
        .split([',', '|'])
        .map(alternative)
        .find(|(name, _)| {
            name.strip_prefix("linux-image-")
                .and_then(|r| r.chars().next())
                .is_some_and(|c| c.is_ascii_digit())
        })
}

/// The dependencies of `linux-image-<release>` that are parts of the same
/// kernel: named `linux-<part>-<release>`, other than the image itself
/// (`linux-modules-6.8.0-151-generic`, `linux-base-7.3.1-cloud-amd64`).
/// Of alternatives, the first such name is taken.
pub fn split_parts(release: &str, depends: &str) -> Vec<(String, Option<String>)> {
    let image = format!("linux-image-{release}");
    let suffix = format!("-{release}");
    let mut parts: Vec<(String, Option<String>)> = Vec::new();
    for clause in depends.split(',') {
        let found = clause.split('|').map(alternative).find(|(name, _)| {
            *name != image
                && name.starts_with("linux-")
                && name
                    .strip_suffix(&suffix)
                    .is_some_and(|part| part.len() > "linux-".len())
        });
        if let Some(part) = found.filter(|(n, _)| !parts.iter().any(|(p, _)| p == n)) {
            parts.push(part);
        }
    }
    parts
}

/// The .deb of `candidate` in `debs` and its digest, downloaded unless
/// already there with the digest the index gives.
fn download(
    apt: &Apt,
    candidate: &Candidate,
    debs: &Path,
) -> Result<(PathBuf, String), KernelError> {
    mkdir(debs)?;
    let spec = format!("{}={}", candidate.package, candidate.version);
    if let Some(cached) = cached_deb(candidate, debs)? {
        return Ok(cached);
    }
    let task = Task::step(format!(
        "Downloading {} {}",
        candidate.package, candidate.version
    ));
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(debs)
        .map_err(|source| KernelError::Io {
            action: "create a directory in",
            path: debs.to_path_buf(),
            source,
        })?;
    // apt prints its own progress; it is shown only when something fails.
    let out = apt.run("apt-get", &["download", &spec], Some(tmp.path()))?;
    if !out.status.success() {
        return Err(KernelError::DownloadFailed {
            package: candidate.package.clone(),
            version: candidate.version.clone(),
            output: output_text(&out),
        });
    }
    let file = single_deb(tmp.path())?.ok_or_else(|| KernelError::DownloadFailed {
        package: candidate.package.clone(),
        version: candidate.version.clone(),
        output: format!(
            "apt-get reported success but left no .deb\n{}",
            output_text(&out)
        ),
    })?;
    // single_deb only returns paths ending in a .deb file name.
    let dest = debs.join(file.file_name().unwrap_or_default());
    let src = &file;
    let actual = sha256_file(src)?;
    if let Some(expected) = candidate.sha256.as_ref().filter(|e| **e != actual) {
        return Err(KernelError::ChecksumMismatch {
            path: src.clone(),
            expected: expected.clone(),
            actual,
        });
    }
    std::fs::rename(src, &dest).map_err(|source| KernelError::Io {
        action: "move the download to",
        path: dest.clone(),
        source,
    })?;
    let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
    task.finish(human_bytes(size));
    Ok((dest, actual))
}

/// A cached .deb for `candidate` and its digest, if one is there and
/// matches the index.
fn cached_deb(
    candidate: &Candidate,
    debs: &Path,
) -> Result<Option<(PathBuf, String)>, KernelError> {
    // apt names a download <package>_<version, ':' as %3a>_<arch>.deb.
    let prefix = format!(
        "{}_{}_",
        candidate.package,
        candidate.version.replace(':', "%3a")
    );
    let Ok(dir) = std::fs::read_dir(debs) else {
        return Ok(None);
    };
    let mut found: Vec<PathBuf> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    for path in found {
        let sha = sha256_file(&path)?;
        if candidate.sha256.as_ref().is_none_or(|e| *e == sha) {
            return Ok(Some((path, sha)));
        }
    }
    Ok(None)
}

fn single_deb(dir: &Path) -> Result<Option<PathBuf>, KernelError> {
    let entries = std::fs::read_dir(dir).map_err(|source| KernelError::Io {
        action: "list",
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(entries
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb")))
}

/// Unpacks the `data.tar.*` member of each .deb (with its package name)
/// into `dest/root`, through a temporary directory in `kernels` renamed
/// into place.
fn unpack(debs: &[(&Path, &str)], kernels: &Path, dest: &Path) -> Result<(), KernelError> {
    mkdir(kernels)?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(kernels)
        .map_err(|source| KernelError::Io {
            action: "create a directory in",
            path: kernels.to_path_buf(),
            source,
        })?;
    for (deb, package) in debs {
        unpack_data(deb, package, &tmp.path().join("root"))?;
    }
    let tmp = tmp.keep();
    if let Err(source) = std::fs::rename(&tmp, dest) {
        // Another build may have put the same tree there first.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dest.join("root").is_dir() {
            return Err(KernelError::Io {
                action: "move the unpacked kernel to",
                path: dest.to_path_buf(),
                source,
            });
        }
    }
    Ok(())
}

pub fn unpack_data(deb: &Path, package: &str, root: &Path) -> Result<(), KernelError> {
    let unpack_err = |source| KernelError::Unpack {
        deb: deb.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(deb).map_err(unpack_err)?;
    let mut archive = ar::Archive::new(io::BufReader::new(file));
    while let Some(entry) = archive.next_entry() {
        let entry = entry.map_err(unpack_err)?;
        let member = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        if !member.starts_with("data.tar") {
            continue;
        }
        let task = Task::bytes(format!("Unpacking {package}"), Some(entry.header().size()));
        let counted = CountingReader {
            inner: entry,
            task: &task,
        };
        // By magic, not by name: .deb members are xz, zstd or gzip.
        let (_, tar) =
            crate::compress::decoder(counted).map_err(|_| KernelError::UnsupportedCompression {
                deb: deb.to_path_buf(),
                member: member.clone(),
            })?;
        let mut tar = tar::Archive::new(tar);
        tar.set_preserve_mtime(true);
        tar.set_overwrite(true);
        tar.unpack(root).map_err(unpack_err)?;
        drop(tar); // ends the borrow of `task` held by the counting reader
        task.finish(member);
        return Ok(());
    }
    Err(KernelError::NoDataMember {
        deb: deb.to_path_buf(),
    })
}

fn mkdir(dir: &Path) -> Result<(), KernelError> {
    std::fs::create_dir_all(dir).map_err(|source| KernelError::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })
}

/// Lower-case hex SHA-256 of a file.
pub(super) fn sha256_file(path: &Path) -> Result<String, KernelError> {
    let io = |source| KernelError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex(&hasher.finalize()))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_versioned_image_of_a_metapackage() {
        let image = |d: &str| versioned_image(d);
        assert_eq!(
            image("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"),
            Some((
                "linux-image-6.1.0-56-cloud-amd64".into(),
                Some("6.1.192-2".into())
            ))
        );
        assert_eq!(
            image("linux-base, linux-image-6.12.1-amd64:amd64 (>= 1) | foo"),
            Some(("linux-image-6.12.1-amd64".into(), None))
        );
        assert_eq!(
            image("linux-image-6.8.0-49-generic, linux-firmware"),
            Some(("linux-image-6.8.0-49-generic".into(), None))
        );
        // Debian 7.x: the flavour's base metapackage comes first.
        assert_eq!(
            image("linux-base-cloud-amd64 (= 7.3.1-1~bpo13+1), linux-image-7.3.1+bpo-cloud-amd64 (= 7.3.1-1~bpo13+1)"),
            Some((
                "linux-image-7.3.1+bpo-cloud-amd64".into(),
                Some("7.3.1-1~bpo13+1".into())
            ))
        );
        // A versioned package depends on tools, not on another image.
        assert_eq!(
            image("kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool"),
            None
        );
        assert_eq!(image("linux-image-cloud-amd64"), None);
        assert_eq!(
            alternative("linux-modules-6.8(=1)"),
            ("linux-modules-6.8".into(), Some("1".into()))
        );
    }

    #[test]
    fn picks_the_parts_of_a_split_kernel() {
        // Ubuntu noble.
        assert_eq!(
            split_parts(
                "6.8.0-151-generic",
                "kmod, linux-base (>= 4.5ubuntu1~16.04.1), linux-modules-6.8.0-151-generic"
            ),
            [("linux-modules-6.8.0-151-generic".to_string(), None)]
        );
        // Debian 7.x: pinned parts, alternatives, the image itself and
        // other releases left out, no duplicates.
        assert_eq!(
            split_parts(
                "7.3.1+bpo-cloud-amd64",
                "linux-base-7.3.1+bpo-cloud-amd64 (= 7.3.1-1), linux-binary-7.3.1+bpo-cloud-amd64 (= 7.3.1-1), \
                 linux-modules-7.3.1+bpo-cloud-amd64 (= 7.3.1-1) | linux-modules-7.3.1+bpo-cloud-amd64, \
                 linux-image-7.3.1+bpo-cloud-amd64, linux-modules-7.2.0-cloud-amd64, linux-base, \
                 linux--7.3.1+bpo-cloud-amd64"
            ),
            [
                ("linux-base-7.3.1+bpo-cloud-amd64".to_string(), Some("7.3.1-1".to_string())),
                ("linux-binary-7.3.1+bpo-cloud-amd64".to_string(), Some("7.3.1-1".to_string())),
                ("linux-modules-7.3.1+bpo-cloud-amd64".to_string(), Some("7.3.1-1".to_string())),
            ]
        );
        // Debian 12: one package.
        assert!(split_parts(
            "6.1.0-56-cloud-amd64",
            "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool"
        )
        .is_empty());
    }

    #[test]
    fn tree_keys() {
        let a = "aa".repeat(32);
        let b = "bb".repeat(32);
        assert_eq!(tree_key(std::slice::from_ref(&a)), a);
        let ab = tree_key(&[a.clone(), b.clone()]);
        assert!(is_digest(&ab) && ab != a && ab != b);
        assert_eq!(ab, tree_key(&[b, a]));
    }

    #[test]
    fn version_records_find_an_unpacked_tree() {
        let dir = tempfile::tempdir().unwrap();
        let kernels = dir.path();
        let records = kernels.join("by-version");
        let key = "cd".repeat(32);
        let packages = vec![
            DebPackage {
                package: "linux-image-1.0-test".into(),
                version: "1:1.0-1".into(),
                sha256: "ab".repeat(32),
            },
            DebPackage {
                package: "linux-modules-1.0-test".into(),
                version: "1:1.0-1".into(),
                sha256: "ef".repeat(32),
            },
        ];
        record_version(&records, &key, &packages);
        assert!(records.join("linux-image-1.0-test_1%3a1.0-1").is_file());
        // The record alone is not enough: the tree must be there.
        assert!(cached_by_version(&records, kernels, "linux-image-1.0-test", "1:1.0-1").is_none());
        std::fs::create_dir_all(kernels.join(&key).join("root")).unwrap();
        let hit = cached_by_version(&records, kernels, "linux-image-1.0-test", "1:1.0-1").unwrap();
        assert_eq!(hit.packages, packages);
        assert_eq!(hit.dir, kernels.join(&key));
        assert!(cached_by_version(&records, kernels, "linux-image-1.0-test", "1.1").is_none());
        // A record written by an older kiln: one line, the .deb's digest.
        let old = "12".repeat(32);
        std::fs::write(records.join("linux-image-2.0_2.0"), format!("{old}\n")).unwrap();
        std::fs::create_dir_all(kernels.join(&old).join("root")).unwrap();
        let hit = cached_by_version(&records, kernels, "linux-image-2.0", "2.0").unwrap();
        assert_eq!(
            hit.packages,
            [DebPackage {
                package: "linux-image-2.0".into(),
                version: "2.0".into(),
                sha256: old
            }]
        );
    }

    /// A .deb (ar archive) whose data.tar.xz holds `files`.
    fn fake_deb(path: &Path, files: &[(&str, &[u8])]) {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            tar.append_data(&mut h, name, *data).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        io::Write::write_all(&mut xz, &tar).unwrap();
        let data = xz.finish().unwrap();
        let mut ar = ar::Builder::new(std::fs::File::create(path).unwrap());
        ar.append(
            &ar::Header::new(b"debian-binary".to_vec(), 4),
            &b"2.0\n"[..],
        )
        .unwrap();
        ar.append(
            &ar::Header::new(b"data.tar.xz".to_vec(), data.len() as u64),
            &data[..],
        )
        .unwrap();
    }

    #[test]
    fn unpacks_several_debs_into_one_tree() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.deb");
        let modules = dir.path().join("modules.deb");
        fake_deb(&image, &[("./boot/vmlinuz-1.0", b"kernel")]);
        fake_deb(
            &modules,
            &[
                ("./boot/config-1.0", b"CONFIG_X=y\n"),
                ("./lib/modules/1.0/kernel/a.ko.zst", b"zst"),
            ],
        );
        let kernels = dir.path().join("kernels");
        let dest = kernels.join("key");
        unpack(&[(&image, "image"), (&modules, "modules")], &kernels, &dest).unwrap();
        let root = dest.join("root");
        assert_eq!(
            std::fs::read(root.join("boot/vmlinuz-1.0")).unwrap(),
            b"kernel"
        );
        assert!(root.join("boot/config-1.0").is_file());
        assert!(root.join("lib/modules/1.0/kernel/a.ko.zst").is_file());
        let bad = dir.path().join("bad.deb");
        std::fs::write(&bad, b"!<arch>\n").unwrap();
        let err = unpack(&[(&bad, "bad")], &kernels, &kernels.join("other")).unwrap_err();
        assert!(matches!(err, KernelError::NoDataMember { .. }), "{err}");
        assert!(!kernels.join("other").exists());
    }

    #[test]
    fn hex_digest_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
