//! One timed run of a VMM: spawn it, timestamp the console markers as they
//! arrive, follow its own peak resident memory, reap it, and kill it (with
//! its children) when it passes its deadline.

use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
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
    /// The pair this run belongs to (set by the caller; ratios pair by it).
    pub pair: usize,
    pub setup_ms: Option<f64>,
    pub init_ms: Option<f64>,
    pub last_ms: Option<f64>,
    /// To the process reaped, or to when it was given up on.
    pub exit_ms: f64,
    /// `ru_maxrss` of the VMM process: the larger of its own lifetime peak
    /// and the harness's peak, whose memory the spawned process shared
    /// until its `exec` (Linux keeps the larger at exec).
    pub rusage_kib: u64,
    /// The harness's own `VmHWM` just after the spawn: at least what
    /// `rusage_kib` counts of it.
    pub harness_kib: u64,
    /// The VMM's own high-water mark, `VmHWM` of /proc/<pid>/status, read
    /// while it runs (last at the guest's last line, just before it asks
    /// to end the VM). hugetlbfs guest RAM is not counted in it.
    pub hwm_kib: Option<u64>,
    /// The raw wait status, when the process was reaped.
    pub status: Option<i32>,
    /// Killed at its deadline.
    pub timed_out: bool,
    /// Why this boot does not count, `None` when it does.
    pub failure: Option<&'static str>,
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
        self.status
            .filter(|s| libc::WIFEXITED(*s))
            .map(|s| libc::WEXITSTATUS(s))
    }

    /// The VMM's lifetime peak from `ru_maxrss`, when that is above the
    /// harness's own peak and so cannot be the harness's: then it is the
    /// VMM's own, teardown included.
    pub fn lifetime_peak_kib(&self) -> Option<u64> {
        (self.harness_kib > 0 && self.rusage_kib > self.harness_kib).then_some(self.rusage_kib)
    }

    /// Why this boot does not count, or `None` when it does: it ended
    /// within its deadline, was reaped, and printed every marker.
    fn judge(&self, markers: &Markers) -> Option<&'static str> {
        if self.timed_out {
            Some("past its deadline, killed")
        } else if self.status.is_none() {
            Some("not reaped")
        } else if self.init_ms.is_none() {
            Some("no /init line")
        } else if markers.last.is_some() && self.last_ms.is_none() {
            Some("no last line")
        } else if markers.setup.is_some() && self.setup_ms.is_none() {
            Some("no setup line")
        } else {
            None
        }
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
    #[error("cannot watch the VMM process (pidfd_open needs Linux 5.3 or later)")]
    Pidfd(#[source] std::io::Error),
}

/// Output kept per run; the markers come early, the rest is for errors.
const OUTPUT_CAP: usize = 256 * 1024;
/// How long to wait, after a kill or after the VMM exited, for the pipe's
/// other holders (the VMM's children) and an unkillable process before
/// giving up on them: the next boot must not wait on this one.
const GRACE: Duration = Duration::from_secs(5);
/// How often `VmHWM` is read while nothing else wakes the harness.
const HWM_EVERY: Duration = Duration::from_millis(250);

