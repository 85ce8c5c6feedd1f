//! UEFI Secure Boot for appliances: the owner's key set (`kiln keys`), the
//! Authenticode signature on `kiln.efi` (`[output.signing]`), and reading a
//! signature back (`kiln inspect`).
//!
//! The cryptography is done by Debian's maintained tools, never by hand:
//! `openssl` makes keys and certificates, efitools
//! (`cert-to-efi-sig-list`, `sign-efi-sig-list`) makes the signed variable
//! updates firmware enrolls, `osslsigncode` signs the UKI, and Google's
//! `authenticode` crate parses signatures and hashes images.

pub mod keys;
pub mod sign;
pub mod signature;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use keys::{create_keys, KeyOptions};
pub use sign::{cert_fingerprint, sign_uki, Signing, SigningKey};
pub use signature::{read_signature, SignatureInfo};

#[derive(Debug, thiserror::Error)]
pub enum SecureBootError {
    #[error("`{tool}` is not installed; install it with `apt-get install -y {package}`")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("`{command}` failed ({status}): {output}")]
    ToolFailed {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("Cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{} already exists; `kiln keys` never overwrites keys: choose a new directory or remove the old keys yourself", path.display())]
    Exists { path: PathBuf },
    #[error("{} is not an X.509 certificate in PEM or DER form; expected a certificate such as the db.crt `kiln keys` writes", path.display())]
    Certificate {
        path: PathBuf,
        #[source]
        source: x509_cert::der::Error,
    },
    #[error("The signature of {} is unreadable: {reason}; sign it again", path.display())]
    Signature { path: PathBuf, reason: String },
    #[error("Cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SecureBootError {
    let what = what.into();
    move |source| SecureBootError::Io { what, source }
}

/// A tool of a Debian package, found on PATH.
pub(crate) fn tool(name: &'static str, package: &'static str) -> Result<PathBuf, SecureBootError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(SecureBootError::ToolMissing {
            tool: name,
            package,
        })
}

/// Runs `cmd` to completion; its stdout on success, else an error with
/// what it printed.
pub(crate) fn run(mut cmd: Command) -> Result<Vec<u8>, SecureBootError> {
    let command = describe(&cmd);
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| SecureBootError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
    if output.trim().is_empty() {
        output = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    // The tool's own sentences come first; OpenSSL's error stack follows.
    let output = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(4)
        .collect::<Vec<_>>()
        .join(" | ");
    Err(SecureBootError::ToolFailed {
        command,
        status: out.status,
        output,
    })
}

/// A command as the user would type it, for errors.
fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Reads a certificate in PEM or DER form.
pub fn read_certificate(path: &Path) -> Result<x509_cert::Certificate, SecureBootError> {
    use x509_cert::der::{Decode, DecodePem};
    let bytes = std::fs::read(path).map_err(io_err(format!("read {}", path.display())))?;
    let parsed = if bytes.starts_with(b"-----BEGIN") {
        x509_cert::Certificate::from_pem(&bytes)
    } else {
        x509_cert::Certificate::from_der(&bytes)
    };
    parsed.map_err(|source| SecureBootError::Certificate {
        path: path.to_path_buf(),
        source,
    })
}
