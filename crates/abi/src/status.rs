//! The status lines the runtime prints on the console, one per state change:
//!
//! ```text
//! kiln: vm=<name> state=<starting|running|exited|failed|restarting> [code=<n>] [reason=<text>]
//! kiln: appliance done ok=<n> failed=<m>
//! ```
//!
//! `kiln test`, LAVA monitors and labgrid `expect` read them, so their shape
//! is a contract: the runtime writes them with [`StatusLine`]'s `Display`
//! and `kiln test` reads them with [`StatusLine::parse`]. Beside them the
//! runtime prints notes about one VM, `kiln: vm <name>: ...` ([`note_vm`]).

use core::fmt::{self, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    Starting,
    Running,
    Exited,
    Failed,
    Restarting,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Exited => "exited",
            VmState::Failed => "failed",
            VmState::Restarting => "restarting",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "starting" => VmState::Starting,
            "running" => VmState::Running,
            "exited" => VmState::Exited,
            "failed" => VmState::Failed,
            "restarting" => VmState::Restarting,
            _ => return None,
        })
    }
}

/// One status line. Parsed, it borrows the line's text; written, the
/// reason may be anything displayable (`R`), such as an error chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusLine<'a, R = &'a str> {
    Vm {
        name: &'a str,
        state: VmState,
        code: Option<i32>,
        reason: Option<R>,
    },
    Done {
        ok: u32,
        failed: u32,
    },
}

/// Writes text with control characters (newlines above all) as spaces,
/// so a reason stays on its line.
struct OneLine<'f, 'b>(&'f mut fmt::Formatter<'b>);

impl Write for OneLine<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            self.0.write_char(if c.is_control() { ' ' } else { c })?;
        }
        Ok(())
    }
}

impl<R: fmt::Display> fmt::Display for StatusLine<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusLine::Vm {
                name,
                state,
                code,
                reason,
            } => {
                write!(f, "kiln: vm={name} state={}", state.as_str())?;
                if let Some(c) = code {
                    write!(f, " code={c}")?;
                }
                if let Some(r) = reason {
                    // The reason is last on the line, so it may hold spaces; keep it one line.
                    f.write_str(" reason=")?;
                    write!(OneLine(f), "{r}")?;
                }
                Ok(())
            }
            StatusLine::Done { ok, failed } => {
                write!(f, "kiln: appliance done ok={ok} failed={failed}")
            }
        }
    }
}

/// The VM a runtime note (`kiln: vm <vm>: ...`, e.g. its devices bound or
/// attached) is about, when `line` is one. Beside the status lines, the
/// one other line shape the runtime prints about a single VM.
pub fn note_vm(line: &str) -> Option<&str> {
    let (name, _) = line.strip_prefix("kiln: vm ")?.split_once(": ")?;
    Some(name)
}

impl<'a> StatusLine<'a> {
    pub fn vm(name: &'a str, state: VmState) -> Self {
        StatusLine::Vm {
            name,
            state,
            code: None,
            reason: None,
        }
    }

    pub fn done(ok: u32, failed: u32) -> Self {
        StatusLine::Done { ok, failed }
    }

    /// Recognises a status line: `line` must start with it. Text before
    /// `kiln: ` (a `[vm] ` prefix above all) means someone else printed
    /// it, such as a guest whose output the runtime prefixed; a status
    /// line found there would be a guest speaking for the runtime.
    pub fn parse(line: &'a str) -> Option<Self> {
        let rest = line.strip_prefix("kiln: ")?.trim_end_matches(['\r', '\n']);
        if let Some(done) = rest.strip_prefix("appliance done ") {
            let mut ok = None;
            let mut failed = None;
            for field in done.split_whitespace() {
                match field.split_once('=') {
                    Some(("ok", v)) => ok = v.parse().ok(),
                    Some(("failed", v)) => failed = v.parse().ok(),
                    _ => {}
                }
            }
            return Some(StatusLine::Done {
                ok: ok?,
                failed: failed?,
            });
        }
        let rest = rest.strip_prefix("vm=")?;
        let (name, rest) = rest.split_once(' ')?;
        let rest = rest.strip_prefix("state=")?;
        let (state, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let state = VmState::parse(state)?;
        let mut code = None;
        if let Some(r) = rest.strip_prefix("code=") {
            let (c, r2) = r.split_once(' ').unwrap_or((r, ""));
            code = Some(c.parse().ok()?);
            rest = r2;
        }
        let reason = rest.strip_prefix("reason=");
        Some(StatusLine::Vm {
            name,
            state,
            code,
            reason,
        })
    }
}

impl<'a, R> StatusLine<'a, R> {
    pub fn with_code(mut self, c: i32) -> Self {
        if let StatusLine::Vm { code, .. } = &mut self {
            *code = Some(c);
        }
        self
    }

    /// The line with `r` as its reason (a VM's line; `Done` has none).
    pub fn with_reason<S>(self, r: S) -> StatusLine<'a, S> {
        match self {
            StatusLine::Vm {
                name, state, code, ..
            } => StatusLine::Vm {
                name,
                state,
                code,
                reason: Some(r),
            },
            StatusLine::Done { ok, failed } => StatusLine::Done { ok, failed },
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::string::ToString;

    #[test]
    fn formats_and_parses_round_trip() {
        let l = StatusLine::vm("hello", VmState::Exited).with_code(0);
        assert_eq!(l.to_string(), "kiln: vm=hello state=exited code=0");
        assert_eq!(StatusLine::parse(&l.to_string()), Some(l));
        let l = StatusLine::vm("edu-1", VmState::Failed)
            .with_code(3)
            .with_reason("triple fault");
        assert_eq!(
            l.to_string(),
            "kiln: vm=edu-1 state=failed code=3 reason=triple fault"
        );
        assert_eq!(StatusLine::parse(&format!("{l}\r\n")), Some(l));
        let d = StatusLine::Done { ok: 2, failed: 0 };
        assert_eq!(d.to_string(), "kiln: appliance done ok=2 failed=0");
        assert_eq!(StatusLine::parse(&d.to_string()), Some(d));
    }

    #[test]
    fn rejects_other_lines() {
        assert_eq!(StatusLine::parse("hello world"), None);
        assert_eq!(StatusLine::parse("kiln: vm=x state=bogus"), None);
        assert_eq!(StatusLine::parse("kiln: vm=x state=exited code=abc"), None);
    }

    #[test]
    fn only_at_the_start_of_a_line() {
        for line in [
            "[forger] kiln: vm=sibling state=exited code=0",
            "x kiln: vm=sibling state=exited code=0",
            " kiln: vm=sibling state=exited code=0",
            "[  1.2] kiln: vm=sibling state=exited code=0",
            "[forger] kiln: appliance done ok=2 failed=0",
            "10%\rkiln: appliance done ok=2 failed=0",
        ] {
            assert_eq!(StatusLine::parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_reason_stays_on_its_line() {
        let l = StatusLine::vm("a", VmState::Failed).with_reason("x\ny\tz");
        assert_eq!(l.to_string(), "kiln: vm=a state=failed reason=x y z");
    }

    #[test]
    fn notes_name_their_vm() {
        assert_eq!(note_vm("kiln: vm edu-1: bound 0000:00:03.0"), Some("edu-1"));
        assert_eq!(note_vm("kiln: vm=edu-1 state=running"), None);
    }
}
