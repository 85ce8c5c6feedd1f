//! Knowing that a `cargo:` payload (or the runtime) is up to date without
//! running cargo. Asking cargo costs a process, its lock and reading every
//! fingerprint: a tenth of a second and more per payload, most of an
//! unchanged rebuild.
//!
//! After each successful `cargo build`, kiln records what that build read,
//! as [`StampSet`] (stat results, no hashing), in
//! `<cache>/cargo/<key>.json`, the key being a digest of everything on the
//! command line and in the environment that cargo would see: the package,
//! the workspace, the profile, the `--config` kiln passes, kiln's version and
//! every `CARGO*`/`RUST*` variable. What it read:
//!
//! - every source file cargo's dep-info (`<exe>.d`) lists, with the build
//!   scripts' `rerun-if-changed` files, and the folder of each (a new file
//!   such as a `build.rs` or `src/bin/x.rs` changes its folder);
//! - the `Cargo.toml` of every package built and its folder, the
//!   workspace's `Cargo.toml` and `Cargo.lock`;
//! - cargo configuration (`.cargo/config{,.toml}` in the workspace and above
//!   it, and in `$CARGO_HOME`) and toolchain pins (`rust-toolchain{,.toml}`);
//! - the toolchain: the `cargo` that would run and the `rustc` on PATH or in
//!   `$RUSTC`, and with rustup its settings and every installed toolchain's
//!   `cargo` and `rustc` (an update replaces them);
//! - the executable itself, so a build by hand with other flags is noticed.
//!
//! The next build is fresh only when every one of those still has its
//! stamp; anything else (a changed, new or removed file, another toolchain,
//! an unreadable record, a relative path in the dep-info) runs cargo as
//! before. A build whose inputs changed within [`SETTLE`] of its start is
//! not recorded, so an edit made while cargo ran is never taken for built.
//!
//! [`SETTLE`]: crate::stamp::SETTLE

use crate::stamp::{Stamp, StampSet};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Where the records live under the cache directory.
pub const DIR: &str = "cargo";

/// One `cargo build` kiln runs.
#[derive(Debug, Clone)]
pub struct CargoBuild<'a> {
    pub package: &'a str,
    /// Where cargo runs (the payload's workspace).
    pub workspace: &'a Path,
    pub profile: &'a str,
    /// The `--config` argument kiln passes.
    pub config: &'a str,
}

/// What a record holds.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    exe: PathBuf,
    inputs: StampSet,
}

impl CargoBuild<'_> {
    /// The record's file: a digest of everything cargo is told.
    pub fn record_path(&self, cache_dir: &Path) -> PathBuf {
        self.record_path_for(cache_dir, &build_env())
    }

    fn record_path_for(&self, cache_dir: &Path, env: &[(String, String)]) -> PathBuf {
        let mut key = format!(
            "kiln {}\npackage {}\nworkspace {}\nprofile {}\nconfig {}\n",
            env!("CARGO_PKG_VERSION"),
            self.package,
            self.workspace.display(),
            self.profile,
            self.config
        );
        for (k, v) in env {
            key.push_str(&format!("env {k}={v}\n"));
        }
        cache_dir.join(DIR).join(format!(
            "{}.json",
            crate::manifest::sha256_bytes(key.as_bytes())
        ))
    }

    /// The executable of the last build, when nothing it was built from
    /// has changed since.
    pub fn fresh(&self, cache_dir: &Path) -> Option<PathBuf> {
        let bytes = std::fs::read(self.record_path(cache_dir)).ok()?;
        let record: Record = serde_json::from_slice(&bytes).ok()?;
        record.inputs.unchanged().then_some(record.exe)
    }

    /// Records what the build that made `exe` read; `manifests` are the
    /// `Cargo.toml` of every package cargo reported, `started` when cargo
    /// was started. Best effort: without a record the next build runs cargo.
    pub fn remember(
        &self,
        cache_dir: &Path,
        exe: &Path,
        manifests: &[PathBuf],
        started: SystemTime,
    ) {
        self.remember_with(cache_dir, exe, manifests, toolchain_files(), started);
    }

    fn remember_with(
        &self,
        cache_dir: &Path,
        exe: &Path,
        manifests: &[PathBuf],
        toolchain: Vec<PathBuf>,
        started: SystemTime,
    ) {
        let Some(mut inputs) = self.inputs(exe, manifests) else {
            return;
        };
        inputs.extend(toolchain);
        let read = StampSet::take(inputs);
        // Something edited while cargo ran may not be in the executable.
        if !read.settled(started) {
            return;
        }
        let mut all = read.0;
        all.push((exe.to_path_buf(), Stamp::of(exe)));
        let record = Record {
            exe: exe.to_path_buf(),
            inputs: StampSet(all),
        };
        let path = self.record_path(cache_dir);
        let write = || -> std::io::Result<()> {
            let json = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
            let mut tmp = crate::atomic::temp_file_beside(&path)?;
            std::io::Write::write_all(&mut tmp, &json)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        let _ = write();
    }

    /// Every path whose change could change the executable; `None` when
    /// that cannot be known (no dep-info, a relative path in it).
    fn inputs(&self, exe: &Path, manifests: &[PathBuf]) -> Option<Vec<PathBuf>> {
        let mut dep_info = exe.as_os_str().to_owned();
        dep_info.push(".d");
        let text = std::fs::read_to_string(PathBuf::from(dep_info)).ok()?;
        let sources = dep_info_sources(&text)?;
        let mut paths: Vec<PathBuf> = Vec::new();
        for p in sources.iter().chain(manifests) {
            if !p.is_absolute() {
                return None;
            }
            paths.push(p.clone());
            if let Some(dir) = p.parent() {
                paths.push(dir.to_path_buf());
            }
        }
        for dir in self.workspace.ancestors() {
            for name in [
                ".cargo/config.toml",
                ".cargo/config",
                "rust-toolchain.toml",
                "rust-toolchain",
            ] {
                paths.push(dir.join(name));
            }
        }
        for name in ["Cargo.toml", "Cargo.lock"] {
            paths.push(self.workspace.join(name));
        }
        Some(paths)
    }
}

