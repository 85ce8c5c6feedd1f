//! `kiln keys DIR`: an owner's Secure Boot key set.
//!
//! For each of PK (platform key), KEK (key exchange key) and db (the
//! signature database, whose key signs `kiln.efi`):
//!
//! | file | what |
//! |---|---|
//! | `NAME.key` | RSA-2048 private key, PEM, mode 0600 |
//! | `NAME.crt` / `NAME.cer` | self-signed certificate, PEM / DER (firmware setup menus take DER) |
//! | `NAME.esl` | an EFI signature list holding the certificate |
//! | `NAME.auth` | that list as a signed, time-stamped variable update: PK and KEK signed by PK, db by KEK |
//!
//! plus `owner.guid`, the owner GUID in the lists. The `.auth` files are what
//! systemd-boot auto-enrolls (`loader/keys/NAME/`) and what firmware and
//! `efi-updatevar` write to a machine in setup mode.
//!
//! Why these tools: `openssl` for keys and certificates; efitools
//! (`cert-to-efi-sig-list`, `sign-efi-sig-list`), a Debian package,
//! writes the authenticated variable format (an `EFI_VARIABLE_AUTHENTICATION_2`
//! header with a PKCS#7 signature over name, GUID, attributes, time and
//! data) that firmware checks. virt-firmware's `virt-fw-vars` only edits
//! OVMF's variable store, so it serves the tests, not real machines.
//!
//! RSA-2048: the UEFI specification requires firmware to support it, and
//! some firmware fails with larger keys.

use super::{io_err, run, tool, SecureBootError};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The three keys (each named for the variable it fills), in the order
/// they are made, with the key that signs its update.
const KEYS: [(&str, &str); 3] = [("PK", "PK"), ("KEK", "PK"), ("db", "KEK")];

/// What `kiln keys` makes.
#[derive(Debug, Clone)]
pub struct KeyOptions {
    /// Names the owner in every certificate's subject (CN=<name> PK, ...).
    pub name: String,
    /// How long the certificates are valid.
    pub days: u32,
    /// More certificates for db beside the owner's (e.g. Microsoft's UEFI
    /// CA, which signs the option ROMs of many graphics and network cards).
    pub extra_db: Vec<PathBuf>,
}

/// Creates the key set in `dir` (made 0700 if new). Refuses to overwrite
/// any existing file. Returns the files written.
pub fn create_keys(dir: &Path, opts: &KeyOptions) -> Result<Vec<PathBuf>, SecureBootError> {
    let openssl = tool("openssl", "openssl")?;
    let to_esl = tool("cert-to-efi-sig-list", "efitools")?;
    let sign_esl = tool("sign-efi-sig-list", "efitools")?;
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(format!("create {}", dir.display())))?;
    }
    for (name, _) in KEYS {
        for ext in ["key", "crt", "cer", "esl", "auth"] {
            let p = dir.join(format!("{name}.{ext}"));
            if p.exists() {
                return Err(SecureBootError::Exists { path: p });
            }
        }
    }
    let guid_file = dir.join("owner.guid");
    if guid_file.exists() {
        return Err(SecureBootError::Exists { path: guid_file });
    }
    let guid = owner_guid()?;
    let mut written = Vec::new();
    write_new(&guid_file, format!("{guid}\n").as_bytes(), 0o644)?;
    written.push(guid_file);

    for (name, _) in KEYS {
        let key = dir.join(format!("{name}.key"));
        // The key goes from openssl's stdout into a file that is 0600 from
        // its creation: it is never readable by others, not even briefly.
        let pem = run(command(
            &openssl,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
        ))?;
        write_new(&key, &pem, 0o600)?;
        written.push(key.clone());

        let crt = dir.join(format!("{name}.crt"));
        let subject = format!("/CN={} {name}/", subject_text(&opts.name));
        let mut req = command(&openssl, &["req", "-new", "-x509", "-sha256", "-subj"]);
        req.arg(&subject)
            .args(["-days", &opts.days.to_string()])
            .arg("-key")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            // A CA certificate: the firmware checks image signatures against it.
            .args(["-addext", "basicConstraints=critical,CA:TRUE"]);
        run(req)?;
        written.push(crt.clone());
        let cer = dir.join(format!("{name}.cer"));
        let mut der = command(&openssl, &["x509", "-outform", "DER", "-in"]);
        der.arg(&crt).arg("-out").arg(&cer);
        run(der)?;
        written.push(cer);
    }

    // Signature lists, then their signed updates.
    let tmp = tempfile::tempdir_in(dir).map_err(io_err(format!(
        "create a temporary directory in {}",
        dir.display()
    )))?;
    for (name, signer) in KEYS {
        let esl = dir.join(format!("{name}.esl"));
        let mut lists = vec![esl_of(&to_esl, &guid, &dir.join(format!("{name}.crt")))?];
        if name == "db" {
            for (i, extra) in opts.extra_db.iter().enumerate() {
                let pem = tmp.path().join(format!("extra{i}.pem"));
                to_pem(&openssl, extra, &pem)?;
                lists.push(esl_of(&to_esl, &guid, &pem)?);
            }
        }
        write_new(&esl, &lists.concat(), 0o644)?;
        written.push(esl.clone());

        let auth = dir.join(format!("{name}.auth"));
        let mut cmd = Command::new(&sign_esl);
        cmd.args(["-g", &guid, "-k"])
            .arg(dir.join(format!("{signer}.key")))
            .arg("-c")
            .arg(dir.join(format!("{signer}.crt")))
            .arg(name)
            .arg(&esl)
            .arg(&auth);
        run(cmd)?;
        // Public, like the certificates (sign-efi-sig-list makes it 0600).
        std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o644))
            .map_err(io_err(format!("set the mode of {}", auth.display())))?;
        written.push(auth);
    }
    Ok(written)
}

