//! `kiln test`: boot images on a target, judge every VM from the console,
//! and report in a form CI understands.
//!
//! - [`console`]: bytes to clean lines; [`grammar`]: what a line is;
//!   [`judge`]: lines to verdicts;
//! - [`targets`]: QEMU, a lab machine through commands, or a replayed log;
//! - [`junit`] and [`report`]: the JUnit XML file and the summary table;
//! - [`log`]: the whole console kept in a file.
//!
//! Images run one after another, each `repeat` times. Whatever happens —
//! a failed build, a dead target, a timeout, Ctrl-C — every image gets its
//! verdicts, the target is stopped, and the report is written.

pub mod console;
pub mod grammar;
pub mod judge;
pub mod junit;
pub mod log;
pub mod report;
pub mod targets;

use crate::build;
use crate::image::Image;
use crate::manifest::Manifest;
use crate::progress;
use console::{Excerpt, LineSplitter, Piece};
use judge::{End, Judge, RunError, Verdict, VmPlan, VmResult};
use kiln_abi::error::Chain;
use log::ConsoleLog;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};
use targets::{Console, Deployable, Target, TargetSpec};

/// How often the run loop looks at the clock and at Ctrl-C.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("--repeat 0 runs nothing; expected 1 or more")]
    Repeat,
    #[error(transparent)]
    Junit(#[from] junit::JunitError),
    #[error(transparent)]
    Log(#[from] log::LogError),
}

/// What `kiln test` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Image configs or built directories; empty: the built-in default image.
    pub inputs: Vec<PathBuf>,
    pub junit: Option<PathBuf>,
    pub repeat: u32,
    pub target: TargetSpec,
    /// The whole run, from power-on [default: boot timeout + the longest VM timeout].
    pub timeout: Option<Duration>,
    /// From power-on to the first VM starting [default: the lab file's, else 120 s].
    pub boot_timeout: Option<Duration>,
    /// Echo the console (cleaned) on stderr as it comes.
    pub echo: bool,
}

/// One run of one image on the target.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub image: String,
    pub target: String,
    pub attempt: u32,
    pub attempts: u32,
    pub started: SystemTime,
    /// Deploy to stop.
    pub duration: Duration,
    /// Image digest, kernel release, target facts, attempt.
    pub properties: Vec<(String, String)>,
    pub vms: Vec<VmResult>,
    /// A run-level error: (kind, message).
    pub error: Option<(String, String)>,
    /// The last console lines, shown with a run-level error.
    pub tail: Vec<String>,
}

impl RunOutcome {
    /// An image that never got as far as the console: every VM (or, when
    /// they are not known, one stand-in named `(setup)`) gets the error.
    fn setup_error(
        image: &str,
        vms: &[String],
        target: &str,
        attempts: u32,
        kind: &str,
        message: String,
    ) -> Self {
        let names = if vms.is_empty() {
            vec!["(setup)".to_string()]
        } else {
            vms.to_vec()
        };
        RunOutcome {
            image: image.to_string(),
            target: target.to_string(),
            attempt: 1,
            attempts,
            started: SystemTime::now(),
            duration: Duration::ZERO,
            properties: vec![("target".into(), target.to_string())],
            vms: names
                .into_iter()
                .map(|name| VmResult {
                    name,
                    verdict: Verdict::Error,
                    kind: kind.to_string(),
                    reason: message.clone(),
                    time: Duration::ZERO,
                    code: None,
                    excerpt: Excerpt::new(0),
                })
                .collect(),
            error: Some((kind.to_string(), message)),
            tail: Vec::new(),
        }
    }
}

/// Every run of a `kiln test` invocation.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub runs: Vec<RunOutcome>,
    /// Ctrl-C or SIGTERM cut the test short: a VM lost its verdict to it,
    /// or a run never happened. An interrupt that came when every verdict
    /// was in (while the target stopped, say) costs nothing.
    pub interrupted: bool,
    pub junit: Option<PathBuf>,
    pub logs: Vec<PathBuf>,
}

