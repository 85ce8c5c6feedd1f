//! kiln appliances on the engines labs run, proven against the real ones:
//! LAVA's dispatcher (`lava-run` on a QEMU device dictionary rendered from
//! LAVA's own device-type template) and labgrid (a local environment from
//! `kiln labgrid-env`, and a place reached through a coordinator and an
//! exporter on loopback). A passing appliance (images/hello.toml) and one
//! whose VM fails (images/hello-fails.toml) get the same verdicts, JUnit
//! testcases and exit code through each engine as from
//! `kiln test --target qemu`; a LAVA monitor's pass never outweighs kiln's
//! failure. Engines are installed by tests/setup (lava-dispatcher) and here
//! (labgrid from PyPI into a venv); one that cannot run fails the test.

// Test code: a failed step stops the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::engines::{
    self, assert_same_verdicts, free_port, kiln_test, labgrid_bin, path_with, run_ok, wait_until,
    ConsoleServer, Daemon, Judged, LavaRun,
};
use kiln_tests::{images, kiln, root};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// A built image and its verdicts on the emulated target.
struct Reference {
    dir: PathBuf,
    qemu: Judged,
}

/// hello (passes) and hello-fails (its VM exits with code 3), built and
/// judged on the emulated target once for every test here.
fn references() -> &'static [Reference; 2] {
    static REFS: OnceLock<[Reference; 2]> = OnceLock::new();
    REFS.get_or_init(|| {
        kiln_tests::require_qemu();
        let scratch = images::scratch("lab-engines");
        let judge = |name: &str| {
            let dir = scratch.join(name);
            images::build(&root().join(format!("images/{name}.toml")), &dir);
            let qemu = kiln_test(&dir, "qemu", &scratch.join(format!("{name}.qemu.xml")), &[]);
            Reference { dir, qemu }
        };
        let refs = [judge("hello"), judge("hello-fails")];
        assert_eq!(refs[0].qemu.code, Some(0), "{}", refs[0].qemu.run.output);
        assert_eq!(refs[1].qemu.code, Some(1), "{}", refs[1].qemu.run.output);
        assert_eq!(
            refs[1].qemu.cases[0].outcome,
            "failure exit-code: it exited with code 3"
        );
        refs
    })
}

/// A folder for one engine's files beside the references.
fn work(name: &str) -> PathBuf {
    let dir = references()[0]
        .dir
        .parent()
        .expect("scratch folder")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a work folder");
    dir
}

fn kiln_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(kiln());
    cmd.args(args);
    cmd
}

/// The LAVA job `kiln lava-job DIR ARGS` writes, as `to`.
fn lava_job(dir: &Path, args: &[&str], to: &Path) -> PathBuf {
    let mut cmd = kiln_cmd(&[
        "lava-job",
        &dir.to_string_lossy(),
        "-o",
        &to.to_string_lossy(),
    ]);
    cmd.args(args);
    run_ok(cmd, "kiln lava-job", Duration::from_secs(60));
    to.to_path_buf()
}

