//! End to end: `kiln build` produces a reproducible image that boots on the
//! emulated target (QEMU TCG q35, SVM, Intel IOMMU), where the runtime runs
//! as PID 1 and reports on the console.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::images::build_in;
use kiln_tests::{require_qemu, root, run_kiln, run_with_timeout};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest.json exists"))
        .expect("manifest.json is JSON")
}

/// The hello image, built once for the tests of this file.
fn hello() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("kiln-e2e-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let out = dir.join("hello");
        let image = root().join("images/hello.toml");
        build_in(&root(), &image, &out);
        out
    })
}

#[test]
fn output_has_every_artifact_listed_in_the_manifest() {
    let dir = hello();
    let m = manifest(dir);
    assert_eq!(m["name"], "hello");
    let artifacts = m["artifacts"].as_array().expect("artifacts");
    let files: Vec<&str> = artifacts
        .iter()
        .map(|a| a["file"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        files,
        [
            "vmlinuz",
            "initramfs.cpio.zst",
            "cmdline",
            "kiln.efi",
            "kiln.pcrs.json",
            "disk.img"
        ]
    );
    for a in artifacts {
        let path = dir.join(a["file"].as_str().unwrap_or(""));
        let data = std::fs::read(&path).expect("artifact exists");
        assert_eq!(
            a["size"].as_u64(),
            Some(data.len() as u64),
            "{}",
            path.display()
        );
    }
    let modules: Vec<&str> = m["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for needed in ["irqbypass", "kvm", "kvm_amd", "kvm_intel"] {
        assert!(
            modules.iter().any(|m| m.replace('-', "_") == needed),
            "{needed} missing from {modules:?}"
        );
    }
    assert!(m["kernel"]["release"]
        .as_str()
        .is_some_and(|r| r.ends_with("-cloud-amd64")));
    assert!(m["inputs"]
        .as_array()
        .is_some_and(|i| i.iter().any(|x| x["kind"] == "runtime")));

    // kiln inspect lists the archive like lsinitramfs.
    let o = run_kiln(&root(), &["inspect", &dir.to_string_lossy()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listing = String::from_utf8_lossy(&o.stdout);
    for path in [
        "init",
        "dev/console",
        "etc/kiln/appliance.toml",
        "guests/hello/kernel",
        "modules.dep",
    ] {
        assert!(listing.contains(path), "inspect lacks {path}:\n{listing}");
    }
}

#[test]
fn builds_are_reproducible_from_any_working_directory() {
    let first = hello();
    let other_cwd = tempfile::tempdir().expect("tempdir");
    let out = other_cwd.path().join("again");
    let image = root().join("images/hello.toml");
    build_in(other_cwd.path(), &image, &out);
    let (a, b) = (manifest(first), manifest(&out));
    assert_eq!(
        a["artifacts"], b["artifacts"],
        "artifacts differ between builds"
    );
    assert_eq!(a, b, "manifests differ between builds");
    for f in ["vmlinuz", "initramfs.cpio.zst", "cmdline"] {
        assert_eq!(
            std::fs::read(first.join(f)).ok(),
            std::fs::read(out.join(f)).ok(),
            "{f} differs"
        );
    }
}

#[test]
fn a_different_source_date_epoch_changes_the_initramfs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("epoch");
    let image = root().join("images/hello.toml");
    let o = Command::new(kiln_tests::kiln())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args([
            "build",
            &image.to_string_lossy(),
            "-o",
            &out.to_string_lossy(),
            "--json",
        ])
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = manifest(&out);
    assert_eq!(m["source_date_epoch"], 1700000000);
    let base = manifest(hello());
    assert_ne!(m["artifacts"][1]["sha256"], base["artifacts"][1]["sha256"]);
    assert_eq!(
        m["artifacts"][0]["sha256"], base["artifacts"][0]["sha256"],
        "vmlinuz must not change"
    );
}

#[test]
fn hello_image_boots_on_the_emulated_target() {
    require_qemu();
    let dir = hello();
    let mut cmd = Command::new(kiln_tests::kiln());
    cmd.args(["run", &dir.to_string_lossy()]);
    let run = run_with_timeout(cmd, Duration::from_secs(300));
    let out = &run.output;
    assert!(
        !run.timed_out,
        "the image did not power off within 300 s:\n{out}"
    );
    assert!(
        out.contains("kiln: vm=hello state=starting"),
        "no status line:\n{out}"
    );
    assert!(
        out.contains("hello: kiln hello unikernel"),
        "hello did not print its banner:\n{out}"
    );
    assert!(
        out.contains("kiln: vm=hello state=exited code=0"),
        "hello did not exit 0:\n{out}"
    );
    assert!(
        out.contains("kiln: appliance done ok=1 failed=0"),
        "no done line:\n{out}"
    );
    assert_eq!(run.code(), Some(0), "every VM ended well:\n{out}");
    eprintln!(
        "hello image: QEMU start to power-off in {:.1} s",
        run.elapsed.as_secs_f64()
    );
}