fn command(program: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// A subject's CN text without the characters openssl's `-subj` syntax
/// gives meaning to.
fn subject_text(name: &str) -> String {
    name.chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | '=' | '+' | ',') {
                '-'
            } else {
                c
            }
        })
        .collect()
}

/// A fresh random owner GUID (the kernel's RFC 4122 version 4 generator).
fn owner_guid() -> Result<String, SecureBootError> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/uuid").map_err(io_err(
        "read a random GUID from /proc/sys/kernel/random/uuid",
    ))?;
    let guid = uuid::Uuid::parse_str(text.trim()).map_err(|e| SecureBootError::Io {
        what: "read a random GUID from /proc/sys/kernel/random/uuid".into(),
        source: std::io::Error::other(e),
    })?;
    Ok(guid.hyphenated().to_string())
}

/// The EFI signature list of one certificate (PEM).
fn esl_of(to_esl: &Path, guid: &str, crt: &Path) -> Result<Vec<u8>, SecureBootError> {
    let out = tempfile::NamedTempFile::new().map_err(io_err("create a temporary file"))?;
    let mut cmd = Command::new(to_esl);
    cmd.args(["-g", guid]).arg(crt).arg(out.path());
    run(cmd)?;
    std::fs::read(out.path()).map_err(io_err(format!(
        "read the signature list of {}",
        crt.display()
    )))
}

/// A certificate (PEM or DER) as PEM, which cert-to-efi-sig-list reads.
fn to_pem(openssl: &Path, cert: &Path, out: &Path) -> Result<(), SecureBootError> {
    super::read_certificate(cert)?;
    let inform = if std::fs::read(cert)
        .map_err(io_err(format!("read {}", cert.display())))?
        .starts_with(b"-----BEGIN")
    {
        "PEM"
    } else {
        "DER"
    };
    let mut cmd = command(openssl, &["x509", "-inform", inform, "-in"]);
    cmd.arg(cert).arg("-out").arg(out);
    run(cmd).map(|_| ())
}

