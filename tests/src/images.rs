//! Kiln images in tests: written into a scratch folder inside the
//! workspace, built with `kiln build`, patched, and booted with `kiln run`
//! or judged with `kiln test`.
//!
//! Test helpers: they panic with a message that says what went wrong.

use crate::{kiln, root, run_kiln, run_with_timeout, Finished};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A fresh, empty folder `target/kiln-tests/<name>` of this workspace.
///
/// Inside the workspace, so image configs written there build `cargo:`
/// payloads (and the runtime) from this source tree, as the ones in
/// `images/` do. It is emptied at the start of each use and left in place
/// afterwards, so a failed test's images and consoles can be looked at.
pub fn scratch(name: &str) -> PathBuf {
    let dir = root().join("target/kiln-tests").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot empty {}: {e}", dir.display()));
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// Builds the image config `image` into `out` with `kiln build --json` and
/// returns its manifest.
pub fn build(image: &Path, out: &Path) -> serde_json::Value {
    build_in(&root(), image, out)
}

/// [`build`] with kiln started in `cwd`.
pub fn build_in(cwd: &Path, image: &Path, out: &Path) -> serde_json::Value {
    let o = run_kiln(
        cwd,
        &[
            "build",
            &image.to_string_lossy(),
            "-o",
            &out.to_string_lossy(),
            "--json",
        ],
    );
    assert!(
        o.status.success(),
        "kiln build {} failed:\n{}\n{}",
        image.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("kiln build --json prints the manifest")
}

/// Boots the built image `dir` with `kiln run` (the emulated target) until
/// it powers off, or kills it after `timeout`.
pub fn run(dir: &Path, timeout: Duration) -> Finished {
    let mut cmd = Command::new(kiln());
    cmd.args(["run", &dir.to_string_lossy()]);
    run_with_timeout(cmd, timeout)
}

/// What `kiln test` said and wrote.
#[derive(Debug)]
pub struct Tested {
    pub run: Finished,
    /// The JUnit report.
    pub junit: String,
    /// The raw console of the run.
    pub console: String,
}

impl Tested {
    /// kiln test's exit code (`None` when it was killed).
    pub fn code(&self) -> Option<i32> {
        self.run.code()
    }
}

/// Runs `kiln test DIR --junit <dir>/junit.xml` plus `extra` arguments,
/// bounded by `timeout`, and reads back the report and the console log.
pub fn test(dir: &Path, extra: &[&str], timeout: Duration) -> Tested {
    let junit = dir.with_extension("junit.xml");
    let mut cmd = Command::new(kiln());
    cmd.arg("test")
        .arg(dir)
        .arg("--junit")
        .arg(&junit)
        .args(extra);
    let run = run_with_timeout(cmd, timeout);
    assert!(!run.timed_out, "kiln test hung:\n{}", run.output);
    let read = |p: &Path| {
        std::fs::read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| panic!("kiln test wrote no {}: {e}\n{}", p.display(), run.output))
    };
    let report = read(&junit);
    let console = read(&PathBuf::from(format!("{}.console.log", junit.display())));
    Tested {
        run,
        junit: report,
        console,
    }
}

/// Copies the built image `from` to `to`, with the initramfs file `path`
/// (e.g. `etc/kiln/appliance.toml`) replaced by `edit` of its text. The
/// archive is read and written back with kiln's own cpio and compression
/// code, in the image's compression.
pub fn patch_initramfs(from: &Path, to: &Path, path: &str, edit: impl FnOnce(&str) -> String) {
    use kiln::cpio::{self, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
    std::fs::create_dir_all(to).expect("create the patched image folder");
    let mut initramfs = None;
    for entry in std::fs::read_dir(from).expect("read the image folder") {
        let entry = entry.expect("read the image folder");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("initramfs.cpio") {
            initramfs = Some(name);
        } else if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(&name)).expect("copy an image file");
        }
    }
    let name = initramfs.expect("the image has an initramfs.cpio.*");
    let file = std::fs::File::open(from.join(&name)).expect("open the initramfs");
    let (compression, reader) = kiln::compress::decoder(file).expect("a known compression");
    let entries = cpio::read_with_data(reader).expect("the initramfs is a newc archive");

    let mut archive = cpio::Archive::new();
    let mut edit = Some(edit);
    for (e, data) in entries {
        let perm = e.mode & 0o7777;
        match e.mode & S_IFMT {
            S_IFDIR => archive.add_dir(&e.path, perm),
            S_IFLNK => archive.add_symlink(&e.path, e.link_target.as_deref().unwrap_or("")),
            S_IFCHR => {
                let (major, minor) = e.rdev.unwrap_or_default();
                archive.add_char_device(&e.path, perm, major, minor);
            }
            S_IFREG if e.path == path => {
                let text = String::from_utf8(data).expect("the patched file is text");
                let edit = edit.take().expect("one entry per path");
                archive.add_bytes(&e.path, edit(&text).into_bytes(), perm);
            }
            S_IFREG => archive.add_bytes(&e.path, data, perm),
            other => panic!("unexpected entry type {other:o} for {}", e.path),
        }
    }
    assert!(edit.is_none(), "the initramfs has no {path}");
    let out = std::fs::File::create(to.join(&name)).expect("create the patched initramfs");
    let mut enc = kiln::compress::Encoder::new(compression, None, std::io::BufWriter::new(out))
        .expect("start the compressor");
    archive
        .write(&mut enc, 0)
        .expect("write the patched archive");
    enc.finish()
        .expect("finish compressing")
        .flush()
        .expect("write the patched initramfs");
}
