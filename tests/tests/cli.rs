//! The conventions of kiln's command line (README, "Commands"): completion
//! scripts a shell reads, man pages that render, a quiet exit on a closed
//! pipe, `-q`, `kiln inspect IMAGE.toml`, `kiln cache`, and `kiln run`'s
//! exit code.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::images::scratch;
use kiln_tests::{kiln, require_qemu, root, run_kiln};
use std::fs::File;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
}

#[test]
fn completion_scripts_are_shell_code() {
    let dir = scratch("cli-completions");
    let o = run_kiln(&root(), &["completions", "bash"]);
    ok(&o, "kiln completions bash");
    let script = dir.join("kiln.bash");
    std::fs::write(&script, &o.stdout).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    ok(&check, "bash -n on the completion script");
    // Sourced, it registers a completion for `kiln`.
    let sourced = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p kiln", script.display()))
        .output()
        .unwrap();
    ok(&sourced, "sourcing the completion script");
    assert!(
        text(&sourced.stdout).contains("kiln"),
        "{}",
        text(&sourced.stdout)
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let o = run_kiln(&root(), &["completions", shell]);
        ok(&o, shell);
        assert!(
            text(&o.stdout).contains("inspect"),
            "{shell}: no subcommands"
        );
    }
    let o = run_kiln(&root(), &["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "an unknown shell is refused");
}

#[test]
fn man_pages_render() {
    let dir = scratch("cli-man");
    let o = run_kiln(&root(), &["man", &dir.join("man1").to_string_lossy()]);
    ok(&o, "kiln man");
    let mut pages: Vec<String> = std::fs::read_dir(dir.join("man1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in [
        "kiln.1",
        "kiln-build.1",
        "kiln-run.1",
        "kiln-test.1",
        "kiln-cache.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "no {page} in {pages:?}");
    }
    assert!(!pages.iter().any(|p| p.contains("reaper")), "{pages:?}");
    for page in &pages {
        let path = dir.join("man1").join(page);
        // groff's warnings on: a page that renders with any is broken.
        let g = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .unwrap();
        ok(&g, page);
        assert!(g.stderr.is_empty(), "{page}: {}", text(&g.stderr));
        let m = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        ok(&m, page);
        let shown = text(&m.stdout);
        let name = page.trim_end_matches(".1");
        assert!(
            shown.contains("NAME") && shown.contains(name) && shown.contains("SYNOPSIS"),
            "{page} does not render:\n{shown}"
        );
    }
}

/// Runs kiln with a stdout whose reading end is already closed: every
/// write it makes there fails with EPIPE.
fn with_closed_stdout(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let (read, write) = std::io::pipe().unwrap();
    drop(read);
    Command::new(kiln())
        .current_dir(root())
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .stdout(write)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_pipe_ends_kiln_quietly() {
    let cache = scratch("cli-pipe-cache");
    std::fs::create_dir_all(cache.join("debs")).unwrap();
    std::fs::write(cache.join("debs/x.deb"), b"x").unwrap();
    let cases: [&[&str]; 5] = [
        &["inspect", "images/hello.toml"],
        &["inspect", "images/hello.toml", "--json"],
        &["completions", "bash"],
        &["cache"],
        &["lava-job", "--help"],
    ];
    for args in cases {
        let o = with_closed_stdout(args, &[("KILN_CACHE_DIR", &cache)]);
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "kiln {args:?} on a closed pipe: {} {}",
            o.status,
            text(&o.stderr)
        );
    }
    // And as a shell pipeline, whose exit status pipefail makes kiln's.
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} completions bash | head -1 && {} inspect images/hello.toml | head -1",
            kiln().display(),
            kiln().display()
        ))
        .current_dir(root())
        .output()
        .unwrap();
    ok(&o, "kiln ... | head -1");
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
}

