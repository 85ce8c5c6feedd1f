//! The processes kiln starts — QEMU, a lab's deploy, power and console
//! commands — never outlive it, however kiln ends:
//!
//! - [`spawner`]: each is forked by one thread that lives as long as kiln,
//!   with `PR_SET_PDEATHSIG(SIGKILL)`: the kernel kills it when kiln dies,
//!   even by SIGKILL;
//! - each leads a process group of its own ([`ProcessGroup::New`]), listed
//!   here while it runs: [`Supervised::stop`] ends the group, [`kill_all`]
//!   ends every listed one (every exit of `main`), [`kill_work`] all but
//!   the cleanup (a lab's `power_off`) on a second Ctrl-C;
//! - [`reaper`]: a small process that kills the listed groups when kiln
//!   dies without doing it itself; what a command started (a pipeline's
//!   other commands, a console client's helper) has no death signal;
//! - [`interrupt`]: what Ctrl-C and SIGTERM do.

pub mod interrupt;
pub mod reaper;
mod spawner;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Which process group a child runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessGroup {
    /// Its own: terminal signals (Ctrl-C) reach kiln alone, and ending the
    /// group ends everything the child started.
    New,
    /// kiln's: the terminal's job control (Ctrl-C, Ctrl-Z) treats kiln and
    /// the child as one job, as `kiln run` needs for QEMU on the terminal.
    /// Only the child itself is ever signalled.
    Kiln,
}

/// What a child is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Running the test: deploying, booting, reading the console.
    Work,
    /// Making the target safe (a lab's `power_off`): a second Ctrl-C spares it.
    Cleanup,
}

/// What ending a child signals.
#[derive(Debug, Clone, Copy)]
enum Victim {
    Group(Pid),
    Process(Pid),
}

impl Victim {
    fn signal(self, sig: Signal) {
        // ESRCH (already gone) is the only expected failure.
        let _ = match self {
            Victim::Group(pgid) => killpg(pgid, sig),
            Victim::Process(pid) => kill(pid, sig),
        };
    }
}

struct Entry {
    key: u64,
    victim: Victim,
    role: Role,
}

/// The children running now. A process child leaves the list when it is
/// reaped (under this lock), so its pid is never signalled after reuse; a
/// group stays until it is stopped, since what it started may outlive it.
static LIVE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

fn live() -> MutexGuard<'static, Vec<Entry>> {
    // The list stays valid whatever a thread holding the lock did.
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unlist(live: &mut Vec<Entry>, key: u64) {
    if let Some(i) = live.iter().position(|e| e.key == key) {
        let e = live.remove(i);
        if let Victim::Group(pgid) = e.victim {
            reaper::unwatch(pgid);
        }
    }
}

/// SIGKILLs every child (and every group) kiln is running. Their owners
/// still reap them.
pub fn kill_all() {
    for e in live().iter() {
        e.victim.signal(Signal::SIGKILL);
    }
}

/// [`kill_all`] but for the cleanup: what makes the target safe goes on.
pub fn kill_work() {
    for e in live().iter().filter(|e| e.role == Role::Work) {
        e.victim.signal(Signal::SIGKILL);
    }
}

/// Whether the child `key` is listed (for tests).
#[cfg(test)]
fn listed(key: u64) -> bool {
    live().iter().any(|e| e.key == key)
}

/// Starts `cmd` as a child that never outlives kiln, in `group`.
pub fn spawn(mut cmd: Command, group: ProcessGroup, role: Role) -> io::Result<Supervised> {
    if group == ProcessGroup::New {
        cmd.process_group(0);
    }
    spawner::die_with_kiln(&mut cmd);
    crate::progress::command(&cmd);
    spawner::on_spawner(move || {
        // Listed under the lock the fork happens under: `kill_all` never
        // misses a child that exists.
        let mut live = live();
        let child = cmd.spawn()?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let victim = match group {
            ProcessGroup::New => {
                reaper::watch(pid);
                Victim::Group(pid)
            }
            ProcessGroup::Kiln => Victim::Process(pid),
        };
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        live.push(Entry { key, victim, role });
        Ok(Supervised {
            child,
            key,
            victim,
            ended: false,
        })
    })?
}