/// Runs `cmd` in its own process group to its end, timing `markers`. At
/// `limit` the whole group is killed and the sample marked timed out; the
/// call returns at most [`GRACE`] after that whatever the processes do.
pub fn run(mut cmd: Command, markers: Markers, limit: Duration) -> Result<Sample, MeasureError> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(MeasureError::Pipe)?;
    let write2 = write.try_clone().map_err(MeasureError::Dup)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(write2))
        .process_group(0);
    let program = cmd.get_program().to_string_lossy().into_owned();
    let started = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|source| MeasureError::Spawn { program, source })?;
    // The Command holds the write ends until dropped: without this the
    // pipe never reports end of file.
    drop(cmd);
    // spawn() returns after the exec, so this bounds the harness's part.
    let harness_kib = read_hwm("/proc/self/status").unwrap_or(0);
    let pid = pid_of(&child);
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            kill_group(pid);
            let _ = reap(pid);
            return Err(MeasureError::Pidfd(e));
        }
    };
    let status_path = format!("/proc/{pid}/status");
    let ms = |t: Instant| t.saturating_duration_since(started).as_secs_f64() * 1000.0;
    let deadline = started + limit;

    let mut sample = Sample {
        harness_kib,
        ..Sample::default()
    };
    let mut file = std::fs::File::from(read);
    let mut buf = [0u8; 4096];
    let mut pipe_open = true;
    let mut ended: Option<Instant> = None; // reaped
    let mut killed: Option<Instant> = None;
    let mut hwm_read = started;
    loop {
        let now = Instant::now();
        if ended.is_some() && !pipe_open {
            break;
        }
        if ended.is_none() && killed.is_none() && now >= deadline {
            kill_group(pid);
            killed = Some(now);
            sample.timed_out = true;
        }
        if let Some(since) = ended.or(killed) {
            if now.saturating_duration_since(since) >= GRACE {
                break;
            }
        }
        if ended.is_none() && now.saturating_duration_since(hwm_read) >= HWM_EVERY {
            sample.hwm_kib = read_hwm(&status_path).or(sample.hwm_kib);
            hwm_read = now;
        }
        let wake_by = match ended.or(killed) {
            Some(since) => since + GRACE,
            None => deadline.min(now + HWM_EVERY),
        };
        let timeout = PollTimeout::try_from(wake_by.saturating_duration_since(now))
            .unwrap_or(PollTimeout::MAX);
        let mut fds = Vec::with_capacity(2);
        if pipe_open {
            fds.push(PollFd::new(file.as_fd(), PollFlags::POLLIN));
        }
        if ended.is_none() {
            fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (pipe_ready, pid_ready) = if pipe_open {
            (ready(0), ended.is_none() && ready(1))
        } else {
            (false, ended.is_none() && ready(0))
        };
        drop(fds);
        if pipe_ready {
            match file.read(&mut buf) {
                Ok(0) => pipe_open = false,
                Ok(n) => {
                    let now = ms(Instant::now());
                    let had_last = sample.last_ms.is_some();
                    take(&mut sample, &buf[..n], &markers, now);
                    if !had_last && sample.last_ms.is_some() && ended.is_none() {
                        // The guest is about to end the VM: the VMM's
                        // high-water mark now is its peak but for teardown.
                        sample.hwm_kib = read_hwm(&status_path).or(sample.hwm_kib);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => pipe_open = false,
            }
        }
        if pid_ready {
            if let Some((status, usage)) = reap(pid) {
                let now = Instant::now();
                sample.exit_ms = ms(now);
                sample.status = Some(status);
                sample.rusage_kib = u64::try_from(usage.ru_maxrss).unwrap_or(0);
                ended = Some(now);
            }
        }
    }
    if ended.is_none() {
        // Given up on: killed and still not gone. Its time is the deadline's.
        if killed.is_none() {
            kill_group(pid);
            sample.timed_out = true;
        }
        sample.exit_ms = ms(Instant::now());
        if let Some((status, usage)) = reap(pid) {
            sample.status = Some(status);
            sample.rusage_kib = u64::try_from(usage.ru_maxrss).unwrap_or(0);
        }
    }
    sample.failure = sample.judge(&markers);
    Ok(sample)
}

/// Appends a chunk of console output and timestamps the markers it
/// completes (a marker may straddle two chunks).
fn take(sample: &mut Sample, chunk: &[u8], markers: &Markers, now: f64) {
    let from = sample.output.len().saturating_sub(64);
    let room = OUTPUT_CAP.saturating_sub(sample.output.len());
    sample
        .output
        .extend_from_slice(chunk.get(..chunk.len().min(room)).unwrap_or_default());
    let fresh = sample.output.get(from..).unwrap_or_default();
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

/// Kills the process group our child `pid` leads (it was spawned with
/// `process_group(0)` and has not been reaped, so the group is still its).
fn kill_group(pid: libc::pid_t) {
    // Never 0 or negative: kill(0) would be the harness's own group.
    if pid > 0 {
        // SAFETY: kill() sends a signal; the group is our child's alone.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// Reaps `pid` if it has ended, with its resource usage.
fn reap(pid: libc::pid_t) -> Option<(i32, libc::rusage)> {
    if pid <= 0 {
        return None;
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid, writing into the two locals.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
    (r == pid).then_some((status, usage))
}

/// A pidfd of our child: readable once it has exited.
fn pidfd_open(pid: libc::pid_t) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `VmHWM` of a /proc status file, in KiB (absent once the process exited).
fn read_hwm(path: &str) -> Option<u64> {
    kiln_runtime::proc_status::read_field_kib(std::path::Path::new(path), "VmHWM:")
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
        assert!(s.rusage_kib > 0);
        assert_eq!(s.field("stats", "b"), Some(2.5));
        assert_eq!(s.failure, None);
    }

    #[test]
    fn reads_the_processes_own_high_water_mark() {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg("sleep 0.6; echo done");
        let m = Markers {
            setup: None,
            init: "done",
            last: None,
        };
        let s = run(cmd, m, Duration::from_secs(10)).unwrap();
        let hwm = s.hwm_kib.expect("VmHWM read while it ran");
        assert!(hwm > 0 && hwm < 64 * 1024, "{hwm}");
        assert!(s.harness_kib > 0);
        // A shell is smaller than this test process: its ru_maxrss is the
        // test process's, not its own.
        assert_eq!(s.lifetime_peak_kib(), None, "{s:?}");
    }

    #[test]
    fn a_process_larger_than_the_harness_has_its_own_lifetime_peak() {
        let big = Sample {
            rusage_kib: 53_460,
            harness_kib: 2_400,
            ..Sample::default()
        };
        assert_eq!(big.lifetime_peak_kib(), Some(53_460));
        let small = Sample {
            rusage_kib: 2_400,
            harness_kib: 2_400,
            ..Sample::default()
        };
        assert_eq!(small.lifetime_peak_kib(), None);
    }

    #[test]
    fn kills_the_group_when_a_child_keeps_the_pipe() {
        // The shell's background child holds the output pipe: killing the
        // shell alone would leave the harness waiting for end of file.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("sleep 30 & echo hello from Linux; sleep 30");
        let m = Markers {
            setup: None,
            init: "hello from Linux",
            last: None,
        };
        let t = Instant::now();
        let s = run(cmd, m, Duration::from_millis(500)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        assert!(s.timed_out);
        assert!(s.init_ms.is_some());
        assert_eq!(s.code(), None);
        assert_eq!(s.failure, Some("past its deadline, killed"));
    }

    #[test]
    fn a_boot_without_its_markers_failed() {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg("echo hello from Linux");
        let m = Markers {
            setup: None,
            init: "hello from Linux",
            last: Some("exit 0"),
        };
        let s = run(cmd, m, Duration::from_secs(10)).unwrap();
        assert_eq!(s.code(), Some(0));
        assert_eq!(s.failure, Some("no last line"));
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
        assert!(s.timed_out);
        assert!(s.exit_ms < 5000.0);
    }
}
