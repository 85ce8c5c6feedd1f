//! Each VMM in its own cgroup v2, `/sys/fs/cgroup/kiln/<vm>`, with
//! `memory.max` (the VM's `limits.memory`: guest RAM plus the VMM budget by
//! default) and `pids.max`, so that a runaway VMM is what the kernel's OOM
//! killer ends, never PID 1 or a sibling. PID 1 itself stays in the root
//! cgroup. The VMM process joins its cgroup between fork and exec, before
//! it allocates anything.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where PID 1 mounts the cgroup v2 hierarchy.
pub const ROOT: &str = "/sys/fs/cgroup";
/// The VMs' cgroups live under this one.
const KILN: &str = "kiln";
const CONTROLLERS: [&str; 2] = ["memory", "pids"];
/// Threads a VMM may have beside one per vCPU (its main thread and the
/// few that libraries start); `pids.max` is the VM's vCPUs plus this.
pub const PIDS_BESIDE_VCPUS: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("Cannot mount cgroup2 on {ROOT}")]
    Mount(#[source] nix::Error),
    #[error("Cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The kernel offers no {0} cgroup controller (CONFIG_MEMCG, CONFIG_CGROUP_PIDS)")]
    Missing(&'static str),
    #[error("Cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot write {value:?} to {}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
}

/// The `kiln` cgroup, with the memory and pids controllers on for its
/// children.
#[derive(Debug)]
pub struct Cgroups {
    dir: PathBuf,
}

/// One VM's cgroup.
#[derive(Debug)]
pub struct VmCgroup {
    dir: PathBuf,
    /// Its `memory.max`, in bytes.
    pub memory_max: u64,
}

fn write(path: PathBuf, value: &str) -> Result<(), CgroupError> {
    std::fs::write(&path, value).map_err(|source| CgroupError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

fn create(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl Cgroups {
    /// Mounts cgroup2 on [`ROOT`] and prepares the `kiln` cgroup.
    pub fn setup() -> Result<Self, CgroupError> {
        use nix::mount::{mount, MsFlags};
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        match mount(Some("cgroup2"), ROOT, Some("cgroup2"), flags, None::<&str>) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => return Err(CgroupError::Mount(e)),
        }
        Self::prepare(Path::new(ROOT))
    }

    /// Turns the controllers on below `root` (a cgroup2 mount) and creates
    /// `root/kiln` with them on for its children.
    fn prepare(root: &Path) -> Result<Self, CgroupError> {
        let path = root.join("cgroup.controllers");
        let offered =
            std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })?;
        for c in CONTROLLERS {
            if !offered.split_whitespace().any(|o| o == c) {
                return Err(CgroupError::Missing(c));
            }
        }
        let enable = CONTROLLERS.map(|c| format!("+{c}")).join(" ");
        write(root.join("cgroup.subtree_control"), &enable)?;
        let dir = root.join(KILN);
        create(&dir)?;
        write(dir.join("cgroup.subtree_control"), &enable)?;
        Ok(Cgroups { dir })
    }

    /// Creates (or reuses) VM `name`'s cgroup with these limits.
    pub fn for_vm(
        &self,
        name: &str,
        memory_max: u64,
        pids_max: u64,
    ) -> Result<VmCgroup, CgroupError> {
        let dir = self.dir.join(name);
        create(&dir)?;
        write(dir.join("memory.max"), &memory_max.to_string())?;
        write(dir.join("pids.max"), &pids_max.to_string())?;
        // The VMM is one process, but should it ever have helpers, the OOM
        // killer takes them all, leaving no half VM. Both files are
        // optional (no swap controller without swap support).
        let _ = std::fs::write(dir.join("memory.oom.group"), "1");
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        Ok(VmCgroup { dir, memory_max })
    }
}

impl VmCgroup {
    /// `cgroup.procs`, for the child to write "0" to (joining it).
    pub fn procs(&self) -> Option<CString> {
        CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes()).ok()
    }

    /// How many times the kernel's OOM killer has killed a process of this
    /// cgroup (`oom_kill` in memory.events); 0 when unreadable.
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("memory.events"))
            .ok()
            .and_then(|t| event(&t, "oom_kill"))
            .unwrap_or(0)
    }
}

/// The counter `key` in a cgroup events file (`key value` lines).
fn event(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_events_are_parsed() {
        let t = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 1\n";
        assert_eq!(event(t, "oom_kill"), Some(1));
        assert_eq!(event(t, "oom"), Some(2));
        assert_eq!(event(t, "nope"), None);
        assert_eq!(event("oom_kill x\n", "oom_kill"), None);
    }

    #[test]
    fn prepares_the_kiln_cgroup_and_a_vm_s_limits() {
        // A stand-in for a cgroup2 mount: plain files where the kernel's are.
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpu io memory pids\n",
        )
        .unwrap();
        let cg = Cgroups::prepare(root.path()).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+memory +pids");
        assert_eq!(read("kiln/cgroup.subtree_control"), "+memory +pids");
        let vm = cg.for_vm("web", 200 << 20, 34).unwrap();
        assert_eq!(read("kiln/web/memory.max"), "209715200");
        assert_eq!(read("kiln/web/pids.max"), "34");
        assert_eq!(read("kiln/web/memory.oom.group"), "1");
        assert_eq!(vm.memory_max, 200 << 20);
        assert_eq!(
            vm.procs().unwrap().to_str().unwrap(),
            root.path().join("kiln/web/cgroup.procs").to_str().unwrap()
        );
        assert_eq!(vm.oom_kills(), 0);
        std::fs::write(
            root.path().join("kiln/web/memory.events"),
            "oom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(vm.oom_kills(), 1);
        // Again for a restart: the cgroup is reused.
        cg.for_vm("web", 100 << 20, 34).unwrap();
        assert_eq!(read("kiln/web/memory.max"), "104857600");
    }

    #[test]
    fn a_missing_controller_is_named() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu io pids\n").unwrap();
        let e = Cgroups::prepare(root.path()).unwrap_err();
        assert!(e.to_string().contains("no memory cgroup controller"), "{e}");
        let e = Cgroups::prepare(&root.path().join("nope")).unwrap_err();
        assert!(e.to_string().starts_with("Cannot read "), "{e}");
    }
}