/// A running child started by [`spawn`]; stopped when dropped.
#[derive(Debug)]
pub struct Supervised {
    child: Child,
    key: u64,
    victim: Victim,
    /// Stopped or released: no longer listed.
    ended: bool,
}

impl Supervised {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Its exit status, if it has exited (then it is reaped).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let mut live = live();
        let status = self.child.try_wait()?;
        if status.is_some() {
            if let Victim::Process(_) = self.victim {
                unlist(&mut live, self.key);
            }
        }
        Ok(status)
    }

    /// Waits up to `limit` for it to exit; its status if it did.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// Sends `sig` to it (or its group) while it is listed.
    fn signal(&self, sig: Signal) {
        if let Some(e) = live().iter().find(|e| e.key == self.key) {
            e.victim.signal(sig);
        }
    }

    /// Ends it: SIGTERM (to its group), SIGKILL after `grace`, reaped.
    /// A group gets the SIGKILL even when its leader is gone, to reach
    /// what the leader started. Safe to call again.
    pub fn stop(&mut self, grace: Duration) {
        if self.ended {
            return;
        }
        if matches!(self.try_wait(), Ok(None)) && !grace.is_zero() {
            self.signal(Signal::SIGTERM);
            self.wait_for(grace);
        }
        self.signal(Signal::SIGKILL);
        unlist(&mut live(), self.key);
        let _ = self.child.wait();
        self.ended = true;
    }

    /// Lets a child that has exited go without ending its group: what it
    /// left running on purpose (a daemon a lab's `power_on` started) is
    /// not kiln's to stop.
    pub fn release(mut self) {
        unlist(&mut live(), self.key);
        self.ended = true;
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    fn alive(pid: i32) -> bool {
        // A zombie is dead: only its entry in the process table is left.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, r)| !r.starts_with('Z'))
        })
    }

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).stdout(Stdio::piped());
        cmd
    }

    /// The pid of a grandchild the script printed.
    fn grandchild(child: &mut Supervised) -> i32 {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.take_stdout().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().parse().unwrap()
    }

    #[test]
    fn stopping_a_group_ends_what_it_started() {
        let mut child = spawn(
            sh("sleep 60 & echo $!; wait"),
            ProcessGroup::New,
            Role::Work,
        )
        .unwrap();
        let sleeper = grandchild(&mut child);
        assert!(alive(sleeper));
        assert!(listed(child.key));
        child.stop(Duration::from_millis(200));
        assert!(!listed(child.key));
        assert!(!alive(sleeper), "the grandchild went with its group");
        child.stop(Duration::ZERO);
    }

    // `kill_all` would end the children of tests running alongside; the
    // e2e tests (tests/tests/harness_signals.rs) cover it.
    #[test]
    fn a_dropped_child_is_killed_and_reaped() {
        let c = spawn(sh("exec sleep 60"), ProcessGroup::New, Role::Work).unwrap();
        let pid = i32::try_from(c.id()).unwrap();
        drop(c);
        assert!(!alive(pid), "killed and reaped, not left a zombie");
    }

    #[test]
    fn a_reaped_process_is_unlisted_and_never_signalled() {
        let mut c = spawn(sh("exit 3"), ProcessGroup::Kiln, Role::Work).unwrap();
        let status = c.wait_for(Duration::from_secs(5)).unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(!listed(c.key), "its pid may be reused from now on");
    }

    #[test]
    fn a_released_group_is_left_running() {
        let mut c = spawn(sh("sleep 60 & echo $!"), ProcessGroup::New, Role::Work).unwrap();
        let daemon = grandchild(&mut c);
        assert!(c.wait_for(Duration::from_secs(5)).is_some());
        let key = c.key;
        c.release();
        assert!(!listed(key));
        assert!(alive(daemon));
        let _ = kill(Pid::from_raw(daemon), Signal::SIGKILL);
    }

    #[test]
    fn children_forked_for_a_thread_that_ended_live_on() {
        // PR_SET_PDEATHSIG follows the forking thread: had this short-lived
        // thread forked the child itself, the child would die with it.
        let mut c = std::thread::spawn(|| {
            spawn(sh("exec sleep 60"), ProcessGroup::New, Role::Work).unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(matches!(c.try_wait(), Ok(None)), "killed with its thread");
        c.stop(Duration::ZERO);
    }
}
