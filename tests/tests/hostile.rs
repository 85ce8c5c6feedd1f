//! The hostile-guest suite: guests written to misbehave (the hello
//! unikernel's `hostile=<mode>`, images/hello/src/hostile.rs) beside a
//! Linux guest that must pass, on the emulated target. Every VM must get
//! the verdict that matches what the runtime really saw, `kiln test` must
//! end within its timeouts and give the same verdicts on a replay of its
//! console, and PID 1 must stay small. docs/testing.md, "Hostile guests",
//! lists the modes and what each proves.
//!
//! Each image is booted once and every check on it runs, printed as
//! `check ...: ok|FAILED`; the test fails at the end if any failed, naming
//! them all.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::{images, kiln, require_qemu, root, run_with_timeout};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `kiln test`'s default boot timeout; its run timeout is this plus the
/// longest VM timeout of the image (docs/testing.md).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Beyond its run timeout, what `kiln test` may take to stop the target,
/// write its report and exit.
const STOP_SLACK: Duration = Duration::from_secs(60);
/// The bound on PID 1's peak resident memory (VmHWM), in KiB.
///
/// PID 1 is one static binary, resident from the initramfs (2.2 MiB), with
/// a few hundred KiB of heap and, per VM, a console pump thread that holds
/// at most one 4 KiB piece of a line. Measured on this image before the
/// console was bounded: a 4.4 MiB peak, lines of up to 72 KiB buffered
/// whole three times over. 8 MiB leaves that much again for growth; a PID 1
/// that buffered a guest's line whole passes it at a line of about 1 MiB,
/// more than the floods here can print on the emulated target (one VM exit
/// per byte, about 1-5 KiB/s), so this bound guards PID 1's size and the
/// runtime's own tests prove the pump's piece size.
const PID1_PEAK_KIB: u64 = 8 * 1024;
/// At most this many VMM diagnostics about one VM may reach the console,
/// however often the guest provokes them (the fuzzer moves a BAR onto RAM
/// 200 times, and more at random).
const MAX_VMM_NOTES: usize = 20;
/// The runtime's restart delay cap in configs/hostile-crashloop.toml.
const CRASHLOOP_MAX_BACKOFF_MS: u64 = 200;
const CRASHLOOP_RESTARTS: usize = 12;

/// Checks that go on after one fails: each prints its outcome, and
/// [`Checks::finish`] fails the test naming every failed one.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
    passed: usize,
}

impl Checks {
    fn check(&mut self, what: &str, ok: bool, detail: impl Display) {
        if ok {
            self.passed += 1;
            eprintln!("check {what}: ok");
        } else {
            eprintln!("check {what}: FAILED\n{detail}\n");
            self.failed.push(what.to_string());
        }
    }

    /// Checks that `vm` got `verdict` (`pass`, `fail`, `error`) of `kind`
    /// with a message containing `message`.
    fn verdict(&mut self, cases: &Cases, vm: &str, verdict: &str, kind: &str, message: &str) {
        let what = format!("{vm}: {verdict} {kind} \"{message}\"");
        let got = cases.0.get(vm);
        let ok = got
            .is_some_and(|c| c.verdict == verdict && c.kind == kind && c.message.contains(message));
        let detail = match got {
            Some(c) => format!("got {} {} \"{}\"", c.verdict, c.kind, c.message),
            None => format!("no verdict for {vm}; verdicts: {:?}", cases.0.keys()),
        };
        self.check(&what, ok, detail);
    }

    fn finish(self, image: &str) {
        eprintln!(
            "{image}: {} checks passed, {} failed",
            self.passed,
            self.failed.len()
        );
        assert!(
            self.failed.is_empty(),
            "{image}: failed checks:\n  {}",
            self.failed.join("\n  ")
        );
    }
}

/// One VM's verdict in a JUnit report.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Case {
    verdict: String,
    kind: String,
    message: String,
}

/// The verdicts of a JUnit report of one run, by VM name.
#[derive(Debug, PartialEq, Eq)]
struct Cases(BTreeMap<String, Case>);

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the tag text `tag`.
fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + len]))
}

