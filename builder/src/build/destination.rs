//! Where a build's output goes: kiln replaces an output directory only when
//! it can tell kiln wrote it, swaps the new one in atomically, and cleans up
//! what interrupted builds left beside it.
//!
//! While a build of `DIR` runs, beside it sits its work directory
//! `.DIR.kiln-XXXXXX/` (a unique name), holding `.kiln-build` (the marker,
//! locked with flock(2) by the build for its whole life) and `out/` (the new
//! output). Once `out/` is complete, one renameat2(RENAME_EXCHANGE) swaps it
//! with `DIR`, so `DIR` is at every instant the complete old or the complete
//! new output; the old one, now at `out/`, goes with the work directory.
//!
//! A work directory whose marker no running build holds was left by an
//! interrupted build (the kernel drops a dead process's locks): the next
//! build of `DIR` deletes it. kiln deletes nothing else it finds beside `DIR`
//! except a `.DIR.old` that is a kiln output (what earlier kiln versions left
//! when interrupted between their two renames).

use super::kill_point;
use nix::errno::Errno;
use nix::fcntl::{renameat2, Flock, FlockArg, RenameFlags, AT_FDCWD};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

/// The marker file in a work directory.
const MARKER: &str = ".kiln-build";
/// The marker's text: what it is, for whoever finds one.
const MARKER_TEXT: &str = "kiln build work directory; the next `kiln build` of the same output deletes it once no build holds this file\n";
/// Where the new output is built inside the work directory.
const NEW: &str = "out";
/// Where the non-atomic fallback puts the old output aside.
const ASIDE: &str = "old";

/// What a build may replace at its output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replace {
    /// Only an empty directory or a kiln output: `manifest.json` written by
    /// kiln, and nothing but the files it lists.
    #[default]
    KilnOutput,
    /// Any directory (`kiln build --force`).
    AnyDirectory,
}

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("{} is not a kiln output ({reason}), so kiln will not replace it; give another output directory with -o, or pass --force to replace it", dir.display())]
    NotKilnOutput { dir: PathBuf, reason: String },
    #[error("{} is a file, not a directory; give another output directory with -o", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("{} is a symbolic link; give the directory it points to, or another output directory, with -o", dir.display())]
    Symlink { dir: PathBuf },
    #[error("{} is or holds the working directory, which kiln will not replace; give an output directory below it with -o, such as out/<name>", dir.display())]
    HoldsWorkingDir { dir: PathBuf },
    #[error("{} is or holds the image's folder {}, which kiln will not replace; give an output directory outside it with -o, such as out/<name>", dir.display(), image_dir.display())]
    HoldsImage { dir: PathBuf, image_dir: PathBuf },
    #[error("{} does not name a directory; give an output directory with -o, such as out/<name>", dir.display())]
    NoName { dir: PathBuf },
    #[error("{} appeared while kiln was building; build again to replace it", dir.display())]
    Appeared { dir: PathBuf },
    #[error("Cannot {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DestinationError {
    let what = what.into();
    move |source| DestinationError::Io { what, source }
}

fn errno_err(what: impl Into<String>) -> impl FnOnce(Errno) -> DestinationError {
    let what = what.into();
    move |e| DestinationError::Io {
        what,
        source: io::Error::from(e),
    }
}

/// A build's claim on its output path, with the work directory the output
/// is written into. Dropped without [`Destination::commit`] (an error), the
/// work directory is deleted and the output path left as it was.
pub(super) struct Destination {
    out: PathBuf,
    image_dir: PathBuf,
    replace: Replace,
    work: WorkDir,
}

impl Destination {
    /// Checks that `out` may be replaced, deletes what interrupted builds of
    /// it left, and creates this build's work directory beside it.
    pub(super) fn prepare(
        out: &Path,
        image_dir: &Path,
        replace: Replace,
    ) -> Result<Destination, DestinationError> {
        check(out, image_dir, replace)?;
        let (parent, name) = parent_and_name(out)?;
        fs::create_dir_all(&parent).map_err(io_err(format!("create {}", parent.display())))?;
        clean_stale(out, &parent, &name);
        let work = WorkDir::create(&parent, &name)?;
        Ok(Destination {
            out: out.to_path_buf(),
            image_dir: image_dir.to_path_buf(),
            replace,
            work,
        })
    }

