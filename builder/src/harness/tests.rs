//! The harness end to end on scripted consoles: a fake target replays lines
//! with delays (and can hang, or fail to boot), and `run_on` must give the
//! right verdicts, exit code, report and log, and always stop the target.

use super::targets::{Console, Deployable, Target, TargetError, TargetSpec};
use super::*;
use crate::manifest::{Artifact, KernelInfo, ManifestVm};
use kiln_schema::config::{Duration as CfgDuration, TestExpectations};
use std::io::Write;
use std::sync::Mutex;

type Events = Arc<Mutex<Vec<String>>>;

/// A target whose console is a script of `(delay ms, line)`.
struct Fake {
    /// One script per attempt; the last one repeats.
    scripts: Vec<Vec<(u64, String)>>,
    /// Keep the console open after the script, like a hung machine.
    hang: bool,
    fail_boot: bool,
    events: Events,
    boots: usize,
    release: Option<mpsc::Sender<()>>,
    /// Set just before the console closes, as a second Ctrl-C killing
    /// the target does.
    interrupt_on_close: Option<Arc<AtomicBool>>,
}

impl Fake {
    fn new(scripts: Vec<Vec<(u64, &str)>>) -> (Self, Events) {
        let events = Events::default();
        let fake = Fake {
            scripts: scripts
                .into_iter()
                .map(|s| s.into_iter().map(|(d, l)| (d, l.to_string())).collect())
                .collect(),
            hang: false,
            fail_boot: false,
            events: events.clone(),
            boots: 0,
            release: None,
            interrupt_on_close: None,
        };
        (fake, events)
    }

    fn event(&self, e: &str) {
        self.events.lock().unwrap().push(e.to_string());
    }
}

impl Target for Fake {
    fn name(&self) -> &str {
        "fake"
    }

    fn deploy(&mut self, image: &Deployable) -> Result<(), TargetError> {
        self.event(&format!("deploy {}", image.name));
        Ok(())
    }

    fn boot(&mut self, _image: &Deployable) -> Result<Console, TargetError> {
        self.event("boot");
        if self.fail_boot {
            return Err(TargetError::Spawn {
                what: "the fake machine".into(),
                source: std::io::Error::other("power controller unreachable"),
            });
        }
        let script = self
            .scripts
            .get(self.boots)
            .or(self.scripts.last())
            .cloned()
            .unwrap_or_default();
        self.boots += 1;
        let (reader, mut writer) = std::io::pipe().unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        self.release = Some(tx);
        let hang = self.hang;
        let interrupt = self.interrupt_on_close.clone();
        std::thread::spawn(move || {
            for (delay, line) in script {
                std::thread::sleep(Duration::from_millis(delay));
                if writer.write_all(format!("{line}\r\n").as_bytes()).is_err() {
                    return;
                }
            }
            if hang {
                // Until stop() drops the sender.
                let _ = rx.recv();
            }
            if let Some(flag) = interrupt {
                // While the run loop waits for the console.
                std::thread::sleep(Duration::from_millis(30));
                flag.store(true, Ordering::Relaxed);
                drop(writer);
            }
        });
        Ok(Box::new(reader))
    }

    fn stop(&mut self) -> Result<(), TargetError> {
        self.event("stop");
        self.release = None;
        Ok(())
    }
}

fn expect(expect: &[&str], fail: &[&str], timeout: Option<u64>) -> TestExpectations {
    TestExpectations {
        expect: expect.iter().map(|s| s.to_string()).collect(),
        fail: fail.iter().map(|s| s.to_string()).collect(),
        timeout: timeout.map(CfgDuration::secs),
    }
}

/// A built image directory as far as `kiln test` reads it.
fn image_dir(root: &Path, name: &str, vms: &[(&str, TestExpectations)]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let m = Manifest {
        name: name.into(),
        kiln_version: "0".into(),
        source_date_epoch: 0,
        kernel: KernelInfo {
            release: "6.1.0-test".into(),
            source: "test".into(),
            package: None,
            version: None,
            packages: Vec::new(),
            apt_sources: Vec::new(),
        },
        cmdline: String::new(),
        compression: "zstd".into(),
        artifacts: vec![Artifact {
            file: "initramfs.cpio.zst".into(),
            size: 1,
            sha256: "d1".into(),
        }],
        modules: Vec::new(),
        payloads: Vec::new(),
        inputs: Vec::new(),
        target: None,
        vms: vms
            .iter()
            .map(|(n, t)| ManifestVm {
                name: n.to_string(),
                test: t.clone(),
            })
            .collect(),
        uki: None,
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string(&m).unwrap(),
    )
    .unwrap();
    dir
}

