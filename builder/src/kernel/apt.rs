//! Talking to apt: either the host's own package lists, or a private apt
//! state for the sources an image names in `[kernel.apt]`.
//!
//! A private state lives in `<cache>/apt/repos/<digest>/`, the digest being
//! of the source lines and the keyring's bytes: `sources.list` (each line
//! with `signed-by=` the keyring copied beside it), `lists/` and apt's
//! binary caches. Nothing of the host's apt configuration but its trusted
//! keys (for sources without a keyring) takes part: no sources.list.d, no
//! pinning, no installed-package status.

use super::KernelError;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The apt sources of `[kernel.apt]`, with the keyring that signs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptRepo {
    /// One-line entries: `deb [options] <uri> <suite> [components...]`.
    pub sources: Vec<String>,
    /// An OpenPGP keyring (`.gpg` binary or `.asc` armoured), or `None` to
    /// trust the host's apt keys.
    pub keyring: Option<PathBuf>,
}

/// Checks one source line: `deb`, optional `[options]`, a URI and a suite
/// (components follow unless the suite is a flat `path/`). The reason is
/// for the image config's error.
pub fn check_source_line(line: &str) -> Result<(), String> {
    let parsed = SourceLine::parse(line)?;
    if parsed.options.iter().any(|o| o.starts_with("signed-by=")) {
        return Err("it has its own signed-by= option; give the key as `keyring` instead".into());
    }
    Ok(())
}

/// Checks a keyring path's kind: apt tells the two formats apart by name.
pub fn check_keyring_name(path: &Path) -> Result<(), String> {
    match keyring_extension(path) {
        Some(_) => Ok(()),
        None => Err(format!(
            "{} is not named .gpg or .asc; apt reads a binary keyring from *.gpg and an armoured key from *.asc",
            path.display()
        )),
    }
}

fn keyring_extension(path: &Path) -> Option<&'static str> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("gpg") => Some("gpg"),
        Some("asc") => Some("asc"),
        _ => None,
    }
}

struct SourceLine<'a> {
    options: Vec<&'a str>,
    rest: Vec<&'a str>,
}

impl<'a> SourceLine<'a> {
    fn parse(line: &'a str) -> Result<Self, String> {
        let line = line.trim();
        let Some(body) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            return Err("expected a one-line apt source starting with \"deb \", e.g. \"deb http://archive.ubuntu.com/ubuntu noble-updates main\"".into());
        };
        let body = body.trim_start();
        let (options, body) = match body.strip_prefix('[') {
            Some(inner) => {
                let (opts, after) = inner
                    .split_once(']')
                    .ok_or("its [options] are not closed with ']'")?;
                (opts.split_whitespace().collect(), after)
            }
            None => (Vec::new(), body),
        };
        let rest: Vec<&str> = body.split_whitespace().collect();
        match rest.as_slice() {
            [] | [_] => Err("expected a URI and a suite after \"deb\"".into()),
            [uri, ..] if !uri.contains(":/") => Err(format!("\"{uri}\" is not a URI")),
            [_, suite] if !suite.ends_with('/') => Err(format!(
                "suite \"{suite}\" needs at least one component (e.g. main)"
            )),
            _ => Ok(SourceLine { options, rest }),
        }
    }

    /// The line with `signed-by=<keyring>` among its options.
    fn with_keyring(&self, keyring: Option<&Path>) -> String {
        let mut options: Vec<String> = self.options.iter().map(|o| o.to_string()).collect();
        if let Some(k) = keyring {
            options.push(format!("signed-by={}", k.display()));
        }
        let opts = if options.is_empty() {
            String::new()
        } else {
            format!("[{}] ", options.join(" "))
        };
        format!("deb {opts}{}", self.rest.join(" "))
    }
}

/// How apt is run for one kernel source.
#[derive(Debug, Clone)]
pub(super) struct Apt {
    /// `-o` options every apt command gets.
    options: Vec<String>,
    /// The private state's directory, or `None` for the host's lists.
    private: Option<PathBuf>,
    /// The sources, as the image gave them, for errors and the manifest.
    pub sources: Vec<String>,
}

impl Apt {
    /// The host's apt, with its binary cache kept in `<cache>/apt`.
    pub fn host(cache: &Path) -> Apt {
        Apt {
            options: binary_cache_options(&cache.join("apt")),
            private: None,
            sources: Vec::new(),
        }
    }