#[test]
fn lava_jobs_get_the_emulated_targets_verdicts() {
    let refs = references();
    let w = work("lava");
    let mut logs = Vec::new();
    for r in refs {
        let name = r.dir.file_name().expect("image folder").to_string_lossy();
        let wd = w.join(&*name);
        std::fs::create_dir_all(&wd).expect("work folder");
        let job = lava_job(&r.dir, &[], &wd.join("job.yaml"));
        let log = engines::lava_run(&job, "kiln-qemu-01", &wd, LavaRun::Run);
        let text = std::fs::read_to_string(&log).expect("LAVA log");
        // LAVA completed both jobs: a VM that fails is a test result, not a
        // broken job.
        assert!(
            text.contains(r#""msg": {"case": "job", "definition": "lava", "result": "pass"}"#),
            "LAVA did not complete the job:\n{}",
            engines::last_lines(&text, 30)
        );
        let lava = kiln_test(
            &r.dir,
            &format!("replay:{}", log.display()),
            &wd.join("lava.xml"),
            &[],
        );
        assert_same_verdicts("kiln on LAVA's log", &lava, &r.qemu);
        assert!(lava
            .junit
            .contains(r#"<property name="target" value="lava"/>"#));
        // LAVA's server keeps the same records as `- {...}` in output.yaml.
        let server = wd.join("output.yaml");
        let records: String = text.lines().map(|l| format!("- {l}\n")).collect();
        std::fs::write(&server, records).expect("write output.yaml");
        let again = kiln_test(
            &r.dir,
            &format!("replay:{}", server.display()),
            &wd.join("output.xml"),
            &[],
        );
        assert_same_verdicts("kiln on LAVA's output.yaml", &again, &r.qemu);
        logs.push((log, lava));
    }
    // The monitors gave each VM its LAVA test case, agreeing here.
    assert!(logs[0]
        .1
        .junit
        .contains(r#"<property name="lava.kiln-hello.hello" value="pass"/>"#));
    assert!(logs[1]
        .1
        .junit
        .contains(r#"<property name="lava.kiln-hello-fails.hello" value="fail"/>"#));

    // An expectation LAVA's monitor cannot see: the same job log (LAVA: the
    // VM passed) judged against an image that also expects a line hello
    // never prints fails in kiln, and kiln's verdict is the one reported.
    let strict = w.join("hello-strict");
    copy_dir(&refs[0].dir, &strict);
    let manifest = strict.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).expect("manifest")).expect("json");
    m["vms"][0]["test"]["expect"]
        .as_array_mut()
        .expect("hello expects lines")
        .push("hello: a line hello never prints".into());
    std::fs::write(&manifest, m.to_string()).expect("write manifest");
    let strict_judged = kiln_test(
        &strict,
        &format!("replay:{}", logs[0].0.display()),
        &w.join("strict.xml"),
        &[],
    );
    assert_eq!(strict_judged.code, Some(1), "{}", strict_judged.run.output);
    assert!(
        strict_judged.cases[0]
            .outcome
            .starts_with("failure missing-expect:"),
        "{:?}",
        strict_judged.cases
    );
    assert!(strict_judged
        .junit
        .contains(r#"<property name="lava.kiln-hello.hello" value="pass"/>"#));
}

#[test]
fn lava_jobs_for_boards_are_accepted_by_their_device_types() {
    let hello = &references()[0].dir;
    let w = work("lava-boards");
    // A UEFI board: the disk image through the flasher, boot `minimal`.
    // LAVA builds and validates the whole pipeline on the device.
    let job = lava_job(hello, &["--device-type", "seco-b68"], &w.join("uefi.yaml"));
    let log = engines::lava_run(&job, "kiln-uefi-01", &w, LavaRun::Validate);
    let text = std::fs::read_to_string(&log).expect("LAVA log");
    assert!(
        text.contains(r#""msg": {"case": "validate", "definition": "lava", "result": "pass"}"#),
        "{}",
        engines::last_lines(&text, 30)
    );
    // A board booting iPXE: kernel and initramfs over TFTP. Checked against
    // LAVA's job schema and rendered on the device type; validating its
    // pipeline needs a TFTP server on the worker (tftpd-hpa), not here.
    let job = lava_job(
        hello,
        &["--device-type", "x86", "--boot", "ipxe"],
        &w.join("ipxe.yaml"),
    );
    let config = engines::lava_device(&job, "kiln-ipxe-01", &w);
    let device = std::fs::read_to_string(config).expect("device configuration");
    assert!(
        device.contains("set extraargs console=ttyS0 panic=-1 quiet ip=dhcp"),
        "the image's command line reaches iPXE:\n{device}"
    );
}

#[test]
fn a_labgrid_environment_gets_the_emulated_targets_verdicts() {
    let refs = references();
    let bin = labgrid_bin();
    let w = work("labgrid-local");
    for r in refs {
        let name = r.dir.file_name().expect("image folder").to_string_lossy();
        let env = w.join(format!("{name}.yaml"));
        run_ok(
            kiln_cmd(&[
                "labgrid-env",
                &r.dir.to_string_lossy(),
                "-o",
                &env.to_string_lossy(),
            ]),
            "kiln labgrid-env",
            Duration::from_secs(60),
        );
        let judged = kiln_test(
            &r.dir,
            &format!("labgrid:{}", env.display()),
            &w.join(format!("{name}.xml")),
            &[("PATH", path_with(&bin))],
        );
        assert_same_verdicts("labgrid (local QEMUDriver)", &judged, &r.qemu);
        eprintln!(
            "kiln test {name} through labgrid's QEMUDriver: {:.1} s",
            judged.run.elapsed.as_secs_f64()
        );
    }
    // An environment written for one image refuses another.
    let env = w.join("hello.yaml");
    let other = kiln_test(
        &refs[1].dir,
        &format!("labgrid:{}", env.display()),
        &w.join("mismatch.xml"),
        &[("PATH", path_with(&bin))],
    );
    assert_eq!(other.code, Some(2), "{}", other.run.output);
    assert!(
        other
            .run
            .output
            .contains("write an environment for this image with `kiln labgrid-env`"),
        "{}",
        other.run.output
    );
}

#[test]
fn a_labgrid_place_through_a_coordinator_gets_the_emulated_targets_verdicts() {
    let refs = references();
    let bin = labgrid_bin();
    let w = work("labgrid-remote");
    let coordinator = format!("127.0.0.1:{}", free_port());
    let place = format!("kiln-box-{}", std::process::id());
    let group = format!("kiln-box-{}", std::process::id());
    let env = |cmd: &mut Command| {
        cmd.current_dir(&w)
            .env("PATH", path_with(&bin))
            .env("LG_COORDINATOR", &coordinator);
    };

    // The lab: a console server for the box's serial line, a coordinator,
    // and an exporter offering the serial line as a NetworkSerialPort.
    let console = ConsoleServer::start();
    let mut coord = Command::new(bin.join("labgrid-coordinator"));
    coord.args(["-l", &coordinator]);
    env(&mut coord);
    let mut coord = Daemon::spawn("labgrid-coordinator", coord, w.join("coordinator.log"));
    let client = |args: &[&str]| {
        let mut c = Command::new(bin.join("labgrid-client"));
        c.args(args);
        env(&mut c);
        c
    };
    wait_until(
        "labgrid-coordinator answers",
        Duration::from_secs(60),
        || {
            coord.assert_running();
            kiln_tests::run_with_timeout(client(&["places"]), Duration::from_secs(20)).code()
                == Some(0)
        },
    );
    let exporter_yaml = w.join("exporter.yaml");
    std::fs::write(
        &exporter_yaml,
        format!(
            "{group}:\n  NetworkSerialPort:\n    host: 127.0.0.1\n    port: {}\n    speed: 115200\n    protocol: raw\n",
            console.client_port
        ),
    )
    .expect("write exporter.yaml");
    let mut exp = Command::new(bin.join("labgrid-exporter"));
    exp.args(["-c", &coordinator, "-n", "kiln-exporter"])
        .arg(&exporter_yaml);
    env(&mut exp);
    let mut exp = Daemon::spawn("labgrid-exporter", exp, w.join("exporter.log"));
    wait_until(
        "the exporter's serial port at the coordinator",
        Duration::from_secs(60),
        || {
            exp.assert_running();
            let r = kiln_tests::run_with_timeout(client(&["resources"]), Duration::from_secs(20));
            r.output
                .contains(&format!("kiln-exporter/{group}/NetworkSerialPort"))
        },
    );
    run_ok(
        client(&["-p", &place, "create"]),
        "labgrid-client create",
        Duration::from_secs(30),
    );
    run_ok(
        client(&[
            "-p",
            &place,
            "add-match",
            &format!("kiln-exporter/{group}/*"),
        ]),
        "labgrid-client add-match",
        Duration::from_secs(30),
    );

    // The box: QEMU (tests/lab/fake-qemu) whose serial line dials the
    // console server, powered by labgrid's ExternalPowerDriver; the image
    // deployed by the environment's kiln-deploy hook.
    let fake = root().join("tests/lab/fake-qemu");
    let lab_state = w.join("box");
    let remote = w.join("remote.yaml");
    std::fs::write(
        &remote,
        format!(
            "targets:\n  main:\n    resources:\n      RemotePlace:\n        name: !template $LG_PLACE\n    drivers:\n      SerialDriver: {{}}\n      ExternalPowerDriver:\n        cmd_on: {f} power_on\n        cmd_off: {f} power_off\n        delay: 0.0\noptions:\n  kiln-deploy: {f} deploy\n",
            f = fake.display()
        ),
    )
    .expect("write remote.yaml");
    for r in refs {
        let name = r.dir.file_name().expect("image folder").to_string_lossy();
        let judged = kiln_test(
            &r.dir,
            &format!("labgrid:{}:{place}", remote.display()),
            &w.join(format!("{name}.xml")),
            &[
                ("PATH", path_with(&bin)),
                ("LG_COORDINATOR", coordinator.clone()),
                ("FAKE_LAB_DIR", lab_state.display().to_string()),
                (
                    "FAKE_QEMU_SERIAL",
                    format!("tcp:127.0.0.1:{}", console.board_port),
                ),
            ],
        );
        assert_same_verdicts("labgrid (place via coordinator)", &judged, &r.qemu);
        assert!(
            judged.junit.contains(&format!(
                r#"<property name="labgrid.place" value="{place}"/>"#
            )),
            "{}",
            judged.junit
        );
        eprintln!(
            "kiln test {name} through a labgrid place: {:.1} s",
            judged.run.elapsed.as_secs_f64()
        );
        assert!(
            lab_state.join("tftp/vmlinuz").is_file(),
            "the deploy hook ran"
        );
        assert!(
            !lab_state.join("qemu.pid").exists(),
            "labgrid powered the box off"
        );
    }
    // kiln released the place it acquired.
    let show = run_ok(
        client(&["-p", &place, "show"]),
        "labgrid-client show",
        Duration::from_secs(30),
    );
    assert!(
        !show.output.contains("acquired: ") || show.output.contains("acquired: None"),
        "{}",
        show.output
    );
    coord.assert_running();
    exp.assert_running();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a copy");
    for e in std::fs::read_dir(from)
        .expect("read an image folder")
        .flatten()
    {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy an image file");
        }
    }
}
