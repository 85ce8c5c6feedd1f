//! seccomp filters for the VMM's threads, one allow list per kind of
//! thread ([`ThreadKind`], lists in `filters`), built with seccompiler and
//! installed by each thread on itself once the VM is set up, before the
//! guest's first instruction. docs/runtime.md ("seccomp filters") lists
//! and argues every entry.
//!
//! A forbidden call takes `SECCOMP_RET_TRAP`: the kernel sends the thread
//! SIGSYS with the call's number, and `trap`'s handler reports it (on
//! standard error, and to PID 1 through the heartbeat pipe) and ends the
//! process with [`CODE_SECCOMP`]. The handler is the only way on: if it
//! cannot run (SIGSYS blocked or ignored, or a second forbidden call
//! inside it), the kernel kills the process with SIGSYS; `rt_sigaction` is
//! on no list, so the handler cannot be replaced. Either way the process
//! ends and the call never runs.

mod filters;
mod trap;

use seccompiler::{BpfProgram, SeccompAction};

pub use kiln_abi::exit::CODE_SECCOMP;
pub use trap::{install_handler, Violation, VIOLATION, VIOLATION_LEN};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("Cannot build the seccomp filter of the VMM's {kind} thread")]
    Build {
        kind: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("Cannot install the seccomp filter of the VMM's {kind} thread; the kernel needs CONFIG_SECCOMP_FILTER")]
    Install {
        kind: ThreadKind,
        #[source]
        source: seccompiler::Error,
    },
    #[error("Cannot install the VMM's SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// The kinds of thread a VMM runs, each with its own filter. The VMM
/// starts no other threads (neither std nor the crates it uses do), which
/// PID 1's sandbox report shows: threads = vCPUs + 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Sets the VM up, waits for it to stop, sends heartbeats, kicks and
    /// joins the vCPU threads, and tears the VM down.
    Main,
    /// Runs one vCPU and the device emulation its exits reach.
    Vcpu,
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vCPU",
        })
    }
}

/// The filter of `kind` as BPF, for this process (`tgkill` is held to it).
pub fn program(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    program_with(kind, SeccompAction::Trap)
}

fn program_with(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { kind, source };
    let filter = filters::filter(kind, std::process::id(), mismatch).map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// Confines the calling thread to `kind`'s allow list, for good; `index`
/// names the thread in a violation report (its vCPU index). The SIGSYS
/// handler ([`install_handler`]) must be in place first.
pub fn install(kind: ThreadKind, index: u8) -> Result<(), SeccompError> {
    let bpf = program(kind)?;
    trap::name_this_thread(kind, index);
    seccompiler::apply_filter(&bpf).map_err(|source| SeccompError::Install { kind, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Runs `body` in a forked child (so the filter never reaches the test
    /// process) and returns how the child ended.
    fn in_child(body: impl FnOnce() -> i32) -> nix::sys::wait::WaitStatus {
        // SAFETY: the child only runs `body` (installing a filter and
        // making plain system calls) and leaves with _exit, never returning
        // into the test harness.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(100);
                // SAFETY: ends the child without running the parent's atexit work.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap()
            }
        }
    }

    #[test]
    fn every_kind_compiles_to_bpf() {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu] {
            let bpf = program(kind).unwrap();
            // Within the kernel's BPF_MAXINSNS.
            assert!(!bpf.is_empty() && bpf.len() < 4096, "{kind}: {}", bpf.len());
        }
    }

    #[test]
    fn a_filtered_thread_survives_what_it_may_do() {
        use nix::sys::wait::WaitStatus;
        for kind in [ThreadKind::Main, ThreadKind::Vcpu] {
            let status = in_child(|| {
                let (r, w) = nix::unistd::pipe().unwrap();
                install_handler(None).unwrap();
                install(kind, 0).unwrap();
                // Allowed: allocation, a clock, a write to an fd it holds.
                let v = vec![7u8; 1 << 20];
                let _ = std::time::Instant::now();
                nix::unistd::write(&w, &v[..1]).unwrap();
                let mut b = [0u8; 1];
                nix::unistd::read(&r, &mut b).unwrap();
                i32::from(b[0])
            });
            assert_eq!(
                status,
                WaitStatus::Exited(status.pid().unwrap(), 7),
                "{kind}"
            );
        }
    }

    #[test]
    fn a_forbidden_call_ends_the_process_and_is_reported() {
        use nix::sys::wait::WaitStatus;
        for (kind, index) in [(ThreadKind::Main, 0), (ThreadKind::Vcpu, 3)] {
            let (r, w) = nix::unistd::pipe().unwrap();
            let status = in_child(|| {
                install_handler(Some(w.as_raw_fd())).unwrap();
                install(kind, index).unwrap();
                // SAFETY: a plain socket(2); the filter stops it.
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                0
            });
            drop(w);
            let pid = status.pid().unwrap();
            assert_eq!(status, WaitStatus::Exited(pid, CODE_SECCOMP), "{kind}");
            let mut buf = [0u8; 16];
            let n = nix::unistd::read(&r, &mut buf).unwrap();
            let v = Violation::decode(&buf[..n]).unwrap();
            assert_eq!(
                v,
                Violation {
                    syscall: u16::try_from(libc::SYS_socket).unwrap(),
                    kind,
                    index
                }
            );
        }
    }

    #[test]
    fn without_its_handler_the_kernel_kills_the_process() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        let status = in_child(|| {
            install_handler(None).unwrap();
            install(ThreadKind::Vcpu, 0).unwrap();
            // Blocking SIGSYS does not save the process: the kernel unblocks
            // it and takes the default action, a kill.
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(Signal::SIGSYS);
            set.thread_block().unwrap();
            // SAFETY: a plain socket(2); the filter stops it.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            0
        });
        assert!(
            matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "{status:?}"
        );
    }

    #[test]
    fn other_threads_keep_their_own_filter() {
        use nix::sys::wait::WaitStatus;
        // A vCPU filter on one thread leaves another free to do what the
        // main filter allows (poll), which the vCPU filter forbids.
        let status = in_child(|| {
            let t = std::thread::spawn(|| install(ThreadKind::Vcpu, 0).is_ok());
            if !t.join().unwrap_or(false) {
                return 1;
            }
            install_handler(None).unwrap();
            install(ThreadKind::Main, 0).unwrap();
            // SAFETY: poll on no descriptors with no timeout.
            unsafe { libc::poll(std::ptr::null_mut(), 0, 0) };
            5
        });
        assert_eq!(status, WaitStatus::Exited(status.pid().unwrap(), 5));
    }
}