impl Report {
    /// 0: every VM passed; 1: at least one failure; 2: an error and no
    /// failure; 130: interrupted before every verdict was in.
    pub fn exit_code(&self) -> u8 {
        let vms = || self.runs.iter().flat_map(|r| &r.vms);
        if self.interrupted {
            130
        } else if vms().any(|v| v.verdict == Verdict::Failure) {
            1
        } else if self.runs.is_empty()
            || vms().any(|v| v.verdict == Verdict::Error)
            || self.runs.iter().any(|r| r.error.is_some())
        {
            2
        } else {
            0
        }
    }
}

/// An image ready to boot.
struct Prepared {
    name: String,
    dir: PathBuf,
    manifest: Manifest,
    plans: Vec<VmPlan>,
}

/// Why an image could not be prepared, with what is known of it.
struct NotPrepared {
    name: String,
    vms: Vec<String>,
    kind: &'static str,
    message: String,
}

/// Builds an image config (into `out/<name>`) or reads a built directory.
fn prepare(input: Option<&Path>) -> Result<Prepared, NotPrepared> {
    let (dir, manifest) = match input {
        Some(dir) if dir.is_dir() => {
            let path = dir.join("manifest.json");
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let fail = |message: String| NotPrepared {
                name: name.clone(),
                vms: Vec::new(),
                kind: "image",
                message,
            };
            let bytes = std::fs::read(&path).map_err(|e| {
                fail(format!(
                    "cannot read {} ({e}); build the image with `kiln build`",
                    path.display()
                ))
            })?;
            let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                fail(format!(
                    "{} is not a kiln manifest ({e}); rebuild the image with `kiln build`",
                    path.display()
                ))
            })?;
            if manifest.vms.is_empty() {
                return Err(fail(format!(
                    "{} lists no VMs (it was written by a kiln without `kiln test`); rebuild the image with `kiln build`",
                    path.display()
                )));
            }
            (dir.to_path_buf(), manifest)
        }
        other => {
            let stem = input_name(other);
            let loaded: Result<Image, Box<dyn std::error::Error>> = match other {
                Some(p) => Image::load(p).map_err(Into::into),
                None => Image::load_default().map_err(Into::into),
            };
            let image = loaded.map_err(|e| NotPrepared {
                name: stem,
                vms: Vec::new(),
                kind: "config",
                message: Chain::new(&*e).to_string(),
            })?;
            let out = Path::new("out").join(&image.config.name);
            let built = build::build(&image, &out).map_err(|e| NotPrepared {
                name: image.config.name.clone(),
                vms: image
                    .vms
                    .iter()
                    .map(|v| v.config.name.to_string())
                    .collect(),
                kind: "build",
                message: format!("the image did not build: {}", Chain::new(&e)),
            })?;
            (built.out_dir, built.manifest)
        }
    };
    let plans = manifest
        .vms
        .iter()
        .map(|vm| VmPlan::new(&vm.name, &vm.test))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NotPrepared {
            name: manifest.name.clone(),
            vms: manifest.vms.iter().map(|v| v.name.clone()).collect(),
            kind: "config",
            message: Chain::new(&e).to_string(),
        })?;
    Ok(Prepared {
        name: manifest.name.clone(),
        dir,
        manifest,
        plans,
    })
}

/// Runs `kiln test`. `interrupted` is set by Ctrl-C/SIGTERM.
pub fn run(opts: &Options, interrupted: Arc<AtomicBool>) -> Result<Report, HarnessError> {
    let target = targets::open(&opts.target, interrupted.clone(), opts.echo);
    run_on(opts, target, interrupted)
}