/// The environment cargo and rustc read that kiln does not set: every
/// `CARGO*` and `RUST*` variable, sorted. `CARGO_MAKEFLAGS` (a jobserver's
/// descriptors) changes nothing built.
fn build_env() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .filter(|(k, _)| {
            (k.starts_with("CARGO") || k.starts_with("RUST")) && k != "CARGO_MAKEFLAGS"
        })
        .collect();
    vars.sort();
    vars
}

/// The files that name the toolchain: the cargo and rustc that would run,
/// rustup's settings and each installed toolchain's cargo and rustc.
fn toolchain_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| on_path("cargo"));
    let rustc = std::env::var_os("RUSTC")
        .map(PathBuf::from)
        .or_else(|| on_path("rustc"));
    for tool in [cargo, rustc].into_iter().flatten() {
        files.push(tool.clone());
        if let Ok(real) = std::fs::canonicalize(&tool) {
            files.push(real);
        }
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".cargo")));
    if let Some(home) = cargo_home {
        files.push(home.join("config.toml"));
        files.push(home.join("config"));
    }
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".rustup")));
    if let Some(home) = rustup_home {
        files.push(home.join("settings.toml"));
        let toolchains = home.join("toolchains");
        if let Ok(entries) = std::fs::read_dir(&toolchains) {
            for e in entries.flatten() {
                files.push(e.path().join("bin/cargo"));
                files.push(e.path().join("bin/rustc"));
            }
        }
        files.push(toolchains);
    }
    files
}

