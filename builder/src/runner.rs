//! `kiln run`: boots a built image on the emulated target with its console
//! on stdout, and turns what the runtime printed into kiln's exit code
//! (README, "Commands": 0 all VMs ok, 1 a VM failed or the appliance did
//! not finish, 2 kiln or QEMU could not run it, 130 interrupted).

use crate::children::{self, ProcessGroup, Role};
use crate::emulator::{self, Accel, BootFiles};
use crate::harness::console::{self, LineSplitter};
use crate::harness::grammar::{classify, ConsoleLine};
use crate::image::TargetSection;
use crate::progress;
use kiln_abi::status::StatusLine;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Qemu(#[from] emulator::QemuError),
    #[error("cannot start QEMU")]
    Spawn(#[source] io::Error),
    #[error("cannot wait for QEMU")]
    Wait(#[source] io::Error),
}

/// How a run ended, from the console and QEMU's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `kiln: appliance done ok=<n> failed=<m>`.
    Done { ok: u32, failed: u32 },
    /// The host kernel panicked before the done line.
    HostPanic,
    /// The console ended without the done line, QEMU exiting cleanly.
    NoDoneLine,
    /// QEMU itself failed (its exit code, or none when killed) before the
    /// done line.
    QemuFailed(Option<i32>),
    /// Ctrl-C or SIGTERM before the done line.
    Interrupted,
}

impl Outcome {
    /// The exit code documented in README.md ("Commands").
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Done { failed: 0, .. } => 0,
            Outcome::Done { .. } | Outcome::HostPanic | Outcome::NoDoneLine => 1,
            Outcome::QemuFailed(_) => 2,
            Outcome::Interrupted => 130,
        }
    }

    /// One line for stderr, or none when all went well.
    pub fn message(self) -> Option<String> {
        match self {
            Outcome::Done { failed: 0, .. } => None,
            Outcome::Done { ok, failed } => Some(format!(
                "{failed} VM(s) failed, {ok} ok (see their state= lines above)"
            )),
            Outcome::HostPanic => Some("the appliance's kernel crashed".into()),
            Outcome::NoDoneLine => Some(
                "the appliance stopped before its done line: its VMs never all finished".into(),
            ),
            Outcome::QemuFailed(Some(code)) => Some(format!("QEMU failed with exit code {code}")),
            Outcome::QemuFailed(None) => Some("QEMU was killed".into()),
            Outcome::Interrupted => Some("interrupted; QEMU stopped".into()),
        }
    }
}

/// What the console has said so far: the done line, a host panic.
#[derive(Debug, Default)]
pub struct ConsoleWatch {
    splitter: LineSplitter,
    done: Option<(u32, u32)>,
    panicked: bool,
}

impl ConsoleWatch {
    pub fn push(&mut self, bytes: &[u8]) {
        for piece in self.splitter.push(bytes) {
            // A piece that continues a cut line is never a status line.
            if !piece.continues {
                self.line(&console::clean(&piece.bytes));
            }
        }
    }

    fn line(&mut self, line: &str) {
        match classify(line) {
            ConsoleLine::Status(StatusLine::Done { ok, failed }) => {
                self.done = Some((ok, failed));
            }
            ConsoleLine::HostPanic(_) if self.done.is_none() => self.panicked = true,
            _ => {}
        }
    }

    /// The outcome once the console ended and QEMU exited with `qemu`
    /// (`None`: it was stopped on an interrupt).
    pub fn outcome(&mut self, qemu: Option<Option<i32>>) -> Outcome {
        if let Some(piece) = self.splitter.finish() {
            if !piece.continues {
                self.line(&console::clean(&piece.bytes));
            }
        }
        match (self.done, qemu) {
            (Some((ok, failed)), _) => Outcome::Done { ok, failed },
            (None, None) => Outcome::Interrupted,
            (None, Some(_)) if self.panicked => Outcome::HostPanic,
            (None, Some(Some(0))) => Outcome::NoDoneLine,
            (None, Some(code)) => Outcome::QemuFailed(code),
        }
    }
}