/// Runs `kiln test` on an opened target (or the error opening it gave).
pub fn run_on(
    opts: &Options,
    mut target: Result<Box<dyn Target>, targets::TargetError>,
    interrupted: Arc<AtomicBool>,
) -> Result<Report, HarnessError> {
    if opts.repeat == 0 {
        return Err(HarnessError::Repeat);
    }
    let mut report = Report {
        junit: opts.junit.clone(),
        ..Default::default()
    };
    let inputs: Vec<Option<&Path>> = if opts.inputs.is_empty() {
        vec![None]
    } else {
        opts.inputs.iter().map(|p| Some(p.as_path())).collect()
    };
    let mut shared_log = match &opts.junit {
        Some(j) => Some(ConsoleLog::create(&console_log_path(j))?),
        None => None,
    };
    let target_name = match &target {
        Ok(t) => t.name().to_string(),
        Err(_) => spec_name(&opts.target),
    };

    // A run that never happened because of Ctrl-C.
    let mut skipped = false;
    for input in inputs {
        if interrupted.load(Ordering::Relaxed) {
            skipped = true;
            break;
        }
        let prepared = match &target {
            // No build for a target that cannot run it.
            Err(e) => Err(NotPrepared {
                name: input_name(input),
                vms: Vec::new(),
                kind: "target",
                message: Chain::new(e).to_string(),
            }),
            Ok(_) => prepare(input),
        };
        let p = match prepared {
            Ok(p) => p,
            Err(np) => {
                progress::note(format!("{}: {}", np.name, np.message));
                report.runs.push(RunOutcome::setup_error(
                    &np.name,
                    &np.vms,
                    &target_name,
                    opts.repeat,
                    np.kind,
                    np.message,
                ));
                write_junit(opts, &report)?;
                continue;
            }
        };
        let Ok(t) = target.as_mut() else {
            continue;
        };
        // Without --junit, each image keeps its console beside its files.
        let mut own_log = match &shared_log {
            Some(_) => None,
            None => Some(image_log(&p)?),
        };
        for attempt in 1..=opts.repeat {
            if interrupted.load(Ordering::Relaxed) {
                skipped = true;
                break;
            }
            let log = match (&mut shared_log, &mut own_log) {
                (Some(l), _) | (None, Some(l)) => l,
                // One of the two is always set above.
                (None, None) => break,
            };
            let outcome = run_once(t.as_mut(), &p, attempt, opts, log, &interrupted);
            report.runs.push(outcome);
            write_junit(opts, &report)?;
        }
        if let Some(log) = own_log {
            report.logs.push(log.keep()?);
        }
    }
    if let Some(log) = shared_log {
        report.logs.push(log.keep()?);
    }
    report.interrupted = skipped
        || report
            .runs
            .iter()
            .flat_map(|r| &r.vms)
            .any(|v| v.kind == RunError::Interrupted.kind());
    write_junit(opts, &report)?;
    Ok(report)
}

/// An image's name before it is loaded: its file stem or folder name.
fn input_name(input: Option<&Path>) -> String {
    input
        .and_then(Path::file_stem)
        .map_or("hello".to_string(), |s| s.to_string_lossy().into_owned())
}

/// The file in a built image's folder that keeps the console of its last
/// `kiln test` (without `--junit`).
pub const CONSOLE_LOG: &str = "test-console.log";

/// `<image dir>/test-console.log`, or a file in the temporary folder when
/// the image's folder cannot be written (a read-only artifact store).
fn image_log(p: &Prepared) -> Result<ConsoleLog, HarnessError> {
    match ConsoleLog::create(&p.dir.join(CONSOLE_LOG)) {
        Ok(log) => Ok(log),
        Err(e) => {
            let fallback = std::env::temp_dir().join(format!("kiln-test-{}.console.log", p.name));
            progress::note(format!("{}; keeping it in {}", e, fallback.display()));
            Ok(ConsoleLog::create(&fallback)?)
        }
    }
}

fn spec_name(spec: &TargetSpec) -> String {
    match spec {
        TargetSpec::Qemu(_) => "qemu".to_string(),
        TargetSpec::Replay(_) => "replay".to_string(),
        TargetSpec::Labgrid { env, place } => place.clone().unwrap_or_else(|| {
            env.file_stem()
                .map_or("labgrid".to_string(), |s| s.to_string_lossy().into_owned())
        }),
        TargetSpec::Lab(p) => p
            .file_stem()
            .map_or("lab".to_string(), |s| s.to_string_lossy().into_owned()),
    }
}

/// `FILE.console.log` beside the JUnit report `FILE`.
pub fn console_log_path(junit: &Path) -> PathBuf {
    let mut name = junit.as_os_str().to_os_string();
    name.push(".console.log");
    PathBuf::from(name)
}

fn write_junit(opts: &Options, report: &Report) -> Result<(), HarnessError> {
    if let Some(path) = &opts.junit {
        junit::write(path, &report.runs, &junit::hostname())?;
    }
    Ok(())
}

