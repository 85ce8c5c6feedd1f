//! Verdicts: each VM of a run judged from the console, line by line.
//!
//! The judge is a pure state machine: it is fed cleaned console lines and
//! the time since power-on, and says when the run is over. It never reads a
//! clock or a target itself, so every rule below is tested on scripted
//! consoles.
//!
//! Rules (docs/architecture.md, "Verdicts"; docs/testing.md):
//! - `kiln: vm=X state=exited code=0` passes X if each of its `expect`
//!   patterns appeared on its lines; a non-zero code or `state=failed` fails
//!   it. A later `state=restarting` reopens a verdict that came from a status
//!   line (the runtime is trying again).
//! - A line of X matching one of its `fail` patterns fails X at once.
//! - X started but silent past its `test.timeout` (from `state=starting`):
//!   failure, "never reported".
//! - A kernel panic/oops starting a host line ends the run at once: an
//!   error for the run, a failure for each VM still running.
//! - `kiln: appliance done ...` ends the run; a VM that never reported is a
//!   failure.
//! - Boot timeout (no VM started), run timeout, a console that closes early,
//!   a target error or an interrupt end the run with an error. What that
//!   means for a VM that has not reported: after a run timeout or a panic, a
//!   VM that had started is a failure (it hung or crashed the host); in
//!   every other case, and for a VM that never started, the VM's verdict is
//!   an error, since the target, not the guest, stopped the test.
//!
//! Which lines belong to which VM ([`super::grammar`]): a line starting
//! with `[<vm>] ` is VM `<vm>`'s guest output and nothing else (a status
//! line or a panic inside it is text the guest printed); status lines, the
//! runtime's notes (`kiln: vm <vm>: ...`) and host panics count only at the
//! start of an unprefixed line. A VM the image does not have counts for no
//! verdict. Once a prefixed line has been seen, other unprefixed lines
//! belong to the host. Before that (a runtime that does not prefix), an
//! unprefixed line belongs to every VM that has started: exact for a
//! single-VM image; for several VMs, expectations are matched against all
//! their console lines and a `fail` pattern fails every running VM whose
//! pattern matches. A piece of a line cut for length is its line's.

use super::console::Excerpt;
use super::grammar::{classify, ConsoleLine, PANIC_PATTERNS};
use kiln_abi::status::{StatusLine, VmState};
use kiln_schema::config::TestExpectations;
use regex::Regex;
use std::fmt;
use std::time::Duration;

/// How long a VM may run before it must report, when its config says nothing.
pub const DEFAULT_VM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the appliance may take to boot to its first VM, by default.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// After every VM has a verdict, how long to wait for `appliance done`
/// before stopping the target anyway.
pub const GRACE: Duration = Duration::from_secs(5);
/// How long after a VM's end the run may stop before `appliance done`: the
/// runtime prints `state=restarting` right after the end it retries, and
/// the two lines can reach the judge apart.
pub const SETTLE: Duration = Duration::from_secs(1);

/// UEFI firmware messages that mean it refused to start the image: EDK II
/// (OVMF and most vendor firmware) names the status of a failed load,
/// `Access Denied` or `Security Violation` when Secure Boot verification
/// failed (unsigned, signed with a key not in db, or changed since signed).
/// Only on a host line before any VM started.
pub const BOOT_REFUSED_PATTERNS: &[&str] = &["Access Denied", "Security Violation"];

/// Console bytes kept per VM for its report.
const VM_EXCERPT: usize = 256 * 1024;
/// Console bytes kept of the whole run, for run errors.
const RUN_TAIL: usize = 64 * 1024;
/// Names of VMs the image does not have kept for the report, at most.
const MAX_UNKNOWN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("VM {vm}: test.{key}[{index}] \"{pattern}\" is not a valid regular expression; fix it in the VM config and rebuild")]
    Pattern {
        vm: String,
        key: &'static str,
        index: usize,
        pattern: String,
        #[source]
        source: regex::Error,
    },
}

/// What a VM is expected to do, compiled.
#[derive(Debug, Clone)]
pub struct VmPlan {
    pub name: String,
    pub expect: Vec<Regex>,
    pub fail: Vec<Regex>,
    pub timeout: Duration,
}

impl VmPlan {
    pub fn new(name: &str, test: &TestExpectations) -> Result<Self, JudgeError> {
        let compile = |key: &'static str, list: &[String]| {
            list.iter()
                .enumerate()
                .map(|(index, p)| {
                    Regex::new(p).map_err(|source| JudgeError::Pattern {
                        vm: name.to_string(),
                        key,
                        index,
                        pattern: p.clone(),
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(VmPlan {
            name: name.to_string(),
            expect: compile("expect", &test.expect)?,
            fail: compile("fail", &test.fail)?,
            timeout: test.timeout.map_or(DEFAULT_VM_TIMEOUT, |d| d.get()),
        })
    }
}

/// A test verdict, ordered from best to worst: across attempts, a failure
/// outweighs an error, which outweighs a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Pass,
    Error,
    Failure,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Error => "error",
            Verdict::Failure => "fail",
        }
    }
}

/// Why a run ended before the appliance finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// No VM started within the boot timeout.
    BootTimeout(Duration),
    /// The firmware refused to start the image (Secure Boot); the line.
    BootRefused(String),
    /// The whole run took longer than allowed.
    RunTimeout(Duration),
    /// A panic/oops on the host console; the line.
    HostPanic(String),
    /// The console ended (target off, console command gone) too early.
    ConsoleClosed(String),
    /// The target failed (deploy, power, console read).
    Target(String),
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

impl RunError {
    /// A short machine-readable kind, used as the JUnit `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            RunError::BootTimeout(_) => "boot-timeout",
            RunError::BootRefused(_) => "boot-refused",
            RunError::RunTimeout(_) => "run-timeout",
            RunError::HostPanic(_) => "host-panic",
            RunError::ConsoleClosed(_) => "console-closed",
            RunError::Target(_) => "target",
            RunError::Interrupted => "interrupted",
        }
    }

    /// Whether a VM that started but did not report is to blame: it hung
    /// (run timeout) or it ran when the host died (panic).
    fn blames_running_vms(&self) -> bool {
        matches!(self, RunError::RunTimeout(_) | RunError::HostPanic(_))
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::BootTimeout(d) => write!(
                f,
                "no VM started within the boot timeout ({}); the appliance did not boot",
                secs(*d)
            ),
            RunError::BootRefused(line) => write!(
                f,
                "the firmware refused to start the image ({line}); with Secure Boot on, sign it with a key in the machine's db ([output.signing])"
            ),
            RunError::RunTimeout(d) => write!(f, "the run timed out after {}", secs(*d)),
            RunError::HostPanic(line) => write!(f, "the host kernel crashed: {line}"),
            RunError::ConsoleClosed(why) => write!(
                f,
                "the console closed before the appliance finished ({why})"
            ),
            RunError::Target(e) => write!(f, "target error: {e}"),
            RunError::Interrupted => f.write_str("interrupted"),
        }
    }
}

