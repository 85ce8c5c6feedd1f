//! `kiln test` from the outside: exit codes, the JUnit report checked
//! against tests/data/junit.xsd with xmllint, and the example images judged
//! on the emulated target and on a lab machine made of QEMU
//! (tests/lab/fake-qemu-lab.toml), driven through the `command` target.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::{kiln, require_qemu, root, run_kiln, run_with_timeout};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A built image directory as `kiln test` reads it (manifest only: the
/// replay target boots nothing).
fn fake_image(dir: &Path, vms: serde_json::Value) -> PathBuf {
    let image = dir.join("fake");
    std::fs::create_dir_all(&image).expect("mkdir");
    let manifest = serde_json::json!({
        "name": "fake",
        "kiln_version": "0.1.0",
        "source_date_epoch": 0,
        "kernel": {"release": "6.1.0-test-amd64", "source": "test"},
        "cmdline": "console=ttyS0",
        "compression": "zstd",
        "artifacts": [{"file": "initramfs.cpio.zst", "size": 3, "sha256": "c0ffee"}],
        "modules": [],
        "payloads": [],
        "inputs": [],
        "vms": vms,
    });
    std::fs::write(image.join("manifest.json"), manifest.to_string()).expect("write manifest");
    image
}

fn xmllint(args: &[&str]) -> std::process::Output {
    Command::new("xmllint")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("xmllint cannot run ({e}): run tests/setup (apt-get install -y libxml2-utils)")
        })
}

