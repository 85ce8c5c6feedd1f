//! PID 1's report on one VMM's sandbox, printed once per VMM run when its
//! guest is running (after the VMM's first heartbeat):
//!
//! ```text
//! kiln: vm <name>: sandbox threads=<n> seccomp=<mode>[,<mode>...]
//! ```
//!
//! followed, when PID 1 could read the process's status, by its jail:
//!
//! ```text
//!  uid=<n> gid=<n> groups=<n> caps=<hex> no_new_privs=<0|1> landlock=<enforced|absent>
//! ```
//!
//! It is a runtime note about the VM (see [`crate::status::note_vm`]), so
//! readers that do not know it pass it by. `threads` counts the VMM's
//! threads (`/proc/<pid>/task`); `seccomp` is their `Seccomp:` field
//! (0 none, 1 strict, 2 filter): one number when every thread has the
//! same, else each thread's in task order. `uid` and `gid` are one number
//! when the real, effective, saved and filesystem ids agree, else the four
//! as `r/e/s/f`; `groups` counts the supplementary groups; `caps` is the
//! union of the five capability sets (0: none). More fields may follow; a
//! reader looks a field up by name with [`field`].

use core::fmt;

/// What PID 1 saw of one VMM's sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxReport<'a> {
    pub vm: &'a str,
    /// The VMM's threads.
    pub threads: usize,
    /// Each thread's seccomp mode, in task order.
    pub seccomp: &'a [u8],
    /// The process's ids and privileges, when they could be read.
    pub jail: Option<Jail>,
}

/// A VMM process's ids and privileges, as its `/proc/<pid>/status` shows
/// them, and whether its landlock ruleset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jail {
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: usize,
    /// CapInh | CapPrm | CapEff | CapBnd | CapAmb.
    pub caps: u64,
    pub no_new_privs: bool,
    /// The VMM said its landlock ruleset is enforced (the kernel shows
    /// landlock domains nowhere in /proc).
    pub landlock: bool,
}

/// `ids` as one number when all four agree, else `r/e/s/f`.
fn write_ids(f: &mut fmt::Formatter<'_>, ids: [u32; 4]) -> fmt::Result {
    let [r, e, s, fs] = ids;
    if ids.iter().all(|i| *i == r) {
        write!(f, "{r}")
    } else {
        write!(f, "{r}/{e}/{s}/{fs}")
    }
}

impl fmt::Display for Jail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("uid=")?;
        write_ids(f, self.uids)?;
        f.write_str(" gid=")?;
        write_ids(f, self.gids)?;
        write!(
            f,
            " groups={} caps={:x} no_new_privs={} landlock={}",
            self.groups,
            self.caps,
            u8::from(self.no_new_privs),
            if self.landlock { "enforced" } else { "absent" }
        )
    }
}

impl fmt::Display for SandboxReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kiln: vm {}: sandbox threads={}", self.vm, self.threads)?;
        f.write_str(" seccomp=")?;
        match self.seccomp.split_first() {
            None => f.write_str("-")?,
            Some((first, rest)) if rest.iter().all(|m| m == first) => write!(f, "{first}")?,
            Some((first, rest)) => {
                write!(f, "{first}")?;
                for m in rest {
                    write!(f, ",{m}")?;
                }
            }
        }
        if let Some(jail) = &self.jail {
            write!(f, " {jail}")?;
        }
        Ok(())
    }
}

/// Whether `line` is a sandbox report, and for which VM.
pub fn report_vm(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("kiln: vm ")?;
    let (vm, rest) = rest.split_once(": ")?;
    rest.starts_with("sandbox ").then_some(vm)
}

/// The value of field `key` (`threads`, `seccomp`, ...) of a sandbox
/// report `line`.
pub fn field<'l>(line: &'l str, key: &str) -> Option<&'l str> {
    report_vm(line)?;
    let (_, rest) = line.split_once(": sandbox ")?;
    rest.split_whitespace().find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn one_mode_when_all_threads_agree_else_each() {
        let r = SandboxReport {
            vm: "edu",
            threads: 3,
            seccomp: &[2, 2, 2],
            jail: None,
        };
        let line = r.to_string();
        assert_eq!(line, "kiln: vm edu: sandbox threads=3 seccomp=2");
        assert_eq!(report_vm(&line), Some("edu"));
        assert_eq!(field(&line, "threads"), Some("3"));
        assert_eq!(field(&line, "seccomp"), Some("2"));
        assert_eq!(crate::status::note_vm(&line), Some("edu"));
        let mixed = SandboxReport {
            seccomp: &[2, 0, 2],
            ..r
        };
        assert_eq!(
            mixed.to_string(),
            "kiln: vm edu: sandbox threads=3 seccomp=2,0,2"
        );
        let none = SandboxReport {
            threads: 0,
            seccomp: &[],
            ..r
        };
        assert_eq!(
            none.to_string(),
            "kiln: vm edu: sandbox threads=0 seccomp=-"
        );
    }

    #[test]
    fn a_jailed_vmm_s_ids_and_privileges_follow() {
        let jail = Jail {
            uids: [100_002; 4],
            gids: [100_002; 4],
            groups: 0,
            caps: 0,
            no_new_privs: true,
            landlock: true,
        };
        let r = SandboxReport {
            vm: "edu",
            threads: 2,
            seccomp: &[2, 2],
            jail: Some(jail),
        };
        let line = r.to_string();
        assert_eq!(
            line,
            "kiln: vm edu: sandbox threads=2 seccomp=2 uid=100002 gid=100002 groups=0 caps=0 no_new_privs=1 landlock=enforced"
        );
        assert_eq!(field(&line, "uid"), Some("100002"));
        assert_eq!(field(&line, "landlock"), Some("enforced"));
        let root = Jail {
            uids: [0, 0, 0, 0],
            gids: [5, 0, 0, 0],
            groups: 2,
            caps: 0x1ff_ffff_ffff,
            no_new_privs: false,
            landlock: false,
        };
        assert_eq!(
            root.to_string(),
            "uid=0 gid=5/0/0/0 groups=2 caps=1ffffffffff no_new_privs=0 landlock=absent"
        );
    }

    #[test]
    fn other_lines_are_not_reports() {
        assert_eq!(report_vm("kiln: vm edu: bound 0000:00:03.0"), None);
        assert_eq!(report_vm("[edu] kiln: vm edu: sandbox threads=1"), None);
        assert_eq!(field("kiln: vm=edu state=running", "seccomp"), None);
    }
}