pub(crate) fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s:.1}s")
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// `kiln: appliance done ok=N failed=M`.
    Done {
        ok: u32,
        failed: u32,
    },
    /// Every VM had a verdict, and the appliance did not say it was done
    /// within the grace period (or its console closed).
    AllJudged,
    Error(RunError),
}

/// One VM's result in a run.
#[derive(Debug, Clone)]
pub struct VmResult {
    pub name: String,
    pub verdict: Verdict,
    /// A short machine-readable kind of failure or error (the JUnit `type`):
    /// exit-code, vm-failed, fail-pattern, missing-expect, never-reported,
    /// panic, or a run error's kind. Empty for a pass.
    pub kind: String,
    /// Why it did not pass, in a sentence; empty for a pass.
    pub reason: String,
    /// From its `state=starting` to its verdict (or the run's end).
    pub time: Duration,
    /// The exit code it reported, if any.
    pub code: Option<i32>,
    /// Its console lines.
    pub excerpt: Excerpt,
}

/// The judgement of a whole run.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub vms: Vec<VmResult>,
    pub end: End,
    /// The last lines of the whole console.
    pub tail: Excerpt,
    /// VMs the runtime's lines (a status line, a note) named that the
    /// image does not have: judged not at all, named in the report.
    pub unknown: Vec<String>,
}

/// A verdict the harness reached itself (a pattern, a timeout): final, a
/// restart does not undo it.
#[derive(Debug, Clone)]
struct Decided {
    verdict: Verdict,
    kind: &'static str,
    reason: String,
}

/// What the runtime said of the VM's end.
#[derive(Debug, Clone)]
enum Reported {
    Exited(Option<i32>),
    Failed {
        code: Option<i32>,
        reason: Option<String>,
    },
}

#[derive(Debug)]
struct Track {
    plan: VmPlan,
    started: Option<Duration>,
    ended: Option<Duration>,
    reported: Option<Reported>,
    decided: Option<Decided>,
    seen: Vec<bool>,
    lines: Excerpt,
}

impl Track {
    fn new(plan: VmPlan) -> Self {
        Track {
            seen: vec![false; plan.expect.len()],
            plan,
            started: None,
            ended: None,
            reported: None,
            decided: None,
            lines: Excerpt::new(VM_EXCERPT),
        }
    }

    fn judged(&self) -> bool {
        self.reported.is_some() || self.decided.is_some()
    }

    /// Started and neither reported nor judged: the VM is running.
    fn running(&self) -> bool {
        self.started.is_some() && !self.judged()
    }

    fn decide(&mut self, verdict: Verdict, kind: &'static str, reason: String, at: Duration) {
        if self.decided.is_none() {
            self.decided = Some(Decided {
                verdict,
                kind,
                reason,
            });
            self.ended.get_or_insert(at);
        }
    }

    /// Matches a line of this VM against its patterns.
    fn take_line(&mut self, text: &str, at: Duration) {
        self.lines.push(text);
        for (seen, re) in self.seen.iter_mut().zip(&self.plan.expect) {
            if !*seen && re.is_match(text) {
                *seen = true;
            }
        }
        if self.running() {
            if let Some(re) = self.plan.fail.iter().find(|re| re.is_match(text)) {
                let reason = format!("its console matched the fail pattern /{re}/: {text}");
                self.decide(Verdict::Failure, "fail-pattern", reason, at);
            }
        }
    }
}

/// Whether the run goes on after a line or a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    End,
}

/// Judges one run of an appliance.
#[derive(Debug)]
pub struct Judge {
    vms: Vec<Track>,
    boot_timeout: Duration,
    run_timeout: Duration,
    /// The runtime prefixes VM lines with `[<vm>] `.
    prefixed: bool,
    /// When every VM first had a verdict.
    all_judged_at: Option<Duration>,
    /// When the runtime last reported a VM's end.
    last_end_at: Option<Duration>,
    end: Option<End>,
    tail: Excerpt,
    /// Whose the last line was, for the pieces that continue it.
    last: Owner,
    /// VMs the runtime's lines named that the image does not have.
    unknown: Vec<String>,
}

/// Whose a console line is, as far as verdicts go.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Vm(usize),
    Host,
    /// A status line, a VM the image does not have.
    Nobody,
}

impl Judge {
    pub fn new(plans: Vec<VmPlan>, boot_timeout: Duration, run_timeout: Duration) -> Self {
        Judge {
            vms: plans.into_iter().map(Track::new).collect(),
            boot_timeout,
            run_timeout,
            prefixed: false,
            all_judged_at: None,
            last_end_at: None,
            end: None,
            tail: Excerpt::new(RUN_TAIL),
            last: Owner::Nobody,
            unknown: Vec::new(),
        }
    }

    /// How the run ended, once it has.
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    fn finish_with(&mut self, end: End) -> Step {
        self.end.get_or_insert(end);
        Step::End
    }

    /// The image's VM named `name`.
    fn index(&self, name: &str) -> Option<usize> {
        self.vms.iter().position(|t| t.plan.name == name)
    }

    /// Notes a VM the console names but the image does not declare (for
    /// the report; its lines count for no verdict).
    fn unknown(&mut self, name: &str) {
        if self.unknown.len() < MAX_UNKNOWN && !self.unknown.iter().any(|n| n == name) {
            self.unknown.push(name.to_string());
        }
    }

