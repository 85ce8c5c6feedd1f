//! guest-init's options on the kernel command line.
//!
//! The kernel leaves `guest_init.exit=<n>` in /proc/cmdline (a dotted word
//! is a module parameter to it, not an init argument). Words are separated
//! by whitespace; the last occurrence wins.

use std::path::{Path, PathBuf};

/// Where the kernel command line is read from.
pub const PROC_CMDLINE: &str = "/proc/cmdline";
/// Option that sets the exit code.
pub const EXIT_OPTION: &str = "guest_init.exit=";
/// Exit code used when the options cannot be read or parsed.
pub const BAD_OPTIONS_CODE: u32 = kiln_abi::exit::GUEST_BAD_INPUT;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the kernel command line from {path}; is /proc mounted?")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest_init.exit={value:?} is not a decimal number from 0 to 4294967295; fix the kernel command line")]
    BadExitCode { value: String },
}

/// The options guest-init understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// `guest_init.exit=<n>`: the status code to end the VM with.
    pub exit_code: Option<u32>,
}

/// Parses the options out of a command line.
pub fn parse(cmdline: &str) -> Result<Options, Error> {
    let mut options = Options::default();
    for word in cmdline.split_whitespace() {
        if let Some(value) = word.strip_prefix(EXIT_OPTION) {
            // u32's FromStr also takes a leading '+'; only plain digits are meant.
            let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
            let code = value.parse().ok().filter(|_| digits);
            options.exit_code = Some(code.ok_or_else(|| Error::BadExitCode {
                value: value.to_string(),
            })?);
        }
    }
    Ok(options)
}

/// Reads and parses the command line at `path`.
pub fn read(path: &Path) -> Result<Options, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_exit_code_on_a_kernel_command_line() {
        let o = parse("console=ttyS0 panic=-1 guest_init.exit=5\n").unwrap();
        assert_eq!(o.exit_code, Some(5));
    }

    #[test]
    fn default_is_none_and_last_wins() {
        assert_eq!(parse("console=ttyS0 quiet").unwrap().exit_code, None);
        assert_eq!(
            parse("guest_init.exit=1 guest_init.exit=200")
                .unwrap()
                .exit_code,
            Some(200)
        );
        assert_eq!(
            parse("xguest_init.exit=3 guest_init.exits=3")
                .unwrap()
                .exit_code,
            None
        );
    }

    #[test]
    fn rejects_values_that_are_not_plain_u32() {
        for bad in ["", "-1", "+4", "0x10", "4294967296", "five"] {
            let err = parse(&format!("guest_init.exit={bad}")).unwrap_err();
            assert!(
                matches!(err, Error::BadExitCode { ref value } if value == bad),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            parse("guest_init.exit=4294967295").unwrap().exit_code,
            Some(u32::MAX)
        );
    }

    #[test]
    fn reads_from_a_file_and_reports_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmdline");
        std::fs::write(&path, "root=/dev/vda guest_init.exit=7\n").unwrap();
        assert_eq!(read(&path).unwrap().exit_code, Some(7));
        assert!(matches!(
            read(&dir.path().join("absent")),
            Err(Error::Read { .. })
        ));
    }
}