    /// The directory to write the new output into.
    pub(super) fn dir(&self) -> PathBuf {
        self.work.path.join(NEW)
    }

    /// Puts the finished output at the output path, atomically replacing
    /// what is there, then deletes the work directory with the old output.
    pub(super) fn commit(self) -> Result<(), DestinationError> {
        // The build took a while: what is at the output path now counts.
        check(&self.out, &self.image_dir, self.replace)?;
        swap(&self.work.path, &self.out)
        // Dropping `self` deletes the work directory, now holding the old output.
    }
}

/// Puts `work/out` at `out`: with renameat2(RENAME_EXCHANGE) when `out`
/// exists, on a file system without it (e.g. NFS) with [`swap_by_renames`].
fn swap(work: &Path, out: &Path) -> Result<(), DestinationError> {
    let new = work.join(NEW);
    let what = || format!("move the new output to {}", out.display());
    let exists = match fs::symlink_metadata(out) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(format!("read {}", out.display()))(e)),
    };
    if !exists {
        return match renameat2(AT_FDCWD, &new, AT_FDCWD, out, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => Err(DestinationError::Appeared {
                dir: out.to_path_buf(),
            }),
            Err(Errno::EINVAL | Errno::ENOSYS) => fs::rename(&new, out).map_err(io_err(what())),
            Err(e) => Err(errno_err(what())(e)),
        };
    }
    match renameat2(AT_FDCWD, &new, AT_FDCWD, out, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => {
            kill_point("exchanged");
            Ok(())
        }
        Err(Errno::EINVAL | Errno::ENOSYS) => swap_by_renames(work, out),
        Err(e) => Err(errno_err(what())(e)),
    }
}

/// Two renames: the old output into the work directory, the new one into
/// place. An interrupt between them leaves `out` missing and the old output
/// in the work directory, which the next build puts back ([`reclaim`]).
fn swap_by_renames(work: &Path, out: &Path) -> Result<(), DestinationError> {
    let new = work.join(NEW);
    let what = || format!("move the new output to {}", out.display());
    let aside = work.join(ASIDE);
    fs::rename(out, &aside)
        .map_err(io_err(format!("move the previous {} aside", out.display())))?;
    kill_point("aside");
    if let Err(e) = fs::rename(&new, out) {
        // Best effort: put the old output back before reporting.
        let _ = fs::rename(&aside, out);
        return Err(io_err(what())(e));
    }
    kill_point("exchanged");
    Ok(())
}

/// The work directory of a running build, locked for its whole life.
struct WorkDir {
    path: PathBuf,
    /// Held, never read: a build that dies drops it with the process.
    _lock: Flock<File>,
}

