//! PID 1's look at a running VMM's sandbox: its `/proc/<pid>/status` (ids,
//! capabilities, `no_new_privs`) and each of its threads'
//! `/proc/<pid>/task/<tid>/status` (seccomp), turned into the sandbox
//! report line (its grammar is `kiln_abi::sandbox`). PID 1 prints it once
//! per VMM run, when the VMM's first heartbeat says its guest runs (every
//! thread has installed its filter by then). The VMM checks its own jail
//! with the same parser ([`Confinement`]).

use kiln_abi::sandbox::{Jail, SandboxReport};
use std::fmt;
use std::path::Path;

/// The confinement fields of one `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Confinement {
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gids: [u32; 4],
    /// How many supplementary groups.
    pub groups: usize,
    /// CapInh, CapPrm, CapEff, CapBnd, CapAmb.
    pub caps: [u64; 5],
    pub no_new_privs: bool,
}

impl Confinement {
    /// The fields of `status` (the text of a `/proc/<pid>/status`); `None`
    /// when one is missing or malformed.
    pub fn parse(status: &str) -> Option<Self> {
        let ids = |name: &str| -> Option<[u32; 4]> {
            let v: Vec<u32> = field(status, name)?
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            v.try_into().ok()
        };
        let cap = |name: &str| u64::from_str_radix(field(status, name)?, 16).ok();
        Some(Confinement {
            uids: ids("Uid")?,
            gids: ids("Gid")?,
            groups: field(status, "Groups")?.split_whitespace().count(),
            caps: [
                cap("CapInh")?,
                cap("CapPrm")?,
                cap("CapEff")?,
                cap("CapBnd")?,
                cap("CapAmb")?,
            ],
            no_new_privs: field(status, "NoNewPrivs")? == "1",
        })
    }

    /// Every capability in any of the five sets (0: none at all).
    pub fn any_caps(&self) -> u64 {
        self.caps.iter().fold(0, |a, c| a | c)
    }

    /// The report's view, with whether landlock holds.
    pub fn jail(&self, landlock: bool) -> Jail {
        Jail {
            uids: self.uids,
            gids: self.gids,
            groups: self.groups,
            caps: self.any_caps(),
            no_new_privs: self.no_new_privs,
            landlock,
        }
    }
}

impl fmt::Display for Confinement {
    /// The report's fields but `landlock`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.jail(false).to_string();
        f.write_str(text.split(" landlock=").next().unwrap_or_default())
    }
}

/// The value of field `name` (`Name:\tvalue`) of a /proc status text.
fn field<'s>(status: &'s str, name: &str) -> Option<&'s str> {
    status.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// What one look at a VMM found; [`Sandbox::line`] formats it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Each thread's `Seccomp:` mode, in task (thread id) order; a thread
    /// whose status could not be read (it just ended) is left out.
    pub seccomp: Vec<u8>,
    /// The process's ids and privileges, when its status could be read.
    pub jail: Option<Jail>,
}

impl Sandbox {
    /// Reads process `pid` and its threads under `proc` (`/proc`);
    /// `landlock`: the VMM said its ruleset is enforced.
    pub fn of(proc: &Path, pid: i32, landlock: bool) -> std::io::Result<Sandbox> {
        let dir = proc.join(pid.to_string());
        let task = dir.join("task");
        let mut tids: Vec<u32> = std::fs::read_dir(&task)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_unstable();
        let seccomp = tids
            .iter()
            .filter_map(|tid| {
                let status = std::fs::read_to_string(task.join(tid.to_string()).join("status"));
                field(&status.ok()?, "Seccomp")?.parse().ok()
            })
            .collect();
        let jail = std::fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|s| Confinement::parse(&s))
            .map(|c| c.jail(landlock));
        Ok(Sandbox { seccomp, jail })
    }

    /// The report line for VM `vm`.
    pub fn line(&self, vm: &str) -> String {
        SandboxReport {
            vm,
            threads: self.seccomp.len(),
            seccomp: &self.seccomp,
            jail: self.jail,
        }
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAILED: &str = "Name:\tkiln-runtime\nUmask:\t0022\nState:\tS (sleeping)\n\
        Tgid:\t77\nUid:\t100002\t100002\t100002\t100002\nGid:\t100002\t100002\t100002\t100002\n\
        FDSize:\t64\nGroups:\t\nThreads:\t3\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
        CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\n\
        NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";

    #[test]
    fn reads_every_thread_of_a_process_and_its_jail() {
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
        let s = Sandbox::of(dir.path(), 10, true).unwrap();
        assert_eq!(s.seccomp, vec![2, 0, 2]);
        assert_eq!(s.jail, None);
        assert_eq!(s.line("a"), "kiln: vm a: sandbox threads=3 seccomp=2,0,2");
        std::fs::write(dir.path().join("10/status"), JAILED).unwrap();
        let s = Sandbox::of(dir.path(), 10, true).unwrap();
        assert_eq!(
            s.line("a"),
            "kiln: vm a: sandbox threads=3 seccomp=2,0,2 uid=100002 gid=100002 groups=0 caps=0 no_new_privs=1 landlock=enforced"
        );
    }

    #[test]
    fn reads_this_test_process() {
        let me = i32::try_from(std::process::id()).unwrap();
        let s = Sandbox::of(Path::new("/proc"), me, false).unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let mine: u8 = field(&status, "Seccomp").unwrap().parse().unwrap();
        assert!(s.seccomp.contains(&mine), "{s:?}");
        assert!(s.line("t").ends_with(" landlock=absent"), "{}", s.line("t"));
        assert!(Sandbox::of(Path::new("/proc"), -5, false).is_err());
    }

    #[test]
    fn a_jailed_status_is_read_field_by_field() {
        let c = Confinement::parse(JAILED).unwrap();
        assert_eq!(c.uids, [100_002; 4]);
        assert_eq!(c.gids, [100_002; 4]);
        assert_eq!(c.groups, 0);
        assert_eq!(c.any_caps(), 0);
        assert!(c.no_new_privs);
        assert_eq!(
            c.to_string(),
            "uid=100002 gid=100002 groups=0 caps=0 no_new_privs=1"
        );
    }

    #[test]
    fn root_with_every_capability_shows_them() {
        let root = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t0 1\nCapInh:\t0000000000000000\n\
            CapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n\
            CapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\n";
        let c = Confinement::parse(root).unwrap();
        assert_eq!(c.any_caps(), 0x1ff_ffff_ffff);
        assert_eq!(
            c.to_string(),
            "uid=0 gid=0 groups=2 caps=1ffffffffff no_new_privs=0"
        );
        let mixed = root.replace("Uid:\t0\t0\t0\t0", "Uid:\t5\t0\t0\t0");
        assert_eq!(
            Confinement::parse(&mixed).unwrap().to_string(),
            "uid=5/0/0/0 gid=0 groups=2 caps=1ffffffffff no_new_privs=0"
        );
        // A field missing or unreadable: no answer rather than a wrong one.
        assert_eq!(Confinement::parse(&root.replace("NoNewPrivs", "X")), None);
        assert_eq!(
            Confinement::parse(&root.replace("CapEff:\t0", "CapEff:\tz")),
            None
        );
    }
}
