//! PID 1's watchdog over one VMM: it reads the heartbeat pipe (see
//! `crate::watchdog`) and says when the VMM must be ended because it
//! stopped responding.
//!
//! Silence only counts while PID 1 itself runs (each look counts at most
//! [`MAX_STEP`]), so a machine that stalls as a whole (a loaded emulator,
//! a suspended lab box) gets no VMM killed.

use crate::sandbox::seccomp::{Violation, VIOLATION, VIOLATION_LEN};
use crate::watchdog::{BEAT, LANDLOCKED, STOPPING};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// A running VM's VMM that sends no heartbeat this long is ended.
pub const SILENT_AFTER: Duration = Duration::from_secs(10);
/// A VMM that has not started its vCPUs this long after it was started
/// (loading the kernel, mapping guest RAM for DMA) is ended.
pub const SETUP_LIMIT: Duration = Duration::from_secs(300);
/// A VMM that has not exited this long after its VM stopped is ended.
pub const STOPPING_LIMIT: Duration = Duration::from_secs(60);
/// The most one look at the pipe adds to the silence.
const MAX_STEP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No beat yet: the VMM is building the VM.
    Setup,
    Running,
    /// The VM stopped; the VMM is tearing it down.
    Stopping,
}

/// One VMM under watch.
#[derive(Debug)]
pub struct Watch {
    rx: OwnedFd,
    phase: Phase,
    quiet: Duration,
    at: Instant,
    /// The bytes of a seccomp violation report being read (its mark
    /// first), which may come split across reads.
    report: Vec<u8>,
    violation: Option<Violation>,
    /// The first beat has come and [`Watch::started`] not yet said so.
    just_started: bool,
    /// The VMM said its landlock ruleset is enforced.
    landlocked: bool,
}

impl Watch {
    /// Watches the VMM holding the other end of `rx` (non-blocking).
    pub fn new(rx: OwnedFd, now: Instant) -> Self {
        Watch {
            rx,
            phase: Phase::Setup,
            quiet: Duration::ZERO,
            at: now,
            report: Vec::new(),
            violation: None,
            just_started: false,
            landlocked: false,
        }
    }

    /// Takes what the VMM sent since the last look, and counts the silence.
    pub fn look(&mut self, now: Instant) {
        let step = now.saturating_duration_since(self.at).min(MAX_STEP);
        self.at = now;
        let mut heard = false;
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = nix::unistd::read(&self.rx, &mut buf) {
            for b in buf.get(..n).unwrap_or_default() {
                heard = true;
                if !self.report.is_empty() {
                    self.report.push(*b);
                    if self.report.len() == VIOLATION_LEN {
                        self.violation = self.violation.or(Violation::decode(&self.report));
                        self.report.clear();
                    }
                    continue;
                }
                match *b {
                    BEAT if self.phase == Phase::Setup => {
                        self.phase = Phase::Running;
                        self.just_started = true;
                    }
                    STOPPING => self.phase = Phase::Stopping,
                    LANDLOCKED => self.landlocked = true,
                    VIOLATION => self.report.push(*b),
                    _ => {}
                }
            }
        }
        self.quiet = if heard {
            Duration::ZERO
        } else {
            self.quiet.saturating_add(step)
        };
    }

    /// True once, at the first look after the VMM's first heartbeat: its
    /// guest runs, and every thread has installed its seccomp filter.
    pub fn started(&mut self) -> bool {
        std::mem::take(&mut self.just_started)
    }

    /// The forbidden system call the VMM reported before its SIGSYS
    /// handler ended it, if it did.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Whether the VMM said its landlock ruleset is enforced (it does so
    /// before its first heartbeat).
    pub fn landlocked(&self) -> bool {
        self.landlocked
    }