/// Writes a new file with `mode`; an existing file is an error.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), SecureBootError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => SecureBootError::Exists {
                path: path.to_path_buf(),
            },
            _ => SecureBootError::Io {
                what: format!("create {}", path.display()),
                source: e,
            },
        })?;
    f.write_all(data)
        .map_err(io_err(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> KeyOptions {
        KeyOptions {
            name: "test owner".into(),
            days: 30,
            extra_db: Vec::new(),
        }
    }

    #[test]
    fn a_key_set_has_every_file_with_private_keys_0600() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("keys");
        let files = create_keys(&dir, &opts()).unwrap();
        assert_eq!(files.len(), 1 + 3 * 5);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for (name, _) in KEYS {
            assert_eq!(mode(&dir.join(format!("{name}.key"))), 0o600, "{name}.key");
            assert_eq!(
                mode(&dir.join(format!("{name}.auth"))),
                0o644,
                "{name}.auth"
            );
            for ext in ["crt", "cer", "esl", "auth"] {
                assert!(dir.join(format!("{name}.{ext}")).is_file(), "{name}.{ext}");
            }
            let cert =
                crate::secureboot::read_certificate(&dir.join(format!("{name}.crt"))).unwrap();
            assert_eq!(
                cert.tbs_certificate.subject.to_string(),
                format!("CN=test owner {name}")
            );
            // The DER copy is the same certificate.
            let der =
                crate::secureboot::read_certificate(&dir.join(format!("{name}.cer"))).unwrap();
            assert_eq!(der, cert);
        }
        let guid = std::fs::read_to_string(dir.join("owner.guid")).unwrap();
        let guid = uuid::Uuid::parse_str(guid.trim()).unwrap();

        // The signature list: EFI_CERT_X509_GUID, then the owner GUID and
        // the DER certificate (UEFI 2.10, 32.4.1).
        let esl = std::fs::read(dir.join("db.esl")).unwrap();
        let x509_guid = uuid::Uuid::parse_str("a5c059a1-94e4-4aa7-87b5-ab155c2bf072").unwrap();
        assert_eq!(&esl[..16], x509_guid.to_bytes_le().as_slice());
        let cer = std::fs::read(dir.join("db.cer")).unwrap();
        assert_eq!(&esl[28..44], guid.to_bytes_le().as_slice());
        assert_eq!(&esl[44..], cer.as_slice());

        // The update: EFI_TIME, then WIN_CERTIFICATE_UEFI_GUID with
        // EFI_CERT_TYPE_PKCS7_GUID, then the list itself.
        let auth = std::fs::read(dir.join("db.auth")).unwrap();
        let len = u32::from_le_bytes(auth[16..20].try_into().unwrap()) as usize;
        assert_eq!(u16::from_le_bytes([auth[20], auth[21]]), 0x0200);
        assert_eq!(u16::from_le_bytes([auth[22], auth[23]]), 0x0ef1);
        let pkcs7_guid = uuid::Uuid::parse_str("4aafd29d-68df-49ee-8aa9-347d375665a7").unwrap();
        assert_eq!(&auth[24..40], pkcs7_guid.to_bytes_le().as_slice());
        assert_eq!(&auth[16 + len..], esl.as_slice());
    }

    #[test]
    fn the_db_update_is_signed_by_kek_and_may_carry_more_certificates() {
        let d = tempfile::tempdir().unwrap();
        let other = d.path().join("other");
        create_keys(&other, &opts()).unwrap();
        let dir = d.path().join("keys");
        let mut o = opts();
        // One extra in DER, as vendors publish them.
        o.extra_db = vec![other.join("db.cer")];
        create_keys(&dir, &o).unwrap();
        let esl = std::fs::read(dir.join("db.esl")).unwrap();
        let own = std::fs::read(dir.join("db.cer")).unwrap();
        let extra = std::fs::read(other.join("db.cer")).unwrap();
        let first = u32::from_le_bytes(esl[16..20].try_into().unwrap()) as usize;
        assert_eq!(&esl[first - own.len()..first], own.as_slice());
        assert!(esl[first..].ends_with(&extra));

        // The PKCS#7 SignedData in db.auth (bare, without a ContentInfo, as
        // UEFI wants it) carries KEK's certificate, not db's.
        let auth = std::fs::read(dir.join("db.auth")).unwrap();
        let len = u32::from_le_bytes(auth[16..20].try_into().unwrap()) as usize;
        let p7 = d.path().join("db.p7");
        std::fs::write(&p7, &auth[40..16 + len]).unwrap();
        let out = Command::new("openssl")
            .args(["asn1parse", "-inform", "DER", "-in"])
            .arg(&p7)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(":test owner KEK"), "{text}");
        assert!(!text.contains(":test owner db"), "{text}");
    }

    #[test]
    fn existing_keys_are_never_overwritten() {
        let d = tempfile::tempdir().unwrap();
        create_keys(d.path(), &opts()).unwrap();
        let before = std::fs::read(d.path().join("db.key")).unwrap();
        let e = create_keys(d.path(), &opts()).unwrap_err().to_string();
        assert!(e.contains("PK.key already exists"), "{e}");
        assert_eq!(std::fs::read(d.path().join("db.key")).unwrap(), before);
    }
}