    /// A private state for `repo` under `<cache>/apt/repos/`, set up (its
    /// sources.list and keyring written) if it is new.
    pub fn private(cache: &Path, repo: &AptRepo) -> Result<Apt, KernelError> {
        let keyring = match &repo.keyring {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| KernelError::Io {
                    action: "read the apt keyring",
                    path: path.clone(),
                    source,
                })?;
                let ext = keyring_extension(path).ok_or_else(|| KernelError::InvalidApt {
                    reason: check_keyring_name(path).err().unwrap_or_default(),
                })?;
                Some((bytes, ext))
            }
            None => None,
        };
        let mut lines = Vec::new();
        for s in &repo.sources {
            lines.push(
                SourceLine::parse(s).map_err(|reason| KernelError::InvalidApt {
                    reason: format!("source \"{s}\": {reason}"),
                })?,
            );
        }
        let dir = cache.join("apt/repos").join(state_digest(
            &repo.sources,
            keyring.as_ref().map(|k| k.0.as_slice()),
        ));
        let keyring_file = keyring
            .as_ref()
            .map(|(_, ext)| dir.join(format!("keyring.{ext}")));
        let list: String = lines
            .iter()
            .map(|l| l.with_keyring(keyring_file.as_deref()) + "\n")
            .collect();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KernelError::Io {
                action: "write",
                path,
                source,
            }
        };
        let empty = dir.join("empty");
        for d in [dir.join("lists/partial"), empty.clone()] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        if let (Some((bytes, _)), Some(file)) = (&keyring, &keyring_file) {
            write_if_changed(file, bytes).map_err(io(file))?;
        }
        let sources_list = dir.join("sources.list");
        write_if_changed(&sources_list, list.as_bytes()).map_err(io(&sources_list))?;
        let opt = |k: &str, v: &Path| ["-o".to_string(), format!("{k}={}", v.display())];
        let mut options: Vec<String> = [
            opt("Dir::Etc::sourcelist", &sources_list),
            opt("Dir::Etc::sourceparts", &empty),
            opt("Dir::Etc::preferences", Path::new("/dev/null")),
            opt("Dir::Etc::preferencesparts", &empty),
            opt("Dir::State::lists", &dir.join("lists")),
            opt("Dir::State::status", Path::new("/dev/null")),
        ]
        .into_iter()
        .flatten()
        .collect();
        options.extend(["-o".to_string(), "Acquire::Languages=none".to_string()]);
        options.extend(binary_cache_options(&dir));
        Ok(Apt {
            options,
            private: Some(dir),
            sources: repo.sources.clone(),
        })
    }

    pub fn is_private(&self) -> bool {
        self.private.is_some()
    }

    /// Held while a build updates and reads a private state: a second
    /// kiln on the same sources waits here instead of failing on apt's
    /// own lock of `lists/` (or reading lists half replaced). The host's
    /// state is apt's to guard.
    pub fn lock(&self) -> Result<Option<Flock<std::fs::File>>, KernelError> {
        let Some(dir) = &self.private else {
            return Ok(None);
        };
        let path = dir.join("kiln.lock");
        let io = |source| KernelError::Io {
            action: "lock",
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map(Some)
            .map_err(|(_, errno)| io(errno.into()))
    }

    /// The folder of `kernels/` that maps package versions to trees: a
    /// private state's records are its own, as another archive may use
    /// the same name and version for other contents.
    pub fn records(&self, kernels: &Path) -> PathBuf {
        match &self.private {
            Some(dir) => kernels.join("by-version").join(
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            None => kernels.join("by-version"),
        }
    }

    /// This state's name in records of what apt answered: `host`, or the
    /// private state's digest.
    pub fn state_name(&self) -> String {
        match &self.private {
            Some(dir) => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            None => "host".to_string(),
        }
    }

    /// The stamps of every file apt's answers depend on.
    pub fn state_stamps(&self) -> crate::stamp::StampSet {
        let etc = Path::new("/etc/apt");
        match &self.private {
            Some(dir) => {
                super::resolved::apt_state(&dir.join("lists"), etc, &[dir.join("sources.list")])
            }
            None => super::resolved::apt_state(Path::new(&host_lists_dir()), etc, &[]),
        }
    }

    /// True when this state has no package index at all (a fresh private
    /// state, or a container whose lists were never fetched).
    pub fn has_no_lists(&self) -> bool {
        let lists = match &self.private {
            Some(dir) => dir.join("lists"),
            None => PathBuf::from(host_lists_dir()),
        };
        std::fs::read_dir(lists).map_or(true, |dir| {
            !dir.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    /// `apt-get update`; `after` is what made it necessary, if anything.
    pub fn update(&self, after: Option<KernelError>) -> Result<(), KernelError> {
        let label = match self.private {
            Some(_) => format!("Updating apt lists of {}", self.sources.join("; ")),
            None => "Updating apt package lists".to_string(),
        };
        let task = crate::progress::Task::step(label);
        let out = self.run("apt-get", &["update"], None)?;
        // apt-get update succeeds with only warnings when a source is
        // unreachable; a state that still has no lists is a failure too.
        if !out.status.success() || (self.is_private() && self.has_no_lists()) {
            return Err(match (after, self.is_private()) {
                (Some(e), false) => KernelError::AptFailed {
                    command: "apt-get update".into(),
                    output: output_text(&out),
                    after: Box::new(e),
                },
                _ => KernelError::AptUpdateFailed {
                    sources: self.sources.join("\n"),
                    output: output_text(&out),
                },
            });
        }
        task.finish("done");
        Ok(())
    }

    /// The stanza of `spec` (`name` for the candidate version, or
    /// `name=version`) from `apt-cache show`.
    pub fn show(&self, spec: &str) -> Result<BTreeMap<String, String>, KernelError> {
        let out = self.run("apt-cache", &["show", "--no-all-versions", spec], None)?;
        let stanza = parse_stanza(&String::from_utf8_lossy(&out.stdout));
        if out.status.success() && stanza.contains_key("Package") {
            return Ok(stanza);
        }
        let package = spec.split('=').next().unwrap_or(spec).to_string();
        if self.has_no_lists() && !self.is_private() {
            Err(KernelError::AptNoLists)
        } else if self.is_private() {
            Err(KernelError::NotInSources {
                package,
                sources: self.sources.join("\n"),
            })
        } else {
            Err(KernelError::PackageNotFound { package })
        }
    }

    /// Runs an apt tool with this state's options, a stable locale, and
    /// its output captured.
    pub fn run(
        &self,
        tool: &'static str,
        args: &[&str],
        cwd: Option<&Path>,
    ) -> Result<Output, KernelError> {
        let mut all: Vec<&str> = self.options.iter().map(String::as_str).collect();
        all.extend(args);
        run(tool, &all, cwd)
    }
}

/// Hex SHA-256 of the source lines and the keyring: the state's name.
fn state_digest(sources: &[String], keyring: Option<&[u8]>) -> String {
    let mut h = Sha256::new();
    for s in sources {
        h.update(s.trim().as_bytes());
        h.update(b"\n");
    }
    h.update(b"\0keyring\0");
    if let Some(k) = keyring {
        h.update(k);
    }
    super::debian::hex(&h.finalize())
}

/// Writes `bytes` to `path` (atomically) unless it holds them already, so
/// apt sees an unchanged file as unchanged. World-readable: apt run as
/// root reads the keyring as its sandbox user `_apt`.
fn write_if_changed(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).is_ok_and(|b| b == bytes) {
        return Ok(());
    }
    let mut tmp = crate::atomic::temp_file_beside(path)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// apt's binary cache of its package lists makes a lookup about ten times
/// faster (0.1 s instead of 1.4 s here); container images often switch it
/// off (`Dir::Cache::pkgcache ""`). Keep one per apt state in `dir`: apt
/// checks it against the lists and rebuilds it when they change.
fn binary_cache_options(dir: &Path) -> Vec<String> {
    if std::fs::create_dir_all(dir).is_err() {
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
///
/// Hand-written, re-checked against `deb822-lossless` (0.5) and
/// `debian-control`: those are lossless editing parsers on rowan (they keep
/// comments and whitespace so a control file can be rewritten), with regex
/// and serde behind them. kiln reads one stanza of `apt-cache show`'s
/// normalized output into a map (Package, Version, Depends, SHA256) and
/// never writes deb822; these lines do that and are fuzzed
/// (fuzz/fuzz_targets/apt.rs), so the dependency would buy nothing.
pub fn parse_stanza(text: &str) -> BTreeMap<String, String> {
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

/// The host's `Dir::State::lists`.
fn host_lists_dir() -> String {
    run("apt-config", &["shell", "D", "Dir::State::lists/d"], None)
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
        .unwrap_or_else(|| "/var/lib/apt/lists/".into())
}

/// Runs an apt tool with a stable locale, capturing its output.
pub(super) fn run(
    tool: &'static str,
    args: &[&str],
    cwd: Option<&Path>,
) -> Result<Output, KernelError> {
    let mut cmd = Command::new(tool);
    cmd.args(args).env("LC_ALL", "C");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    crate::progress::command(&cmd);
    cmd.output().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => KernelError::AptMissing { tool, source },
        _ => KernelError::Io {
            action: "run",
            path: PathBuf::from(tool),
            source,
        },
    })
}

pub(super) fn output_text(out: &Output) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_lines_are_checked() {
        assert!(
            check_source_line("deb http://archive.ubuntu.com/ubuntu noble-updates main").is_ok()
        );
        assert!(check_source_line(
            "deb [arch=amd64] https://deb.debian.org/debian sid main contrib"
        )
        .is_ok());
        assert!(check_source_line("deb http://example.org/repo ./").is_ok());
        let err = |l: &str| check_source_line(l).unwrap_err();
        assert!(err("deb-src http://x/ noble main").contains("starting with \"deb \""));
        assert!(err("deb http://x/ noble").contains("at least one component"));
        assert!(err("deb http://x/").contains("a URI and a suite"));
        assert!(err("deb noble main x").contains("not a URI"));
        assert!(err("deb [arch=amd64 http://x/ noble main").contains("not closed"));
        assert!(err("deb [signed-by=/k.gpg] http://x/ noble main").contains("keyring"));
    }

    #[test]
    fn keyring_goes_into_the_options() {
        let l = SourceLine::parse("deb  [arch=amd64]  http://x/u  noble main universe").unwrap();
        assert_eq!(
            l.with_keyring(Some(Path::new("/c/keyring.gpg"))),
            "deb [arch=amd64 signed-by=/c/keyring.gpg] http://x/u noble main universe"
        );
        let l = SourceLine::parse("deb http://x/u noble main").unwrap();
        assert_eq!(l.with_keyring(None), "deb http://x/u noble main");
        assert!(check_keyring_name(Path::new("k/ubuntu.asc")).is_ok());
        assert!(check_keyring_name(Path::new("k/ubuntu.pgp"))
            .unwrap_err()
            .contains(".gpg or .asc"));
    }

    #[test]
    fn one_build_at_a_time_holds_a_private_state() {
        let dir = tempfile::tempdir().unwrap();
        let repo = AptRepo {
            sources: vec!["deb http://x/u noble main".into()],
            keyring: None,
        };
        let a = Apt::private(&dir.path().join("cache"), &repo).unwrap();
        let held = a.lock().unwrap().expect("a private state locks");
        let path = a.private.clone().unwrap().join("kiln.lock");
        let try_other = || {
            let file = std::fs::File::open(&path).unwrap();
            Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok()
        };
        assert!(!try_other(), "a second build must wait");
        drop(held);
        assert!(try_other(), "free once the first is done");
        assert!(Apt::host(dir.path()).lock().unwrap().is_none());
    }

    #[test]
    fn private_state_is_named_by_sources_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.gpg");
        std::fs::write(&key, b"key one").unwrap();
        let repo = AptRepo {
            sources: vec!["deb http://x/u noble main".into()],
            keyring: Some(key.clone()),
        };
        let cache = dir.path().join("cache");
        let a = Apt::private(&cache, &repo).unwrap();
        let state = a.private.clone().unwrap();
        assert!(state.starts_with(cache.join("apt/repos")));
        let list = std::fs::read_to_string(state.join("sources.list")).unwrap();
        assert_eq!(
            list,
            format!(
                "deb [signed-by={}] http://x/u noble main\n",
                state.join("keyring.gpg").display()
            )
        );
        assert_eq!(
            std::fs::read(state.join("keyring.gpg")).unwrap(),
            b"key one"
        );
        assert!(a.has_no_lists());
        let joined = a.options.join(" ");
        assert!(joined.contains(&format!(
            "Dir::State::lists={}",
            state.join("lists").display()
        )));
        assert!(joined.contains(&format!(
            "Dir::Cache::pkgcache={}",
            state.join("pkgcache.bin").display()
        )));
        // Same inputs, same state; another key, another state.
        assert_eq!(
            Apt::private(&cache, &repo).unwrap().private,
            Some(state.clone())
        );
        std::fs::write(&key, b"key two").unwrap();
        assert_ne!(
            Apt::private(&cache, &repo).unwrap().private,
            Some(state.clone())
        );
        // Records of different states never mix.
        let k = Path::new("/c/kernels");
        assert_ne!(a.records(k), Apt::host(dir.path()).records(k));
        assert_eq!(Apt::host(dir.path()).records(k), k.join("by-version"));
        // Packages in lists make them non-empty.
        std::fs::write(
            state.join("lists/x_dists_noble_main_binary-amd64_Packages"),
            "",
        )
        .unwrap();
        assert!(!a.has_no_lists());
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
}
