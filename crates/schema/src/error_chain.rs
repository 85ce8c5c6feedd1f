//! An error and its causes on one line, outermost first, joined by `: `:
//! how the runtime's status lines and console notes and `kiln test`'s
//! reports give a reason.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources.
pub struct Chain<'a>(pub &'a dyn Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// The error and its causes as one line.
pub fn chain(e: &dyn Error) -> String {
    Chain(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("Cannot read config file a.toml")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn joins_every_cause_outermost_first() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            chain(&Outer(inner)),
            "Cannot read config file a.toml: no such file"
        );
        let alone = std::io::Error::other("alone");
        assert_eq!(chain(&alone), "alone");
    }
}
