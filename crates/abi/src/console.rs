//! A guest's lines on the shared console: the runtime writes every line
//! (or piece of a long line) a guest prints as `[<vm>] <text>`, and
//! `kiln test` reads such a line as that VM's output and nothing else,
//! whatever the text says (docs/testing.md, "Console grammar").

use core::fmt;

/// One line of a VM's guest output, as the console carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLine<'a> {
    pub vm: &'a str,
    pub text: &'a str,
}

impl<'a> GuestLine<'a> {
    /// Reads `[<vm>] <text>` at the start of `line` (a blank guest line
    /// may have lost its space on the way: `[<vm>]`). `None` when the
    /// brackets hold no VM name: the kernel's `[    1.234]` time stamps
    /// and systemd's `[  OK  ]` are not guest lines.
    pub fn parse(line: &'a str) -> Option<Self> {
        let (vm, text) = line.strip_prefix('[')?.split_once(']')?;
        let text = match text.strip_prefix(' ') {
            Some(text) => text,
            None if text.is_empty() => text,
            None => return None,
        };
        is_vm_name(vm).then_some(GuestLine { vm, text })
    }
}

impl fmt::Display for GuestLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.vm, self.text)
    }
}

/// A VM name as configs allow it: 1 to 32 of `a-z`, `0-9`, `_`, `-`; so a
/// guest line's prefix can be told from other text in brackets.
pub fn is_vm_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn written_and_read_back() {
        let l = GuestLine {
            vm: "edu_1-x",
            text: "kiln: vm=b state=exited code=0",
        };
        assert_eq!(l.to_string(), "[edu_1-x] kiln: vm=b state=exited code=0");
        assert_eq!(GuestLine::parse(&l.to_string()), Some(l));
        assert_eq!(
            GuestLine::parse("[a]"),
            Some(GuestLine { vm: "a", text: "" })
        );
    }

    #[test]
    fn brackets_without_a_vm_name_are_no_guest_line() {
        for line in [
            "[    0.000000] Linux version 6.1.0",
            "[  OK  ] Started something",
            "[T12345] Oops",
            "[Forger] hi",
            "[] hi",
            "[a]hi",
            "[aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa] 33 characters",
            "x [a] hi",
        ] {
            assert_eq!(GuestLine::parse(line), None, "{line}");
        }
    }
}