    /// Why the VMM must be ended now, if it must: the `reason=` text.
    pub fn overdue(&self) -> Option<String> {
        let (limit, what) = match self.phase {
            Phase::Setup => (SETUP_LIMIT, "did not start its VM"),
            Phase::Running => (SILENT_AFTER, "stopped responding (no heartbeat)"),
            Phase::Stopping => (STOPPING_LIMIT, "did not finish stopping its VM"),
        };
        (self.quiet >= limit).then(|| {
            format!(
                "watchdog: the VMM {what} for {} s; PID 1 killed it",
                limit.as_secs()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;

    fn pipe() -> (Watch, OwnedFd, Instant) {
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).unwrap();
        let t0 = Instant::now();
        (Watch::new(r, t0), w, t0)
    }

    /// Looks every 20 ms from `from` for `span`; the first overdue reason.
    fn watch_for(w: &mut Watch, from: Instant, span: Duration) -> (Option<String>, Instant) {
        let mut t = from;
        while t < from + span {
            t += Duration::from_millis(20);
            w.look(t);
            if let Some(r) = w.overdue() {
                return (Some(r), t);
            }
        }
        (None, t)
    }

    #[test]
    fn the_landlock_byte_before_the_first_beat_is_kept() {
        let (mut w, tx, t0) = pipe();
        w.look(t0);
        assert!(!w.landlocked());
        nix::unistd::write(&tx, b"l.").unwrap();
        w.look(t0 + Duration::from_millis(20));
        assert!(w.started());
        assert!(w.landlocked());
        let (mut w, tx, t0) = pipe();
        nix::unistd::write(&tx, b".").unwrap();
        w.look(t0);
        assert!(w.started());
        assert!(!w.landlocked());
    }

    #[test]
    fn a_vmm_that_stops_beating_is_overdue() {
        let (mut w, tx, t0) = pipe();
        nix::unistd::write(&tx, b".").unwrap();
        let (r, t) = watch_for(&mut w, t0, Duration::from_secs(5));
        assert_eq!(r, None);
        // Beats keep it alive.
        let mut t = t;
        for _ in 0..30 {
            nix::unistd::write(&tx, b".").unwrap();
            let (r, next) = watch_for(&mut w, t, Duration::from_secs(1));
            assert_eq!(r, None);
            t = next;
        }
        // The last beat, read at the first look after `t`.
        nix::unistd::write(&tx, b".").unwrap();
        let (r, at) = watch_for(&mut w, t, Duration::from_secs(30));
        assert_eq!(
            r.as_deref(),
            Some("watchdog: the VMM stopped responding (no heartbeat) for 10 s; PID 1 killed it")
        );
        let silent = at - t;
        assert!(
            silent >= SILENT_AFTER && silent <= SILENT_AFTER + Duration::from_millis(40),
            "{silent:?}"
        );
    }

    #[test]
    fn setup_and_teardown_have_their_own_limits() {
        let (mut w, tx, t0) = pipe();
        let (r, at) = watch_for(&mut w, t0, Duration::from_secs(400));
        assert!(r.unwrap().contains("did not start its VM for 300 s"));
        assert!(at - t0 >= SETUP_LIMIT);
        nix::unistd::write(&tx, b".s").unwrap();
        let (r, at2) = watch_for(&mut w, at, Duration::from_secs(100));
        assert!(r
            .unwrap()
            .contains("did not finish stopping its VM for 60 s"));
        assert!(at2 - at >= STOPPING_LIMIT);
        // A late beat does not take a stopping VMM back to running.
        nix::unistd::write(&tx, b".").unwrap();
        w.look(at2);
        assert_eq!(w.phase, Phase::Stopping);
    }

    #[test]
    fn the_first_beat_starts_the_vm_once_and_a_violation_is_read_whole() {
        use crate::sandbox::seccomp::ThreadKind;
        let (mut w, tx, t0) = pipe();
        w.look(t0);
        assert!(!w.started());
        nix::unistd::write(&tx, b"..").unwrap();
        w.look(t0);
        assert!(w.started());
        assert!(!w.started());
        nix::unistd::write(&tx, b".").unwrap();
        w.look(t0);
        assert!(!w.started());
        // A report split across two reads, beats around it.
        nix::unistd::write(&tx, b".!\x3b").unwrap();
        w.look(t0);
        assert_eq!(w.violation(), None);
        nix::unistd::write(&tx, b"\x00\x01\x02.").unwrap();
        w.look(t0);
        assert_eq!(
            w.violation(),
            Some(Violation {
                syscall: 59,
                kind: ThreadKind::Vcpu,
                index: 2
            })
        );
        assert_eq!(w.phase, Phase::Running);
    }

    #[test]
    fn a_stalled_machine_is_not_a_silent_vmm() {
        let (mut w, tx, t0) = pipe();
        nix::unistd::write(&tx, b".").unwrap();
        w.look(t0);
        // PID 1 itself did not run for a minute.
        w.look(t0 + Duration::from_secs(60));
        assert_eq!(w.overdue(), None);
        // A VMM that exited (its end closed) is just quiet.
        drop(tx);
        w.look(t0 + Duration::from_secs(61));
        assert_eq!(w.overdue(), None);
    }
}