fn options(inputs: Vec<PathBuf>, junit: Option<PathBuf>) -> Options {
    Options {
        inputs,
        junit,
        repeat: 1,
        target: TargetSpec::Replay("unused".into()),
        timeout: None,
        boot_timeout: None,
        echo: false,
    }
}

fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

const PASS: &[(u64, &str)] = &[
    (10, "Linux version 6.1.0"),
    (10, "kiln: vm=hello state=starting"),
    (10, "\u{1b}[32mhello: exit 0\u{1b}[0m"),
    (10, "kiln: vm=hello state=exited code=0"),
    (10, "kiln: appliance done ok=1 failed=0"),
];

#[test]
fn a_passing_image_writes_report_and_log() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(
        d.path(),
        "hello",
        &[("hello", expect(&["hello: exit 0"], &[], Some(5)))],
    );
    let junit = d.path().join("out/report.xml");
    let (fake, events) = Fake::new(vec![PASS.to_vec()]);
    let opts = options(vec![dir], Some(junit.clone()));
    let report = run_on(&opts, Ok(Box::new(fake)), flag()).unwrap();
    assert_eq!(report.exit_code(), 0, "{:?}", report.runs);
    assert_eq!(
        *events.lock().unwrap(),
        ["deploy hello", "boot", "stop"],
        "deployed, booted, stopped once"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("tests=\"1\" failures=\"0\" errors=\"0\""),
        "{xml}"
    );
    assert!(xml.contains("<property name=\"image.digest\" value=\"sha256:d1\"/>"));
    assert!(xml.contains("<property name=\"kernel.release\" value=\"6.1.0-test\"/>"));
    assert!(xml.contains("<testcase classname=\"hello.fake\" name=\"hello\""));
    let log = std::fs::read(d.path().join("out/report.xml.console.log")).unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("===== kiln test: hello on fake, attempt 1 of 1 ====="));
    assert!(
        log.contains("\u{1b}[32mhello: exit 0\u{1b}[0m\r\n"),
        "the log is the raw console: {log:?}"
    );
    assert_eq!(report.logs, [d.path().join("out/report.xml.console.log")]);
}

#[test]
fn without_junit_the_log_is_kept_beside_the_image() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(d.path(), "hello", &[("hello", expect(&[], &[], None))]);
    let (fake, _) = Fake::new(vec![PASS.to_vec()]);
    let report = run_on(
        &options(vec![dir.clone()], None),
        Ok(Box::new(fake)),
        flag(),
    )
    .unwrap();
    assert_eq!(report.exit_code(), 0);
    assert_eq!(report.logs, [dir.join("test-console.log")]);
    assert!(std::fs::read_to_string(dir.join("test-console.log"))
        .unwrap()
        .contains("kiln: appliance done"));
}

#[test]
fn a_hanging_guest_is_stopped_and_fails_at_the_run_timeout() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(d.path(), "hang", &[("hello", expect(&[], &[], Some(60)))]);
    let junit = d.path().join("r.xml");
    let (mut fake, events) = Fake::new(vec![vec![
        (10, "kiln: vm=hello state=starting"),
        (10, "hello: spinning"),
    ]]);
    fake.hang = true;
    let mut opts = options(vec![dir], Some(junit.clone()));
    opts.timeout = Some(Duration::from_millis(600));
    let started = Instant::now();
    let report = run_on(&opts, Ok(Box::new(fake)), flag()).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout held"
    );
    assert_eq!(
        report.exit_code(),
        1,
        "a VM that never reports is a failure"
    );
    let run = &report.runs[0];
    assert_eq!(
        run.error.as_ref().map(|e| e.0.as_str()),
        Some("run-timeout")
    );
    assert_eq!(run.vms[0].kind, "never-reported");
    assert_eq!(
        events.lock().unwrap().last().map(String::as_str),
        Some("stop")
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<failure message=\"it never reported an end: the run timed out after 0.6s\" type=\"never-reported\">"), "{xml}");
    assert!(xml.contains("<system-err>run error (run-timeout)"), "{xml}");
}