/// Validates `report` against kiln's JUnit schema; returns xmllint's verdict.
fn validate(report: &Path) -> (bool, String) {
    let xsd = root().join("tests/data/junit.xsd");
    let o = xmllint(&[
        "--noout",
        "--schema",
        &xsd.to_string_lossy(),
        &report.to_string_lossy(),
    ]);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn test_replay(dir: &Path, image: &Path, console: &str, junit: Option<&Path>) -> (i32, String) {
    let log = dir.join("console.log");
    std::fs::write(&log, console).expect("write console");
    let replay = format!("--target=replay:{}", log.display());
    let image = image.to_string_lossy().into_owned();
    let mut args = vec!["test", &image, &replay];
    let junit_arg;
    if let Some(j) = junit {
        junit_arg = format!("--junit={}", j.display());
        args.push(&junit_arg);
    }
    let o = run_kiln(dir, &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

#[test]
fn junit_report_validates_against_its_schema() {
    let d = tempfile::tempdir().expect("tempdir");
    let image = fake_image(
        d.path(),
        serde_json::json!([
            {"name": "ok", "test": {"expect": ["ok: done"]}},
            {"name": "bad", "test": {}},
            {"name": "noisy", "test": {"fail": ["DMA mismatch"]}},
            {"name": "ghost", "test": {}},
        ]),
    );
    let console = "\x1b[2J\x1b[Hkiln: vm=ok state=starting\r\n\
        kiln: vm=bad state=starting\r\n\
        kiln: vm=noisy state=starting\r\n\
        [ok] ok: done\r\n\
        [noisy] \x1b[31m<b>&\"DMA mismatch\"</b>\x1b[0m \x01\x02\x0b\x1b]0;t\x07 \u{fffe}\r\n\
        [bad] ]]> --\r\n\
        kiln: vm=ok state=exited code=0\r\n\
        kiln: vm=bad state=exited code=3\r\n";
    let junit = d.path().join("reports/junit.xml");
    let (code, out) = test_replay(d.path(), &image, console, Some(&junit));
    assert_eq!(code, 1, "a failure makes exit code 1:\n{out}");
    let (ok, why) = validate(&junit);
    assert!(ok, "the report does not validate:\n{why}");

    let xml = std::fs::read_to_string(&junit).expect("report written");
    assert!(
        xml.contains("<testsuite name=\"fake.replay\" tests=\"4\" failures=\"2\" errors=\"1\""),
        "{xml}"
    );
    assert!(xml.contains("<property name=\"image.digest\" value=\"sha256:c0ffee\"/>"));
    assert!(xml.contains("<property name=\"kernel.release\" value=\"6.1.0-test-amd64\"/>"));
    assert!(xml.contains("<testcase classname=\"fake.replay\" name=\"ok\""));
    assert!(xml.contains("type=\"exit-code\""), "{xml}");
    assert!(xml.contains("type=\"fail-pattern\""), "{xml}");
    assert!(
        xml.contains("<error message=\"it never started: the console closed"),
        "{xml}"
    );
    assert!(
        xml.contains("&lt;b&gt;&amp;\"DMA mismatch\"&lt;/b&gt;"),
        "escaped, ANSI and controls gone:\n{xml}"
    );
    assert!(!xml.contains('\u{1b}') && !xml.contains('\u{1}') && !xml.contains('\u{fffe}'));
    // The whole console is kept beside the report, untouched.
    let log = std::fs::read(d.path().join("reports/junit.xml.console.log")).expect("console log");
    assert!(log.windows(5).any(|w| w == b"\x1b[31m"));

    // The schema is not a rubber stamp: a report missing a contract
    // attribute is refused.
    let broken = d.path().join("broken.xml");
    std::fs::write(&broken, xml.replacen(" hostname=\"", " host=\"", 1)).expect("write");
    let (ok, why) = validate(&broken);
    assert!(!ok, "xmllint accepted a suite without hostname");
    assert!(why.contains("hostname"), "{why}");
}

#[test]
fn exit_codes_follow_the_contract() {
    let d = tempfile::tempdir().expect("tempdir");
    let image = fake_image(d.path(), serde_json::json!([{"name": "a", "test": {}}]));
    let start = "kiln: vm=a state=starting\n";
    let done = "kiln: appliance done ok=1 failed=0\n";
    let (code, out) = test_replay(
        d.path(),
        &image,
        &format!("{start}kiln: vm=a state=exited code=0\n{done}"),
        None,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 passed, 0 failed, 0 errors"), "{out}");
    let (code, out) = test_replay(
        d.path(),
        &image,
        &format!("{start}kiln: vm=a state=failed reason=triple fault\n{done}"),
        None,
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the runtime reported it failed: triple fault"),
        "{out}"
    );
    // The console ends before anything started: the target, not the guest.
    let (code, out) = test_replay(d.path(), &image, "Linux version 6.1\n", None);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("0 passed, 0 failed, 1 errors"), "{out}");
    assert!(
        image.join("test-console.log").is_file(),
        "without --junit the console is kept beside the image"
    );
}

#[test]
fn reports_and_logs_honour_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().expect("tempdir");
    let image = fake_image(d.path(), serde_json::json!([{"name": "a", "test": {}}]));
    let log = d.path().join("console.log");
    std::fs::write(
        &log,
        "kiln: vm=a state=starting\nkiln: vm=a state=exited code=0\n",
    )
    .expect("write console");
    for (umask, mode) in [("022", 0o644), ("027", 0o640), ("077", 0o600)] {
        let junit = d.path().join(format!("r{umask}.xml"));
        let o = Command::new("sh")
            .current_dir(d.path())
            .args(["-c", &format!("umask {umask}; exec \"$@\""), "sh"])
            .arg(kiln())
            .arg("test")
            .arg(&image)
            .arg(format!("--target=replay:{}", log.display()))
            .arg(format!("--junit={}", junit.display()))
            .output()
            .expect("kiln runs");
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        for file in [junit.clone(), kiln::harness::console_log_path(&junit)] {
            let got = std::fs::metadata(&file)
                .expect("written")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(got, mode, "{} under umask {umask}: {got:o}", file.display());
        }
    }
}

#[test]
fn a_broken_lab_file_is_an_error_with_a_report() {
    let d = tempfile::tempdir().expect("tempdir");
    let image = fake_image(d.path(), serde_json::json!([{"name": "a", "test": {}}]));
    let lab = d.path().join("box.toml");
    std::fs::write(
        &lab,
        "[power_on]\ncommand = \"true\"\n[console]\ncommand = \"cat\"\n",
    )
    .expect("write lab");
    let junit = d.path().join("r.xml");
    let o = run_kiln(
        d.path(),
        &[
            "test",
            &image.to_string_lossy(),
            "--target",
            &lab.to_string_lossy(),
            "--junit",
            &junit.to_string_lossy(),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("power_off"), "names the missing key:\n{out}");
    assert!(validate(&junit).0);
}

/// Runs `kiln test` with the environment `env`, bounded in time.
fn kiln_test(cwd: &Path, args: &[&str], env: &[(&str, &Path)]) -> kiln_tests::Finished {
    let mut cmd = Command::new(kiln());
    cmd.current_dir(cwd).arg("test").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, Duration::from_secs(900))
}

fn build(image: &str, out: &Path) {
    kiln_tests::images::build(&root().join(image), out);
}

#[test]
fn hello_passes_on_the_emulated_target() {
    require_qemu();
    let d = tempfile::tempdir().expect("tempdir");
    let junit = d.path().join("hello.xml");
    // An image config: kiln test builds it (into out/hello under its cwd).
    let run = kiln_test(
        d.path(),
        &[
            &root().join("images/hello.toml").to_string_lossy(),
            "--junit",
            &junit.to_string_lossy(),
        ],
        &[],
    );
    assert!(!run.timed_out, "kiln test hung:\n{}", run.output);
    assert_eq!(run.status.and_then(|s| s.code()), Some(0), "{}", run.output);
    assert!(run.output.contains("hello  hello  pass"), "{}", run.output);
    let (ok, why) = validate(&junit);
    assert!(ok, "{why}");
    let xml = std::fs::read_to_string(&junit).expect("report");
    assert!(
        xml.contains("<testcase classname=\"hello.qemu\" name=\"hello\""),
        "{xml}"
    );
    assert!(
        xml.contains("hello: exit 0"),
        "the VM's console is in the report:\n{xml}"
    );
    assert!(d.path().join("out/hello/manifest.json").is_file());
    eprintln!(
        "kiln test hello on qemu: {:.1} s",
        run.elapsed.as_secs_f64()
    );
}

#[test]
fn edu_passthrough_passes_on_the_emulated_target() {
    require_qemu();
    let d = tempfile::tempdir().expect("tempdir");
    let out = d.path().join("edu");
    build("images/edu-passthrough.toml", &out);
    let run = kiln_test(d.path(), &[&out.to_string_lossy()], &[]);
    assert!(!run.timed_out, "kiln test hung:\n{}", run.output);
    assert_eq!(run.status.and_then(|s| s.code()), Some(0), "{}", run.output);
    assert!(
        run.output.contains("1 passed, 0 failed, 0 errors"),
        "{}",
        run.output
    );
}

#[test]
fn hello_passes_on_a_lab_machine_made_of_qemu() {
    require_qemu();
    let d = tempfile::tempdir().expect("tempdir");
    let out = d.path().join("hello");
    build("images/hello.toml", &out);
    let lab_state = d.path().join("lab");
    let junit = d.path().join("lab.xml");
    let lab = root().join("tests/lab/fake-qemu-lab.toml");
    let run = kiln_test(
        d.path(),
        &[
            &out.to_string_lossy(),
            "--target",
            &lab.to_string_lossy(),
            "--junit",
            &junit.to_string_lossy(),
            "--repeat",
            "2",
        ],
        &[("FAKE_LAB_DIR", &lab_state)],
    );
    assert!(!run.timed_out, "kiln test hung:\n{}", run.output);
    assert_eq!(run.status.and_then(|s| s.code()), Some(0), "{}", run.output);
    assert!(
        run.output.contains("2 passed, 0 failed, 0 errors"),
        "{}",
        run.output
    );
    let (ok, why) = validate(&junit);
    assert!(ok, "{why}");
    let xml = std::fs::read_to_string(&junit).expect("report");
    assert_eq!(
        xml.matches("<testcase classname=\"hello.fake-qemu\" name=\"hello\"")
            .count(),
        2,
        "{xml}"
    );
    assert!(lab_state.join("tftp/vmlinuz").is_file(), "deploy ran");
    assert!(
        !lab_state.join("qemu.pid").exists(),
        "power_off stopped the lab machine"
    );
}