/// The first `name` in a directory of `$PATH`, as a shell would find it.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The prerequisites of every rule in a Makefile-style dep-info file, as
/// cargo writes it (`target: dep dep ...`, a space in a path escaped as
/// `\ `). `None` when it names none.
fn dep_info_sources(text: &str) -> Option<Vec<PathBuf>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((_, deps)) = split_rule(line) else {
            continue;
        };
        let mut cur = String::new();
        let mut chars = deps.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(n) => cur.push(n),
                    None => cur.push('\\'),
                },
                ' ' | '\t' => {
                    if !cur.is_empty() {
                        out.push(PathBuf::from(std::mem::take(&mut cur)));
                    }
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            out.push(PathBuf::from(cur));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `target: deps` at the first `:` followed by a space or the end (a
/// target path never holds one: cargo escapes nothing else).
fn split_rule(line: &str) -> Option<(&str, &str)> {
    let bytes = line.as_bytes();
    let at = (0..bytes.len()).find(|&i| {
        bytes[i] == b':'
            && (i == 0 || bytes[i - 1] != b'\\')
            && bytes.get(i + 1).is_none_or(|b| *b == b' ' || *b == b'\t')
    })?;
    Some((&line[..at], &line[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reads_cargo_dep_info() {
        let text =
            "/t/guest/kiln-hello: /w/src/main.rs /w/a\\ b.rs /w/build.rs\n\n/w/src/main.rs:\n";
        assert_eq!(
            dep_info_sources(text).unwrap(),
            [
                PathBuf::from("/w/src/main.rs"),
                PathBuf::from("/w/a b.rs"),
                PathBuf::from("/w/build.rs")
            ]
        );
        assert_eq!(dep_info_sources("/t/x:\n"), None);
    }

    /// A payload workspace with one source file and a built executable
    /// with its dep-info, all settled well before "now".
    struct Fixture {
        _dir: tempfile::TempDir,
        cache: PathBuf,
        ws: PathBuf,
        src: PathBuf,
        exe: PathBuf,
    }

    fn age(path: &Path) {
        crate::stamp::set_mtime(path, crate::stamp::SETTLE + Duration::from_secs(60));
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        let src = ws.join("src/main.rs");
        std::fs::create_dir_all(src.parent().unwrap()).unwrap();
        std::fs::write(ws.join("Cargo.toml"), "[package]\nname = \"g\"\n").unwrap();
        std::fs::write(ws.join("Cargo.lock"), "").unwrap();
        std::fs::write(&src, "fn main() {}\n").unwrap();
        let exe = ws.join("target/guest/g");
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        std::fs::write(&exe, b"\x7fELF").unwrap();
        std::fs::write(
            ws.join("target/guest/g.d"),
            format!("{}: {}\n", exe.display(), src.display()),
        )
        .unwrap();
        for p in [
            ws.join("Cargo.toml"),
            ws.join("Cargo.lock"),
            src.clone(),
            src.parent().unwrap().to_path_buf(),
            ws.clone(),
        ] {
            age(&p);
        }
        Fixture {
            cache: dir.path().join("cache"),
            _dir: dir,
            ws,
            src,
            exe,
        }
    }

    fn build(f: &Fixture) -> CargoBuild<'_> {
        CargoBuild {
            package: "g",
            workspace: &f.ws,
            profile: "guest",
            config: "x",
        }
    }

    #[test]
    fn an_unchanged_payload_is_fresh_and_a_changed_source_is_stale() {
        let f = fixture();
        let b = build(&f);
        assert_eq!(b.fresh(&f.cache), None, "nothing recorded yet");
        b.remember(
            &f.cache,
            &f.exe,
            &[f.ws.join("Cargo.toml")],
            SystemTime::now(),
        );
        assert_eq!(b.fresh(&f.cache), Some(f.exe.clone()));
        // Another profile or config is another build.
        let other = CargoBuild {
            profile: "release",
            ..b.clone()
        };
        assert_eq!(other.fresh(&f.cache), None);
        // The source is edited (same size, so only its time tells).
        std::fs::write(&f.src, "fn main(){ }\n").unwrap();
        assert_eq!(b.fresh(&f.cache), None, "a changed source must rebuild");
    }

    #[test]
    fn a_new_file_beside_the_sources_or_a_rebuilt_executable_is_stale() {
        let f = fixture();
        let b = build(&f);
        b.remember(
            &f.cache,
            &f.exe,
            &[f.ws.join("Cargo.toml")],
            SystemTime::now(),
        );
        assert!(b.fresh(&f.cache).is_some());
        std::fs::write(f.ws.join("build.rs"), "fn main() {}\n").unwrap();
        assert_eq!(b.fresh(&f.cache), None, "a build script appeared");

        let f = fixture();
        let b = build(&f);
        b.remember(&f.cache, &f.exe, &[], SystemTime::now());
        assert!(b.fresh(&f.cache).is_some());
        std::fs::remove_file(&f.exe).unwrap();
        std::fs::write(&f.exe, b"\x7fELF other").unwrap();
        assert_eq!(
            b.fresh(&f.cache),
            None,
            "the executable was rebuilt by hand"
        );
    }

    #[test]
    fn a_toolchain_change_is_stale() {
        let f = fixture();
        let b = build(&f);
        // A rustup home of our own, as toolchain_files() lists one.
        let rustc = f.ws.join("rustup/toolchains/stable/bin/rustc");
        std::fs::create_dir_all(rustc.parent().unwrap()).unwrap();
        std::fs::write(&rustc, b"rustc 1.0").unwrap();
        age(&rustc);
        let toolchain = vec![rustc.clone(), f.ws.join("rustup/settings.toml")];
        b.remember_with(&f.cache, &f.exe, &[], toolchain, SystemTime::now());
        assert!(b.fresh(&f.cache).is_some());
        // An update replaces the compiler.
        std::fs::remove_file(&rustc).unwrap();
        std::fs::write(&rustc, b"rustc 2.0").unwrap();
        assert_eq!(b.fresh(&f.cache), None, "a new toolchain must rebuild");
    }

    #[test]
    fn the_real_toolchain_is_found_and_its_variables_are_in_the_key() {
        // This machine builds with cargo, so a build finds it.
        assert!(toolchain_files()
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n == "cargo") && p.is_file()));
        let f = fixture();
        let b = build(&f);
        let env = |v: &str| vec![("RUSTUP_TOOLCHAIN".to_string(), v.to_string())];
        assert_ne!(
            b.record_path_for(&f.cache, &env("stable")),
            b.record_path_for(&f.cache, &env("nightly"))
        );
        assert_eq!(
            b.record_path_for(&f.cache, &env("stable")),
            b.record_path_for(&f.cache, &env("stable"))
        );
    }

    #[test]
    fn a_build_whose_inputs_moved_while_it_ran_is_not_recorded() {
        let f = fixture();
        let b = build(&f);
        // The source was written after cargo started: it may not be in the
        // executable.
        std::fs::write(&f.src, "fn main() { }\n").unwrap();
        let started = SystemTime::now() - Duration::from_secs(1);
        b.remember(&f.cache, &f.exe, &[], started);
        assert_eq!(b.fresh(&f.cache), None);
    }
}