#[test]
fn a_guest_that_hangs_past_its_own_timeout_fails_without_a_run_error() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(
        d.path(),
        "hang",
        &[(
            "hello",
            TestExpectations {
                timeout: Some(CfgDuration(Duration::from_millis(300))),
                ..Default::default()
            },
        )],
    );
    let (mut fake, _) = Fake::new(vec![vec![(10, "kiln: vm=hello state=starting")]]);
    fake.hang = true;
    let report = run_on(&options(vec![dir], None), Ok(Box::new(fake)), flag()).unwrap();
    assert_eq!(report.exit_code(), 1);
    assert_eq!(report.runs[0].vms[0].kind, "never-reported");
    assert_eq!(report.runs[0].error, None);
}

#[test]
fn a_boot_failure_is_an_error_and_still_stops_the_target() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(
        d.path(),
        "two",
        &[("a", expect(&[], &[], None)), ("b", expect(&[], &[], None))],
    );
    let junit = d.path().join("r.xml");
    let (mut fake, events) = Fake::new(vec![vec![]]);
    fake.fail_boot = true;
    let report = run_on(
        &options(vec![dir], Some(junit.clone())),
        Ok(Box::new(fake)),
        flag(),
    )
    .unwrap();
    assert_eq!(report.exit_code(), 2, "an infrastructure error, no failure");
    assert_eq!(*events.lock().unwrap(), ["deploy two", "boot", "stop"]);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<error message=\"it never started: target error: Cannot start the fake machine: power controller unreachable\" type=\"target\">").count(), 2, "{xml}");
}

#[test]
fn a_fail_pattern_and_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(
        d.path(),
        "p",
        &[("hello", expect(&[], &["DMA mismatch"], None))],
    );
    let (fake, _) = Fake::new(vec![
        vec![
            (5, "kiln: vm=hello state=starting"),
            (5, "hello: DMA mismatch at 0x1000"),
            (5, "kiln: vm=hello state=exited code=0"),
            (5, "kiln: appliance done ok=1 failed=0"),
        ],
        vec![
            (5, "kiln: vm=hello state=starting"),
            (5, "[   3.1] Kernel panic - not syncing: Fatal exception"),
            (5, "kiln: vm=hello state=exited code=0"),
        ],
    ]);
    let mut opts = options(vec![dir], None);
    opts.repeat = 2;
    let report = run_on(&opts, Ok(Box::new(fake)), flag()).unwrap();
    assert_eq!(report.exit_code(), 1);
    assert_eq!(report.runs[0].vms[0].kind, "fail-pattern");
    assert_eq!(report.runs[1].vms[0].kind, "panic");
    assert_eq!(
        report.runs[1].error.as_ref().map(|e| e.0.as_str()),
        Some("host-panic")
    );
    assert_eq!(report.runs[1].attempt, 2);
}

#[test]
fn repeats_reveal_a_flaky_guest() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(d.path(), "flaky", &[("hello", expect(&[], &[], None))]);
    let bad = vec![
        (5, "kiln: vm=hello state=starting"),
        (5, "kiln: vm=hello state=exited code=7"),
        (5, "kiln: appliance done ok=0 failed=1"),
    ];
    let (fake, events) = Fake::new(vec![PASS.to_vec(), bad, PASS.to_vec()]);
    let mut opts = options(vec![dir], None);
    opts.repeat = 3;
    let report = run_on(&opts, Ok(Box::new(fake)), flag()).unwrap();
    assert_eq!(report.exit_code(), 1);
    let verdicts: Vec<Verdict> = report.runs.iter().map(|r| r.vms[0].verdict).collect();
    assert_eq!(verdicts, [Verdict::Pass, Verdict::Failure, Verdict::Pass]);
    let text = report::summary(&report.runs, false);
    assert!(
        text.contains(".F.  flaky  attempt 2: it exited with code 7"),
        "{text}"
    );
    assert_eq!(
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| *e == "stop")
            .count(),
        3
    );
}

