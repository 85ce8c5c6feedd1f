//! PID 1's report on one VMM's sandbox, printed once per VMM run when its
//! guest is running (after the VMM's first heartbeat):
//!
//! ```text
//! kiln: vm <name>: sandbox threads=<n> seccomp=<mode>[,<mode>...]
//! ```
//!
//! It is a runtime note about the VM (see [`crate::status::note_vm`]), so
//! readers that do not know it pass it by. `threads` counts the VMM's
//! threads (`/proc/<pid>/task`); `seccomp` is their `Seccomp:` field
//! (0 none, 1 strict, 2 filter): one number when every thread has the
//! same, else each thread's in task order. More fields may follow; a
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
    fn other_lines_are_not_reports() {
        assert_eq!(report_vm("kiln: vm edu: bound 0000:00:03.0"), None);
        assert_eq!(report_vm("[edu] kiln: vm edu: sandbox threads=1"), None);
        assert_eq!(field("kiln: vm=edu state=running", "seccomp"), None);
    }
}
