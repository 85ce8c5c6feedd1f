//! The VMM's sandbox: what confines a VMM process once its VM is set up
//! and before the guest's first instruction, in this order
//! (docs/runtime.md, "Security model"):
//!
//! - [`jail`]: an empty root, rlimits, its own uid/gid, no capabilities,
//!   `no_new_privs`;
//! - [`landlock`]: no file opens at all;
//! - [`seccomp`]: the system calls each kind of VMM thread may make.
//! - [`report`]: PID 1's look at a running VMM's sandbox (`/proc`).

pub mod jail;
pub mod landlock;
pub mod report;
pub mod seccomp;

use crate::watchdog::Heartbeat;
use kiln_schema::config::VmConfig;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

pub use self::jail::Jail;
pub use self::landlock::Landlocked;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Jail(#[from] jail::JailError),
    #[error(transparent)]
    Landlock(#[from] self::landlock::LandlockError),
}

/// This process's `/proc/self/status`, opened before the sandbox so that
/// it can still be read inside it (a jailed VMM opens no file).
#[derive(Debug)]
pub struct SelfStatus(File);

impl SelfStatus {
    pub fn open() -> std::io::Result<Self> {
        File::open("/proc/self/status").map(SelfStatus)
    }

    /// The file's text as of now (proc makes it anew at offset 0).
    pub fn read(&self) -> std::io::Result<String> {
        let mut text = Vec::with_capacity(2048);
        let mut buf = [0u8; 1024];
        loop {
            let at = u64::try_from(text.len()).unwrap_or(u64::MAX);
            match self.0.read_at(&mut buf, at) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(buf.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }
}

/// The VMM after [`enter`].
#[derive(Debug)]
pub struct Sandboxed {
    /// Jailed: whether landlock holds. `None`: not jailed (PID 1 did not
    /// ask; `kiln-runtime run` by itself confines nothing).
    pub landlock: Option<Landlocked>,
}

impl Sandboxed {
    /// Releases `held` (the VM, its board and devices) at the end of the
    /// run: by dropping it, or, when jailed, by leaving it to the process
    /// exit (see [`leave_to_exit`]).
    pub fn release<T>(&self, held: T) {
        if self.landlock.is_some() {
            leave_to_exit(held);
        }
    }
}

/// Leaves `held` for the kernel to release when the process exits, as it
/// does for a killed VMM. A jailed VMM cannot take its VM apart piece by
/// piece: when a device on a legacy VFIO container closes, vfio-ioctls
/// reads the device's IOMMU group link in sysfs, which the jail does not
/// show (and unwraps the result).
pub fn leave_to_exit<T>(held: T) {
    std::mem::forget(held);
}

/// Jails this process as `jail` says (when PID 1 asked for one), then
/// landlocks it, and tells PID 1 through `heartbeat` when landlock holds.
/// Call it from the only thread, once the VM is built.
pub fn enter(
    jail: Option<Jail>,
    cfg: &VmConfig,
    heartbeat: &mut Heartbeat,
) -> Result<Sandboxed, SandboxError> {
    let Some(jail) = jail else {
        return Ok(Sandboxed { landlock: None });
    };
    let status = SelfStatus::open().map_err(jail::JailError::Status)?;
    let plan = jail::Plan {
        id: jail.id,
        root: PathBuf::from(jail::EMPTY_ROOT),
        vcpus: cfg.vcpus,
        devices: cfg.pci.len(),
    };
    jail::apply(&plan, &status)?;
    let landlocked = self::landlock::restrict()?;
    if landlocked == Landlocked::Enforced {
        heartbeat.landlocked();
    }
    Ok(Sandboxed {
        landlock: Some(landlocked),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{ForkResult, Uid};
    use std::io::Read;
    use std::os::fd::{AsRawFd, OwnedFd};

    /// Runs `check` in a forked child (a process with one thread, as the
    /// VMM is when it enters its sandbox) and returns what it said.
    /// The child allocates after the fork, which the test harness's
    /// glibc allows (its malloc is fork-safe); the VMM never does this.
    fn in_child(check: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only runs `check`, writes to the pipe and
        // leaves with _exit, never returning into the test harness.
        match unsafe { nix::unistd::fork() }.unwrap() {
            ForkResult::Child => {
                drop(r);
                let said = match check() {
                    Ok(()) => "ok".to_string(),
                    Err(e) => e,
                };
                let _ = nix::unistd::write(&w, said.as_bytes());
                // SAFETY: _exit ends the child without running the
                // parent's atexit handlers or destructors.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(w);
                let mut said = String::new();
                File::from(r).read_to_string(&mut said).unwrap();
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
                if said == "ok" {
                    Ok(())
                } else {
                    Err(said)
                }
            }
        }
    }

    fn expect_denied(what: &str, r: std::io::Result<File>) -> Result<(), String> {
        match r {
            Ok(_) => Err(format!("{what}: opened")),
            Err(e) => match e.raw_os_error() {
                Some(libc::EACCES | libc::ENOENT | libc::EPERM) => Ok(()),
                _ => Err(format!("{what}: {e}")),
            },
        }
    }

    #[test]
    fn landlock_lets_no_file_open_but_keeps_open_ones() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "kept").unwrap();
        let r = in_child(|| {
            let held = File::open(&secret).map_err(|e| e.to_string())?;
            nix::sys::prctl::set_no_new_privs().map_err(|e| e.to_string())?;
            match self::landlock::restrict() {
                Ok(Landlocked::Enforced) => {}
                other => return Err(format!("landlock on this host: {other:?}")),
            }
            expect_denied("a file outside", File::open(&secret))?;
            expect_denied("/etc/hostname", File::open("/etc/hostname"))?;
            expect_denied("/proc/self/status", File::open("/proc/self/status"))?;
            expect_denied("a new file", File::create(dir.path().join("new")))?;
            let mut buf = [0u8; 4];
            let n = held.read_at(&mut buf, 0).map_err(|e| e.to_string())?;
            (buf.get(..n) == Some(&b"kept"[..]))
                .then_some(())
                .ok_or_else(|| format!("the held file read {buf:?}"))
        });
        r.unwrap();
    }

    #[test]
    fn a_jailed_process_opens_nothing_and_cannot_get_root_back() {
        assert!(
            Uid::effective().is_root(),
            "this test jails a child, which takes root: run it as root"
        );
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "x").unwrap();
        let r = in_child(|| {
            let status = SelfStatus::open().map_err(|e| e.to_string())?;
            let plan = jail::Plan {
                id: 100_042,
                root: root.path().to_path_buf(),
                vcpus: 2,
                devices: 1,
            };
            let limits = jail::apply(&plan, &status).map_err(|e| crate::init::chain(&e))?;
            let ll = self::landlock::restrict().map_err(|e| e.to_string())?;
            if ll != Landlocked::Enforced {
                return Err(format!("landlock: {ll:?}"));
            }
            expect_denied("a file outside", File::open(&secret))?;
            expect_denied("/", File::open("/"))?;
            expect_denied("..", File::open(".."))?;
            // Root is gone for good.
            for (what, r) in [
                ("setuid(0)", nix::unistd::setuid(Uid::from_raw(0))),
                (
                    "setgid(0)",
                    nix::unistd::setgid(nix::unistd::Gid::from_raw(0)),
                ),
                (
                    "setgroups([0])",
                    nix::unistd::setgroups(&[nix::unistd::Gid::from_raw(0)]),
                ),
                ("chroot", nix::unistd::chroot("/")),
            ] {
                if r != Err(nix::errno::Errno::EPERM) {
                    return Err(format!("{what}: {r:?}"));
                }
            }
            if caps::raise(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_SYS_ADMIN,
            )
            .is_ok()
            {
                return Err("raised CAP_SYS_ADMIN".into());
            }
            let now = report::Confinement::parse(&status.read().map_err(|e| e.to_string())?)
                .ok_or("status unreadable")?;
            let want = "uid=100042 gid=100042 groups=0 caps=0 no_new_privs=1";
            if now.to_string() != want {
                return Err(format!("confinement {now}"));
            }
            let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_err(|e| e.to_string())?;
            let core = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE)
                .map_err(|e| e.to_string())?;
            let fsize = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE)
                .map_err(|e| e.to_string())?;
            let nproc = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC)
                .map_err(|e| e.to_string())?;
            let got = (nofile, core, fsize, nproc);
            let want = (
                (limits.nofile, limits.nofile),
                (0, 0),
                (256 << 20, 256 << 20),
                (34, 34),
            );
            if got != want || limits.nofile < 64 + 8192 {
                return Err(format!("limits {got:?}, wanted {want:?}"));
            }
            // Raising a hard limit back needs CAP_SYS_RESOURCE.
            if nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_CORE,
                1 << 20,
                1 << 20,
            )
            .is_ok()
            {
                return Err("raised RLIMIT_CORE".into());
            }
            if nix::sys::prctl::get_dumpable() != Ok(false) {
                return Err("still dumpable".into());
            }
            Ok(())
        });
        r.unwrap();
    }

    #[test]
    fn a_directory_fd_would_lead_out_and_is_refused() {
        assert!(Uid::effective().is_root(), "run it as root");
        let root = tempfile::tempdir().unwrap();
        let r = in_child(|| {
            let status = SelfStatus::open().map_err(|e| e.to_string())?;
            let dir = File::open("/").map_err(|e| e.to_string())?;
            let plan = jail::Plan {
                id: 100_043,
                root: root.path().to_path_buf(),
                vcpus: 1,
                devices: 0,
            };
            match jail::apply(&plan, &status) {
                Err(jail::JailError::DirectoryFd(fd)) if fd == dir.as_raw_fd() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        r.unwrap();
    }
}