#[test]
fn ctrl_c_stops_the_target_and_still_writes_the_report() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(d.path(), "int", &[("hello", expect(&[], &[], None))]);
    let junit = d.path().join("r.xml");
    let (mut fake, events) = Fake::new(vec![vec![(5, "kiln: vm=hello state=starting")]]);
    fake.hang = true;
    let stop = flag();
    let setter = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        setter.store(true, Ordering::Relaxed);
    });
    let mut opts = options(vec![dir.clone(), dir], Some(junit.clone()));
    opts.repeat = 5;
    let report = run_on(&opts, Ok(Box::new(fake)), stop).unwrap();
    assert_eq!(report.exit_code(), 130);
    assert_eq!(report.runs.len(), 1, "nothing runs after Ctrl-C");
    assert_eq!(report.runs[0].vms[0].kind, "interrupted");
    assert_eq!(
        events.lock().unwrap().last().map(String::as_str),
        Some("stop")
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("type=\"interrupted\""), "{xml}");
}

/// Runs one image whose VMs all report their end, then the appliance stays
/// silent (no `done` line: the judge waits its grace), and Ctrl-C comes
/// while it waits.
fn interrupted_after_the_verdicts(vms: &[&str], script: Vec<(u64, &str)>) -> (Report, Events) {
    let d = tempfile::tempdir().unwrap();
    let plans: Vec<_> = vms.iter().map(|v| (*v, expect(&[], &[], None))).collect();
    let dir = image_dir(d.path(), "late", &plans);
    let (mut fake, events) = Fake::new(vec![script]);
    fake.hang = true;
    let stop = flag();
    let setter = stop.clone();
    std::thread::spawn(move || {
        // The script takes ~20 ms; the grace for `done` is 5 s.
        std::thread::sleep(Duration::from_millis(500));
        setter.store(true, Ordering::Relaxed);
    });
    let junit = d.path().join("r.xml");
    let report = run_on(
        &options(vec![dir], Some(junit.clone())),
        Ok(Box::new(fake)),
        stop,
    )
    .unwrap();
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(!xml.contains("interrupted"), "{xml}");
    (report, events)
}

#[test]
fn ctrl_c_after_every_verdict_reports_the_verdicts() {
    let (report, events) = interrupted_after_the_verdicts(
        &["hello"],
        vec![
            (5, "kiln: vm=hello state=starting"),
            (5, "kiln: vm=hello state=exited code=0"),
        ],
    );
    assert!(!report.interrupted);
    assert_eq!(report.runs[0].error, None);
    assert_eq!(report.runs[0].vms[0].verdict, Verdict::Pass);
    assert_eq!(report.exit_code(), 0, "{:?}", report.runs);
    assert_eq!(*events.lock().unwrap(), ["deploy late", "boot", "stop"]);

    let (report, _) = interrupted_after_the_verdicts(
        &["a", "b"],
        vec![
            (5, "kiln: vm=a state=starting"),
            (5, "kiln: vm=b state=starting"),
            (5, "kiln: vm=a state=exited code=0"),
            (5, "kiln: vm=b state=exited code=3"),
        ],
    );
    assert_eq!(report.exit_code(), 1, "{:?}", report.runs);
    assert_eq!(
        summary_totals(&report),
        "1 passed, 1 failed, 0 errors",
        "not marked interrupted"
    );
}

fn summary_totals(report: &Report) -> String {
    report::summary(&report.runs, report.interrupted)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn ctrl_c_before_a_verdict_is_in_still_exits_130() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(
        d.path(),
        "half",
        &[("a", expect(&[], &[], None)), ("b", expect(&[], &[], None))],
    );
    let (mut fake, _) = Fake::new(vec![vec![
        (5, "kiln: vm=a state=starting"),
        (5, "kiln: vm=b state=starting"),
        (5, "kiln: vm=a state=exited code=0"),
    ]]);
    fake.hang = true;
    let stop = flag();
    let setter = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        setter.store(true, Ordering::Relaxed);
    });
    let report = run_on(&options(vec![dir], None), Ok(Box::new(fake)), stop).unwrap();
    assert!(report.interrupted);
    assert_eq!(report.exit_code(), 130);
    let kinds: Vec<_> = report.runs[0].vms.iter().map(|v| v.kind.as_str()).collect();
    assert_eq!(kinds, ["", "interrupted"], "a keeps its pass");
}

