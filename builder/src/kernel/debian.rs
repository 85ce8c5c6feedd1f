//! `debian:<package>` kernels: the package's current version from apt, the
//! .deb downloaded once into the cache, unpacked once per .deb digest.
//!
//! Cache layout (under [`super::cache_dir`]):
//! - `debs/<file>.deb`: downloaded packages, as apt names them;
//! - `kernels/<sha256 of the .deb>/root/`: the unpacked package tree;
//! - `kernels/<sha256 of the .deb>/modindex-v1/`: the derived module index.
//!
//! Everything is written under a temporary name and renamed into place, so
//! an interrupted or concurrent build never sees half an entry.

use super::KernelError;
use crate::progress::{human_bytes, CountingReader, Task};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A package version apt can download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Candidate {
    pub package: String,
    pub version: String,
    /// `SHA256:` from the package index, when the repository gives it.
    pub sha256: Option<String>,
}

/// An unpacked package in the cache.
#[derive(Debug, Clone)]
pub(super) struct Unpacked {
    pub candidate: Candidate,
    pub deb_sha256: String,
    /// `kernels/<sha256>/`.
    pub dir: PathBuf,
}

impl Unpacked {
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
}

/// Resolves `requested` to the versioned package it stands for, downloads
/// and unpacks it (each only if not cached). When apt has no package lists
/// or the download fails (old versions leave the archive), root runs
/// `apt-get update` once and tries again.
pub(super) fn fetch(requested: &str, cache: &Path) -> Result<Unpacked, KernelError> {
    match fetch_once(requested, cache) {
        Err(e @ (KernelError::AptNoLists | KernelError::DownloadFailed { .. }))
            if nix::unistd::geteuid().is_root() =>
        {
            let task = Task::step("Updating apt package lists");
            let out = run("apt-get", &["update"], None)?;
            if !out.status.success() {
                return Err(KernelError::AptFailed {
                    command: "apt-get update".into(),
                    output: output_text(&out),
                    after: Box::new(e),
                });
            }
            task.finish("done");
            fetch_once(requested, cache)
        }
        other => other,
    }
}

fn fetch_once(requested: &str, cache: &Path) -> Result<Unpacked, KernelError> {
    let kernels = cache.join("kernels");
    let first = show(requested)?;
    // A metapackage pins its image's version (`(= 6.1.192-2)`): if that
    // version is unpacked already, one apt query was enough.
    if let Some((package, Some(version))) = first.get("Depends").and_then(|d| versioned_image(d)) {
        if let Some(hit) = cached_by_version(&kernels, &package, &version) {
            return Ok(hit);
        }
    }
    let candidate = resolve(requested, first)?;
    // The index gives the digest: a cached tree needs neither the .deb
    // nor hashing it.
    let cached = candidate
        .sha256
        .clone()
        .filter(|sha| kernels.join(sha).join("root").is_dir());
    let deb_sha256 = match cached {
        Some(sha) => sha,
        None => {
            let (deb, sha) = download(&candidate, &cache.join("debs"))?;
            let dir = kernels.join(&sha);
            if !dir.join("root").is_dir() {
                unpack(&deb, &candidate.package, &kernels, &dir)?;
            }
            sha
        }
    };
    record_version(&kernels, &candidate, &deb_sha256);
    Ok(Unpacked {
        dir: kernels.join(&deb_sha256),
        candidate,
        deb_sha256,
    })
}

/// `kernels/by-version/<package>_<version>` holds the digest of that
/// version's .deb. The Debian archive never reuses a version number for
/// other contents, so name and version identify the file.
fn version_record(kernels: &Path, package: &str, version: &str) -> PathBuf {
    kernels
        .join("by-version")
        .join(format!("{package}_{}", version.replace(':', "%3a")))
}

fn cached_by_version(kernels: &Path, package: &str, version: &str) -> Option<Unpacked> {
    let sha = std::fs::read_to_string(version_record(kernels, package, version)).ok()?;
    let sha = sha.trim();
    let valid = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit());
    let dir = kernels.join(sha);
    (valid && dir.join("root").is_dir()).then(|| Unpacked {
        candidate: Candidate {
            package: package.to_string(),
            version: version.to_string(),
            sha256: Some(sha.to_string()),
        },
        deb_sha256: sha.to_string(),
        dir,
    })
}