impl WorkDir {
    fn create(parent: &Path, name: &str) -> Result<WorkDir, DestinationError> {
        let path = tempfile::Builder::new()
            .prefix(&format!(".{name}.kiln-"))
            .tempdir_in(parent)
            .map_err(io_err(format!(
                "create a work directory in {}",
                parent.display()
            )))?
            .keep();
        // The marker is locked before it gets its name, so no other build
        // ever sees it unlocked while this one runs.
        let pending = path.join(format!("{MARKER}.new"));
        let made = (|| {
            let file = File::create(&pending)?;
            let mut lock =
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
            lock.write_all(MARKER_TEXT.as_bytes())?;
            fs::rename(&pending, path.join(MARKER))?;
            fs::create_dir(path.join(NEW))?;
            Ok(lock)
        })();
        match made {
            Ok(lock) => {
                kill_point("prepared");
                Ok(WorkDir { path, _lock: lock })
            }
            Err(e) => {
                let _ = fs::remove_file(&pending);
                let _ = fs::remove_file(path.join(MARKER));
                let _ = fs::remove_dir(&path);
                Err(io_err(format!("create {}", path.display()))(e))
            }
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        remove_work_dir(&self.path);
    }
}

/// Deletes a work directory, the marker last, so an interrupted deletion
/// still leaves a marked directory the next build can finish deleting.
fn remove_work_dir(path: &Path) {
    for sub in [NEW, ASIDE] {
        let _ = fs::remove_dir_all(path.join(sub));
    }
    let _ = fs::remove_file(path.join(MARKER));
    let _ = fs::remove_dir(path);
}

/// Deletes what interrupted builds of `out` left beside it: work
/// directories whose marker no running build holds (first putting back an
/// old output the fallback swap had moved aside, if `out` is missing), and
/// a `.DIR.old` kiln output from earlier kiln versions. Best effort: what cannot be
/// read or deleted stays.
fn clean_stale(out: &Path, parent: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let prefix = format!(".{name}.kiln-");
    for entry in entries.flatten() {
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && entry.file_name().to_string_lossy().starts_with(&prefix) {
            reclaim(&entry.path(), out);
        }
    }
    let legacy = parent.join(format!(".{name}.old"));
    let is_dir = fs::symlink_metadata(&legacy).is_ok_and(|m| m.is_dir());
    if is_dir && matches!(contents(&legacy), Ok(Contents::KilnOutput)) {
        if fs::symlink_metadata(out).is_err() && fs::rename(&legacy, out).is_ok() {
            crate::progress::note(format!(
                "put back {} from {} (left by an interrupted build)",
                out.display(),
                legacy.display()
            ));
        } else if fs::remove_dir_all(&legacy).is_ok() {
            crate::progress::note(format!(
                "removed {} (left by an interrupted build)",
                legacy.display()
            ));
        }
    }
}

/// Deletes the work directory `work` if it is kiln's (it holds the marker)
/// and stale (no build holds the marker's lock).
fn reclaim(work: &Path, out: &Path) {
    let marker = work.join(MARKER);
    if !fs::symlink_metadata(&marker).is_ok_and(|m| m.is_file()) {
        return;
    }
    let Ok(file) = File::open(&marker) else {
        return;
    };
    // Locked: a running build owns it.
    let Ok(_lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return;
    };
    let aside = work.join(ASIDE);
    if fs::symlink_metadata(out).is_err() && fs::rename(&aside, out).is_ok() {
        crate::progress::note(format!(
            "put back {} (an interrupted build had moved it aside)",
            out.display()
        ));
    }
    remove_work_dir(work);
    crate::progress::note(format!(
        "removed {} (left by an interrupted build)",
        work.display()
    ));
}

/// The folder `out` lives in (`.` for a bare name) and its own name.
fn parent_and_name(out: &Path) -> Result<(PathBuf, String), DestinationError> {
    let name = match out.components().next_back() {
        Some(Component::Normal(n)) => n.to_string_lossy().into_owned(),
        _ => {
            return Err(DestinationError::NoName {
                dir: out.to_path_buf(),
            })
        }
    };
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((parent.to_path_buf(), name))
}

/// Refuses an output path kiln must not replace (see [`Replace`]).
fn check(out: &Path, image_dir: &Path, replace: Replace) -> Result<(), DestinationError> {
    let dir = || out.to_path_buf();
    let meta = match fs::symlink_metadata(out) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(format!("read {}", out.display()))(e)),
    };
    match &meta {
        Some(m) if m.file_type().is_symlink() => {
            return Err(DestinationError::Symlink { dir: dir() })
        }
        Some(m) if !m.is_dir() => return Err(DestinationError::NotADirectory { dir: dir() }),
        _ => {}
    }
    let abs = absolute(out)?;
    let cwd = std::env::current_dir().and_then(fs::canonicalize);
    if cwd.is_ok_and(|cwd| cwd.starts_with(&abs)) {
        return Err(DestinationError::HoldsWorkingDir { dir: dir() });
    }
    if let Ok(image) = fs::canonicalize(image_dir) {
        if image.starts_with(&abs) {
            return Err(DestinationError::HoldsImage {
                dir: dir(),
                image_dir: image_dir.to_path_buf(),
            });
        }
    }
    if meta.is_none() || replace == Replace::AnyDirectory {
        return Ok(());
    }
    match contents(out).map_err(io_err(format!("read {}", out.display())))? {
        Contents::Empty | Contents::KilnOutput => Ok(()),
        Contents::Foreign(reason) => Err(DestinationError::NotKilnOutput { dir: dir(), reason }),
    }
}

