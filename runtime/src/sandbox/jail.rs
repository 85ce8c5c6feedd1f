//! The jail a VMM enters once it has opened everything its VM needs and
//! before the guest's first instruction: an empty, root-owned directory as
//! its root, rlimits, its own uid and gid (PID 1 gives VM number `i` of
//! the appliance `ID_BASE + i`; no /etc/passwd entry is needed), no
//! supplementary groups, no capability in any set, `no_new_privs`, not
//! dumpable. Landlock follows (`super::landlock`), seccomp last.
//!
//! Nothing is chowned: the device nodes, kernel, initrd and configs stay
//! root's, and a restarted VMM is a new root process that opens them again
//! (a VFIO group node opens once at a time; the old VMM's descriptors
//! closed when it exited). The rlimits are argued in docs/runtime.md.

use super::report::Confinement;
use super::SelfStatus;
use crate::init::cgroup::PIDS_BESIDE_VCPUS;
use caps::CapSet;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::{Gid, Uid};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// PID 1 asks a VMM for the jail with its uid (= gid) in this variable.
pub const JAIL_ENV: &str = "KILN_JAIL_ID";
/// VM number `i` of the appliance (in its config's order) runs as uid and
/// gid `ID_BASE + i`: above every account a Debian system allocates
/// (65535 and below), and the same on every restart.
pub const ID_BASE: u32 = 100_000;
/// The empty directory a jailed VMM is rooted in (PID 1 makes it).
pub const EMPTY_ROOT: &str = "/run/kiln/empty";
/// RLIMIT_FSIZE: the largest file a VMM writes, its `console.log`.
pub const FILE_SIZE_MAX: u64 = 256 << 20;
/// Descriptors beyond those open at the jail: a few eventfds and the
/// like a VM makes as it runs.
const FD_SLACK: u64 = 64;
/// KVM's limit of GSI routes per VM (`KVM_MAX_IRQ_ROUTES`): a VM never has
/// more MSI/MSI-X vectors, each with its eventfd. Twice that, for the old
/// and the new set while a guest reprograms them.
const VECTOR_FDS: u64 = 2 * 4096;
/// The fd numbers searched for directories.
const FD_SCAN_MAX: u64 = 1 << 16;

/// A jail PID 1 asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jail {
    /// Its uid and gid; 0 when the request was not a number (refused).
    pub id: u32,
}

impl Jail {
    /// The jail of VM number `index` of the appliance.
    pub fn for_vm(index: usize) -> Option<Jail> {
        let id = ID_BASE.checked_add(u32::try_from(index).ok()?)?;
        Some(Jail { id })
    }

    /// The jail [`JAIL_ENV`] asks for, if it does.
    pub fn from_env() -> Option<Jail> {
        let v = std::env::var(JAIL_ENV).ok()?;
        Some(Jail {
            id: v.trim().parse().unwrap_or(0),
        })
    }
}

/// What the jail needs to know of its VM.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: u32,
    pub root: PathBuf,
    pub vcpus: u8,
    /// Assigned PCI devices.
    pub devices: usize,
}

/// The rlimits of a jailed VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub nofile: u64,
    pub nproc: u64,
    pub fsize: u64,
}