/// Best effort: without the record the next build asks apt once more.
fn record_version(kernels: &Path, candidate: &Candidate, sha: &str) {
    let path = version_record(kernels, &candidate.package, &candidate.version);
    if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == sha) {
        return;
    }
    let write = || -> io::Result<()> {
        let dir = path.parent().unwrap_or(kernels);
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        io::Write::write_all(&mut tmp, format!("{sha}\n").as_bytes())?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    };
    if let Err(e) = write() {
        crate::progress::note(format!("Cannot write {}: {e}", path.display()));
    }
}

/// Follows a metapackage (`linux-image-cloud-amd64`), whose candidate
/// stanza is `first`, to the versioned package it depends on
/// (`linux-image-6.1.0-56-cloud-amd64`), with the candidate version apt
/// would install. A versioned name resolves to itself.
fn resolve(requested: &str, first: BTreeMap<String, String>) -> Result<Candidate, KernelError> {
    let mut name = requested.to_string();
    let mut stanza = first;
    // Metapackages point straight at the image; a few hops are plenty and
    // bound the walk should a repository loop.
    for _ in 0..4 {
        let field = |k: &str| stanza.get(k).map(String::as_str);
        match field("Depends").and_then(versioned_image) {
            Some((next, _)) if next != name => {
                stanza = show(&next)?;
                name = next;
            }
            _ => {
                let version = field("Version")
                    .ok_or_else(|| KernelError::PackageNotFound {
                        package: name.clone(),
                    })?
                    .to_string();
                return Ok(Candidate {
                    version,
                    sha256: field("SHA256").map(str::to_ascii_lowercase),
                    package: name,
                });
            }
        }
    }
    Err(KernelError::PackageNotFound {
        package: requested.to_string(),
    })
}

/// The first dependency named `linux-image-<digit>...` (the versioned
/// kernel image package a metapackage stands for), with the version it
/// pins with `(= <version>)`, if any.
pub(super) fn versioned_image(depends: &str) -> Option<(String, Option<String>)> {
    depends
        .split([',', '|'])
        .filter_map(|alt| {
            let alt = alt.trim();
            let (name, rest) = alt.split_once([' ', '(']).unwrap_or((alt, ""));
            let name = name.split(':').next().unwrap_or(name);
            let image = name
                .strip_prefix("linux-image-")
                .and_then(|r| r.chars().next())
                .is_some_and(|c| c.is_ascii_digit());
            let pinned = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.trim().strip_prefix('='))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty());
            image.then(|| (name.to_string(), pinned))
        })
        .next()
}

/// The candidate version's stanza of `apt-cache show`.
fn show(package: &str) -> Result<BTreeMap<String, String>, KernelError> {
    let options = binary_cache_options();
    let mut args: Vec<&str> = options.iter().map(String::as_str).collect();
    args.extend(["show", "--no-all-versions", package]);
    let out = run("apt-cache", &args, None)?;
    let stanza = parse_stanza(&String::from_utf8_lossy(&out.stdout));
    if out.status.success() && stanza.contains_key("Package") {
        return Ok(stanza);
    }
    if apt_knows_nothing() {
        Err(KernelError::AptNoLists)
    } else {
        Err(KernelError::PackageNotFound {
            package: package.to_string(),
        })
    }
}

/// apt's binary cache of its package lists makes a lookup about ten times
/// faster (0.1 s instead of 1.4 s here); container images often switch it
/// off (`Dir::Cache::pkgcache ""`). Keep one in kiln's cache: apt checks it
/// against the lists and rebuilds it when they change.
fn binary_cache_options() -> Vec<String> {
    let Ok(dir) = super::cache_dir().map(|d| d.join("apt")) else {
        return Vec::new();
    };
    if std::fs::create_dir_all(&dir).is_err() {
        return Vec::new();
    }
    let opt = |key: &str, file: &str| {
        [
            "-o".to_string(),
            format!("Dir::Cache::{key}={}", dir.join(file).display()),
        ]
    };
    opt("pkgcache", "pkgcache.bin")
        .into_iter()
        .chain(opt("srcpkgcache", "srcpkgcache.bin"))
        .collect()
}

/// The first stanza of deb822 text: `Key: value`, continuation lines
/// starting with a space.
pub(super) fn parse_stanza(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if fields.is_empty() {
                continue;
            }
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| fields.get_mut(k)) {
                let v: &mut String = v;
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.trim().to_string(), v.trim().to_string());
            last = Some(k.trim().to_string());
        }
    }
    fields
}

