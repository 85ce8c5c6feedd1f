//! Test helpers shared by the writer's and the reader's tests: GNU cpio as
//! the reference tool, a sample tree, an archive's bytes.

use super::Archive;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The reference tool must be there: a missing tool fails the test.
pub(super) fn gnu_cpio() -> &'static str {
    match Command::new("cpio").arg("--version").output() {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("GNU cpio") => "cpio",
        _ => panic!("GNU cpio is needed to check kiln's archives: apt-get install cpio"),
    }
}

pub(super) fn run_cpio(args: &[&str], dir: &Path, stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new(gnu_cpio())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sin = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || sin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "cpio {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A small tree on disk plus in-memory entries, links and nesting.
pub(super) fn sample(dir: &Path) -> Archive {
    let src = dir.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("big.bin"), pseudo_random(3 * 1024 * 1024 + 3)).unwrap();
    fs::write(src.join("sub/hello.txt"), b"hello\n").unwrap();
    fs::set_permissions(src.join("sub/hello.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    let mut a = Archive::new();
    a.add_dir("etc", 0o755);
    a.add_bytes("etc/hostname", b"kiln\n".to_vec(), 0o644);
    a.add_bytes("init", b"#!/bin/sh\n".to_vec(), 0o755);
    a.add_file("usr/lib/big.bin", &src.join("big.bin"), 0o600);
    a.add_symlink("bin", "usr/bin");
    a.add_bytes("usr/bin/tool", vec![1, 2, 3], 0o4755);
    a.add_bytes("empty", Vec::new(), 0o644);
    a.add_tree("opt/tree", &src).unwrap();
    a
}

pub(super) fn pseudo_random(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Bits 24..32 of the state.
            x.to_le_bytes()[3]
        })
        .collect()
}

pub(super) fn bytes_of(a: &Archive, mtime: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let n = a.write(&mut out, mtime).unwrap();
    assert_eq!(n, out.len() as u64);
    out
}