impl Cases {
    fn parse(junit: &str) -> Self {
        let mut cases = BTreeMap::new();
        for chunk in junit.split("<testcase ").skip(1) {
            let body = chunk.split("</testcase>").next().unwrap_or(chunk);
            let Some(name) = attr(body, "name") else {
                continue;
            };
            let (verdict, tag) = match (body.find("<failure "), body.find("<error ")) {
                (Some(i), _) => ("fail", &body[i..]),
                (None, Some(i)) => ("error", &body[i..]),
                (None, None) => ("pass", ""),
            };
            let tag = tag.split('>').next().unwrap_or("");
            cases.insert(
                name,
                Case {
                    verdict: verdict.to_string(),
                    kind: attr(tag, "type").unwrap_or_default(),
                    message: attr(tag, "message").unwrap_or_default(),
                },
            );
        }
        Cases(cases)
    }

    fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The console as a strict reader cuts it: at `\n`, `\r\n`, a bare `\r`,
/// and every 16 KiB of a longer line (as `kiln test` itself once did; a
/// terminal, LAVA or labgrid may too).
fn reader_lines(console: &[u8]) -> Vec<String> {
    const MAX_LINE: usize = 16 * 1024;
    let mut lines = Vec::new();
    for line in console.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        for part in line.split(|&b| b == b'\r') {
            for piece in part.chunks(MAX_LINE) {
                lines.push(String::from_utf8_lossy(piece).into_owned());
            }
        }
    }
    lines
}

