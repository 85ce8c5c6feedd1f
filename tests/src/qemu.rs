//! Building guest payloads and booting them under QEMU (TCG) in tests.
//!
//! Test helpers: they panic with a message that says what to fix.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// QEMU binary for the emulated x86 target.
pub const QEMU: &str = "qemu-system-x86_64";

/// The workspace root (parent of this package).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Full path of `qemu-system-x86_64`; fails the test when it is not installed.
pub fn qemu_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(QEMU))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{QEMU} is not installed; this test boots guests under QEMU: run `apt-get install qemu-system-x86`")
        })
}

/// Builds `package` with `cargo build --profile <profile>` and returns the
/// path of its binary `bin`, as cargo reports it (so CARGO_TARGET_DIR and
/// the workspace's build target are honoured).
pub fn cargo_build(package: &str, profile: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "-p",
            package,
            "--profile",
            profile,
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {package}: {e}"));
    assert!(
        output.status.success(),
        "cargo build -p {package} --profile {profile} failed: {}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == bin)
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo built {package} but reported no executable named {bin}"))
}

/// The outcome of one QEMU run.
#[derive(Debug)]
pub struct Run {
    /// QEMU's exit code; `None` when it was killed (timeout or signal).
    pub code: Option<i32>,
    /// Everything QEMU wrote to stdout (the serial console with -nographic).
    pub console: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl Run {
    /// The console lines, without carriage returns.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.console.lines().map(|l| l.trim_end_matches('\r'))
    }

    /// Whether some console line equals `line` exactly.
    pub fn has_line(&self, line: &str) -> bool {
        self.lines().any(|l| l == line)
    }
}

/// Runs `qemu-system-x86_64 <args>`, collecting stdout; kills it after `timeout`.
pub fn run_qemu(args: &[&str], timeout: Duration) -> Run {
    let start = Instant::now();
    let mut child = Command::new(qemu_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {QEMU}: {e}"));
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error only shortens the console text the assertions see.
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for QEMU") {
            break status;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("cannot reap QEMU");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let console = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    Run {
        code: status.code(),
        console,
        elapsed,
        timed_out,
    }
}