impl Limits {
    /// For a VM of `vcpus` and `devices` whose VMM has fds below
    /// `open_below` open.
    pub fn for_vm(vcpus: u8, devices: usize, open_below: u64) -> Limits {
        let vectors = if devices > 0 { VECTOR_FDS } else { 0 };
        Limits {
            nofile: open_below.saturating_add(FD_SLACK).saturating_add(vectors),
            nproc: u64::from(vcpus).saturating_add(PIDS_BESIDE_VCPUS),
            fsize: FILE_SIZE_MAX,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("The jail's uid and gid ({JAIL_ENV}={0}) must be a number from 1 to 4294967294")]
    BadId(u32),
    #[error("Cannot read the VMM's /proc/self/status, needed to check its jail; mount proc")]
    Status(#[source] std::io::Error),
    #[error("The VMM has {0} threads; it must enter its jail before it starts any")]
    Threads(usize),
    #[error("fd {0} is a directory, through which the VMM could leave its jail; close it first")]
    DirectoryFd(i32),
    #[error("{} cannot be the VMM's root: it must be an empty directory owned by root and writable by root only", path.display())]
    Root { path: PathBuf },
    #[error("Cannot {what} for the VMM's jail")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("Cannot drop the VMM's capabilities")]
    Caps(#[source] caps::errors::CapsError),
    #[error("The VMM is still not confined as its jail asks ({0}); its VM does not start")]
    NotConfined(String),
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> JailError {
    move |source| JailError::Sys { what, source }
}

/// Jails the calling process, which must have no other thread, as
/// `plan` says; `status` is its `/proc/self/status`, opened before, which
/// the last step reads to check that every field holds.
pub fn apply(plan: &Plan, status: &SelfStatus) -> Result<Limits, JailError> {
    let id = plan.id;
    if id == 0 || id == u32::MAX {
        return Err(JailError::BadId(id));
    }
    // Capabilities, no_new_privs and landlock are per thread: a thread
    // started before would stay outside.
    let text = status.read().map_err(JailError::Status)?;
    let threads = threads(&text).ok_or_else(|| JailError::Status(bad_status()))?;
    if threads != 1 {
        return Err(JailError::Threads(threads));
    }
    let open_below = no_directory_fds()?;
    check_root(&plan.root)?;
    let limits = Limits::for_vm(plan.vcpus, plan.devices, open_below);

    // While still root: the limits (raising a hard one needs
    // CAP_SYS_RESOURCE), the bounding set (CAP_SETPCAP), the root
    // (CAP_SYS_CHROOT).
    set_limits(&limits)?;
    // A console log at its size limit fails the write (EFBIG, dropped by
    // the console) instead of killing the VMM with SIGXFSZ.
    // SAFETY: SIG_IGN installs no handler, so no code runs in signal
    // context.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGXFSZ,
            nix::sys::signal::SigHandler::SigIgn,
        )
    }
    .map_err(sys("ignore SIGXFSZ"))?;
    for set in [CapSet::Bounding, CapSet::Ambient, CapSet::Inheritable] {
        caps::clear(None, set).map_err(JailError::Caps)?;
    }
    nix::unistd::chroot(&plan.root).map_err(sys("change root"))?;
    nix::unistd::chdir("/").map_err(sys("enter the new root"))?;

    nix::unistd::setgroups(&[]).map_err(sys("clear the supplementary groups"))?;
    let (uid, gid) = (Uid::from_raw(id), Gid::from_raw(id));
    nix::unistd::setresgid(gid, gid, gid).map_err(sys("set the gid"))?;
    // Leaving uid 0 for good clears the permitted and effective sets too.
    nix::unistd::setresuid(uid, uid, uid).map_err(sys("set the uid"))?;
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(JailError::Caps)?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(sys("set no_new_privs"))?;
    // No core dump and no ptrace from anyone but root.
    nix::sys::prctl::set_dumpable(false).map_err(sys("make the VMM undumpable"))?;

    // What the kernel now says, field by field.
    let text = status.read().map_err(JailError::Status)?;
    let now = Confinement::parse(&text).ok_or_else(|| JailError::Status(bad_status()))?;
    let confined = now.uids == [id; 4]
        && now.gids == [id; 4]
        && now.groups == 0
        && now.any_caps() == 0
        && now.no_new_privs;
    if !confined {
        return Err(JailError::NotConfined(now.to_string()));
    }
    Ok(limits)
}

fn bad_status() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected fields")
}

/// `Threads:` of a /proc status.
fn threads(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// Checks that no open descriptor is a directory (`fchdir` to one leads
/// out of a chroot) and returns one past the highest open descriptor.
fn no_directory_fds() -> Result<u64, JailError> {
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).map_err(sys("read RLIMIT_NOFILE"))?;
    let mut open_below = 0;
    for raw in open_fds(soft.min(FD_SCAN_MAX))? {
        // SAFETY: fstat only writes to `st`, a valid struct stat; an fd
        // that is not open makes it fail with EBADF.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(raw, &mut st) } != 0 {
            continue;
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(JailError::DirectoryFd(raw));
        }
        open_below = u64::from(raw.unsigned_abs()).saturating_add(1);
    }
    Ok(open_below)
}

/// Descriptors per poll(2) call in [`open_fds`].
const POLL_CHUNK: usize = 1024;

/// The open descriptors below `end`, ascending. One poll(2) per
/// [`POLL_CHUNK`] numbers, which marks each closed one `POLLNVAL`, instead
/// of one system call per number: a VMM's limit is 1024 or more, and each
/// call is dear on a nested hypervisor.
fn open_fds(end: u64) -> Result<Vec<i32>, JailError> {
    let end = i32::try_from(end).unwrap_or(i32::MAX);
    let mut open = Vec::new();
    let mut fds = Vec::with_capacity(POLL_CHUNK);
    let mut next = 0i32;
    while next < end {
        fds.clear();
        let upto = next
            .saturating_add(i32::try_from(POLL_CHUNK).unwrap_or(i32::MAX))
            .min(end);
        fds.extend((next..upto).map(|fd| libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        }));
        loop {
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd for the
            // call; a zero timeout returns at once. At most POLL_CHUNK
            // entries, below RLIMIT_NOFILE (`end` is at most its soft
            // value), so the kernel accepts the count.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
            if r >= 0 {
                break;
            }
            let e = nix::Error::last();
            if e != nix::Error::EINTR {
                return Err(sys("list the open descriptors")(e));
            }
        }
        open.extend(
            fds.iter()
                .filter(|p| p.revents & libc::POLLNVAL == 0)
                .map(|p| p.fd),
        );
        next = upto;
    }
    Ok(open)
}

