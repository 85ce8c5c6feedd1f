//! PID 1's look at a running VMM's sandbox: each of its threads'
//! `/proc/<pid>/task/<tid>/status`, turned into the sandbox report line
//! (its grammar is `kiln_abi::sandbox`). PID 1 prints it once per VMM run,
//! when the VMM's first heartbeat says its guest runs (every thread has
//! installed its filter by then).

use kiln_abi::sandbox::SandboxReport;
use std::path::Path;

/// What one look at a VMM found; [`Sandbox::line`] formats it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Each thread's `Seccomp:` mode, in task (thread id) order; a thread
    /// whose status could not be read (it just ended) is left out.
    pub seccomp: Vec<u8>,
}

impl Sandbox {
    /// Reads the threads of process `pid` under `proc` (`/proc`).
    pub fn of(proc: &Path, pid: i32) -> std::io::Result<Sandbox> {
        let mut tids: Vec<u32> = std::fs::read_dir(proc.join(pid.to_string()).join("task"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_unstable();
        let task = proc.join(pid.to_string()).join("task");
        let seccomp = tids
            .iter()
            .filter_map(|tid| {
                let status = std::fs::read_to_string(task.join(tid.to_string()).join("status"));
                seccomp_mode(&status.ok()?)
            })
            .collect();
        Ok(Sandbox { seccomp })
    }

    /// The report line for VM `vm`.
    pub fn line(&self, vm: &str) -> String {
        SandboxReport {
            vm,
            threads: self.seccomp.len(),
            seccomp: &self.seccomp,
        }
        .to_string()
    }
}

/// The `Seccomp:` field of a `/proc/.../status` text.
fn seccomp_mode(status: &str) -> Option<u8> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_thread_of_a_process() {
        let dir = tempfile::tempdir().unwrap();
        for (tid, mode) in [(12, 2), (10, 2), (11, 0)] {
            let d = dir.path().join("10/task").join(tid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("status"),
                format!("Name:\tkiln-runtime\nSeccomp:\t{mode}\nSeccomp_filters:\t1\n"),
            )
            .unwrap();
        }
        let s = Sandbox::of(dir.path(), 10).unwrap();
        assert_eq!(s.seccomp, vec![2, 0, 2]);
        assert_eq!(s.line("a"), "kiln: vm a: sandbox threads=3 seccomp=2,0,2");
    }

    #[test]
    fn reads_this_test_process() {
        let me = i32::try_from(std::process::id()).unwrap();
        let s = Sandbox::of(Path::new("/proc"), me).unwrap();
        let mine = seccomp_mode(&std::fs::read_to_string("/proc/self/status").unwrap());
        assert!(s.seccomp.contains(&mine.unwrap()), "{s:?}");
        assert!(Sandbox::of(Path::new("/proc"), -5).is_err());
    }
}
