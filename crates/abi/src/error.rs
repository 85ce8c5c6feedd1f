//! An error with its causes: `error: cause: cause`, one formatter for every
//! place kiln prints an error, host or guest.

use core::error::Error;
use core::fmt;

/// Displays an error, then each of its causes (`source()`), outermost
/// first, each after the separator: `": "` by default, so the whole chain
/// is one line.
#[derive(Clone, Copy, Debug)]
pub struct Chain<'a> {
    error: &'a (dyn Error + 'a),
    separator: &'a str,
}

impl<'a> Chain<'a> {
    pub fn new(error: &'a (dyn Error + 'a)) -> Self {
        Chain {
            error,
            separator: ": ",
        }
    }

    /// Puts `separator` before each cause instead, e.g.
    /// `"\n  caused by: "` for one line each.
    pub fn separator(self, separator: &'a str) -> Self {
        Chain { separator, ..self }
    }
}

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        let mut cause = self.error.source();
        while let Some(c) = cause {
            write!(f, "{}{c}", self.separator)?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[derive(Debug)]
    struct E(&'static str, Option<&'static E>);

    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.map(|e| e as &(dyn Error + 'static))
        }
    }

    static ROOT: E = E("no such file", None);
    static MID: E = E("cannot read x", Some(&ROOT));
    static TOP: E = E("cannot load the config", Some(&MID));

    #[test]
    fn one_line_by_default() {
        assert_eq!(
            Chain::new(&TOP).to_string(),
            "cannot load the config: cannot read x: no such file"
        );
        assert_eq!(Chain::new(&ROOT).to_string(), "no such file");
    }

    #[test]
    fn one_cause_a_line_with_a_separator() {
        assert_eq!(
            Chain::new(&TOP).separator("\n  caused by: ").to_string(),
            "cannot load the config\n  caused by: cannot read x\n  caused by: no such file"
        );
    }
}
