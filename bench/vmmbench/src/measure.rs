//! One timed run of a VMM: spawn it, timestamp the console markers as they
//! arrive, reap it with its peak resident memory.

use std::io::Read;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Console text that marks a phase. Matched anywhere in the combined
/// stdout and stderr, the first time it appears.
#[derive(Debug, Clone, Copy)]
pub struct Markers {
    /// The VMM is about to start the vCPUs (QEMU's trace line); `None`
    /// when the VMM reports its setup time itself (kiln's stats line).
    pub setup: Option<&'static str>,
    /// The guest's first line from /init (or the unikernel's first line).
    pub init: &'static str,
    /// The guest's last line before it asks to end the VM, if it has one.
    pub last: Option<&'static str>,
}

/// What one run took, in milliseconds from the spawn.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub setup_ms: Option<f64>,
    pub init_ms: Option<f64>,
    pub last_ms: Option<f64>,
    pub exit_ms: f64,
    /// ru_maxrss of the VMM process: with guest RAM on hugetlbfs, which
    /// is not counted in RSS, this is the VMM's own peak.
    pub peak_kib: u64,
    /// The raw wait status.
    pub status: i32,
    /// Everything the VMM printed (capped).
    pub output: Vec<u8>,
}

impl Sample {
    /// Guest's last line to the VMM process gone.
    pub fn teardown_ms(&self) -> Option<f64> {
        self.last_ms.map(|l| self.exit_ms - l)
    }

    /// The VMM's exit code, when it exited.
    pub fn code(&self) -> Option<i32> {
        libc::WIFEXITED(self.status).then(|| libc::WEXITSTATUS(self.status))
    }

    /// A `key=<number>` field of a line starting with `prefix`.
    pub fn field(&self, prefix: &str, key: &str) -> Option<f64> {
        let text = String::from_utf8_lossy(&self.output);
        let line = text.lines().find_map(|l| {
            l.find(prefix).map(|i| &l[i..]) // the line may carry other bytes first
        })?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("cannot create the output pipe")]
    Pipe(#[source] nix::Error),
    #[error("cannot duplicate the output pipe")]
    Dup(#[source] std::io::Error),
    #[error("cannot start {program}; is it in the benchmark initramfs?")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reap the VMM process")]
    Wait(#[source] std::io::Error),
}

/// Output kept per run; the markers come early, the rest is for errors.
const OUTPUT_CAP: usize = 256 * 1024;

/// Runs `cmd` to its end (killed after `limit`), timing `markers`.
pub fn run(mut cmd: Command, markers: Markers, limit: Duration) -> Result<Sample, MeasureError> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(MeasureError::Pipe)?;
    let write2 = write.try_clone().map_err(MeasureError::Dup)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(write2));
    let program = cmd.get_program().to_string_lossy().into_owned();
    let started = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|source| MeasureError::Spawn { program, source })?;
    // The Command holds the write ends until dropped: without this the
    // pipe never reports end of file.
    drop(cmd);
    let ms = |t: Instant| t.saturating_duration_since(started).as_secs_f64() * 1000.0;

    let mut sample = Sample::default();
    let mut file = std::fs::File::from(read);
    let mut buf = [0u8; 4096];
    let mut killed = false;
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() && !killed {
            // SAFETY: kill() on the pid of our own unreaped child.
            unsafe { libc::kill(pid_of(&child), libc::SIGKILL) };
            killed = true;
        }
        let timeout =
            PollTimeout::try_from(left.min(Duration::from_secs(1))).unwrap_or(PollTimeout::NONE);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let now = ms(Instant::now());
        let from = sample.output.len().saturating_sub(64);
        let room = OUTPUT_CAP.saturating_sub(sample.output.len());
        sample.output.extend_from_slice(&buf[..n.min(room)]);
        let fresh = &sample.output[from..];
        let seen = |m: &str| contains(fresh, m.as_bytes());
        if sample.setup_ms.is_none() && markers.setup.is_some_and(seen) {
            sample.setup_ms = Some(now);
        }
        if sample.init_ms.is_none() && seen(markers.init) {
            sample.init_ms = Some(now);
        }
        if sample.last_ms.is_none() && markers.last.is_some_and(seen) {
            sample.last_ms = Some(now);
        }
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid, writing into the two locals.
    let reaped = unsafe { libc::wait4(pid_of(&child), &mut status, 0, &mut usage) };
    if reaped < 0 {
        return Err(MeasureError::Wait(std::io::Error::last_os_error()));
    }
    sample.exit_ms = ms(Instant::now());
    sample.status = status;
    sample.peak_kib = u64::try_from(usage.ru_maxrss).unwrap_or(0);
    Ok(sample)
}

fn pid_of(child: &std::process::Child) -> libc::pid_t {
    libc::pid_t::try_from(child.id()).unwrap_or(0)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_markers_and_reaps_with_rusage() {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("echo setup-done >&2; sleep 0.2; echo hello from Linux; echo 'exit 0'; echo 'stats a=1 b=2.5'");
        let s = run(
            cmd,
            Markers {
                setup: Some("setup-done"),
                init: "hello from Linux",
                last: Some("exit 0"),
            },
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(s.code(), Some(0));
        let (setup, init) = (s.setup_ms.unwrap(), s.init_ms.unwrap());
        assert!(init - setup >= 150.0, "{setup} {init}");
        assert!(s.exit_ms >= s.last_ms.unwrap());
        assert!(s.peak_kib > 0);
        assert_eq!(s.field("stats", "b"), Some(2.5));
    }

    #[test]
    fn kills_a_run_past_its_limit() {
        let mut cmd = Command::new("/bin/sleep");
        cmd.arg("30");
        let m = Markers {
            setup: None,
            init: "x",
            last: None,
        };
        let s = run(cmd, m, Duration::from_millis(300)).unwrap();
        assert_eq!(s.code(), None);
        assert!(s.exit_ms < 5000.0);
    }
}
