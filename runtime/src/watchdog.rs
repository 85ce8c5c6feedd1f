//! How a running VMM shows it is alive, and how it notices a vCPU thread
//! that is stuck in the VMM.
//!
//! A vCPU thread is *stuck* when it has been outside `KVM_RUN` for
//! [`STUCK_AFTER`]: device emulation and console writes return in far less.
//! A guest that spins or halts stays inside `KVM_RUN` and is never stuck
//! (that is the guest's business and `[test] timeout`'s).
//!
//! The VMM's main thread checks its vCPUs every [`CHECK_EVERY`] and, while
//! none is stuck, writes a heartbeat byte ([`BEAT`]) at most every
//! [`BEAT_EVERY`] to the pipe PID 1 hands it (its fd number in
//! [`HEARTBEAT_ENV`]). Before it tears the VM down it writes [`STOPPING`].
//! PID 1 ends a VMM that goes silent (see `init::watchdog`).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Names the heartbeat fd in the VMM's environment.
pub const HEARTBEAT_ENV: &str = "KILN_HEARTBEAT_FD";
/// "The VM is running and every vCPU thread is answering."
pub const BEAT: u8 = b'.';
/// "The VM has stopped; the VMM is tearing it down."
pub const STOPPING: u8 = b's';
/// "My landlock ruleset is enforced" (sent once, before the first beat:
/// the kernel shows landlock nowhere PID 1 could read it).
pub const LANDLOCKED: u8 = b'l';

/// How often the VMM's main thread looks at its vCPUs.
pub const CHECK_EVERY: Duration = if cfg!(test) {
    Duration::from_millis(20)
} else {
    Duration::from_millis(250)
};
/// How often it tells PID 1 it is alive.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
/// A vCPU thread outside `KVM_RUN` this long is stuck.
pub const STUCK_AFTER: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(10)
};

/// Whether each vCPU thread is inside `KVM_RUN`: a counter per vCPU,
/// bumped on every entry and exit (odd: outside). The vCPU's hot path pays
/// one relaxed atomic add per transition and reads no clock.
#[derive(Debug)]
pub struct VcpuClocks {
    transitions: Box<[AtomicU64]>,
}

impl VcpuClocks {
    /// `n` vCPU threads, each counted as outside `KVM_RUN`.
    pub fn new(n: usize) -> Self {
        VcpuClocks {
            transitions: (0..n).map(|_| AtomicU64::new(1)).collect(),
        }
    }