/// Boots the image in `dir` and copies its console to stdout until QEMU
/// exits or `interrupted` is set.
pub fn run(
    dir: &Path,
    target: &TargetSection,
    accel: Accel,
    interrupted: &AtomicBool,
) -> Result<Outcome, RunError> {
    let qemu = emulator::find()?;
    let files = BootFiles::from_dir(dir)?;
    let mut cmd = emulator::command(&qemu, &files, target, accel);
    cmd.stdout(Stdio::piped());
    progress::note(format!(
        "booting {} on QEMU ({}); Ctrl-C stops it",
        dir.display(),
        accel.as_str()
    ));
    // QEMU stays in kiln's process group, the terminal's foreground job:
    // Ctrl-C reaches QEMU, which stops, and kiln, which stays to report and
    // make sure (SIGTERM reaches kiln alone). QEMU dies with kiln whatever
    // kills it.
    let mut child =
        children::spawn(cmd, ProcessGroup::Kiln, Role::Work).map_err(RunError::Spawn)?;
    let (tx, rx) = mpsc::channel();
    if let Some(mut out) = child.take_stdout() {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
    }
    let mut booting = progress::Waiting::terminal_only("booting: waiting for the console");
    let mut watch = ConsoleWatch::default();
    let mut stdout_open = true;
    let mut show = |bytes: &[u8], booting: &mut progress::Waiting| {
        booting.clear();
        watch.push(bytes);
        // A closed stdout (`kiln run | head`) ends the copy, not the run.
        if stdout_open {
            let mut out = io::stdout().lock();
            stdout_open = out.write_all(bytes).and_then(|()| out.flush()).is_ok();
        }
    };
    let status = loop {
        while let Ok(bytes) = rx.try_recv() {
            show(&bytes, &mut booting);
        }
        if let Some(s) = child.try_wait().map_err(RunError::Wait)? {
            break Some(s);
        }
        if interrupted.load(Ordering::Relaxed) {
            // QEMU saves nothing worth waiting long for.
            child.stop(Duration::from_millis(500));
            break None;
        }
        if let Ok(bytes) = rx.recv_timeout(Duration::from_millis(50)) {
            show(&bytes, &mut booting);
        }
    };
    // What QEMU wrote before it exited.
    while let Ok(bytes) = rx.recv_timeout(Duration::from_millis(200)) {
        show(&bytes, &mut booting);
    }
    booting.clear();
    let qemu_exit = match status {
        Some(s) if !interrupted.load(Ordering::Relaxed) => Some(s.code()),
        _ => None,
    };
    Ok(watch.outcome(qemu_exit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(console: &str, qemu: Option<Option<i32>>) -> Outcome {
        let mut w = ConsoleWatch::default();
        // Fed in small pieces, as a pipe delivers it.
        for chunk in console.as_bytes().chunks(7) {
            w.push(chunk);
        }
        w.outcome(qemu)
    }

    #[test]
    fn the_done_line_decides() {
        let ok =
            "boot\r\nkiln: vm=hello state=exited code=0\r\nkiln: appliance done ok=1 failed=0\r\n";
        assert_eq!(
            outcome(ok, Some(Some(0))),
            Outcome::Done { ok: 1, failed: 0 }
        );
        assert_eq!(outcome(ok, Some(Some(0))).exit_code(), 0);
        let failed = "kiln: vm=hello state=exited code=3\nkiln: appliance done ok=0 failed=1";
        assert_eq!(outcome(failed, Some(Some(0))).exit_code(), 1);
        // An interrupt after the done line (on_done = "stay") keeps it.
        assert_eq!(outcome(ok, None).exit_code(), 0);
    }

    #[test]
    fn a_guest_cannot_print_the_done_line() {
        let c = "[hello] kiln: appliance done ok=1 failed=0\n";
        assert_eq!(outcome(c, Some(Some(0))), Outcome::NoDoneLine);
        assert_eq!(outcome(c, Some(Some(0))).exit_code(), 1);
    }

    #[test]
    fn without_the_done_line() {
        let panic = "[    1.0] Kernel panic - not syncing: VFS\n";
        assert_eq!(outcome(panic, Some(Some(0))), Outcome::HostPanic);
        assert_eq!(outcome(panic, Some(Some(0))).exit_code(), 1);
        assert_eq!(outcome("", Some(Some(1))), Outcome::QemuFailed(Some(1)));
        assert_eq!(outcome("", Some(Some(1))).exit_code(), 2);
        assert_eq!(outcome("", Some(None)).exit_code(), 2);
        assert_eq!(outcome("booting\n", None).exit_code(), 130);
    }
}
