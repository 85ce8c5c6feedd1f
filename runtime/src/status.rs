//! The runtime's writing of its status lines (their grammar is kiln-abi's,
//! `kiln_abi::status`, shared with `kiln test`'s judge):
//!
//! ```text
//! kiln: vm=<name> state=<starting|running|exited|failed|restarting> [code=<n>] [reason=<text>]
//! kiln: appliance done ok=<n> failed=<m>
//! ```
//!
//! Each line is written with a single `write` starting with a newline, so
//! guest output on the same console cannot split it.

use std::fmt;
use std::io::Write;

pub use kiln_abi::status::{note_vm, StatusLine, VmState};

/// Writing a status line to the console.
pub trait Emit {
    /// Writes the line whole, at column 0: a leading newline ends any partial
    /// guest line, and one `write` call keeps other writers out of it.
    fn emit<W: Write>(&self, out: &mut W) -> std::io::Result<()>;

    /// Prints the line on standard output, ignoring a closed console: a
    /// status line must never be the reason the runtime stops.
    fn print(&self) {
        let _ = self.emit(&mut std::io::stdout().lock());
    }
}

impl<R: fmt::Display> Emit for StatusLine<'_, R> {
    fn emit<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
        let text = format!("\n{self}\n");
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitted_line_stands_alone() {
        let mut out = Vec::new();
        StatusLine::vm("a", VmState::Starting)
            .emit(&mut out)
            .unwrap();
        assert_eq!(out, b"\nkiln: vm=a state=starting\n");
    }
}