#[test]
fn inspect_shows_an_image_config_resolved_without_building() {
    let cache = scratch("cli-inspect-cache");
    let cmd = |args: &[&str]| {
        Command::new(kiln())
            .current_dir(root())
            .args(args)
            // An empty cache stays empty: nothing is fetched or built.
            .env("KILN_CACHE_DIR", &cache)
            .output()
            .unwrap()
    };
    let o = cmd(&["inspect", "images/two-vms.toml"]);
    ok(&o, "kiln inspect images/two-vms.toml");
    let shown = text(&o.stdout);
    assert!(shown.starts_with("image two-vms ("), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.trim_start().starts_with("initramfs.compression")),
        "defaults are shown:\n{shown}"
    );
    assert!(shown.matches("\nvm ").count() >= 2, "every VM:\n{shown}");
    let o = cmd(&["inspect", "images/two-vms.toml", "--json"]);
    ok(&o, "kiln inspect --json");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["name"], "two-vms");
    assert!(v["vms"].as_array().unwrap().len() >= 2, "{v}");
    assert!(v["target"]["memory"].is_string(), "{v}");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    // A config error is located, as for a build.
    let dir = scratch("cli-inspect-bad");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\n[kernel]\nsource = \"host\"\nfoo = 1\n",
    )
    .unwrap();
    let o = cmd(&["inspect", &bad.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("bad.toml:4:1: key `kernel.foo`"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn cache_lists_prunes_and_cleans_only_what_kiln_wrote() {
    let cache = scratch("cli-cache");
    let put = |rel: &str, bytes: usize, days_ago: u64| {
        let p = cache.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![1u8; bytes]).unwrap();
        let t = std::time::SystemTime::now() - Duration::from_secs(days_ago * 86_400);
        let f = File::options().write(true).open(&p).unwrap();
        f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap();
    };
    put("initramfs/old-initramfs.cpio.zst", 2048, 90);
    put("initramfs/new-initramfs.cpio.zst", 1024, 1);
    put("kernels/abc/root/boot/vmlinuz", 4096, 60);
    put("debs/linux-image.deb", 100, 2);
    put("my-notes/todo.txt", 10, 400);
    let cmd = |args: &[&str]| {
        let o = Command::new(kiln())
            .args(args)
            .env("KILN_CACHE_DIR", &cache)
            .output()
            .unwrap();
        ok(&o, &format!("kiln {args:?}"));
        text(&o.stdout)
    };
    let listed = cmd(&["cache"]);
    assert!(
        listed.contains(&format!("cache: {}", cache.display())),
        "{listed}"
    );
    for entry in [
        "initramfs/old-initramfs.cpio.zst",
        "kernels/abc",
        "debs/linux-image.deb",
    ] {
        assert!(listed.contains(entry), "{entry} not listed:\n{listed}");
    }
    assert!(listed.contains("90d"), "ages are shown:\n{listed}");
    assert!(listed.contains("not kiln's, left alone:"), "{listed}");
    let pruned = cmd(&["cache", "prune", "--days", "30"]);
    assert!(pruned.starts_with("removed 2 entries"), "{pruned}");
    assert!(!cache.join("initramfs/old-initramfs.cpio.zst").exists());
    assert!(!cache.join("kernels/abc").exists());
    assert!(cache.join("initramfs/new-initramfs.cpio.zst").exists());
    assert!(cache.join("debs/linux-image.deb").exists());
    cmd(&["cache", "clean"]);
    for area in ["initramfs", "kernels", "debs"] {
        assert!(!cache.join(area).exists(), "{area} is left");
    }
    assert!(
        cache.join("my-notes/todo.txt").exists(),
        "clean removed a user's file"
    );
}

/// Runs kiln in `cwd` with stdout and stderr apart, killing it after `limit`.
fn run_apart(cwd: &Path, args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let out = cwd.join("stdout.txt");
    let err = cwd.join("stderr.txt");
    let mut child = Command::new(kiln())
        .current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("kiln {args:?} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    (status.code(), read(&out), read(&err))
}

#[test]
fn quiet_builds_and_run_exits_1_when_a_vm_failed() {
    require_qemu();
    let dir = scratch("cli-run-fails");
    let image = root().join("images/hello-fails.toml");
    let image = image.to_string_lossy();
    // Without -q a build tells what it does on stderr; with -q, nothing.
    let (code, _, err) = run_apart(
        &dir,
        &["build", &image, "-o", "out"],
        Duration::from_secs(900),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.lines().any(|l| l.starts_with("kiln: ")), "{err}");
    let (code, out, err) = run_apart(
        &dir,
        &["-q", "build", &image, "-o", "out"],
        Duration::from_secs(900),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "-q printed: {err}");
    assert!(out.starts_with("built hello-fails in out"), "{out}");
    // The VM exits with code 3: kiln run exits 1 and says why, even with -q.
    let t = Instant::now();
    let (code, out, err) = run_apart(&dir, &["-q", "run", "out"], Duration::from_secs(600));
    assert!(
        out.contains("kiln: appliance done ok=0 failed=1"),
        "the console is on stdout:\n{out}\n{err}"
    );
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        ["kiln: 1 VM(s) failed, 0 ok (see their state= lines above)"],
        "{err}"
    );
    eprintln!(
        "hello-fails: kiln run in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        !out.contains("booting:"),
        "a spinner reached a pipe:\n{out}"
    );
    // On a terminal (script(1) gives kiln one) a spinner shows the boot
    // until the first console line.
    let typescript = dir.join("typescript");
    let mut child = Command::new("script")
        .args(["-qefc", &format!("{} run out", kiln().display())])
        .arg(&typescript)
        .current_dir(&dir)
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            panic!("kiln run on a terminal did not end within 600 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let shown = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    assert_eq!(status.code(), Some(1), "{shown}");
    let spinner = shown.find("booting: waiting for the console");
    let first_line = shown.find("kiln: vm=hello state=starting");
    assert!(
        spinner.is_some() && spinner < first_line,
        "no booting spinner before the first console line:\n{shown}"
    );
}

#[test]
fn build_refuses_what_would_fail_at_boot() {
    let dir = scratch("cli-build-checks");
    std::fs::write(dir.join("junk.bin"), vec![7u8; 5000]).unwrap();
    let debian = "[kernel]\nsource = \"debian:linux-image-cloud-amd64\"\n";
    // An image of `head` and one VM whose `[vm]` keys are `vm` and whose
    // `[vm.boot]` keys are `boot`.
    let image = |head: &str, vm: &str, boot: &str| {
        format!("name = \"p\"\n{head}[[vm]]\nname = \"a\"\nmemory = \"64M\"\n{vm}[vm.boot]\n{boot}")
    };
    let hello = "kernel = \"cargo:kiln-hello\"\n";
    let long = |n: usize| "x".repeat(n);
    let cases: Vec<(&str, String, String)> = vec![
        (
            "host-junk",
            image("[kernel]\nsource = \"junk.bin\"\n", "", hello),
            "host-junk.toml:3:1: key `kernel.source`: junk.bin is not a bzImage".into(),
        ),
        (
            "host-cmdline",
            image(
                &format!("[kernel]\nsource = \"debian:linux-image-cloud-amd64\"\ncmdline = \"{}\"\n", long(3000)),
                "",
                hello,
            ),
            "host-cmdline.toml:4:1: key `kernel.cmdline`: the command line is 3000 bytes; expected at most 2047".into(),
        ),
        (
            "unknown-package",
            image("[kernel]\nsource = \"debian:linux-image-no-such-kiln\"\n", "", hello),
            "unknown-package.toml:3:1: key `kernel.source`: apt knows no Debian package \"linux-image-no-such-kiln\"".into(),
        ),
        (
            "guest-junk",
            image(debian, "", "kernel = \"junk.bin\"\n"),
            "guest-junk.toml:8:1: key `vm[0].boot.kernel`: ./junk.bin is neither a bzImage nor an ELF kernel".into(),
        ),
        (
            "guest-cmdline",
            image(debian, "", &format!("{hello}cmdline = \"{}\"\n", long(70_000))),
            "guest-cmdline.toml:9:1: key `vm[0].boot.cmdline`: the command line is 70000 bytes; expected at most 65535".into(),
        ),
        (
            "params",
            image(&format!("{debian}[modules]\nparams = {{ foo = \"x\" }}\n"), "", hello),
            "params.toml:5:12: key `modules.params.foo`: module \"foo\" is not loaded".into(),
        ),
        (
            "no-vfio",
            image(
                &format!("{debian}[modules]\nload = [\"kvm-amd\"]\n"),
                "[[vm.pci]]\ndevice = \"1234:11e8\"\n",
                hello,
            ),
            "no-vfio.toml:5:1: key `modules.load`: VM \"a\" assigns a PCI device ([[pci]]), which needs VFIO".into(),
        ),
    ];
    for (name, config, expected) in cases {
        let file = format!("{name}.toml");
        std::fs::write(dir.join(&file), config).unwrap();
        let o = run_kiln(&dir, &["-q", "build", &file, "-o", &format!("out-{name}")]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(&expected),
            "{name}: expected {expected:?} in:\n{err}"
        );
        assert!(
            !dir.join(format!("out-{name}")).exists(),
            "{name} wrote an output"
        );
    }
    // -v shows the commands kiln runs (here apt's look-up of the package).
    let o = run_kiln(
        &dir,
        &["-v", "build", "unknown-package.toml", "-o", "out-v"],
    );
    let err = text(&o.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("kiln: $ apt-cache ") && l.contains("linux-image-no-such-kiln")),
        "-v printed no command:\n{err}"
    );
    let o = run_kiln(&dir, &["-q", "-v", "inspect", "unknown-package.toml"]);
    assert_eq!(o.status.code(), Some(2), "-q and -v together are refused");
}
