//! The unikernel's options on the command line.
//!
//! Words are separated by ASCII whitespace, as on a Linux command line; the
//! last occurrence of an option wins. Unknown words are left alone (a VMM may
//! add its own).

/// Option that overrides the exit code.
pub const EXIT_OPTION: &[u8] = b"hello.exit=";
/// `hello.edu=required`: fail when no edu device is found.
pub const EDU_OPTION: &[u8] = b"hello.edu=";
/// `hello.testdev=required`: fail when no pci-testdev device is found.
pub const TESTDEV_OPTION: &[u8] = b"hello.testdev=";

/// Why an option's value is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("hello.exit needs a decimal number from 0 to 4294967295")]
    BadExitCode,
    #[error("hello.edu takes `required` or `optional`")]
    BadEdu,
    #[error("hello.testdev takes `required` or `optional`")]
    BadTestdev,
}

/// The options the unikernel understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// `hello.exit=<n>`: the status code to leave with.
    pub exit_code: Option<u32>,
    /// `hello.edu=required`: an edu device must be present.
    pub edu_required: bool,
    /// `hello.testdev=required`: a pci-testdev device must be present.
    pub testdev_required: bool,
}

fn parse_u32(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

impl Options {
    /// Reads the options from a raw command line.
    pub fn parse(cmdline: &[u8]) -> Result<Self, Error> {
        let mut options = Self::default();
        for word in cmdline.split(u8::is_ascii_whitespace) {
            if let Some(value) = word.strip_prefix(EXIT_OPTION) {
                options.exit_code = Some(parse_u32(value).ok_or(Error::BadExitCode)?);
            }
            if let Some(value) = word.strip_prefix(EDU_OPTION) {
                options.edu_required = match value {
                    b"required" => true,
                    b"optional" => false,
                    _ => return Err(Error::BadEdu),
                };
            }
            if let Some(value) = word.strip_prefix(TESTDEV_OPTION) {
                options.testdev_required = match value {
                    b"required" => true,
                    b"optional" => false,
                    _ => return Err(Error::BadTestdev),
                };
            }
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_exit_code_among_other_words() {
        let o = Options::parse(b"console=ttyS0  hello.exit=3\tquiet").unwrap();
        assert_eq!(o.exit_code, Some(3));
    }

    #[test]
    fn last_occurrence_wins_and_absence_is_none() {
        assert_eq!(
            Options::parse(b"hello.exit=1 hello.exit=42")
                .unwrap()
                .exit_code,
            Some(42)
        );
        assert_eq!(Options::parse(b"").unwrap().exit_code, None);
        assert_eq!(
            Options::parse(b"xhello.exit=5 hello.exitx=5")
                .unwrap()
                .exit_code,
            None
        );
    }

    #[test]
    fn edu_required_or_optional() {
        assert!(Options::parse(b"hello.edu=required").unwrap().edu_required);
        assert!(
            !Options::parse(b"hello.edu=required hello.edu=optional")
                .unwrap()
                .edu_required
        );
        assert!(!Options::parse(b"").unwrap().edu_required);
        assert_eq!(Options::parse(b"hello.edu=yes"), Err(Error::BadEdu));
        let o = Options::parse(b"hello.testdev=required").unwrap();
        assert!(o.testdev_required && !o.edu_required);
        assert_eq!(Options::parse(b"hello.testdev=1"), Err(Error::BadTestdev));
    }

    #[test]
    fn accepts_the_full_u32_range_only() {
        assert_eq!(
            Options::parse(b"hello.exit=4294967295").unwrap().exit_code,
            Some(u32::MAX)
        );
        for bad in [
            &b"hello.exit=4294967296"[..],
            b"hello.exit=",
            b"hello.exit=-1",
            b"hello.exit=0x10",
        ] {
            assert_eq!(
                Options::parse(bad),
                Err(Error::BadExitCode),
                "{}",
                bad.escape_ascii()
            );
        }
    }
}
