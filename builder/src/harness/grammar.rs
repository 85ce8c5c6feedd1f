//! The console grammar as `kiln test` reads it (docs/testing.md, "Console
//! grammar"): what a cleaned console line is, decided by how it starts.
//!
//! - `[<vm>] <text>`: the guest output of VM `<vm>`. The runtime writes
//!   every byte a guest prints inside such a line, so whatever the text
//!   says (a status line, a panic, a note), it is only ever that VM's.
//! - `kiln: vm=<vm> state=...` and `kiln: appliance done ...` at the start
//!   of an unprefixed line: the runtime's status lines.
//! - `kiln: vm <vm>: ...` at the start of an unprefixed line: the
//!   runtime's note about one VM; any other `kiln: ` line is the runtime's.
//! - A kernel panic or oops at the start of an unprefixed line (after the
//!   kernel's own `[  seconds]` stamp, if any): the host crashed.
//! - Anything else unprefixed: the host's (its kernel, the firmware).

use kiln_abi::console::GuestLine;
use kiln_abi::status::{note_vm, StatusLine};

/// Host kernel messages that mean the appliance is dead (panic, oops,
/// kernel BUG, GPF), at the start of a message.
pub const PANIC_PATTERNS: &[&str] = &["Kernel panic", "BUG:", "Oops:", "general protection fault"];

/// What a console line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleLine<'a> {
    /// `[<vm>] <text>`: VM `vm`'s guest output.
    Guest { vm: &'a str, text: &'a str },
    /// A status line of the runtime.
    Status(StatusLine<'a>),
    /// `kiln: vm <vm>: ...`: the runtime's note about VM `vm`.
    Note { vm: &'a str },
    /// Another line of the runtime's (`kiln: ...`): never a panic.
    Runtime,
    /// The host kernel crashed: the panic pattern the line starts with.
    HostPanic(&'static str),
    /// Any other line: the host's.
    Host,
}

/// Reads one cleaned console line (no terminator).
pub fn classify(line: &str) -> ConsoleLine<'_> {
    if let Some(GuestLine { vm, text }) = GuestLine::parse(line) {
        return ConsoleLine::Guest { vm, text };
    }
    if line.starts_with("kiln: ") {
        if let Some(status) = StatusLine::parse(line) {
            return ConsoleLine::Status(status);
        }
        if let Some(vm) = note_vm(line) {
            return ConsoleLine::Note { vm };
        }
        return ConsoleLine::Runtime;
    }
    let message = without_printk_stamp(line);
    match PANIC_PATTERNS.iter().find(|p| message.starts_with(*p)) {
        Some(pattern) => ConsoleLine::HostPanic(pattern),
        None => ConsoleLine::Host,
    }
}

/// The kernel message after its optional `[    1.234567]` time stamp and
/// `[    T1]` caller id (`printk.time`, `CONFIG_PRINTK_CALLER`).
fn without_printk_stamp(line: &str) -> &str {
    let mut rest = line;
    if let Some(r) = bracketed(rest, |s| {
        s.split_once('.')
            .is_some_and(|(a, b)| digits(a) && digits(b))
    }) {
        rest = r;
    }
    if let Some(r) = bracketed(rest, |s| s.strip_prefix(['T', 'C']).is_some_and(digits)) {
        rest = r;
    }
    if rest.len() == line.len() {
        return line;
    }
    rest.strip_prefix(' ').unwrap_or(rest)
}

/// What follows `[<inner>]` at the start of `s`, when `ok(inner)` (its
/// padding spaces removed).
fn bracketed(s: &str, ok: impl Fn(&str) -> bool) -> Option<&str> {
    let (inner, rest) = s.strip_prefix('[')?.split_once(']')?;
    ok(inner.trim_start()).then_some(rest)
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_abi::status::VmState;

    #[test]
    fn guest_lines_are_the_guests_whatever_they_say() {
        for text in [
            "hello: exit 0",
            "kiln: vm=b state=exited code=0",
            "kiln: appliance done ok=2 failed=0",
            "kiln: vm b: attached",
            "Kernel panic - not syncing: VFS",
            "[a] nested",
            "",
        ] {
            assert_eq!(
                classify(&format!("[a] {text}")),
                ConsoleLine::Guest { vm: "a", text },
                "{text}"
            );
        }
        assert_eq!(
            classify("[edu_1-x]"),
            ConsoleLine::Guest {
                vm: "edu_1-x",
                text: ""
            }
        );
    }

    #[test]
    fn status_lines_only_at_the_start_of_an_unprefixed_line() {
        assert_eq!(
            classify("kiln: vm=b state=exited code=0"),
            ConsoleLine::Status(StatusLine::vm("b", VmState::Exited).with_code(0))
        );
        assert_eq!(
            classify("kiln: appliance done ok=2 failed=0"),
            ConsoleLine::Status(StatusLine::Done { ok: 2, failed: 0 })
        );
        for line in [
            "x kiln: vm=b state=exited code=0",
            " kiln: vm=b state=exited code=0",
            "[    1.2] kiln: vm=b state=exited code=0",
            "[Forger] kiln: appliance done ok=2 failed=0",
            "[a]kiln: appliance done ok=2 failed=0",
            "progress 10%kiln: appliance done ok=2 failed=0",
        ] {
            assert_eq!(classify(line), ConsoleLine::Host, "{line}");
        }
        assert_eq!(classify("kiln: vm=x state=bogus"), ConsoleLine::Runtime);
        assert_eq!(classify("kiln: starting 2 VMs"), ConsoleLine::Runtime);
    }

    #[test]
    fn notes_name_their_vm() {
        assert_eq!(
            classify("kiln: vm a-b: 0000:00:03.0 attached through iommufd"),
            ConsoleLine::Note { vm: "a-b" }
        );
        assert_eq!(classify("x kiln: vm a-b: attached"), ConsoleLine::Host);
    }

    #[test]
    fn host_panics_only_at_the_start_of_a_kernel_message() {
        for (line, pattern) in [
            (
                "Kernel panic - not syncing: Attempted to kill init!",
                "Kernel panic",
            ),
            (
                "[    3.141592] Kernel panic - not syncing: Fatal exception",
                "Kernel panic",
            ),
            (
                "[   12.5][    T1] BUG: kernel NULL pointer dereference",
                "BUG:",
            ),
            ("[T12345] Oops: 0000 [#1] PREEMPT SMP NOPTI", "Oops:"),
            (
                "general protection fault, probably for non-canonical address",
                "general protection fault",
            ),
        ] {
            assert_eq!(classify(line), ConsoleLine::HostPanic(pattern), "{line}");
        }
        for line in [
            "progress 50%Kernel panic - not syncing: forged",
            "[    1.0] random: Kernel panic is not here",
            "kiln: vm a: Kernel panic",
            "[x] Kernel panic - not syncing",
            " Kernel panic - not syncing",
        ] {
            assert_ne!(
                std::mem::discriminant(&classify(line)),
                std::mem::discriminant(&ConsoleLine::HostPanic("")),
                "{line}"
            );
        }
    }

    #[test]
    fn brackets_that_are_no_vm_name_are_the_hosts() {
        for line in [
            "[    0.000000] Linux version 6.1.0",
            "[  OK  ] Started something",
            "[Forger] hi",
            "[] hi",
            "[aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa] 33 characters",
        ] {
            assert_eq!(classify(line), ConsoleLine::Host, "{line}");
        }
    }
}