    /// vCPU `i` is about to enter `KVM_RUN`.
    pub fn entering(&self, i: usize) {
        if let Some(c) = self.transitions.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// vCPU `i` has just left `KVM_RUN`.
    pub fn left(&self, i: usize) {
        if let Some(c) = self.transitions.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The main thread's view of [`VcpuClocks`]: how long each vCPU has been
/// outside `KVM_RUN` without moving. Time only counts while the checking
/// thread itself runs (each step counts at most twice [`CHECK_EVERY`]),
/// so a host that stalls the whole machine makes no vCPU look stuck.
#[derive(Debug)]
pub struct StuckCheck {
    seen: Vec<u64>,
    outside: Vec<Duration>,
    at: Instant,
}

impl StuckCheck {
    pub fn new(clocks: &VcpuClocks, now: Instant) -> Self {
        let n = clocks.transitions.len();
        StuckCheck {
            seen: vec![0; n],
            outside: vec![Duration::ZERO; n],
            at: now,
        }
    }

    /// Looks at every vCPU; the first one outside `KVM_RUN` for
    /// [`STUCK_AFTER`] or more, and for how long.
    pub fn check(&mut self, clocks: &VcpuClocks, now: Instant) -> Option<(usize, Duration)> {
        let step = now.saturating_duration_since(self.at).min(2 * CHECK_EVERY);
        self.at = now;
        let mut stuck = None;
        for (i, c) in clocks.transitions.iter().enumerate() {
            let t = c.load(Ordering::Relaxed);
            let (Some(seen), Some(out)) = (self.seen.get_mut(i), self.outside.get_mut(i)) else {
                continue;
            };
            *out = if t % 2 == 1 && t == *seen {
                out.saturating_add(step)
            } else {
                Duration::ZERO
            };
            *seen = t;
            if stuck.is_none() && *out >= STUCK_AFTER {
                stuck = Some((i, *out));
            }
        }
        stuck
    }
}

/// The VMM's end of the heartbeat pipe, when PID 1 gave it one.
#[derive(Debug)]
pub struct Heartbeat {
    fd: Option<BorrowedFd<'static>>,
    last: Option<Instant>,
}

/// The inherited heartbeat fd, taken once per process (so one owner).
fn inherited() -> Option<BorrowedFd<'static>> {
    static FD: OnceLock<Option<OwnedFd>> = OnceLock::new();
    FD.get_or_init(|| {
        let fd: RawFd = std::env::var(HEARTBEAT_ENV).ok()?.parse().ok()?;
        // SAFETY: fstat only writes to `stat`; an fd that is not open
        // makes it fail with EBADF.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `stat` is a valid, writable struct stat.
        if unsafe { libc::fstat(fd, &mut stat) } != 0
            || stat.st_mode & libc::S_IFMT != libc::S_IFIFO
        {
            return None;
        }
        // SAFETY: `fd` is open (fstat succeeded) and is a pipe that PID 1
        // handed this process for its heartbeat; nothing else in the
        // process names it, and this OnceLock takes it only once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // A full pipe must never block the VMM: a lost beat is harmless.
        // SAFETY: plain fcntl on an fd we own.
        unsafe {
            let flags = libc::fcntl(owned.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(owned.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
        Some(owned)
    })
    .as_ref()
    .map(|fd| {
        // SAFETY: the OwnedFd lives in a static and is never closed.
        unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }
    })
}

impl Heartbeat {
    /// The heartbeat PID 1 asked for, or one that goes nowhere.
    pub fn from_env() -> Self {
        Heartbeat {
            fd: inherited(),
            last: None,
        }
    }

    /// A heartbeat writing to `fd` (tests).
    #[cfg(test)]
    pub fn to_fd(fd: BorrowedFd<'static>) -> Self {
        Heartbeat {
            fd: Some(fd),
            last: None,
        }
    }

    /// Sends a beat, unless one went out less than [`BEAT_EVERY`] ago.
    pub fn beat(&mut self) {
        if self.last.is_some_and(|t| t.elapsed() < BEAT_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        self.send(BEAT);
    }

    /// Says the VMM's landlock ruleset is enforced.
    pub fn landlocked(&mut self) {
        self.send(LANDLOCKED);
    }

    /// The pipe's fd, for the seccomp violation report.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.fd.map(|fd| fd.as_raw_fd())
    }

    /// Says the VM has stopped and is being torn down.
    pub fn stopping(&mut self) {
        self.send(STOPPING);
    }

    fn send(&self, byte: u8) {
        if let Some(fd) = self.fd {
            let _ = nix::unistd::write(fd, &[byte]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpu_is_stuck_only_outside_kvm_run_without_moving() {
        let c = VcpuClocks::new(2);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut check = StuckCheck::new(&c, t0);
        c.entering(0);
        c.entering(1);
        // Inside KVM_RUN (a spinning or halted guest) is never stuck.
        for ms in (20..=2000).step_by(20) {
            assert_eq!(check.check(&c, at(ms)), None);
        }
        // vCPU 1 leaves KVM_RUN and stays out.
        c.left(1);
        let mut ms = 2000;
        let stuck = loop {
            ms += 20;
            if let Some(s) = check.check(&c, at(ms)) {
                break s;
            }
            assert!(ms < 5000);
        };
        assert_eq!(stuck.0, 1);
        assert!(stuck.1 >= STUCK_AFTER);
        // Busy with exits (moving in and out) is not stuck either.
        for ms in (6000..9000).step_by(20) {
            c.entering(1);
            c.left(1);
            assert_eq!(check.check(&c, at(ms)), None);
        }
        // Out-of-range indexes are ignored.
        c.left(7);
        c.entering(7);
    }

    #[test]
    fn a_stalled_host_makes_no_vcpu_stuck() {
        let c = VcpuClocks::new(1);
        let t0 = Instant::now();
        let mut check = StuckCheck::new(&c, t0);
        // Outside KVM_RUN, and then nothing runs for a minute.
        assert_eq!(check.check(&c, t0 + Duration::from_millis(20)), None);
        assert_eq!(check.check(&c, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn beats_are_rate_limited_and_never_block() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let w: &'static OwnedFd = Box::leak(Box::new(w));
        let mut hb = Heartbeat::to_fd(w.as_fd());
        hb.beat();
        hb.beat();
        hb.stopping();
        let mut buf = [0u8; 8];
        let n = nix::unistd::read(&r, &mut buf).unwrap();
        assert_eq!(&buf[..n], b".s");
        // A full pipe loses beats instead of blocking.
        for _ in 0..100_000 {
            hb.stopping();
        }
    }

    use std::os::fd::AsFd;
}
