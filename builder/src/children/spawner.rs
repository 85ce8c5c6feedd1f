//! The one thread that forks kiln's children, and the death signal they
//! get. `PR_SET_PDEATHSIG` fires when the *thread* that forked a child
//! exits, not when its process does: a child forked by a short-lived thread
//! would be killed with that thread. This thread lives as long as kiln, so
//! for its children the signal means that kiln is gone.

use nix::sys::signal::Signal;
use nix::unistd::{getpid, getppid};
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{mpsc, Mutex, PoisonError};

type Job = Box<dyn FnOnce() + Send>;

/// The spawner thread's queue, once it runs.
static SPAWNER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);

/// Makes the child `cmd` starts get SIGKILL when kiln dies.
pub(super) fn die_with_kiln(cmd: &mut Command) {
    let kiln = getpid();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it makes two syscalls (prctl,
    // getppid) and builds an io::Error from an errno, which allocates
    // nothing; it touches no lock and no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // kiln died between the fork and the prctl: nobody will send
            // the signal now, so do not start at all.
            if getppid() != kiln {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Runs `job` on the spawner thread (started on first use) and returns
/// what it returned.
pub(super) fn on_spawner<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    let wrapped: Job = Box::new(move || {
        // The caller waits for this; it is gone only if it gave up.
        let _ = tx.send(job());
    });
    {
        let mut spawner = SPAWNER.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = match spawner.as_ref() {
            Some(q) => q.clone(),
            None => {
                let (q, jobs) = mpsc::channel::<Job>();
                std::thread::Builder::new()
                    .name("kiln-spawner".into())
                    .spawn(move || {
                        for job in jobs {
                            job();
                        }
                    })?;
                *spawner = Some(q.clone());
                q
            }
        };
        queue
            .send(wrapped)
            .map_err(|_| io::Error::other("kiln's spawner thread has ended"))?;
    }
    rx.recv()
        .map_err(|_| io::Error::other("kiln's spawner thread has ended"))
}