/// `out` as an absolute path with symbolic links resolved: the existing
/// part canonicalized, the rest (not there yet) appended.
fn absolute(out: &Path) -> Result<PathBuf, DestinationError> {
    let abs = std::path::absolute(out).map_err(io_err(format!("resolve {}", out.display())))?;
    let mut missing = Vec::new();
    let mut existing = abs.as_path();
    loop {
        match fs::canonicalize(existing) {
            Ok(mut resolved) => {
                for part in missing.iter().rev() {
                    resolved.push(part);
                }
                return Ok(resolved);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match (existing.file_name(), existing.parent()) {
                    (Some(name), Some(parent)) => {
                        missing.push(name.to_os_string());
                        existing = parent;
                    }
                    _ => {
                        return Err(DestinationError::NoName {
                            dir: out.to_path_buf(),
                        })
                    }
                }
            }
            Err(e) => return Err(io_err(format!("resolve {}", out.display()))(e)),
        }
    }
}

/// What an existing output directory holds.
#[derive(Debug, PartialEq, Eq)]
enum Contents {
    Empty,
    /// `manifest.json` written by kiln and only the files it lists (and
    /// the console log `kiln test` keeps there).
    KilnOutput,
    /// Anything else; why, for the error.
    Foreign(String),
}

fn contents(dir: &Path) -> io::Result<Contents> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    if names.is_empty() {
        return Ok(Contents::Empty);
    }
    let manifest = dir.join("manifest.json");
    if !fs::symlink_metadata(&manifest).is_ok_and(|m| m.is_file()) {
        return Ok(Contents::Foreign("it has no manifest.json".into()));
    }
    let text = fs::read(&manifest)?;
    let Some(listed) = kiln_artifacts(&text) else {
        return Ok(Contents::Foreign(
            "its manifest.json was not written by kiln".into(),
        ));
    };
    names.sort();
    // `kiln test` keeps an image's console beside its files: still kiln's.
    match names
        .iter()
        .find(|n| *n != "manifest.json" && *n != crate::harness::CONSOLE_LOG && !listed.contains(n))
    {
        Some(other) => Ok(Contents::Foreign(format!(
            "it holds {other}, which kiln did not write"
        ))),
        None => Ok(Contents::KilnOutput),
    }
}

