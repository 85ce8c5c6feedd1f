//! kiln installed like a user installs it (`install.sh`, docs/install.md)
//! and used from outside its source tree: into a temporary prefix, run from
//! a temporary directory with `PREFIX/bin` first on PATH.
//!
//! - the built-in default appliance builds with an empty cache (the Debian
//!   kernel and the UKI stub are fetched through apt again, about 40 MB),
//!   passes `kiln test` and shows in `kiln inspect`, with the installed
//!   runtime and hello payload;
//! - `kiln new` writes a project that builds and passes `kiln test`;
//! - a config copied out of the tree names the key of its `cargo:` payload.
//!
//! Needs QEMU and the Debian archive.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::{require_qemu, root, run_with_timeout, Finished};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `./install.sh --prefix PREFIX` from the checkout, as the README says.
fn install(prefix: &Path) {
    let start = Instant::now();
    let mut cmd = Command::new(root().join("install.sh"));
    cmd.arg("--prefix").arg(prefix);
    let done = run_with_timeout(cmd, Duration::from_secs(1800));
    assert_eq!(done.code(), Some(0), "install.sh failed:\n{}", done.output);
    eprintln!("install.sh: {:.1?}", start.elapsed());
    // Completions and man pages come from the binary, when it has the
    // commands (INTEGRATOR: unconditional once `cli`'s `kiln completions`
    // and `kiln man` are in main).
    let has = |cmd: &[&str]| {
        Command::new(prefix.join("bin/kiln"))
            .args(cmd)
            .output()
            .unwrap()
            .status
            .success()
    };
    if has(&["completions", "bash"]) {
        for f in [
            "share/bash-completion/completions/kiln",
            "share/zsh/site-functions/_kiln",
            "share/fish/vendor_completions.d/kiln.fish",
        ] {
            assert!(prefix.join(f).is_file(), "install.sh installed no {f}");
        }
    }
    if has(&["man", "--help"]) {
        assert!(prefix.join("share/man/man1/kiln.1").is_file());
    }
    for f in [
        "bin/kiln",
        "lib/kiln/kiln-runtime",
        "lib/kiln/kiln-hello",
        "share/kiln/images/hello.toml",
        "share/kiln/configs/hello.toml",
    ] {
        assert!(prefix.join(f).is_file(), "install.sh installed no {f}");
    }
}

