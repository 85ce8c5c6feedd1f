//! End to end: `kiln build -o DIR` never destroys what kiln did not write,
//! and a build killed at any step leaves DIR the complete old or the
//! complete new output; the next build succeeds and removes what the killed
//! ones left.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::images::{self, scratch};
use kiln_tests::{kiln, root, run_kiln};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Every point of a build `KILN_TEST_KILL_AT` can kill it at, in order.
const KILL_POINTS: [&str; 8] = [
    "prepared",
    "kernel",
    "modules",
    "payloads",
    "initramfs",
    "outputs",
    "manifest",
    "exchanged",
];

/// A minimal image whose folder is `dir`.
fn small_image(dir: &Path) -> std::path::PathBuf {
    images::write(
        dir,
        "small.toml",
        "name = \"small\"\n[kernel]\nsource = \"debian:linux-image-cloud-amd64\"\n\
         [output]\nformats = [\"initramfs\"]\n\
         [[vm]]\nname = \"hello\"\nmemory = \"32M\"\n[vm.boot]\nkernel = \"cargo:kiln-hello\"\n",
    )
}

/// Every file of `dir` with its contents.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{} is missing: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("read the output");
            let data = std::fs::read(e.path()).expect("read an output file");
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect()
}

/// Checks that `dir` is a complete output: its manifest lists every other
/// file, each with its size and sha256.
fn assert_complete(dir: &Path) {
    let all = files(dir);
    let manifest: serde_json::Value =
        serde_json::from_slice(all.get("manifest.json").expect("manifest.json"))
            .expect("manifest.json is JSON");
    let mut listed = vec!["manifest.json".to_string()];
    for a in manifest["artifacts"].as_array().expect("artifacts") {
        let file = a["file"].as_str().expect("artifact file");
        let data = all
            .get(file)
            .unwrap_or_else(|| panic!("{file} is listed but missing"));
        assert_eq!(a["size"].as_u64(), Some(data.len() as u64), "{file}");
        let (sha, _) = kiln::manifest::sha256_file(&dir.join(file)).expect("hash");
        assert_eq!(a["sha256"].as_str(), Some(sha.as_str()), "{file}");
        listed.push(file.to_string());
    }
    let mut names: Vec<String> = all.keys().cloned().collect();
    names.sort();
    listed.sort();
    assert_eq!(
        names,
        listed,
        "{} holds only what its manifest lists",
        dir.display()
    );
}

/// The work directories kiln builds left beside `out`.
fn work_dirs(out: &Path) -> Vec<String> {
    let prefix = format!(
        ".{}.kiln-",
        out.file_name().expect("name").to_string_lossy()
    );
    std::fs::read_dir(out.parent().expect("parent"))
        .expect("read the parent")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[test]
fn a_build_killed_at_any_step_leaves_a_complete_output() {
    let dir = scratch("output-dir/killed");
    let image = root().join("images/hello.toml");
    let out = dir.join("hello");
    images::build(&image, &out);
    let old = files(&out);
    for point in KILL_POINTS {
        let o = Command::new(kiln())
            .current_dir(root())
            .env("KILN_TEST_KILL_AT", point)
            // A different epoch, so the new output differs from the old.
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args([
                "build",
                &image.to_string_lossy(),
                "-o",
                &out.to_string_lossy(),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("kiln runs");
        assert_eq!(
            o.status.signal(),
            Some(9),
            "kiln was not killed at {point}: {:?}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        assert_complete(&out);
        if point == "exchanged" {
            assert_ne!(files(&out), old, "killed after the swap: the new output");
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("read"))
                    .expect("JSON");
            assert_eq!(m["source_date_epoch"], 1700000000);
        } else {
            assert!(
                files(&out) == old,
                "killed at {point}: the old output, intact"
            );
        }
        // Each build removes what the previous killed one left: only this
        // one's work directory is there.
        assert_eq!(work_dirs(&out).len(), 1, "{point}: {:?}", work_dirs(&out));
    }
    images::build(&image, &out);
    assert_complete(&out);
    assert!(files(&out) == old, "the same inputs as the first build");
    assert_eq!(work_dirs(&out), Vec::<String>::new());
}

#[test]
fn what_kiln_did_not_write_is_never_replaced() {
    let dir = scratch("output-dir/refused");
    let image = small_image(&dir);
    let image_arg = image.to_string_lossy().into_owned();
    let refused = |cwd: &Path, out: &str, want: &[&str]| {
        let o = run_kiln(cwd, &["build", &image_arg, "-o", out]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "-o {out} was not refused:\n{err}");
        for w in want {
            assert!(err.contains(w), "-o {out}: no {w:?} in:\n{err}");
        }
    };
    // A directory of the user's.
    let mine = dir.join("mine");
    std::fs::create_dir(&mine).expect("mkdir");
    std::fs::write(mine.join("notes.txt"), b"mine").expect("write");
    let mine_arg = mine.to_string_lossy().into_owned();
    refused(
        &root(),
        &mine_arg,
        &[&mine_arg, "not a kiln output", "--force"],
    );
    assert_eq!(
        std::fs::read(mine.join("notes.txt")).expect("kept"),
        b"mine"
    );
    // A file, the working directory, the image's folder and above it.
    let file = dir.join("file");
    std::fs::write(&file, b"data").expect("write");
    refused(&root(), &file.to_string_lossy(), &["is a file"]);
    refused(&dir, ".", &["working directory"]);
    refused(&root(), &dir.to_string_lossy(), &["image's folder"]);
    refused(
        &root(),
        &dir.join("..").to_string_lossy(),
        &["image's folder"],
    );
    // --force does not make a file, the working directory or the image's
    // folder replaceable.
    let o = run_kiln(&dir, &["build", &image_arg, "-o", ".", "--force"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(&file).expect("kept"), b"data");
    assert!(image.is_file());
    assert_eq!(
        work_dirs(&mine),
        Vec::<String>::new(),
        "refused before any work"
    );

    // --force replaces a directory kiln did not write.
    let o = run_kiln(&root(), &["build", &image_arg, "-o", &mine_arg, "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_complete(&mine);
}
