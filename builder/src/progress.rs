//! Progress for long work: an indicatif bar on a terminal, plain
//! line-oriented messages when stderr is piped (CI logs, `kiln ... | tee`).
//! `-q` silences it all, `-v` adds the commands kiln runs.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static QUIET: AtomicBool = AtomicBool::new(false);
static VERBOSE: AtomicBool = AtomicBool::new(false);

/// How often a spinner or bar redraws by itself, so it moves while the
/// work behind it reports nothing (a compressor buffering, a kernel booting).
const TICK: Duration = Duration::from_millis(120);

/// Silences all progress output (`-q`, `--json`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Also prints each command kiln runs (`-v`).
pub fn set_verbose(verbose: bool) {
    VERBOSE.store(verbose, Ordering::Relaxed);
}

/// Whether `-v` was given (and not `-q`).
pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed) && !QUIET.load(Ordering::Relaxed)
}

/// With `-v`, prints the command about to run: `kiln: $ cargo build ...`.
pub fn command(cmd: &std::process::Command) {
    if verbose() {
        let mut line = cmd.get_program().to_string_lossy().into_owned();
        for arg in cmd.get_args() {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        note(format!("$ {line}"));
    }
}

fn interactive() -> bool {
    !QUIET.load(Ordering::Relaxed) && std::io::stderr().is_terminal()
}

/// Prints one line of progress on stderr unless quiet.
pub fn note(msg: impl AsRef<str>) {
    if !QUIET.load(Ordering::Relaxed) {
        eprintln!("kiln: {}", msg.as_ref());
    }
}

/// A step of work with an optional byte total. On a terminal it draws a bar;
/// piped, it prints one line when it starts and one when it finishes.
#[derive(Debug)]
pub struct Task {
    bar: Option<ProgressBar>,
    label: String,
    started: Instant,
}

impl Task {
    /// A task measured in bytes; `total` is `None` when unknown.
    pub fn bytes(label: impl Into<String>, total: Option<u64>) -> Self {
        let label = label.into();
        let bar = interactive().then(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            let style = if total.is_some() {
                "{msg:24} {spinner} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
            } else {
                "{msg:24} {spinner} {bytes} {bytes_per_sec} {elapsed}"
            };
            if let Ok(s) = ProgressStyle::with_template(style) {
                bar.set_style(s.progress_chars("=> "));
            }
            bar.set_message(label.clone());
            // Moves even while no bytes pass: xz takes everything and then
            // compresses for seconds before it writes.
            bar.enable_steady_tick(TICK);
            bar
        });
        if bar.is_none() {
            note(format!("{label}..."));
        }
        Task {
            bar,
            label,
            started: Instant::now(),
        }
    }

    /// A task without a measure: a spinner on a terminal.
    pub fn step(label: impl Into<String>) -> Self {
        Self::bytes(label, None)
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    pub fn set(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }

    /// Ends the task with a short outcome, e.g. "12.3 MiB".
    pub fn finish(self, outcome: impl AsRef<str>) {
        let secs = self.started.elapsed().as_secs_f64();
        match &self.bar {
            Some(b) => {
                b.finish_and_clear();
                note(format!("{}: {} ({secs:.1}s)", self.label, outcome.as_ref()));
            }
            None => note(format!("{}: {} ({secs:.1}s)", self.label, outcome.as_ref())),
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// A state shown while kiln waits for something that reports no progress
/// (a booting target's first console line): a ticking spinner on a
/// terminal, nothing when stderr is piped, where output stays line-oriented.
#[derive(Debug)]
pub struct Waiting {
    bar: Option<ProgressBar>,
}

impl Waiting {
    pub fn terminal_only(label: impl Into<String>) -> Self {
        let bar = interactive().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(s) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
                bar.set_style(s);
            }
            bar.set_message(label.into());
            bar.enable_steady_tick(TICK);
            bar
        });
        Waiting { bar }
    }

    /// Removes the spinner (before the first line it waited for is shown).
    pub fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A writer that counts bytes into a task as they pass.
#[derive(Debug)]
pub struct CountingWriter<'a, W> {
    pub inner: W,
    pub task: &'a Task,
}

impl<W: std::io::Write> std::io::Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.task.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that counts bytes into a task as they pass.
#[derive(Debug)]
pub struct CountingReader<'a, R> {
    pub inner: R,
    pub task: &'a Task,
}

impl<R: std::io::Read> std::io::Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.task.inc(n as u64);
        Ok(n)
    }
}

/// Human-readable byte count: "12.3 MiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