/// `kiln ARGS` as a user runs it: found on PATH, in `cwd`, with the kiln
/// cache in `cache`, and nothing pointing back at the source tree.
fn kiln(prefix: &Path, cwd: &Path, cache: &Path, args: &[&str], timeout: Duration) -> Finished {
    let path = format!(
        "{}:{}",
        prefix.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("kiln");
    cmd.current_dir(cwd)
        .args(args)
        .env("PATH", path)
        .env("KILN_CACHE_DIR", cache)
        .env_remove("KILN_RUNTIME");
    let start = Instant::now();
    let done = run_with_timeout(cmd, timeout);
    eprintln!("kiln {}: {:.1?}", args.join(" "), start.elapsed());
    assert!(!done.timed_out, "kiln {args:?} timed out:\n{}", done.output);
    done
}

fn is_inside(path: &Path, dir: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap();
    canon(path).starts_with(canon(dir))
}

#[test]
fn installed_kiln_builds_tests_and_inspects_its_default_outside_the_tree() {
    require_qemu();
    let d = tempfile::tempdir().unwrap();
    assert!(
        !is_inside(d.path(), &root()),
        "the scratch directory is outside the checkout"
    );
    let prefix = d.path().join("prefix");
    install(&prefix);
    let work = d.path().join("work");
    let cache = d.path().join("cache");
    std::fs::create_dir_all(&work).unwrap();

    let built = kiln(
        &prefix,
        &work,
        &cache,
        &["build", "--json"],
        Duration::from_secs(900),
    );
    assert_eq!(
        built.code(),
        Some(0),
        "kiln build failed:\n{}",
        built.output
    );
    let out = work.join("out/hello");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    // The installed runtime and prebuilt hello went in, nothing built here.
    let sha = |p: &Path| kiln::manifest::sha256_file(p).unwrap().0;
    let runtime = manifest["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "runtime")
        .expect("the runtime is an input");
    assert_eq!(
        runtime["sha256"],
        sha(&prefix.join("lib/kiln/kiln-runtime"))
    );
    assert_eq!(
        manifest["payloads"][0]["sha256"],
        sha(&prefix.join("lib/kiln/kiln-hello")),
        "{}",
        manifest["payloads"]
    );
    assert!(
        cache.join("debs").is_dir(),
        "the kernel came into the empty cache"
    );

    let tested = kiln(
        &prefix,
        &work,
        &cache,
        &["test", "out/hello"],
        Duration::from_secs(600),
    );
    assert_eq!(
        tested.code(),
        Some(0),
        "kiln test failed:\n{}",
        tested.output
    );
    assert!(
        tested.output.contains("1 passed, 0 failed"),
        "{}",
        tested.output
    );

    let inspected = kiln(
        &prefix,
        &work,
        &cache,
        &["inspect", "out/hello"],
        Duration::from_secs(60),
    );
    assert_eq!(inspected.code(), Some(0), "{}", inspected.output);
    for path in ["init", "etc/kiln/appliance.toml", "guests/hello/kernel"] {
        assert!(
            inspected.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} not listed:\n{}",
            inspected.output
        );
    }
}

#[test]
fn kiln_new_makes_a_project_that_passes_kiln_test_anywhere() {
    require_qemu();
    let d = tempfile::tempdir().unwrap();
    let prefix = d.path().join("prefix");
    install(&prefix);
    // The user's cache: the kernel is already there after the first build.
    let cache = kiln::kernel::cache_dir().unwrap();

    let made = kiln(
        &prefix,
        d.path(),
        &cache,
        &["new", "my-appliance"],
        Duration::from_secs(30),
    );
    assert_eq!(made.code(), Some(0), "{}", made.output);
    let project = d.path().join("my-appliance");
    let tested = kiln(
        &prefix,
        &project,
        &cache,
        &["test", "appliance.toml"],
        Duration::from_secs(900),
    );
    assert_eq!(
        tested.code(),
        Some(0),
        "kiln test failed:\n{}",
        tested.output
    );
    assert!(
        tested.output.contains("1 passed, 0 failed"),
        "{}",
        tested.output
    );
    assert!(project.join("out/my-appliance/manifest.json").is_file());
    // The guest is the user's to change: it was built in the project, and
    // a change to it is in the next test's image.
    assert!(
        project.join("target").is_dir(),
        "the guest was built in the project"
    );
    let main = project.join("src/main.rs");
    let text = std::fs::read_to_string(&main).unwrap();
    assert!(text.contains("let code = 0;"), "{text}");
    std::fs::write(&main, text.replace("let code = 0;", "let code = 3;")).unwrap();
    let changed = kiln(
        &prefix,
        &project,
        &cache,
        &["test", "appliance.toml"],
        Duration::from_secs(900),
    );
    assert_eq!(changed.code(), Some(1), "{}", changed.output);
    assert!(changed.output.contains("code 3"), "{}", changed.output);
}

#[test]
fn a_copied_config_names_the_key_of_its_cargo_payload() {
    let d = tempfile::tempdir().unwrap();
    let copy = d.path().join("copy");
    for f in ["images/hello.toml", "configs/hello.toml"] {
        let to = copy.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root().join(f), &to).unwrap();
    }
    let cache = kiln::kernel::cache_dir().unwrap();
    let mut cmd = Command::new(kiln_tests::kiln());
    cmd.current_dir(&copy)
        .args(["build", "images/hello.toml"])
        .env("KILN_CACHE_DIR", &cache);
    let done = run_with_timeout(cmd, Duration::from_secs(600));
    assert_eq!(done.code(), Some(2), "{}", done.output);
    let line = done
        .lines()
        .find(|l| l.contains("`cargo:kiln-hello` is built from the cargo workspace"))
        .unwrap_or_else(|| panic!("no located error:\n{}", done.output));
    assert!(
        line.contains("images/../configs/hello.toml:7:1: key `boot.kernel`"),
        "{line}"
    );
    assert!(
        line.contains("write the path of a static executable instead"),
        "{line}"
    );
    assert!(line.contains("`kiln new DIR`"), "{line}");
    assert!(!copy.join("out/hello").exists(), "no output was written");
}
