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
//! [`BEAT_EVERY`] to the pipe PID 1 hands it as fd [`HEARTBEAT_FD`]
//! (named by [`HEARTBEAT_ENV`]). Before it tears the VM down it writes
//! [`STOPPING`]. PID 1 ends a VMM that goes silent (see `init::watchdog`).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Names the heartbeat fd in the VMM's environment.
pub const HEARTBEAT_ENV: &str = "KILN_HEARTBEAT_FD";
/// Where PID 1 puts the heartbeat pipe in the VMM.
pub const HEARTBEAT_FD: RawFd = 3;
/// "The VM is running and every vCPU thread is answering."
pub const BEAT: u8 = b'.';
/// "The VM has stopped; the VMM is tearing it down."
pub const STOPPING: u8 = b's';

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

/// When each vCPU thread last left `KVM_RUN` (or that it is inside).
pub struct VcpuClocks {
    base: Instant,
    /// Per vCPU: 0 while inside `KVM_RUN`, else 1 + milliseconds from
    /// `base` to when it left.
    left_at: Box<[AtomicU64]>,
}

impl VcpuClocks {
    /// `n` vCPU threads, each counted as outside `KVM_RUN` from now on.
    pub fn new(n: usize) -> Self {
        VcpuClocks {
            base: Instant::now(),
            left_at: (0..n).map(|_| AtomicU64::new(1)).collect(),
        }
    }

    fn now_mark(&self) -> u64 {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        ms.saturating_add(1)
    }

    /// vCPU `i` is about to enter `KVM_RUN`.
    pub fn entering(&self, i: usize) {
        if let Some(c) = self.left_at.get(i) {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// vCPU `i` has just left `KVM_RUN`.
    pub fn left(&self, i: usize) {
        if let Some(c) = self.left_at.get(i) {
            c.store(self.now_mark(), Ordering::Relaxed);
        }
    }

    /// The first vCPU that has been outside `KVM_RUN` for `limit` or
    /// more, and for how long.
    pub fn stuck(&self, limit: Duration) -> Option<(usize, Duration)> {
        let now = self.now_mark();
        self.left_at.iter().enumerate().find_map(|(i, c)| {
            let left = c.load(Ordering::Relaxed);
            let out = Duration::from_millis(now.saturating_sub(left));
            (left != 0 && out >= limit).then_some((i, out))
        })
    }
}

/// The VMM's end of the heartbeat pipe, when PID 1 gave it one.
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
    fn a_vcpu_is_stuck_only_outside_kvm_run_for_long() {
        let c = VcpuClocks::new(2);
        c.entering(0);
        c.entering(1);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(c.stuck(Duration::from_millis(10)), None, "inside KVM_RUN");
        c.left(1);
        assert_eq!(c.stuck(Duration::from_millis(20)), None);
        std::thread::sleep(Duration::from_millis(30));
        let (i, out) = c.stuck(Duration::from_millis(20)).unwrap();
        assert_eq!(i, 1);
        assert!(out >= Duration::from_millis(20));
        c.entering(1);
        assert_eq!(c.stuck(Duration::from_millis(20)), None);
        // Out-of-range indexes are ignored.
        c.left(7);
        c.entering(7);
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