/// The root must be empty, root's, and writable by root only: a jailed
/// VMM finds nothing there and can put nothing there.
fn check_root(root: &Path) -> Result<(), JailError> {
    let refused = || JailError::Root {
        path: root.to_path_buf(),
    };
    let meta = std::fs::metadata(root).map_err(|_| refused())?;
    let empty = std::fs::read_dir(root)
        .map_err(|_| refused())?
        .next()
        .is_none();
    if !meta.is_dir() || meta.uid() != 0 || meta.permissions().mode() & 0o022 != 0 || !empty {
        return Err(refused());
    }
    Ok(())
}

fn set_limits(l: &Limits) -> Result<(), JailError> {
    for (resource, value, what) in [
        (Resource::RLIMIT_NOFILE, l.nofile, "set RLIMIT_NOFILE"),
        (Resource::RLIMIT_NPROC, l.nproc, "set RLIMIT_NPROC"),
        (Resource::RLIMIT_FSIZE, l.fsize, "set RLIMIT_FSIZE"),
        (Resource::RLIMIT_CORE, 0, "set RLIMIT_CORE"),
    ] {
        setrlimit(resource, value, value).map_err(sys(what))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vm_has_its_own_id_and_bad_requests_are_refused() {
        assert_eq!(Jail::for_vm(0), Some(Jail { id: 100_000 }));
        assert_eq!(Jail::for_vm(7), Some(Jail { id: 100_007 }));
        assert_eq!(Jail::for_vm(usize::MAX), None);
        let status = SelfStatus::open().unwrap();
        for id in [0, u32::MAX] {
            let plan = Plan {
                id,
                root: PathBuf::from("/nonexistent"),
                vcpus: 1,
                devices: 0,
            };
            let e = apply(&plan, &status).unwrap_err();
            assert!(matches!(e, JailError::BadId(_)), "{e}");
        }
    }

    #[test]
    fn open_descriptors_are_found_past_gaps_and_chunks() {
        use std::os::fd::{AsRawFd, IntoRawFd};
        // A descriptor past the first poll chunk, with closed ones below it.
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        if soft < 2000 {
            setrlimit(Resource::RLIMIT_NOFILE, 2000, hard.max(2000)).unwrap();
        }
        let file = std::fs::File::open("/dev/null").unwrap();
        let high = 1500;
        // SAFETY: dup2 onto a number this test owns (nothing else in the
        // test process uses descriptors this high); closed below.
        assert_eq!(unsafe { libc::dup2(file.as_raw_fd(), high) }, high);
        let fds = open_fds(2000).unwrap();
        let raw = file.into_raw_fd();
        assert!(fds.contains(&raw), "{fds:?}");
        assert!(fds.contains(&high), "{fds:?}");
        assert!(fds.windows(2).all(|w| w[0] < w[1]));
        // SAFETY: both are this test's own descriptors.
        unsafe {
            libc::close(high);
            libc::close(raw);
        }
        let fds = open_fds(2000).unwrap();
        assert!(!fds.contains(&high) && !fds.contains(&raw), "{fds:?}");
    }

    #[test]
    fn limits_follow_the_vm() {
        let hello = Limits::for_vm(1, 0, 12);
        assert_eq!(
            hello,
            Limits {
                nofile: 12 + 64,
                nproc: 33,
                fsize: 256 << 20
            }
        );
        let edu = Limits::for_vm(4, 1, 20);
        assert_eq!(edu.nofile, 20 + 64 + 8192);
        assert_eq!(edu.nproc, 36);
    }

    #[test]
    fn a_threaded_process_is_not_jailed() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        let status = SelfStatus::open().unwrap();
        let plan = Plan {
            id: 100_000,
            root: PathBuf::from("/nonexistent"),
            vcpus: 1,
            devices: 0,
        };
        let e = apply(&plan, &status).unwrap_err();
        assert!(matches!(e, JailError::Threads(n) if n > 1), "{e}");
        drop(tx);
        let _ = other.join().unwrap();
        assert_eq!(threads("Name:\tx\nThreads:\t3\n"), Some(3));
    }

    #[test]
    fn the_root_must_be_empty_and_root_s_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // Root's only when root made it.
        assert_eq!(
            check_root(dir.path()).is_ok(),
            nix::unistd::geteuid().is_root()
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_root(dir.path()).is_err());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("x"), "").unwrap();
        let e = check_root(dir.path()).unwrap_err();
        assert!(e.to_string().contains("must be an empty directory"), "{e}");
        assert!(check_root(Path::new("/nonexistent")).is_err());
    }
}
