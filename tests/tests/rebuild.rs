//! End to end: an unchanged rebuild skips apt and cargo, yet stays fresh: a
//! touched or edited payload source is rebuilt, and `--refresh` asks apt.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::images::{scratch, write};
use kiln_tests::kiln;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

/// `kiln build IMAGE -o OUT [extra...]` with `env`, its output captured.
fn build(image: &Path, out: &Path, extra: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(kiln());
    cmd.args([
        "build",
        &image.to_string_lossy(),
        "-o",
        &out.to_string_lossy(),
    ])
    .args(extra)
    .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("kiln runs");
    assert!(
        o.status.success(),
        "kiln build {} failed:\n{}",
        image.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The sha256 of the payload whose source is `source`, from the manifest.
fn payload_sha(out: &Path, source: &str) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let found = m["payloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["source"] == source)
        .unwrap_or_else(|| panic!("no payload from {source}: {m}"));
    found["sha256"].as_str().unwrap().to_string()
}

/// A guest's kernel: the appliance's own (a whole bzImage, which the build
/// checks), so the payloads under test can be anything as its initrd.
const GUEST_KERNEL: &str = "debian:linux-image-cloud-amd64";

/// A file's modification time set to `ago` before now.
fn backdate(path: &Path, ago: Duration) {
    let f = std::fs::File::open(path).unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

#[test]
fn a_touched_or_edited_payload_source_is_rebuilt_and_an_untouched_one_is_not() {
    // A payload workspace of its own (its Cargo.toml says [workspace]),
    // inside this tree so the repository's cargo config (static builds)
    // applies and the image's runtime comes from this tree.
    let dir = scratch("rebuild-payload");
    let probe = dir.join("probe");
    std::fs::create_dir_all(probe.join("src")).unwrap();
    write(
        &probe,
        "Cargo.toml",
        "[workspace]\n\n[package]\nname = \"kiln-fresh-probe\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[profile.guest]\ninherits = \"release\"\n",
    );
    let main = write(
        &probe,
        "src/main.rs",
        "fn main() {\n    println!(\"one\");\n}\n",
    );
    write(
        &probe,
        "vm.toml",
        &format!("name = \"probe\"\nmemory = \"32M\"\n[boot]\nkernel = \"{GUEST_KERNEL}\"\ninitrd = \"cargo:kiln-fresh-probe\"\n"),
    );
    let image = write(
        &dir,
        "image.toml",
        "name = \"rebuild-payload\"\nvms = [\"probe/vm.toml\"]\n[kernel]\nsource = \"debian:linux-image-cloud-amd64\"\n[output]\nformats = [\"initramfs\"]\n",
    );
    let out = dir.join("out");
    let spawned = |o: &Output| stderr(o).contains("building kiln-fresh-probe");

    let first = build(&image, &out, &[], &[]);
    assert!(spawned(&first), "{}", stderr(&first));
    let built = payload_sha(&out, "cargo:kiln-fresh-probe");
    // Inputs written moments before a build are not trusted as unchanged
    // (they could change within one clock tick); older ones are.
    for p in [&main, &probe.join("src"), &probe.join("Cargo.toml")] {
        backdate(p, Duration::from_secs(3600));
    }
    std::thread::sleep(kiln::stamp::SETTLE + Duration::from_secs(1));
    let second = build(&image, &out, &[], &[]);
    let third = build(&image, &out, &[], &[]);
    assert!(
        !spawned(&third) && stderr(&third).contains("kiln-fresh-probe is up to date"),
        "an unchanged payload must not run cargo:\n{}\n---\n{}",
        stderr(&second),
        stderr(&third)
    );
    assert_eq!(payload_sha(&out, "cargo:kiln-fresh-probe"), built);

    // Touched (only its time changes): cargo is asked again.
    backdate(&main, Duration::from_secs(0));
    let touched = build(&image, &out, &[], &[]);
    assert!(spawned(&touched), "{}", stderr(&touched));
    assert_eq!(
        payload_sha(&out, "cargo:kiln-fresh-probe"),
        built,
        "same source, same payload"
    );

    // Edited: rebuilt, and the image holds the new payload.
    std::fs::write(&main, "fn main() {\n    println!(\"two\");\n}\n").unwrap();
    let edited = build(&image, &out, &[], &[]);
    assert!(spawned(&edited), "{}", stderr(&edited));
    assert_ne!(
        payload_sha(&out, "cargo:kiln-fresh-probe"),
        built,
        "the edit must reach the image"
    );
}

#[test]
fn refresh_asks_apt_and_a_recent_resolution_does_not() {
    let dir = scratch("rebuild-apt");
    // An apt-cache that logs each call before doing its work.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("apt-cache.log");
    let real = ["/usr/bin/apt-cache", "/bin/apt-cache"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("apt-cache is installed (debian: kernels need it)");
    let wrapper = write(
        &bin,
        "apt-cache",
        &format!(
            "#!/bin/sh\necho \"$*\" >>{}\nexec {real} \"$@\"\n",
            log.display()
        ),
    );
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    write(&dir, "payload", "an initrd: the build only copies it\n");
    let image = write(
        &dir,
        "image.toml",
        &format!("name = \"rebuild-apt\"\n[[vm]]\nname = \"p\"\nmemory = \"128M\"\n[vm.boot]\nkernel = \"{GUEST_KERNEL}\"\ninitrd = \"payload\"\n[kernel]\nsource = \"debian:linux-image-cloud-amd64\"\n[output]\nformats = [\"initramfs\"]\n"),
    );
    let out = dir.join("out");
    let env = [("PATH", path)];
    let asked = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        text.contains("linux-image-cloud-amd64")
    };

    build(&image, &out, &["--refresh"], &env);
    assert!(asked(), "--refresh asks apt");
    let again = build(&image, &out, &[], &env);
    assert!(!asked(), "resolved a moment ago: apt is not asked");
    assert!(
        stderr(&again).contains("resolved before"),
        "{}",
        stderr(&again)
    );
    build(&image, &out, &["--refresh"], &env);
    assert!(asked(), "--refresh asks apt even so");
    build(&image, &out, &["--offline"], &env);
    assert!(!asked(), "--offline never asks apt");
    let no_ttl = [env[0].clone(), ("KILN_APT_TTL", "0".to_string())];
    build(&image, &out, &[], &no_ttl);
    assert!(asked(), "KILN_APT_TTL=0 asks apt every time");
}