#[test]
fn a_console_killed_by_ctrl_c_is_an_interrupt() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(d.path(), "killed", &[("hello", expect(&[], &[], None))]);
    let (mut fake, _) = Fake::new(vec![vec![(5, "kiln: vm=hello state=starting")]]);
    let stop = flag();
    fake.interrupt_on_close = Some(stop.clone());
    let report = run_on(&options(vec![dir], None), Ok(Box::new(fake)), stop).unwrap();
    let vm = &report.runs[0].vms[0];
    assert_eq!(vm.kind, "interrupted", "{}", vm.reason);
    assert_eq!(report.exit_code(), 130);
}

#[test]
fn images_that_cannot_be_prepared_still_get_verdicts() {
    let d = tempfile::tempdir().unwrap();
    let good = image_dir(d.path(), "good", &[("hello", expect(&[], &[], None))]);
    let bad = image_dir(d.path(), "bad", &[("x", expect(&["("], &[], None))]);
    let old = d.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    let (fake, events) = Fake::new(vec![PASS.to_vec()]);
    let junit = d.path().join("r.xml");
    let report = run_on(
        &options(vec![bad, old, good], Some(junit.clone())),
        Ok(Box::new(fake)),
        flag(),
    )
    .unwrap();
    assert_eq!(report.exit_code(), 2);
    let kinds: Vec<(&str, &str, &str)> = report
        .runs
        .iter()
        .flat_map(|r| {
            r.vms
                .iter()
                .map(move |v| (r.image.as_str(), v.name.as_str(), v.kind.as_str()))
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("bad", "x", "config"),
            ("old", "(setup)", "image"),
            ("good", "hello", "")
        ]
    );
    assert_eq!(
        events.lock().unwrap().len(),
        3,
        "only the good image booted"
    );
    assert!(report.runs[1].vms[0]
        .reason
        .contains("build the image with `kiln build`"));
}

#[test]
fn a_target_that_cannot_be_opened_fails_every_image_as_an_error() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(d.path(), "hello", &[("hello", expect(&[], &[], None))]);
    let junit = d.path().join("r.xml");
    let mut opts = options(vec![dir], Some(junit.clone()));
    opts.target = TargetSpec::Lab(d.path().join("labs/missing.toml"));
    let report = run(&opts, flag()).unwrap();
    assert_eq!(report.exit_code(), 2);
    let vm = &report.runs[0].vms[0];
    assert_eq!((vm.name.as_str(), vm.kind.as_str()), ("(setup)", "target"));
    assert!(vm.reason.contains("missing.toml"), "{}", vm.reason);
    assert!(std::fs::read_to_string(&junit)
        .unwrap()
        .contains("classname=\"hello.missing\""));
}

#[test]
fn a_replayed_console_is_judged_again() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(
        d.path(),
        "hello",
        &[("hello", expect(&["exit 0"], &[], None))],
    );
    let log = d.path().join("old.console.log");
    std::fs::write(
        &log,
        "\n===== kiln test: hello on qemu, attempt 1 of 1 =====\nkiln: vm=hello state=starting\r\nhello: exit 0\r\nkiln: vm=hello state=exited code=0\r\n",
    )
    .unwrap();
    let mut opts = options(vec![dir], None);
    opts.target = TargetSpec::Replay(log);
    let report = run(&opts, flag()).unwrap();
    assert_eq!(report.exit_code(), 0, "{:?}", report.runs[0]);
    assert_eq!(report.runs[0].target, "replay");
}