/// True when apt has no package index at all (a fresh container).
fn apt_knows_nothing() -> bool {
    let lists = run("apt-config", &["shell", "D", "Dir::State::lists/d"], None)
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let v = text
                .trim()
                .strip_prefix("D=")?
                .trim_matches('\'')
                .to_string();
            (!v.is_empty()).then_some(v)
        })
        .unwrap_or_else(|| "/var/lib/apt/lists/".into());
    std::fs::read_dir(lists).map_or(true, |dir| {
        !dir.flatten()
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
    })
}

/// Runs an apt tool with a stable locale, capturing its output.
fn run(tool: &'static str, args: &[&str], cwd: Option<&Path>) -> Result<Output, KernelError> {
    let mut cmd = Command::new(tool);
    cmd.args(args).env("LC_ALL", "C");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.output().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => KernelError::AptMissing { tool, source },
        _ => KernelError::Io {
            action: "run",
            path: PathBuf::from(tool),
            source,
        },
    })
}

fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stdout.trim());
    }
    text
}

/// The .deb of `candidate` in `debs` and its digest, downloaded unless
/// already there with the digest the index gives.
fn download(candidate: &Candidate, debs: &Path) -> Result<(PathBuf, String), KernelError> {
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
    let out = run("apt-get", &["download", &spec], Some(tmp.path()))?;
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

/// Unpacks the `data.tar.*` member of `deb` into `dest/root`, through a
/// temporary directory in `kernels` renamed into place.
fn unpack(deb: &Path, package: &str, kernels: &Path, dest: &Path) -> Result<(), KernelError> {
    mkdir(kernels)?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(kernels)
        .map_err(|source| KernelError::Io {
            action: "create a directory in",
            path: kernels.to_path_buf(),
            source,
        })?;
    let unpack_err = |source| KernelError::Unpack {
        deb: deb.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(deb).map_err(unpack_err)?;
    let mut archive = ar::Archive::new(io::BufReader::new(file));
    let mut unpacked = false;
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
        tar.unpack(tmp.path().join("root")).map_err(unpack_err)?;
        drop(tar); // ends the borrow of `task` held by the counting reader
        task.finish(member);
        unpacked = true;
        break;
    }
    if !unpacked {
        return Err(KernelError::NoDataMember {
            deb: deb.to_path_buf(),
        });
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
        // A versioned package depends on tools, not on another image.
        assert_eq!(
            image("kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool"),
            None
        );
        assert_eq!(image("linux-image-cloud-amd64"), None);
    }

    #[test]
    fn version_records_find_an_unpacked_tree() {
        let dir = tempfile::tempdir().unwrap();
        let kernels = dir.path();
        let sha = "ab".repeat(32);
        let candidate = Candidate {
            package: "linux-image-1.0-test".into(),
            version: "1:1.0-1".into(),
            sha256: None,
        };
        record_version(kernels, &candidate, &sha);
        assert!(kernels
            .join("by-version/linux-image-1.0-test_1%3a1.0-1")
            .is_file());
        // The record alone is not enough: the tree must be there.
        assert!(cached_by_version(kernels, "linux-image-1.0-test", "1:1.0-1").is_none());
        std::fs::create_dir_all(kernels.join(&sha).join("root")).unwrap();
        let hit = cached_by_version(kernels, "linux-image-1.0-test", "1:1.0-1").unwrap();
        assert_eq!(hit.deb_sha256, sha);
        assert_eq!(hit.dir, kernels.join(&sha));
        assert!(cached_by_version(kernels, "linux-image-1.0-test", "1.1").is_none());
    }

    #[test]
    fn reads_the_first_stanza() {
        let text = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDescription: Linux\n more text\nSHA256: ABC\n\nPackage: other\n";
        let s = parse_stanza(text);
        assert_eq!(
            s.get("Package").map(String::as_str),
            Some("linux-image-cloud-amd64")
        );
        assert_eq!(
            s.get("Description").map(String::as_str),
            Some("Linux\nmore text")
        );
        assert_eq!(s.get("SHA256").map(String::as_str), Some("ABC"));
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn a_missing_apt_says_so() {
        let err = run("kiln-test-no-such-apt-tool", &["show"], None).unwrap_err();
        assert!(matches!(err, KernelError::AptMissing { .. }), "{err}");
        assert!(err.to_string().contains("give the path of a bzImage"));
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
