//! The status lines the runtime prints on the console, one per state change:
//!
//! ```text
//! kiln: vm=<name> state=<starting|running|exited|failed|restarting> [code=<n>] [reason=<text>]
//! kiln: appliance done ok=<n> failed=<m>
//! ```
//!
//! `kiln test`, LAVA monitors and labgrid `expect` read them, so their shape
//! is a contract. Each line is written with a single `write` starting with a
//! newline-safe prefix, so guest output on the same console cannot split it.

use std::fmt;
use std::io::Write;

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

/// One parsed status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusLine {
    Vm {
        name: String,
        state: VmState,
        code: Option<i32>,
        reason: Option<String>,
    },
    Done {
        ok: u32,
        failed: u32,
    },
}

impl fmt::Display for StatusLine {
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
                    let r: String = r
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect();
                    write!(f, " reason={r}")?;
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

impl StatusLine {
    pub fn vm(name: &str, state: VmState) -> Self {
        StatusLine::Vm {
            name: name.to_string(),
            state,
            code: None,
            reason: None,
        }
    }

    pub fn with_code(mut self, c: i32) -> Self {
        if let StatusLine::Vm { code, .. } = &mut self {
            *code = Some(c);
        }
        self
    }

    pub fn with_reason(mut self, r: impl Into<String>) -> Self {
        if let StatusLine::Vm { reason, .. } = &mut self {
            *reason = Some(r.into());
        }
        self
    }

    /// Recognises a status line anywhere in `line` (a console line may carry
    /// a prefix such as a timestamp or a lab tool's tag).
    pub fn parse(line: &str) -> Option<Self> {
        let at = line.find("kiln: ")?;
        let rest = line[at + 6..].trim_end_matches(['\r', '\n']);
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
        let reason = rest.strip_prefix("reason=").map(str::to_string);
        Some(StatusLine::Vm {
            name: name.to_string(),
            state,
            code,
            reason,
        })
    }

    /// Writes the line whole, at column 0: a leading newline ends any partial
    /// guest line, and one `write` call keeps other writers out of it.
    pub fn emit(&self, out: &mut impl Write) -> std::io::Result<()> {
        let text = format!("\n{self}\n");
        out.write_all(text.as_bytes())?;
        out.flush()
    }

    /// Prints the line on standard output, ignoring a closed console: a
    /// status line must never be the reason the runtime stops.
    pub fn print(&self) {
        let _ = self.emit(&mut std::io::stdout().lock());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(StatusLine::parse(&format!("[  1.2] {l}\r")), Some(l));
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
    fn emitted_line_stands_alone() {
        let mut out = Vec::new();
        StatusLine::vm("a", VmState::Starting)
            .emit(&mut out)
            .unwrap();
        assert_eq!(out, b"\nkiln: vm=a state=starting\n");
    }
}