/// The run loop takes any `Duration` as its boot timeout (`Options` is
/// kiln's API; the command line caps it at 8760h): with one near the
/// largest `Duration`, the run timeout, a sum, overflowed and `kiln test`
/// panicked before booting anything.
#[test]
fn a_timeout_beyond_any_clock_is_no_overflow() {
    let d = tempfile::tempdir().unwrap();
    let longest = CfgDuration::parse("8760h").unwrap();
    let dir = image_dir(
        d.path(),
        "hello",
        &[(
            "hello",
            expect(&["exit 0"], &[], Some(longest.get().as_secs())),
        )],
    );
    let log = d.path().join("old.console.log");
    std::fs::write(
        &log,
        "kiln: vm=hello state=starting\nhello: exit 0\nkiln: vm=hello state=exited code=0\n",
    )
    .unwrap();
    let mut opts = options(vec![dir], None);
    opts.target = TargetSpec::Replay(log);
    opts.boot_timeout = Some(std::time::Duration::MAX);
    let report = run(&opts, flag()).unwrap();
    assert_eq!(report.exit_code(), 0, "{:?}", report.runs[0]);
}

#[test]
fn zero_repeats_is_refused() {
    let mut opts = options(Vec::new(), None);
    opts.repeat = 0;
    let e = run(&opts, flag()).unwrap_err().to_string();
    assert_eq!(e, "--repeat 0 runs nothing; expected 1 or more");
}

#[test]
fn old_manifests_still_parse() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(d.path(), "hello", &[("hello", expect(&[], &[], None))]);
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("vms");
    let m: Manifest = serde_json::from_value(v).unwrap();
    assert!(m.vms.is_empty());
}

/// A LAVA job's log (lava-run's records) whose VM starts and then stays
/// silent until LAVA's own test timeout ends the job.
fn silent_vm_lava_log() -> String {
    let rec = |dt: &str, lvl: &str, msg: &str| {
        format!("{{\"dt\": \"2026-12-06T12:{dt}\", \"lvl\": \"{lvl}\", \"msg\": \"{msg}\"}}\n")
    };
    [
        rec(
            "00:00.000000",
            "info",
            "start: 1 deployimages (timeout 00:10:00) [common]",
        ),
        rec(
            "00:01.000000",
            "info",
            "start: 2 boot-image-retry (timeout 00:02:00) [common]",
        ),
        rec("00:12.000000", "target", "kiln: vm=hello state=starting"),
        rec(
            "00:12.100000",
            "target",
            "[hello] hello: kiln hello unikernel",
        ),
        rec(
            "00:20.000000",
            "info",
            "start: 3 lava-test-monitor-retry (timeout 00:03:05) [common]",
        ),
        rec(
            "03:20.000000",
            "warning",
            "err: lava test monitoring has timed out",
        ),
        rec("03:21.000000", "target", "[    200.5] reboot: Power down"),
    ]
    .concat()
}

#[test]
fn a_lava_log_is_judged_on_its_own_clock() {
    let d = tempfile::tempdir().unwrap();
    let dir = image_dir(
        d.path(),
        "hello",
        &[("hello", expect(&["hello unikernel"], &[], Some(60)))],
    );
    let log = d.path().join("output.yaml");
    let server: String = silent_vm_lava_log()
        .lines()
        .map(|l| format!("- {l}\n"))
        .collect();
    std::fs::write(&log, server).unwrap();
    let mut opts = options(vec![dir], Some(d.path().join("r.xml")));
    opts.target = TargetSpec::Replay(log);
    let report = run(&opts, flag()).unwrap();
    let r = &report.runs[0];
    assert_eq!(r.target, "lava");
    // Silent past its 60 s timeout: a failure, as live, and not a console
    // that closed (which a replay without times would say).
    assert_eq!(r.vms[0].verdict, Verdict::Failure, "{r:?}");
    assert_eq!(r.vms[0].kind, "never-reported", "{r:?}");
    assert_eq!(r.vms[0].time.as_secs(), 60, "{r:?}");
    assert_eq!(report.exit_code(), 1);
    assert!(r
        .properties
        .contains(&("lava.job".to_string(), "incomplete".to_string())));
    // The kiln console log holds the console LAVA recorded, not its records.
    let console = std::fs::read_to_string(d.path().join("r.xml.console.log")).unwrap();
    assert!(
        console.contains("\n[hello] hello: kiln hello unikernel\n"),
        "{console}"
    );
    assert!(!console.contains("\"lvl\""), "{console}");
}
