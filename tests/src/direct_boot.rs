//! Booting guest payloads directly under QEMU (TCG) in tests.
//!
//! Test helpers: they panic with a message that says what to fix.

use crate::{run_with_timeout, Finished};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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

/// Runs `qemu-system-x86_64 <args>` until it exits or `timeout` passes
/// (then kills it), with its console (stdout, then stderr).
pub fn run_qemu(args: &[&str], timeout: Duration) -> Finished {
    let mut cmd = Command::new(qemu_binary());
    cmd.args(args);
    run_with_timeout(cmd, timeout)
}
