//! What the kernel says about a VMM's confinement, read from
//! `/proc/<pid>/status` (and each thread's), and the one line PID 1 prints
//! about it once the VM runs:
//!
//!     kiln: vm=<name> sandbox uid=<n> gid=<n> groups=<n> caps=<hex> no_new_privs=<0|1> landlock=<enforced|absent> threads=<n> seccomp=<n>
//!
//! The VMM checks its own jail with the same parser ([`Confinement`]).

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
    /// `Seccomp:` 0 (none), 1 (strict) or 2 (filter).
    pub seccomp: u8,
}

impl Confinement {
    /// The fields of `status` (the text of a `/proc/<pid>/status`); `None`
    /// when one is missing or malformed.
    pub fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(str::trim)
            })
        };
        let ids = |name: &str| -> Option<[u32; 4]> {
            let v: Vec<u32> = field(name)?
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            v.try_into().ok()
        };
        let cap = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
        Some(Confinement {
            uids: ids("Uid")?,
            gids: ids("Gid")?,
            groups: field("Groups")?.split_whitespace().count(),
            caps: [
                cap("CapInh")?,
                cap("CapPrm")?,
                cap("CapEff")?,
                cap("CapBnd")?,
                cap("CapAmb")?,
            ],
            no_new_privs: field("NoNewPrivs")? == "1",
            seccomp: field("Seccomp")?.parse().ok()?,
        })
    }

    /// Every capability in any of the five sets (0: none at all).
    pub fn any_caps(&self) -> u64 {
        self.caps.iter().fold(0, |a, c| a | c)
    }

    /// `id` when all four agree, else `real/effective/saved/fs`.
    fn ids(ids: [u32; 4]) -> String {
        if ids.iter().all(|i| *i == ids[0]) {
            ids[0].to_string()
        } else {
            ids.map(|i| i.to_string()).join("/")
        }
    }
}

/// A running VMM's sandbox as PID 1 reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxReport {
    /// The process (its main thread).
    pub main: Confinement,
    /// How many threads it has.
    pub threads: usize,
    /// The lowest `Seccomp:` over its threads (2: every thread filtered).
    pub seccomp: u8,
    /// The VMM said its landlock ruleset is enforced (the kernel shows
    /// landlock domains nowhere in /proc).
    pub landlock: bool,
}

impl SandboxReport {
    /// Reads process `pid`'s status files under `proc` (`/proc`).
    pub fn read(proc: &Path, pid: i32, landlock: bool) -> std::io::Result<Self> {
        let dir = proc.join(pid.to_string());
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected status");
        let main =
            Confinement::parse(&std::fs::read_to_string(dir.join("status"))?).ok_or_else(bad)?;
        let (mut threads, mut seccomp) = (0usize, u8::MAX);
        for task in std::fs::read_dir(dir.join("task"))? {
            // A thread that ended since the listing is no longer counted.
            let Ok(text) = std::fs::read_to_string(task?.path().join("status")) else {
                continue;
            };
            let t = Confinement::parse(&text).ok_or_else(bad)?;
            threads = threads.saturating_add(1);
            seccomp = seccomp.min(t.seccomp);
        }
        Ok(SandboxReport {
            main,
            threads,
            seccomp: if threads == 0 { main.seccomp } else { seccomp },
            landlock,
        })
    }

    /// The console line for VM `vm`.
    pub fn line(&self, vm: &str) -> String {
        format!(
            "kiln: vm={vm} sandbox uid={} gid={} groups={} caps={:x} no_new_privs={} landlock={} threads={} seccomp={}",
            Confinement::ids(self.main.uids),
            Confinement::ids(self.main.gids),
            self.main.groups,
            self.main.any_caps(),
            u8::from(self.main.no_new_privs),
            if self.landlock { "enforced" } else { "absent" },
            self.threads,
            self.seccomp,
        )
    }
}

impl fmt::Display for Confinement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uid={} gid={} groups={} caps={:x} no_new_privs={}",
            Confinement::ids(self.uids),
            Confinement::ids(self.gids),
            self.groups,
            self.any_caps(),
            u8::from(self.no_new_privs)
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const JAILED: &str = "Name:\tkiln-runtime\nUmask:\t0022\nState:\tS (sleeping)\n\
        Tgid:\t77\nUid:\t100002\t100002\t100002\t100002\nGid:\t100002\t100002\t100002\t100002\n\
        FDSize:\t64\nGroups:\t\nThreads:\t3\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
        CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\n\
        NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";

    #[test]
    fn a_jailed_status_is_read_field_by_field() {
        let c = Confinement::parse(JAILED).unwrap();
        assert_eq!(c.uids, [100_002; 4]);
        assert_eq!(c.gids, [100_002; 4]);
        assert_eq!(c.groups, 0);
        assert_eq!(c.any_caps(), 0);
        assert!(c.no_new_privs);
        assert_eq!(c.seccomp, 2);
        let r = SandboxReport {
            main: c,
            threads: 3,
            seccomp: 2,
            landlock: true,
        };
        assert_eq!(
            r.line("edu"),
            "kiln: vm=edu sandbox uid=100002 gid=100002 groups=0 caps=0 no_new_privs=1 landlock=enforced threads=3 seccomp=2"
        );
    }

    #[test]
    fn root_with_every_capability_shows_them() {
        let root = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t0 1\nCapInh:\t0000000000000000\n\
            CapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n\
            CapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\n";
        let c = Confinement::parse(root).unwrap();
        assert_eq!(c.any_caps(), 0x1ff_ffff_ffff);
        assert_eq!(c.groups, 2);
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

    #[test]
    fn this_process_is_read_from_proc() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let r = SandboxReport::read(Path::new("/proc"), pid, false).unwrap();
        assert!(r.threads >= 1, "{r:?}");
        assert!(r.line("t").contains(" landlock=absent "), "{}", r.line("t"));
    }
}