/// The artifact file names of a manifest kiln wrote, or `None` when the
/// text is not one (no `kiln_version`, no `artifacts` list of files).
fn kiln_artifacts(text: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(text).ok()?;
    v.get("kiln_version")?.as_str()?;
    v.get("artifacts")?
        .as_array()?
        .iter()
        .map(|a| a.get("file")?.as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"{"name":"t","kiln_version":"0.1.0","artifacts":[{"file":"vmlinuz","size":1,"sha256":"x"},{"file":"cmdline","size":1,"sha256":"y"}]}"#;

    /// A kiln output with `tag` in its cmdline, to tell outputs apart.
    fn kiln_output(dir: &Path, tag: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("manifest.json"), MANIFEST).unwrap();
        fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
        fs::write(dir.join("cmdline"), tag).unwrap();
    }

    fn tag(dir: &Path) -> String {
        fs::read_to_string(dir.join("cmdline")).unwrap()
    }

    /// The entries beside `out` other than `out`.
    fn beside(out: &Path) -> Vec<String> {
        let name = out.file_name().unwrap().to_string_lossy().into_owned();
        let mut v: Vec<String> = fs::read_dir(out.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| *n != name)
            .collect();
        v.sort();
        v
    }

    fn build(
        out: &Path,
        image: &Path,
        replace: Replace,
        tag_: &str,
    ) -> Result<(), DestinationError> {
        let d = Destination::prepare(out, image, replace)?;
        kiln_output(&d.dir(), tag_);
        d.commit()
    }

    #[test]
    fn a_kiln_output_is_replaced_and_nothing_is_left_beside_it() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("o/hello");
        build(&out, t.path(), Replace::KilnOutput, "one").unwrap();
        assert_eq!(tag(&out), "one");
        build(&out, t.path(), Replace::KilnOutput, "two").unwrap();
        assert_eq!(tag(&out), "two");
        assert_eq!(beside(&out), Vec::<String>::new());
        // An empty directory holds nothing to lose.
        let empty = t.path().join("o/empty");
        fs::create_dir(&empty).unwrap();
        build(&empty, t.path(), Replace::KilnOutput, "e").unwrap();
        assert_eq!(tag(&empty), "e");
    }

    #[test]
    fn what_kiln_did_not_write_is_refused_unless_forced() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("mine");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("thesis.tex"), b"years of work").unwrap();
        let e = build(&out, t.path(), Replace::KilnOutput, "x").unwrap_err();
        assert!(matches!(e, DestinationError::NotKilnOutput { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&out.display().to_string())
                && msg.contains("no manifest.json")
                && msg.contains("--force"),
            "{msg}"
        );
        assert_eq!(fs::read(out.join("thesis.tex")).unwrap(), b"years of work");
        assert_eq!(
            beside(&out),
            Vec::<String>::new(),
            "refused before any work"
        );

        // A foreign manifest.json is not kiln's.
        fs::write(out.join("manifest.json"), br#"{"name":"web app"}"#).unwrap();
        let e = build(&out, t.path(), Replace::KilnOutput, "x").unwrap_err();
        assert!(e.to_string().contains("not written by kiln"), "{e}");

        // A kiln output with a file kiln did not write in it.
        let out2 = t.path().join("hello");
        kiln_output(&out2, "old");
        fs::write(out2.join("report.xml"), b"<junit/>").unwrap();
        let e = build(&out2, t.path(), Replace::KilnOutput, "x").unwrap_err();
        assert!(e.to_string().contains("it holds report.xml"), "{e}");
        assert_eq!(tag(&out2), "old");
        // The console `kiln test` kept there is kiln's: a second `kiln test
        // IMAGE.toml` rebuilds over it.
        fs::remove_file(out2.join("report.xml")).unwrap();
        fs::write(out2.join("test-console.log"), b"kiln: vm=hello").unwrap();
        build(&out2, t.path(), Replace::KilnOutput, "new").unwrap();
        assert_eq!(tag(&out2), "new");

        build(&out, t.path(), Replace::AnyDirectory, "forced").unwrap();
        assert_eq!(tag(&out), "forced");
        assert!(!out.join("thesis.tex").exists());
    }

    #[test]
    fn files_links_the_working_dir_and_the_image_folder_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("file");
        fs::write(&file, b"data").unwrap();
        for replace in [Replace::KilnOutput, Replace::AnyDirectory] {
            let e = build(&file, t.path(), replace, "x").unwrap_err();
            assert!(matches!(e, DestinationError::NotADirectory { .. }), "{e}");
        }
        assert_eq!(fs::read(&file).unwrap(), b"data");
        let target = t.path().join("real");
        kiln_output(&target, "real");
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = build(&link, t.path(), Replace::AnyDirectory, "x").unwrap_err();
        assert!(matches!(e, DestinationError::Symlink { .. }), "{e}");

        let images = t.path().join("proj/images");
        fs::create_dir_all(&images).unwrap();
        for out in [
            images.clone(),
            t.path().join("proj"),
            images.join(".."),
            t.path().to_path_buf(),
        ] {
            let e = build(&out, &images, Replace::AnyDirectory, "x").unwrap_err();
            assert!(
                matches!(e, DestinationError::HoldsImage { .. }),
                "{out:?}: {e}"
            );
        }
        for out in [".", "..", "/"] {
            let e = check(Path::new(out), t.path(), Replace::AnyDirectory).unwrap_err();
            assert!(
                matches!(e, DestinationError::HoldsWorkingDir { .. }),
                "{out}: {e}"
            );
        }
        assert!(images.is_dir());
    }

    /// What a build killed at some point leaves: a marked work directory
    /// whose lock died with the process, holding `out/` (and `old/`).
    fn dead_work_dir(out: &Path, id: &str) -> PathBuf {
        let name = out.file_name().unwrap().to_string_lossy();
        let work = out.with_file_name(format!(".{name}.kiln-{id}"));
        fs::create_dir_all(work.join(NEW)).unwrap();
        fs::write(work.join(MARKER), MARKER_TEXT).unwrap();
        fs::write(work.join(NEW).join("vmlinuz"), b"half").unwrap();
        work
    }

    #[test]
    fn a_dead_builds_work_dir_is_removed_a_live_ones_is_kept() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("hello");
        build(&out, t.path(), Replace::KilnOutput, "old").unwrap();
        let live = Destination::prepare(&out, t.path(), Replace::KilnOutput).unwrap();
        let dead = dead_work_dir(&out, "dead01");
        // After the exchange: the old output, a kiln output, in `out/`.
        let exchanged = dead_work_dir(&out, "dead02");
        kiln_output(&exchanged.join(NEW), "older");
        // Same prefix, no marker: not kiln's.
        let foreign = t.path().join(".hello.kiln-mine");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("notes"), b"keep").unwrap();
        // An earlier kiln, killed between its two renames.
        let legacy = t.path().join(".hello.old");
        kiln_output(&legacy, "legacy");

        build(&out, t.path(), Replace::KilnOutput, "new").unwrap();
        assert_eq!(tag(&out), "new");
        assert!(
            !dead.exists() && !exchanged.exists(),
            "dead builds' work dirs are removed"
        );
        assert!(!legacy.exists(), "the legacy old output is removed");
        assert!(
            live.work.path.join(MARKER).is_file(),
            "a live build is left alone"
        );
        assert_eq!(fs::read(foreign.join("notes")).unwrap(), b"keep");
        drop(live);
        assert_eq!(beside(&out), [".hello.kiln-mine"]);
    }

    #[test]
    fn an_output_moved_aside_by_an_interrupted_fallback_is_put_back() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("hello");
        build(&out, t.path(), Replace::KilnOutput, "old").unwrap();
        // The fallback swap, interrupted between its renames: DIR missing.
        let work = dead_work_dir(&out, "dead03");
        fs::rename(&out, work.join(ASIDE)).unwrap();
        // The next build puts the old output back before its own work, so
        // even a failing build leaves it.
        let next = Destination::prepare(&out, t.path(), Replace::KilnOutput).unwrap();
        assert_eq!(tag(&out), "old");
        assert!(!work.exists());
        drop(next);
        assert_eq!(tag(&out), "old");
        // The same for the legacy `.DIR.old`.
        let legacy = t.path().join(".hello.old");
        fs::rename(&out, &legacy).unwrap();
        drop(Destination::prepare(&out, t.path(), Replace::KilnOutput).unwrap());
        assert_eq!(tag(&out), "old");

        // The fallback itself, uninterrupted, replaces the output.
        let d = Destination::prepare(&out, t.path(), Replace::KilnOutput).unwrap();
        kiln_output(&d.dir(), "renamed");
        swap_by_renames(&d.work.path, &out).unwrap();
        drop(d);
        assert_eq!(tag(&out), "renamed");
        assert_eq!(beside(&out), Vec::<String>::new());
    }

    #[test]
    fn a_failed_build_leaves_the_output_and_no_work_dir() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("hello");
        build(&out, t.path(), Replace::KilnOutput, "old").unwrap();
        let d = Destination::prepare(&out, t.path(), Replace::KilnOutput).unwrap();
        fs::write(d.dir().join("vmlinuz"), b"half").unwrap();
        drop(d);
        assert_eq!(tag(&out), "old");
        assert_eq!(beside(&out), Vec::<String>::new());
        // A file put into the output meanwhile is caught at the swap.
        let d = Destination::prepare(&out, t.path(), Replace::KilnOutput).unwrap();
        kiln_output(&d.dir(), "new");
        fs::write(out.join("notes.txt"), b"mine").unwrap();
        let e = d.commit().unwrap_err();
        assert!(e.to_string().contains("notes.txt"), "{e}");
        assert_eq!(tag(&out), "old");
        assert_eq!(beside(&out), Vec::<String>::new());
    }
}
