//! Helpers for kiln's end-to-end tests: build the `kiln` binary once, run it,
//! and boot images on the emulated target with a deadline.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod direct_boot;
pub mod engines;
pub mod images;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    direct_boot::workspace_root()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// The `kiln` binary, built (once per test process) with the same profile
/// as the tests.
pub fn kiln() -> PathBuf {
    static KILN: OnceLock<PathBuf> = OnceLock::new();
    KILN.get_or_init(|| {
        let status = Command::new(cargo())
            .current_dir(root())
            .args(["build", "--quiet", "-p", "kiln"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building kiln failed");
        let profile_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent()?.parent().map(Path::to_path_buf))
            .expect("test binary lives in target/<triple>/<profile>/deps");
        let kiln = profile_dir.join("kiln");
        assert!(kiln.is_file(), "{} was not built", kiln.display());
        kiln
    })
    .clone()
}

/// Runs kiln with `args` in `cwd`, capturing its output.
pub fn run_kiln(cwd: &Path, args: &[&str]) -> Output {
    Command::new(kiln())
        .current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("kiln runs")
}

/// Fails the test loudly when QEMU is missing: these tests never pass by
/// skipping.
pub fn require_qemu() {
    direct_boot::qemu_binary();
}

/// A finished run of a child process with its combined console output.
#[derive(Debug)]
pub struct Finished {
    pub output: String,
    pub status: Option<std::process::ExitStatus>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Finished {
    /// The process's exit code; `None` when it was killed (timeout or signal).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// The output's lines, without carriage returns.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        lines(&self.output)
    }

    /// Whether some line of the output equals `line`.
    pub fn has_line(&self, line: &str) -> bool {
        self.lines().any(|l| l == line)
    }
}

/// The lines of a console, without carriage returns.
pub fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(|l| l.trim_end_matches('\r'))
}

/// Runs `cmd` until it exits or `timeout` passes (then kills it), reading
/// stdout and stderr together.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Finished {
    let start = Instant::now();
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("process starts");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait works") {
            break Some(s);
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut output = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    output.push_str(&String::from_utf8_lossy(
        &err_reader.join().unwrap_or_default(),
    ));
    Finished {
        output,
        status,
        timed_out,
        elapsed: start.elapsed(),
    }
}