    /// Feeds one cleaned console line seen `at` after power-on, read by the
    /// console grammar (`grammar::classify`).
    pub fn line(&mut self, line: &str, at: Duration) -> Step {
        if self.end.is_some() {
            return Step::End;
        }
        self.tail.push(line);
        self.last = Owner::Nobody;
        match classify(line) {
            ConsoleLine::Guest { vm, text } => {
                // A VM not of this image (or firmware's `[info]`): nobody's.
                if let Some(i) = self.index(vm) {
                    self.prefixed = true;
                    self.last = Owner::Vm(i);
                    self.guest_text(i, text, at);
                }
            }
            ConsoleLine::Status(status) => return self.status(status, line, at),
            ConsoleLine::Note { vm } => match self.index(vm) {
                // The runtime's word about one VM: that VM's alone,
                // whatever else has been seen.
                Some(i) => {
                    self.last = Owner::Vm(i);
                    self.vms[i].take_line(line, at);
                }
                None => self.unknown(vm),
            },
            ConsoleLine::HostPanic(_) => {
                for t in &mut self.vms {
                    if t.started.is_some() && !self.prefixed {
                        t.lines.push(line);
                    }
                }
                return self.finish_with(End::Error(RunError::HostPanic(line.to_string())));
            }
            ConsoleLine::Host
                if self.vms.iter().all(|t| t.started.is_none())
                    && BOOT_REFUSED_PATTERNS.iter().any(|p| line.contains(p)) =>
            {
                let line = line.trim().to_string();
                return self.finish_with(End::Error(RunError::BootRefused(line)));
            }
            ConsoleLine::Runtime | ConsoleLine::Host => {
                self.last = Owner::Host;
                self.host_text(line, at);
            }
        }
        self.check_all_judged(at)
    }

    /// Feeds a piece of a line too long to keep whole: it belongs to
    /// whoever the line it continues belongs to, and is never read as a
    /// line of its own (a status line, a panic).
    pub fn continued(&mut self, text: &str, at: Duration) -> Step {
        if self.end.is_some() {
            return Step::End;
        }
        self.tail.push(text);
        match self.last {
            Owner::Vm(i) => self.guest_text(i, text, at),
            Owner::Host => self.host_text(text, at),
            Owner::Nobody => {}
        }
        self.check_all_judged(at)
    }

    /// A line of VM `i`'s guest: its patterns, or its kernel's crash.
    fn guest_text(&mut self, i: usize, text: &str, at: Duration) {
        let Some(t) = self.vms.get_mut(i) else {
            return;
        };
        match PANIC_PATTERNS.iter().find(|p| text.contains(*p)) {
            Some(pattern) => {
                t.lines.push(text);
                if t.running() {
                    let reason = format!("its kernel crashed ({pattern}): {text}");
                    t.decide(Verdict::Failure, "panic", reason, at);
                }
            }
            None => t.take_line(text, at),
        }
    }

    /// A host line: before any VM line came prefixed (a runtime that
    /// writes VM output raw), every started VM's; after, nobody's.
    fn host_text(&mut self, text: &str, at: Duration) {
        if !self.prefixed {
            for t in self.vms.iter_mut().filter(|t| t.started.is_some()) {
                t.take_line(text, at);
            }
        }
    }

    fn status(&mut self, status: StatusLine<'_>, text: &str, at: Duration) -> Step {
        match status {
            StatusLine::Done { ok, failed } => self.finish_with(End::Done { ok, failed }),
            StatusLine::Vm {
                name,
                state,
                code,
                reason,
            } => {
                // A VM the image does not have is no test of this run.
                let Some(i) = self.index(name) else {
                    self.unknown(name);
                    return self.check_all_judged(at);
                };
                let t = &mut self.vms[i];
                t.lines.push(text);
                match state {
                    VmState::Starting | VmState::Running => {
                        t.started.get_or_insert(at);
                    }
                    VmState::Restarting => {
                        // The runtime tries again: its earlier end is not final.
                        t.reported = None;
                        if t.decided.is_none() {
                            t.ended = None;
                        }
                        self.all_judged_at = None;
                    }
                    VmState::Exited | VmState::Failed => {
                        self.last_end_at = Some(at);
                        t.started.get_or_insert(at);
                        t.reported = Some(if state == VmState::Exited {
                            Reported::Exited(code)
                        } else {
                            Reported::Failed {
                                code,
                                reason: reason.map(str::to_string),
                            }
                        });
                        if t.decided.is_none() {
                            t.ended = Some(at);
                        }
                    }
                }
                self.check_all_judged(at)
            }
        }
    }

    fn check_all_judged(&mut self, at: Duration) -> Step {
        if self.end.is_some() {
            return Step::End;
        }
        if !self.vms.is_empty() && self.vms.iter().all(Track::judged) {
            // A VM judged by kiln (a pattern, its timeout) is still running
            // as far as the runtime knows: no `done` will come soon, stop
            // once a just-reported end has had time to be retried.
            if self.vms.iter().any(|t| t.reported.is_none()) {
                let settled = self
                    .last_end_at
                    .is_none_or(|end| at.saturating_sub(end) >= SETTLE);
                if settled {
                    return self.finish_with(End::AllJudged);
                }
                return Step::Continue;
            }
            let since = *self.all_judged_at.get_or_insert(at);
            if at.saturating_sub(since) >= GRACE {
                return self.finish_with(End::AllJudged);
            }
        } else {
            self.all_judged_at = None;
        }
        Step::Continue
    }

    /// Applies the timeouts at `at` after power-on.
    pub fn tick(&mut self, at: Duration) -> Step {
        if self.end.is_some() {
            return Step::End;
        }
        if at >= self.run_timeout {
            return self.finish_with(End::Error(RunError::RunTimeout(self.run_timeout)));
        }
        if at >= self.boot_timeout && self.vms.iter().all(|t| t.started.is_none()) {
            return self.finish_with(End::Error(RunError::BootTimeout(self.boot_timeout)));
        }
        for t in &mut self.vms {
            if let Some(started) = t.started {
                // A config may give any timeout: no `started + timeout`.
                if t.running() && at.saturating_sub(started) >= t.plan.timeout {
                    let reason = format!(
                        "it never reported an end within its timeout ({} after starting)",
                        secs(t.plan.timeout)
                    );
                    t.decide(Verdict::Failure, "never-reported", reason, at);
                }
            }
        }
        self.check_all_judged(at)
    }

    /// The console ended: normal once every VM has a verdict.
    pub fn console_closed(&mut self, why: &str) -> Step {
        if self.end.is_some() {
            return Step::End;
        }
        if !self.vms.is_empty() && self.vms.iter().all(Track::judged) {
            return self.finish_with(End::AllJudged);
        }
        self.finish_with(End::Error(RunError::ConsoleClosed(why.to_string())))
    }

    /// Ends the run with an error from outside the console.
    pub fn abort(&mut self, error: RunError) {
        self.end.get_or_insert(End::Error(error));
    }

