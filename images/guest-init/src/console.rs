//! Console output that never panics (`println!` panics when a write fails,
//! and a panic in PID 1 is a kernel panic).
//!
//! The initramfs must hold /dev/console: the kernel opens it as init's fds
//! 0-2, and Rust's runtime aborts before `main` when those are closed and
//! /dev/null cannot be opened in their place.

use kiln_abi::error::Chain;
use std::fmt;
use std::io::Write;

/// Prefix of every line, so the lines stand out among kernel messages.
pub const PREFIX: &str = "guest-init: ";

/// Writes `guest-init: <args>\n` to stdout; a write error loses the line.
pub fn line(args: fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PREFIX}{args}");
    let _ = out.flush();
}

/// The first bytes of a device as a quoted string: the leading `hex` bytes
/// (a signature) always as `\xNN`, then the rest up to the first NUL,
/// non-printable bytes escaped.
pub struct Quoted<'a> {
    pub bytes: &'a [u8],
    pub hex: usize,
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let split = self.hex.min(self.bytes.len());
        let (signature, rest) = self.bytes.split_at(split);
        f.write_str("\"")?;
        for &b in signature {
            write!(f, "\\x{b:02x}")?;
        }
        for &b in rest.iter().take_while(|&&b| b != 0) {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_str("\"")
    }
}

/// Prints one line with the `guest-init: ` prefix.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::line(format_args!($($arg)*))
    };
}

/// Put before each cause of an error: one `caused by` line each.
const CAUSED_BY: &str = "\nguest-init:   caused by: ";

/// Prints `error: <error>`, then its causes, one `caused by` line each.
pub fn error(error: &dyn std::error::Error) {
    line(format_args!(
        "error: {}",
        Chain::new(error).separator(CAUSED_BY)
    ));
}

/// Waits until everything written to the console has left the UART, so the
/// last lines are not lost when the VM ends right after.
pub fn drain() {
    let stdout = std::io::stdout();
    // Not a terminal (a pipe in tests): nothing to wait for.
    let _ = nix::sys::termios::tcdrain(&stdout);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_a_line_of_its_own() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read /sys/bus/pci")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("permission denied"));
        assert_eq!(
            format!("{PREFIX}error: {}", Chain::new(&e).separator(CAUSED_BY)),
            "guest-init: error: cannot read /sys/bus/pci\n\
             guest-init:   caused by: permission denied"
        );
    }
}