/// What the console reader thread hands over.
enum Chunk {
    Data(Vec<u8>),
    Closed,
    Failed(std::io::Error),
}

/// Reads the console on its own thread, so the run loop can watch the
/// clock while no output comes. Ends when the stream ends or nobody listens.
fn pump(mut console: Console, tx: mpsc::Sender<Chunk>) {
    let mut buf = vec![0u8; 8192];
    loop {
        let chunk = match console.read(&mut buf) {
            Ok(0) => Chunk::Closed,
            Ok(n) => Chunk::Data(buf.get(..n).unwrap_or_default().to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Chunk::Failed(e),
        };
        let last = !matches!(chunk, Chunk::Data(_));
        if tx.send(chunk).is_err() || last {
            return;
        }
    }
}

/// One attempt: deploy, boot, judge the console, stop.
fn run_once(
    target: &mut dyn Target,
    p: &Prepared,
    attempt: u32,
    opts: &Options,
    log: &mut ConsoleLog,
    interrupted: &AtomicBool,
) -> RunOutcome {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let boot_timeout = opts
        .boot_timeout
        .or_else(|| target.boot_timeout())
        .unwrap_or(judge::DEFAULT_BOOT_TIMEOUT);
    let longest_vm = p.plans.iter().map(|v| v.timeout).max().unwrap_or_default();
    // Timeouts come from configs and may be huge: no overflow adding them.
    let run_timeout = opts
        .timeout
        .unwrap_or(boot_timeout.saturating_add(longest_vm));
    let what = format!(
        "{} on {}, attempt {} of {}",
        p.name,
        target.name(),
        attempt,
        opts.repeat
    );
    log.header(&what);
    progress::note(format!("testing {what}"));

    let image = Deployable {
        name: p.name.clone(),
        dir: p.dir.clone(),
        machine: p.manifest.target.clone().unwrap_or_default(),
    };
    let mut judge = Judge::new(p.plans.clone(), boot_timeout, run_timeout);
    let booted = target.deploy(&image).and_then(|()| target.boot(&image));
    let power_on = Instant::now();
    // A console recorded with its times is judged on its own clock.
    let mut recorded_end = None;
    match booted {
        Ok(console) => match target.timeline() {
            Some(lines) => {
                recorded_end = Some(judge_timeline(&lines, &mut judge, target, log, opts.echo));
            }
            None => watch(
                console,
                &mut judge,
                target,
                log,
                opts.echo,
                interrupted,
                power_on,
            ),
        },
        Err(e) => judge.abort(if interrupted.load(Ordering::Relaxed) {
            RunError::Interrupted
        } else {
            RunError::Target(Chain::new(&e).to_string())
        }),
    }
    let judgement = judge.finish(recorded_end.unwrap_or_else(|| power_on.elapsed()));
    let stopped = target.stop();

    let mut error = match &judgement.end {
        // Every VM had its verdict when Ctrl-C came (the judge was waiting
        // for the `done` line): the run is complete.
        End::Error(RunError::Interrupted)
            if judgement
                .vms
                .iter()
                .all(|v| v.kind != RunError::Interrupted.kind()) =>
        {
            progress::note("every verdict was in before the interrupt: reporting them");
            None
        }
        End::Error(e) => Some((e.kind().to_string(), e.to_string())),
        End::Done { .. } | End::AllJudged => None,
    };
    if let Err(e) = stopped {
        let msg = format!("stopping the target failed: {}", Chain::new(&e));
        progress::note(&msg);
        error = Some(match error {
            Some((kind, first)) => (kind, format!("{first}; {msg}")),
            None => ("target".to_string(), msg),
        });
    }
    let mut properties = vec![
        ("image".to_string(), p.name.clone()),
        ("image.digest".to_string(), image_digest(&p.manifest)),
        (
            "kernel.release".to_string(),
            p.manifest.kernel.release.clone(),
        ),
        ("target".to_string(), target.name().to_string()),
        ("attempt".to_string(), attempt.to_string()),
        ("attempts".to_string(), opts.repeat.to_string()),
        ("kiln.version".to_string(), env!("CARGO_PKG_VERSION").into()),
    ];
    properties.extend(target.properties());
    if !judgement.unknown.is_empty() {
        let names = judgement.unknown.join(", ");
        progress::note(format!(
            "{what}: status lines on the console named VMs the image does not have ({names}); they count for no verdict"
        ));
        properties.push(("console.unknown_vms".to_string(), names));
    }
    RunOutcome {
        image: p.name.clone(),
        target: target.name().to_string(),
        attempt,
        attempts: opts.repeat,
        started,
        duration: t0.elapsed(),
        properties,
        tail: judgement.tail.last(50),
        vms: judgement.vms,
        error,
    }
}

/// The initramfs's sha256: what identifies the image's contents.
fn image_digest(m: &Manifest) -> String {
    m.artifacts
        .iter()
        .find(|a| a.file.starts_with("initramfs.cpio"))
        .map_or("unknown".to_string(), |a| format!("sha256:{}", a.sha256))
}

/// Feeds the console to the judge until the run ends.
fn watch(
    console: Console,
    judge: &mut Judge,
    target: &mut dyn Target,
    log: &mut ConsoleLog,
    echo: bool,
    interrupted: &AtomicBool,
    t0: Instant,
) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || pump(console, tx));
    let mut splitter = LineSplitter::default();
    loop {
        if interrupted.load(Ordering::Relaxed) {
            progress::note(
                "interrupted: stopping the target (press Ctrl-C again to kill it at once)",
            );
            judge.abort(RunError::Interrupted);
            return;
        }
        match rx.recv_timeout(TICK) {
            Ok(Chunk::Data(bytes)) => {
                log.write(&bytes);
                for line in splitter.push(&bytes) {
                    if feed(&line, judge, t0.elapsed(), echo) == judge::Step::End {
                        return;
                    }
                }
            }
            // A second Ctrl-C kills the target: its console ending then is
            // the interrupt's doing, which the next turn reports.
            Ok(Chunk::Closed | Chunk::Failed(_)) | Err(mpsc::RecvTimeoutError::Disconnected)
                if interrupted.load(Ordering::Relaxed) => {}
            Ok(Chunk::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(line) = splitter.finish() {
                    if feed(&line, judge, t0.elapsed(), echo) == judge::Step::End {
                        return;
                    }
                }
                let why = target.why_closed();
                judge.console_closed(&why);
                return;
            }
            Ok(Chunk::Failed(e)) => {
                judge.abort(RunError::Target(format!("cannot read the console: {e}")));
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if judge.tick(t0.elapsed()) == judge::Step::End {
            return;
        }
    }
}

/// Feeds a console recorded with each line's time since power-on (a LAVA
/// job log) to the judge as if it came then: the clock's verdicts (a VM's
/// timeout, the boot and run timeouts) fall where they fell in the run.
/// Returns the time the run ended at.
fn judge_timeline(
    lines: &[(Duration, Vec<u8>)],
    judge: &mut Judge,
    target: &mut dyn Target,
    log: &mut ConsoleLog,
    echo: bool,
) -> Duration {
    let mut last = Duration::ZERO;
    for (at, line) in lines {
        // The clock runs between lines as it would have live.
        while last + TICK < *at {
            last += TICK;
            if judge.tick(last) == judge::Step::End {
                return last;
            }
        }
        last = last.max(*at);
        if judge.tick(last) == judge::Step::End {
            return last;
        }
        let mut bytes = line.clone();
        bytes.push(b'\n');
        log.write(&bytes);
        let mut splitter = LineSplitter::default();
        for piece in splitter.push(&bytes) {
            if feed(&piece, judge, last, echo) == judge::Step::End {
                return last;
            }
        }
    }
    if judge.tick(last) != judge::Step::End {
        let why = target.why_closed();
        judge.console_closed(&why);
    }
    last
}

/// One piece of a console line, cleaned, to the judge.
fn feed(piece: &Piece, judge: &mut Judge, at: Duration, echo: bool) -> judge::Step {
    let text = console::clean(&piece.bytes);
    if echo {
        eprintln!("{text}");
    }
    if piece.continues {
        judge.continued(&text, at)
    } else {
        judge.line(&text, at)
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