/// `line` without ESC sequences and control characters (roughly as the
/// harness cleans it: enough to read prefixes and words).
fn cleaned(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: parameters up to a final byte; others: one byte.
            if chars.peek() == Some(&'[') {
                chars.next();
                for n in chars.by_ref() {
                    if ('@'..='~').contains(&n) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// Whether `line` (raw, without its line end) carries a byte a terminal
/// acts on: a C0 control other than tab, DEL, or a C1 control.
fn has_controls(line: &str) -> bool {
    line.chars()
        .any(|c| (c.is_control() && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c))
}

/// One image booted once under `kiln test --junit`, and its console
/// replayed.
struct Outcome {
    code: Option<i32>,
    output: String,
    elapsed: Duration,
    console: Vec<u8>,
    junit: String,
    cases: Cases,
    replayed: Cases,
    replay_output: String,
}

fn test_image(name: &str, longest_vm_timeout: Duration) -> Outcome {
    require_qemu();
    let dir = images::scratch(name);
    let out = dir.join(name);
    images::build(&root().join(format!("images/{name}.toml")), &out);
    let junit = dir.join("junit.xml");
    let log = dir.join("junit.xml.console.log");
    let mut cmd = Command::new(kiln());
    cmd.arg("test").arg(&out).arg("--junit").arg(&junit);
    let limit = BOOT_TIMEOUT + longest_vm_timeout + STOP_SLACK;
    // Killed well past its own limit: a hang still ends this test.
    let run = run_with_timeout(cmd, limit * 2);
    eprintln!(
        "kiln test {name}: {:.1} s, exit {:?}\n{}",
        run.elapsed.as_secs_f64(),
        run.code(),
        run.output
    );
    let read = |p: &Path| {
        std::fs::read(p)
            .unwrap_or_else(|e| panic!("kiln test wrote no {}: {e}\n{}", p.display(), run.output))
    };
    let report = String::from_utf8_lossy(&read(&junit)).into_owned();
    let console = read(&log);
    let replay_junit = dir.join("replay.xml");
    let mut cmd = Command::new(kiln());
    cmd.arg("test")
        .arg(&out)
        .arg(format!("--target=replay:{}", log.display()))
        .arg("--junit")
        .arg(&replay_junit);
    let replay = run_with_timeout(cmd, limit);
    let replayed = Cases::parse(&String::from_utf8_lossy(&read(&replay_junit)));
    Outcome {
        code: run.code(),
        output: run.output,
        elapsed: run.elapsed,
        cases: Cases::parse(&report),
        junit: report,
        console,
        replayed,
        replay_output: replay.output,
    }
}

/// Checks shared by both images: every VM and no other has a verdict, the
/// run ended within its timeouts with exit code 1 (failures, no errors),
/// and a replay of the console agrees.
fn common_checks(c: &mut Checks, o: &Outcome, vms: &[&str], longest_vm_timeout: Duration) {
    let mut want: Vec<&str> = vms.to_vec();
    want.sort_unstable();
    c.check(
        "exactly the image's VMs have verdicts (none the guests named)",
        o.cases.names() == want,
        format!("verdicts for {:?}, image has {want:?}", o.cases.names()),
    );
    let limit = BOOT_TIMEOUT + longest_vm_timeout + STOP_SLACK;
    c.check(
        &format!("kiln test ended within {} s", limit.as_secs()),
        o.elapsed <= limit,
        format!("it took {:.1} s", o.elapsed.as_secs_f64()),
    );
    c.check(
        "kiln test exits 1 (VMs failed, no run error)",
        o.code == Some(1) && !o.junit.contains("<system-err>"),
        format!("exit {:?}\n{}", o.code, o.output),
    );
    // A replay has no clock: a verdict a VM's timeout gave live ends the
    // replay with the log instead (docs/testing.md, "Console grammar").
    let agrees = o.replayed.names() == o.cases.names()
        && o.cases.0.iter().all(|(vm, live)| {
            let Some(replayed) = o.replayed.0.get(vm) else {
                return false;
            };
            if live.kind == "never-reported" && live.message.contains("within its timeout") {
                replayed.verdict == "error" && replayed.kind == "console-closed"
            } else {
                replayed == live
            }
        });
    c.check(
        "a replay of the console gives the same verdicts (a timeout's: console-closed)",
        agrees,
        format!(
            "live: {:#?}\nreplay: {:#?}\n{}",
            o.cases, o.replayed, o.replay_output
        ),
    );
    // A guest's bytes reach the console only in lines the runtime prefixed
    // with its VM, with the controls a terminal acts on neutralized.
    let text = String::from_utf8_lossy(&o.console);
    let raw_controls: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| vms.iter().any(|vm| l.starts_with(&format!("[{vm}] "))))
        .filter(|l| has_controls(l))
        .take(5)
        .collect();
    c.check(
        "guest lines reach the console without raw control characters",
        raw_controls.is_empty(),
        format!("{raw_controls:#?}"),
    );
    let unowned: Vec<String> = reader_lines(&o.console)
        .iter()
        .map(|l| cleaned(l))
        .filter(|l| {
            ["hostile: ", "forged", "ghost-"]
                .iter()
                .any(|m| l.contains(m))
        })
        .filter(|l| !vms.iter().any(|vm| l.starts_with(&format!("[{vm}] "))))
        .take(10)
        .collect();
    c.check(
        "every line of guest text, cut at a bare CR and every 16 KiB, is prefixed with its VM",
        unowned.is_empty(),
        format!("{unowned:#?}"),
    );
}

/// The console image: a Linux sibling beside a forger, a fake host panic
/// and two floods (images/hostile-console.toml).
#[test]
fn hostile_console_guests_cannot_forge_verdicts_or_grow_pid1() {
    let longest = Duration::from_secs(240);
    let o = test_image("hostile-console", longest);
    let mut c = Checks::default();
    c.verdict(&o.cases, "linux", "pass", "", "");
    c.verdict(
        &o.cases,
        "forger",
        "fail",
        "exit-code",
        "it exited with code 3",
    );
    c.verdict(&o.cases, "panicker", "fail", "panic", "its kernel crashed");
    c.verdict(
        &o.cases,
        "flood-lines",
        "fail",
        "exit-code",
        "it exited with code 6",
    );
    c.verdict(
        &o.cases,
        "flood-raw",
        "fail",
        "exit-code",
        "it exited with code 7",
    );
    let vms = ["linux", "forger", "panicker", "flood-lines", "flood-raw"];
    common_checks(&mut c, &o, &vms, longest);

    let lines: Vec<String> = reader_lines(&o.console)
        .iter()
        .map(|l| cleaned(l))
        .collect();
    c.check(
        "the run ends at the runtime's own done line (ok=1 failed=4)",
        lines
            .iter()
            .any(|l| l == "kiln: appliance done ok=1 failed=4"),
        "no such line",
    );
    let done = lines
        .iter()
        .position(|l| l.starts_with("kiln: appliance done"));
    let peak = lines[..done.unwrap_or(lines.len())]
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("kiln: init memory peak_kib="))
        .map(|n| n.trim().parse::<u64>());
    eprintln!("PID 1 peak memory: {peak:?} KiB (bound {PID1_PEAK_KIB} KiB)");
    c.check(
        "PID 1 prints its peak memory before the done line",
        matches!(peak, Some(Ok(_))),
        format!("{peak:?}"),
    );
    c.check(
        &format!("PID 1's peak memory stays under {PID1_PEAK_KIB} KiB"),
        matches!(peak, Some(Ok(kib)) if kib > 0 && kib <= PID1_PEAK_KIB),
        format!("{peak:?}"),
    );
    let flooded = |vm: &str, done: &str| {
        lines
            .iter()
            .any(|l| l.starts_with(&format!("[{vm}] hostile: {done}")))
    };
    c.check(
        "both floods ran to their end",
        flooded("flood-lines", "flood-lines done, 245 lines")
            && flooded("flood-raw", "flood-raw done, 73728 bytes"),
        "a flood's last line is missing",
    );
    c.finish("hostile-console");
}

/// The device image: a Linux sibling beside a guest fuzzing its devices, a
/// crash loop and a guest that never ends (images/hostile-devices.toml).
#[test]
fn hostile_device_guests_fail_alone() {
    let longest = Duration::from_secs(240);
    let o = test_image("hostile-devices", longest);
    let mut c = Checks::default();
    c.verdict(&o.cases, "linux", "pass", "", "");
    c.verdict(&o.cases, "fuzz", "pass", "", "");
    c.verdict(
        &o.cases,
        "crashloop",
        "fail",
        "exit-code",
        "it exited with code 8",
    );
    c.verdict(
        &o.cases,
        "never",
        "fail",
        "never-reported",
        "within its timeout (90s after starting)",
    );
    let vms = ["linux", "fuzz", "crashloop", "never"];
    common_checks(&mut c, &o, &vms, longest);

    let lines: Vec<String> = reader_lines(&o.console)
        .iter()
        .map(|l| cleaned(l))
        .collect();
    let restarts: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("kiln: vm=crashloop state=restarting"))
        .collect();
    let delays: Vec<Option<u64>> = restarts
        .iter()
        .map(|l| {
            l.rsplit_once(" in ")
                .and_then(|(_, d)| d.strip_suffix("ms"))
                .and_then(|d| d.parse().ok())
        })
        .collect();
    c.check(
        &format!("the crash loop restarts {CRASHLOOP_RESTARTS} times"),
        restarts.len() == CRASHLOOP_RESTARTS,
        format!("{restarts:#?}"),
    );
    c.check(
        &format!("every restart delay is at most {CRASHLOOP_MAX_BACKOFF_MS} ms"),
        !delays.is_empty()
            && delays
                .iter()
                .all(|d| d.is_some_and(|d| d <= CRASHLOOP_MAX_BACKOFF_MS)),
        format!("{delays:?}"),
    );
    // VMM diagnostics the fuzzer provokes: tagged as the VMM's word about
    // its VM, and rate-limited.
    let untagged: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("kiln-runtime:"))
        .take(5)
        .collect();
    c.check(
        "VMM diagnostics are tagged as the VMM's (`kiln: vm fuzz: ...`)",
        untagged.is_empty(),
        format!("{untagged:#?}"),
    );
    let notes = lines
        .iter()
        .filter(|l| l.starts_with("kiln: vm fuzz: ") || l.starts_with("kiln-runtime:"))
        .count();
    c.check(
        &format!("at most {MAX_VMM_NOTES} VMM diagnostics about the fuzzer reach the console"),
        notes <= MAX_VMM_NOTES,
        format!("{notes} lines"),
    );
    c.finish("hostile-devices");
}