    /// The verdict of every VM, in the image's order, at `at` after power-on.
    pub fn finish(mut self, at: Duration) -> Judgement {
        let end = self
            .end
            .take()
            .unwrap_or(End::Error(RunError::Target("the run ended early".into())));
        let vms = self
            .vms
            .into_iter()
            .map(|t| verdict_of(t, &end, at))
            .collect();
        Judgement {
            vms,
            end,
            tail: self.tail,
            unknown: self.unknown,
        }
    }
}

fn verdict_of(t: Track, end: &End, at: Duration) -> VmResult {
    let time = t
        .started
        .map_or(Duration::ZERO, |s| t.ended.unwrap_or(at).saturating_sub(s));
    let code = match &t.reported {
        Some(Reported::Exited(c)) | Some(Reported::Failed { code: c, .. }) => *c,
        None => None,
    };
    let (verdict, kind, reason) = match (&t.decided, &t.reported) {
        (Some(d), _) => (d.verdict, d.kind.to_string(), d.reason.clone()),
        // `exited` without a code is a normal end: failures say `failed`.
        (None, Some(Reported::Exited(None | Some(0)))) => {
            let missing: Vec<String> = t
                .plan
                .expect
                .iter()
                .zip(&t.seen)
                .filter(|(_, seen)| !**seen)
                .map(|(re, _)| format!("/{re}/"))
                .collect();
            if missing.is_empty() {
                (Verdict::Pass, String::new(), String::new())
            } else {
                (
                    Verdict::Failure,
                    "missing-expect".to_string(),
                    format!(
                        "it exited with code 0 but its console never matched {}",
                        missing.join(", ")
                    ),
                )
            }
        }
        (None, Some(Reported::Exited(Some(c)))) => (
            Verdict::Failure,
            "exit-code".to_string(),
            format!("it exited with code {c}"),
        ),
        (None, Some(Reported::Failed { code, reason })) => {
            let mut r = String::from("the runtime reported it failed");
            if let Some(c) = code {
                r.push_str(&format!(" with code {c}"));
            }
            if let Some(why) = reason {
                r.push_str(&format!(": {why}"));
            }
            (Verdict::Failure, "vm-failed".to_string(), r)
        }
        (None, None) => match end {
            End::Done { .. } | End::AllJudged => (
                Verdict::Failure,
                "never-reported".to_string(),
                if t.started.is_some() {
                    "it started but never reported an end before the appliance finished"
                } else {
                    "it never started before the appliance finished"
                }
                .to_string(),
            ),
            End::Error(e) if t.started.is_some() && e.blames_running_vms() => {
                let kind = match e {
                    RunError::HostPanic(_) => "panic",
                    _ => "never-reported",
                };
                (
                    Verdict::Failure,
                    kind.to_string(),
                    format!("it never reported an end: {e}"),
                )
            }
            End::Error(e) => (
                Verdict::Error,
                e.kind().to_string(),
                if t.started.is_some() {
                    format!("no verdict: {e}")
                } else {
                    format!("it never started: {e}")
                },
            ),
        },
    };
    VmResult {
        name: t.plan.name,
        verdict,
        kind,
        reason,
        time,
        code,
        excerpt: t.lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_schema::config::Duration as CfgDuration;

    fn plan(name: &str, expect: &[&str], fail: &[&str], timeout: Option<u64>) -> VmPlan {
        VmPlan::new(
            name,
            &TestExpectations {
                expect: expect.iter().map(|s| s.to_string()).collect(),
                fail: fail.iter().map(|s| s.to_string()).collect(),
                timeout: timeout.map(CfgDuration::secs),
            },
        )
        .unwrap()
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Feeds `(second, line)` pairs with a tick before each, like the run
    /// loop does; returns the judgement at the end.
    fn judge(plans: Vec<VmPlan>, script: &[(u64, &str)], end_at: u64) -> Judgement {
        let mut j = Judge::new(plans, s(30), s(100));
        for &(at, line) in script {
            if j.tick(s(at)) == Step::End {
                break;
            }
            if j.line(line, s(at)) == Step::End {
                break;
            }
        }
        if j.end().is_none() {
            j.tick(s(end_at));
        }
        j.finish(s(end_at))
    }

    /// The judge takes any `Duration` as a VM's timeout: configs cap
    /// theirs at 8760h, but a tick must not overflow adding one near the
    /// largest `Duration` to a start, as it did.
    #[test]
    fn a_timeout_beyond_any_clock_never_expires() {
        let forever = plan("hello", &[], &[], Some(u64::MAX));
        let mut j = Judge::new(vec![forever], s(30), Duration::MAX);
        j.line("kiln: vm=hello state=starting", s(4096));
        assert_eq!(j.tick(s(5000)), Step::Continue);
        assert!(j.end().is_none());
    }

    fn hello() -> VmPlan {
        plan(
            "hello",
            &["hello: kiln hello", "hello: exit 0"],
            &["ASSERT"],
            Some(60),
        )
    }

    #[test]
    fn a_passing_guest() {
        let j = judge(
            vec![hello()],
            &[
                (1, "[    1.2] kvm: Nested Virtualization enabled"),
                (2, "kiln: vm=hello state=starting"),
                (3, "hello: kiln hello unikernel"),
                (4, "hello: exit 0"),
                (4, "kiln: vm=hello state=exited code=0"),
                (5, "kiln: appliance done ok=1 failed=0"),
            ],
            5,
        );
        assert_eq!(j.end, End::Done { ok: 1, failed: 0 });
        let v = &j.vms[0];
        assert_eq!((v.verdict, v.kind.as_str()), (Verdict::Pass, ""));
        assert_eq!(v.time, s(2));
        assert_eq!(v.code, Some(0));
        let text = v.excerpt.text();
        assert!(text.contains("hello: exit 0"), "{text}");
        assert!(
            !text.contains("kvm: Nested"),
            "a host line before start: {text}"
        );
    }

    #[test]
    fn a_nonzero_exit_code_fails() {
        let j = judge(
            vec![hello()],
            &[
                (1, "kiln: vm=hello state=starting"),
                (2, "hello: kiln hello unikernel"),
                (2, "hello: exit 0"),
                (3, "kiln: vm=hello state=exited code=3"),
                (3, "kiln: appliance done ok=0 failed=1"),
            ],
            3,
        );
        let v = &j.vms[0];
        assert_eq!(
            (v.verdict, v.kind.as_str()),
            (Verdict::Failure, "exit-code")
        );
        assert_eq!(v.reason, "it exited with code 3");
        assert_eq!(v.code, Some(3));
    }

    #[test]
    fn a_vmm_ended_by_its_seccomp_filter_fails_with_the_call_named() {
        // As PID 1 reports it, after the sandbox report note.
        let reason = "seccomp: the VMM's vCPU 0 thread made system call 41, which its seccomp filter forbids";
        let failed = format!("kiln: vm=hello state=failed code=199 reason={reason}");
        let j = judge(
            vec![hello()],
            &[
                (1, "kiln: vm=hello state=starting"),
                (1, "kiln: vm=hello state=running"),
                (1, "kiln: vm hello: sandbox threads=2 seccomp=2"),
                (2, failed.as_str()),
                (2, "kiln: appliance done ok=0 failed=1"),
            ],
            2,
        );
        let v = &j.vms[0];
        assert_eq!(
            (v.verdict, v.kind.as_str()),
            (Verdict::Failure, "vm-failed")
        );
        assert_eq!(
            v.reason,
            format!("the runtime reported it failed with code 199: {reason}")
        );
    }

    #[test]
    fn state_failed_fails_with_its_reason() {
        let j = judge(
            vec![hello()],
            &[
                (1, "kiln: vm=hello state=starting"),
                (2, "kiln: vm=hello state=failed code=1 reason=triple fault"),
                (2, "kiln: appliance done ok=0 failed=1"),
            ],
            2,
        );
        let v = &j.vms[0];
        assert_eq!(
            (v.verdict, v.kind.as_str()),
            (Verdict::Failure, "vm-failed")
        );
        assert!(
            v.reason.ends_with("with code 1: triple fault"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn a_missing_expectation_fails_a_clean_exit() {
        let j = judge(
            vec![hello()],
            &[
                (1, "kiln: vm=hello state=starting"),
                (2, "hello: kiln hello unikernel"),
                (3, "kiln: vm=hello state=exited code=0"),
                (3, "kiln: appliance done ok=1 failed=0"),
            ],
            3,
        );
        let v = &j.vms[0];
        assert_eq!(
            (v.verdict, v.kind.as_str()),
            (Verdict::Failure, "missing-expect")
        );
        assert!(
            v.reason.ends_with("never matched /hello: exit 0/"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn a_fail_pattern_fails_at_once() {
        let mut j = Judge::new(vec![hello()], s(30), s(100));
        j.line("kiln: vm=hello state=starting", s(1));
        assert_eq!(
            j.line("hello: ASSERT failed: dma mismatch", s(2)),
            Step::End
        );
        assert_eq!(
            j.line("kiln: vm=hello state=exited code=0", s(3)),
            Step::End
        );
        let jd = j.finish(s(3));
        assert_eq!(jd.end, End::AllJudged);
        let v = &jd.vms[0];
        assert_eq!(
            (v.verdict, v.kind.as_str()),
            (Verdict::Failure, "fail-pattern")
        );
        assert!(
            v.reason.contains("/ASSERT/: hello: ASSERT failed"),
            "{}",
            v.reason
        );
        assert_eq!(v.time, s(1), "the verdict came at the pattern");
        assert_eq!(v.code, None, "nothing after the verdict counts");
    }

    #[test]
    fn the_runtimes_lines_naming_a_vm_are_that_vms_after_prefixed_output() {
        let a = plan(
            "a",
            &["^kiln: vm a: .* attached through iommufd"],
            &[],
            None,
        );
        let ab = plan(
            "a-b",
            &["^kiln: vm a-b: .* attached through the legacy"],
            &[],
            None,
        );
        let mut j = Judge::new(vec![a, ab], s(30), s(100));
        j.line("kiln: vm=a state=starting", s(1));
        j.line("kiln: vm=a-b state=starting", s(1));
        j.line(
            "kiln: vm a: 0000:00:02.0 attached through iommufd (/dev/vfio/devices/vfio0)",
            s(1),
        );
        // VM a's guest speaks before a-b's device is attached: from here
        // on, plain unprefixed lines would be the host's.
        j.line("[a] hello: exit 0", s(2));
        j.line(
            "kiln: vm a-b: 0000:00:03.0 attached through the legacy VFIO container (/dev/vfio/3)",
            s(3),
        );
        j.line("kiln: vm=a state=exited code=0", s(4));
        j.line("kiln: vm=a-b state=exited code=0", s(4));
        j.line("kiln: appliance done ok=2 failed=0", s(4));
        let jd = j.finish(s(4));
        assert_eq!(
            jd.vms.iter().map(|v| v.verdict).collect::<Vec<_>>(),
            [Verdict::Pass, Verdict::Pass],
            "{:?}",
            jd.vms
        );
    }

    #[test]
    fn a_fail_pattern_survives_a_clean_exit_while_others_run() {
        let other = plan("other", &[], &[], None);
        let mut j = Judge::new(vec![hello(), other], s(30), s(100));
        j.line("kiln: vm=hello state=starting", s(1));
        j.line("kiln: vm=other state=starting", s(1));
        j.line("[hello] hello: ASSERT failed", s(2));
        j.line("kiln: vm=hello state=exited code=0", s(3));
        assert_eq!(
            j.line("kiln: vm=other state=exited code=0", s(4)),
            Step::Continue
        );
        assert_eq!(
            j.line("kiln: appliance done ok=2 failed=0", s(4)),
            Step::End
        );
        let jd = j.finish(s(4));
        assert_eq!(jd.vms[0].kind, "fail-pattern");
        assert_eq!(jd.vms[1].verdict, Verdict::Pass);
    }

    #[test]
    fn after_every_report_the_appliance_has_a_grace_period_to_say_done() {
        let mut j = Judge::new(vec![plan("a", &[], &[], None)], s(30), s(100));
        j.line("kiln: vm=a state=starting", s(1));
        assert_eq!(
            j.line("kiln: vm=a state=exited code=0", s(2)),
            Step::Continue
        );
        assert_eq!(
            j.tick(s(2) + GRACE - Duration::from_millis(1)),
            Step::Continue
        );
        assert_eq!(j.tick(s(2) + GRACE), Step::End);
        assert_eq!(j.finish(s(8)).end, End::AllJudged);
    }

    #[test]
    fn a_hanging_guest_fails_at_its_own_timeout() {
        let mut j = Judge::new(vec![hello()], s(30), s(300));
        j.line("kiln: vm=hello state=starting", s(2));
        j.line("hello: kiln hello unikernel", s(3));
        assert_eq!(j.tick(s(61)), Step::Continue);
        assert_eq!(j.tick(s(62)), Step::End, "nothing more to wait for");
        let jd = j.finish(s(62));
        assert_eq!(
            jd.end,
            End::AllJudged,
            "a VM timeout is the VM's verdict, not a run error"
        );
        let v = &jd.vms[0];
        assert_eq!(
            (v.verdict, v.kind.as_str()),
            (Verdict::Failure, "never-reported")
        );
        assert!(v.reason.contains("within its timeout (60s"), "{}", v.reason);
    }

    #[test]
    fn a_run_timeout_is_a_run_error_and_a_failure_for_the_running_vm() {
        let j = judge(
            vec![hello(), plan("late", &[], &[], Some(500))],
            &[(2, "kiln: vm=late state=starting"), (50, "still busy")],
            100,
        );
        assert_eq!(j.end, End::Error(RunError::RunTimeout(s(100))));
        let hello = &j.vms[0];
        assert_eq!(
            (hello.verdict, hello.kind.as_str()),
            (Verdict::Error, "run-timeout"),
            "never started: the run, not the guest, is at fault"
        );
        let late = &j.vms[1];
        assert_eq!(
            (late.verdict, late.kind.as_str()),
            (Verdict::Failure, "never-reported")
        );
        assert!(
            late.reason.contains("timed out after 100s"),
            "{}",
            late.reason
        );
        assert!(late.excerpt.text().contains("still busy"));
    }

    #[test]
    fn a_host_panic_ends_the_run_at_once() {
        let j = judge(
            vec![hello(), plan("other", &[], &[], None)],
            &[
                (1, "kiln: vm=hello state=starting"),
                (2, "kiln: vm=other state=starting"),
                (2, "kiln: vm=other state=exited code=0"),
                (3, "Kernel panic - not syncing: Attempted to kill init!"),
                (4, "kiln: vm=hello state=exited code=0"),
            ],
            4,
        );
        assert_eq!(
            j.end,
            End::Error(RunError::HostPanic(
                "Kernel panic - not syncing: Attempted to kill init!".into()
            ))
        );
        let hello = &j.vms[0];
        assert_eq!(
            (hello.verdict, hello.kind.as_str()),
            (Verdict::Failure, "panic")
        );
        assert_eq!(hello.code, None, "nothing after the panic counts");
        assert_eq!(j.vms[1].verdict, Verdict::Pass, "it had already passed");
    }

    #[test]
    fn oops_and_bug_are_panics_too() {
        for line in [
            "BUG: unable to handle page fault for address: 0000000000001000",
            "Oops: 0000 [#1] PREEMPT SMP NOPTI",
            "general protection fault, probably for non-canonical address",
        ] {
            let j = judge(vec![hello()], &[(1, line)], 1);
            assert_eq!(j.end.clone(), End::Error(RunError::HostPanic(line.into())));
            assert_eq!(j.vms[0].verdict, Verdict::Error, "never started");
        }
    }

    #[test]
    fn a_prefixed_guest_panic_fails_only_that_vm() {
        let j = judge(
            vec![plan("linux", &[], &[], None), plan("b", &[], &[], None)],
            &[
                (1, "kiln: vm=linux state=starting"),
                (1, "kiln: vm=b state=starting"),
                (2, "[linux] Kernel panic - not syncing: VFS"),
                (2, "[b] fine"),
                (3, "kiln: vm=b state=exited code=0"),
                (4, "kiln: vm=linux state=exited code=0"),
                (4, "kiln: appliance done ok=2 failed=0"),
            ],
            4,
        );
        // Every VM has its verdict once b exits: no need to wait for linux.
        assert_eq!(j.end, End::AllJudged);
        assert_eq!(
            (j.vms[0].verdict, j.vms[0].kind.as_str()),
            (Verdict::Failure, "panic")
        );
        assert_eq!(j.vms[1].verdict, Verdict::Pass);
    }

    #[test]
    fn prefixes_attribute_lines_to_their_vm_only() {
        let a = plan("a", &["a-ok"], &["ERR"], None);
        let b = plan("b", &["b-ok"], &["ERR"], None);
        let j = judge(
            vec![a, b],
            &[
                (1, "kiln: vm=a state=starting"),
                (1, "kiln: vm=b state=starting"),
                (2, "[a] a-ok"),
                (2, "[b] a-ok"),
                (2, "[b] ERR in b"),
                (2, "host says b-ok ERR"),
                (3, "kiln: vm=a state=exited code=0"),
                (3, "kiln: vm=b state=exited code=0"),
                (3, "kiln: appliance done ok=2 failed=0"),
            ],
            3,
        );
        assert_eq!(j.vms[0].verdict, Verdict::Pass, "{}", j.vms[0].reason);
        assert_eq!(j.vms[1].kind, "fail-pattern");
        assert!(!j.vms[0].excerpt.text().contains("host says"));
        assert!(j.vms[1].excerpt.text().contains("ERR in b"));
    }

    #[test]
    fn unprefixed_lines_belong_to_every_started_vm() {
        let a = plan("a", &["shared"], &[], None);
        let b = plan("b", &["shared"], &["BAD"], None);
        let j = judge(
            vec![a, b],
            &[
                (1, "shared before start"),
                (1, "kiln: vm=a state=starting"),
                (2, "kiln: vm=a state=exited code=0"),
                (2, "kiln: vm=b state=starting"),
                (3, "shared"),
                (3, "BAD thing"),
                (4, "kiln: vm=b state=exited code=0"),
                (4, "kiln: appliance done ok=2 failed=0"),
            ],
            4,
        );
        // a had exited when "shared" came, but expectations see every line;
        // the fail pattern only hits the VM still running.
        assert_eq!(j.vms[0].verdict, Verdict::Pass, "{}", j.vms[0].reason);
        assert_eq!(j.vms[1].kind, "fail-pattern");
    }

    #[test]
    fn done_without_a_report_is_a_failure() {
        let j = judge(
            vec![hello(), plan("ghost", &[], &[], None)],
            &[
                (1, "kiln: vm=hello state=starting"),
                (2, "kiln: vm=hello state=exited code=0"),
                (2, "hello: kiln hello"),
                (2, "hello: exit 0"),
                (3, "kiln: appliance done ok=1 failed=0"),
            ],
            3,
        );
        assert_eq!(j.vms[0].verdict, Verdict::Pass, "{}", j.vms[0].reason);
        let g = &j.vms[1];
        assert_eq!(
            (g.verdict, g.kind.as_str()),
            (Verdict::Failure, "never-reported")
        );
        assert_eq!(g.reason, "it never started before the appliance finished");
    }

    #[test]
    fn no_vm_starting_is_a_boot_timeout_error() {
        let j = judge(vec![hello()], &[(5, "Linux version 6.1")], 31);
        assert_eq!(j.end, End::Error(RunError::BootTimeout(s(30))));
        let v = &j.vms[0];
        assert_eq!(
            (v.verdict, v.kind.as_str()),
            (Verdict::Error, "boot-timeout")
        );
        assert_eq!(v.time, Duration::ZERO);
    }

    #[test]
    fn a_firmware_refusal_ends_the_run_as_a_boot_error() {
        let refusal = "BdsDxe: failed to load Boot0002 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x1,0x0): Access Denied";
        let j = judge(
            vec![hello()],
            &[
                (2, "BdsDxe: failed to load Boot0001 \"UEFI QEMU DVD-ROM QM00005 \" from PciRoot(0x0)/Pci(0x1F,0x2)/Sata(0x2,0xFFFF,0x0): Not Found"),
                (3, refusal),
                (4, "BdsDxe: No bootable option or device was found."),
            ],
            5,
        );
        assert_eq!(j.end, End::Error(RunError::BootRefused(refusal.into())));
        let v = &j.vms[0];
        assert_eq!(
            (v.verdict, v.kind.as_str()),
            (Verdict::Error, "boot-refused")
        );
        assert!(
            v.reason.contains("the firmware refused to start the image"),
            "{}",
            v.reason
        );

        // Once a VM runs, the words are the guest's business.
        let j = judge(
            vec![hello()],
            &[
                (1, "kiln: vm=hello state=starting"),
                (2, "[hello] open: Access Denied"),
                (2, "Security Violation"),
                (2, "[hello] hello: kiln hello"),
                (2, "[hello] hello: exit 0"),
                (3, "kiln: vm=hello state=exited code=0"),
                (3, "kiln: appliance done ok=1 failed=0"),
            ],
            4,
        );
        assert_eq!(j.vms[0].verdict, Verdict::Pass, "{}", j.vms[0].reason);
    }

    #[test]
    fn the_runtimes_firmware_lines_change_no_verdict() {
        let j = judge(
            vec![hello()],
            &[
                (1, "kiln: firmware: uefi secure_boot=enabled lockdown=integrity"),
                (1, "kiln: firmware: tpm pcr11.sha256=85866a26103cab4238920aaebf1dfc056e93d29c15262f565fddff72d361cf8f"),
                (2, "kiln: vm=hello state=starting"),
                (2, "hello: kiln hello"),
                (2, "hello: exit 0"),
                (3, "kiln: vm=hello state=exited code=0"),
                (3, "kiln: appliance done ok=1 failed=0"),
            ],
            4,
        );
        assert_eq!(j.end, End::Done { ok: 1, failed: 0 });
        assert_eq!(j.vms[0].verdict, Verdict::Pass, "{}", j.vms[0].reason);
    }

    #[test]
    fn a_console_closing_early_is_an_error_not_a_failure() {
        let mut j = Judge::new(vec![hello()], s(30), s(100));
        j.line("kiln: vm=hello state=starting", s(1));
        assert_eq!(j.console_closed("QEMU exited with status 1"), Step::End);
        let jd = j.finish(s(2));
        assert_eq!(jd.vms[0].verdict, Verdict::Error);
        assert_eq!(jd.vms[0].kind, "console-closed");
        assert!(jd.vms[0].reason.contains("QEMU exited with status 1"));
    }

    #[test]
    fn a_console_closing_after_every_verdict_is_a_normal_end() {
        let mut j = Judge::new(vec![plan("a", &[], &[], None)], s(30), s(100));
        j.line("kiln: vm=a state=starting", s(1));
        j.line("kiln: vm=a state=exited code=0", s(2));
        assert_eq!(j.console_closed("end of file"), Step::End);
        let jd = j.finish(s(2));
        assert_eq!(jd.end, End::AllJudged);
        assert_eq!(jd.vms[0].verdict, Verdict::Pass);
    }

    #[test]
    fn an_interrupt_leaves_errors_even_for_running_vms() {
        let mut j = Judge::new(vec![hello()], s(30), s(100));
        j.line("kiln: vm=hello state=starting", s(1));
        j.abort(RunError::Interrupted);
        let v = &j.finish(s(2)).vms[0];
        assert_eq!(
            (v.verdict, v.kind.as_str()),
            (Verdict::Error, "interrupted")
        );
    }

    #[test]
    fn a_restart_reopens_a_reported_end() {
        let j = judge(
            vec![plan("r", &[], &[], None)],
            &[
                (1, "kiln: vm=r state=starting"),
                (2, "kiln: vm=r state=exited code=1"),
                (
                    2,
                    "kiln: vm=r state=restarting reason=attempt 1 of 3 in 1000ms",
                ),
                (3, "kiln: vm=r state=starting"),
                (4, "kiln: vm=r state=exited code=0"),
                (4, "kiln: appliance done ok=1 failed=0"),
            ],
            4,
        );
        assert_eq!(j.vms[0].verdict, Verdict::Pass, "{}", j.vms[0].reason);
        assert_eq!(j.vms[0].time, s(3), "from the first start");
    }

    /// A crash loop's end came while a sibling kiln had timed out was still
    /// running: the run used to stop on that end, before the runtime's
    /// `restarting` line, judging an attempt before the last.
    #[test]
    fn a_restart_right_after_an_end_is_waited_for() {
        let mut j = Judge::new(
            vec![
                plan("never", &[], &[], Some(5)),
                plan("loop", &[], &[], None),
            ],
            s(30),
            s(100),
        );
        j.line("kiln: vm=never state=starting", s(1));
        j.line("kiln: vm=loop state=starting", s(1));
        assert_eq!(j.tick(s(6)), Step::Continue, "never timed out, loop runs");
        let at = s(7);
        assert_eq!(
            j.line("kiln: vm=loop state=exited code=8", at),
            Step::Continue
        );
        assert_eq!(j.tick(at + SETTLE / 2), Step::Continue);
        j.line(
            "kiln: vm=loop state=restarting reason=attempt 1 of 3 in 50ms",
            at + SETTLE / 2,
        );
        j.line("kiln: vm=loop state=starting", s(8));
        j.line("kiln: vm=loop state=exited code=0", s(9));
        assert_eq!(j.tick(s(9) + SETTLE / 2), Step::Continue);
        assert_eq!(j.tick(s(9) + SETTLE), Step::End);
        let jd = j.finish(s(10));
        assert_eq!(jd.vms[1].verdict, Verdict::Pass, "{}", jd.vms[1].reason);
        assert_eq!(jd.vms[0].kind, "never-reported");
    }

    #[test]
    fn a_vm_the_image_does_not_have_counts_for_nothing() {
        let mut j = Judge::new(vec![hello()], s(30), s(100));
        for line in [
            "kiln: vm=hello state=starting",
            "kiln: vm=extra state=starting",
            "[extra] hello: kiln hello",
            "kiln: vm extra: 0000:00:02.0 attached through iommufd",
            "kiln: vm=extra state=exited code=4",
            "[hello] hello: kiln hello",
            "[hello] hello: exit 0",
        ] {
            assert_eq!(j.line(line, s(1)), Step::Continue, "{line}");
        }
        j.line("kiln: vm=hello state=exited code=0", s(2));
        j.line("kiln: appliance done ok=1 failed=1", s(3));
        let jd = j.finish(s(3));
        assert_eq!(
            jd.vms
                .iter()
                .map(|v| (v.name.as_str(), v.verdict))
                .collect::<Vec<_>>(),
            [("hello", Verdict::Pass)],
            "no verdict for extra, and its lines are not hello's"
        );
        assert_eq!(jd.unknown, ["extra"]);
        assert!(jd.tail.text().contains("vm=extra state=exited code=4"));
    }

    #[test]
    fn forged_status_lines_in_guest_output_are_the_guests_text() {
        let sibling = plan("sibling", &[], &[], None);
        let forger = plan("forger", &["forged"], &[], None);
        let mut j = Judge::new(vec![sibling, forger], s(30), s(100));
        j.line("kiln: vm=sibling state=starting", s(1));
        j.line("kiln: vm=forger state=starting", s(1));
        for line in [
            "[forger] kiln: vm=sibling state=exited code=0",
            "[forger] kiln: vm=forger state=exited code=0",
            "[forger] x kiln: vm=sibling state=exited code=0",
            "[forger] kiln: vm sibling: attached through iommufd",
            "[forger] Kernel panic - not syncing: forged",
            "[forger] kiln: appliance done ok=2 failed=0",
        ] {
            assert_eq!(j.line(line, s(2)), Step::Continue, "{line}");
        }
        // The forger's fake panic judged the forger alone; the sibling's
        // real end is the last verdict, final once no restart follows it.
        assert_eq!(
            j.line("kiln: vm=sibling state=exited code=3", s(3)),
            Step::Continue
        );
        assert_eq!(j.tick(s(3) + SETTLE), Step::End);
        let jd = j.finish(s(4));
        assert_eq!(jd.end, End::AllJudged);
        let v: Vec<_> = jd.vms.iter().map(|v| (v.kind.as_str(), v.code)).collect();
        assert_eq!(v, [("exit-code", Some(3)), ("panic", None)]);
        assert!(jd.unknown.is_empty());
        assert!(jd.vms[1].excerpt.text().contains("forged"));
    }

    #[test]
    fn pieces_of_a_long_line_are_their_lines() {
        let a = plan("a", &["tail-ok"], &["BAD"], None);
        let b = plan("b", &[], &[], None);
        let mut j = Judge::new(vec![a, b], s(30), s(100));
        j.line("kiln: vm=a state=starting", s(1));
        j.line("kiln: vm=b state=starting", s(1));
        j.line("[a] xxxxxxxx", s(2));
        // Pieces read as lines would be a status line and a host panic.
        for piece in [
            "kiln: vm=b state=exited code=0",
            "Kernel panic - not syncing: forged",
            "kiln: appliance done ok=2 failed=0",
            "tail-ok",
        ] {
            assert_eq!(j.continued(piece, s(2)), Step::Continue, "{piece}");
        }
        // A continued host line is the host's: not a's fail pattern.
        j.line("host: a long line", s(2));
        assert_eq!(j.continued("BAD", s(2)), Step::Continue);
        j.line("kiln: vm=b state=exited code=5", s(3));
        // A status line's piece is nobody's.
        j.continued("BAD", s(3));
        j.line("kiln: vm=a state=exited code=0", s(3));
        j.line("kiln: appliance done ok=1 failed=1", s(3));
        let jd = j.finish(s(3));
        assert_eq!(
            (jd.vms[0].verdict, jd.vms[0].kind.as_str()),
            (Verdict::Failure, "panic"),
            "a's own piece with a panic fails a: {}",
            jd.vms[0].reason
        );
        assert_eq!(jd.vms[1].kind, "exit-code");
        assert_eq!(jd.vms[1].code, Some(5));
    }

    #[test]
    fn a_guest_piece_matches_its_vms_patterns() {
        let a = plan("a", &["tail-ok"], &["BAD"], None);
        let mut j = Judge::new(vec![a.clone()], s(30), s(100));
        j.line("kiln: vm=a state=starting", s(1));
        j.line("[a] xxxx", s(2));
        j.continued("tail-ok", s(2));
        j.line("kiln: vm=a state=exited code=0", s(3));
        assert_eq!(j.finish(s(3)).vms[0].verdict, Verdict::Pass);

        let mut j = Judge::new(vec![a], s(30), s(100));
        j.line("kiln: vm=a state=starting", s(1));
        j.line("[a] xxxx", s(2));
        assert_eq!(j.continued("BAD", s(2)), Step::End);
        assert_eq!(j.finish(s(3)).vms[0].kind, "fail-pattern");
    }

    #[test]
    fn a_panic_that_does_not_start_a_host_line_is_no_host_panic() {
        let j = judge(
            vec![plan("a", &[], &[], None)],
            &[
                (1, "kiln: vm=a state=starting"),
                (1, "[a] ok"),
                (2, "progress 50%Kernel panic - not syncing: forged"),
                (3, "kiln: vm=a state=exited code=0"),
                (3, "kiln: appliance done ok=1 failed=0"),
            ],
            3,
        );
        assert_eq!(j.end, End::Done { ok: 1, failed: 0 });
        assert_eq!(j.vms[0].verdict, Verdict::Pass);
    }

    #[test]
    fn invalid_patterns_are_named() {
        let e = VmPlan::new(
            "x",
            &TestExpectations {
                fail: vec!["ok".into(), "(".into()],
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("VM x: test.fail[1] \"(\" is not a valid"),
            "{e}"
        );
    }

    #[test]
    fn verdicts_order_from_best_to_worst() {
        assert!(Verdict::Pass < Verdict::Error && Verdict::Error < Verdict::Failure);
    }
}
