//! Authenticode-signing `kiln.efi` with the owner's db key.
//!
//! The signature is made by `osslsigncode` (Debian package `osslsigncode`),
//! not `sbsign`: both write the PKCS#7 Authenticode signature UEFI firmware
//! checks, but sbsign always stamps the current time into the signed
//! attributes (OpenSSL adds `signingTime` unless one is given, and sbsign
//! gives none), so two signings of the same image differ. osslsigncode
//! takes the signing time (`-time`): kiln passes SOURCE_DATE_EPOCH, and as
//! RSA PKCS#1 v1.5 signatures are deterministic, the same image and key give
//! the same signed bytes. It also reads keys from PKCS#11 tokens
//! (`-pkcs11module` with libp11's engine, Debian package
//! `libengine-pkcs11-openssl`).

use super::{io_err, read_certificate, run, tool, SecureBootError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the db private key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningKey {
    /// A PEM file.
    File(PathBuf),
    /// A PKCS#11 URI (RFC 7512) in the token that `module` drives.
    Pkcs11 { uri: String, module: PathBuf },
}

/// What `kiln.efi` is signed with: `[output.signing]`, paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signing {
    pub key: SigningKey,
    /// The certificate of the key, enrolled in the firmware's db.
    pub cert: PathBuf,
}

/// Who signed an image, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signer {
    /// The signer certificate's subject, e.g. `CN=acme db`.
    pub subject: String,
    /// SHA-256 of the signer certificate (DER), lowercase hex: what
    /// `openssl x509 -noout -fingerprint -sha256` prints, without colons.
    pub cert_sha256: String,
}

/// The SHA-256 fingerprint of a certificate (PEM or DER), lowercase hex.
pub fn cert_fingerprint(cert: &Path) -> Result<String, SecureBootError> {
    use x509_cert::der::Encode;
    let der = read_certificate(cert)?
        .to_der()
        .map_err(|source| SecureBootError::Certificate {
            path: cert.to_path_buf(),
            source,
        })?;
    Ok(crate::manifest::sha256_bytes(&der))
}

/// Signs the PE image `path` in place, with the signing time `epoch`
/// (seconds since 1970). Any signature it had is replaced.
pub fn sign_uki(path: &Path, signing: &Signing, epoch: u64) -> Result<Signer, SecureBootError> {
    let osslsigncode = tool("osslsigncode", "osslsigncode")?;
    let cert = read_certificate(&signing.cert)?;
    let signed = crate::atomic::temp_file_beside(path).map_err(io_err(format!(
        "create a temporary file beside {}",
        path.display()
    )))?;
    let mut cmd = Command::new(osslsigncode);
    cmd.arg("sign").arg("-certs").arg(&signing.cert);
    match &signing.key {
        SigningKey::File(key) => {
            cmd.arg("-key").arg(key);
        }
        SigningKey::Pkcs11 { uri, module } => {
            cmd.arg("-pkcs11module").arg(module).args(["-key", uri]);
        }
    }
    // osslsigncode refuses to overwrite: the temporary file's name is free
    // once it is removed, and nothing else writes in the build directory.
    let out = signed.path().to_path_buf();
    signed
        .close()
        .map_err(io_err(format!("remove {}", out.display())))?;
    cmd.args(["-h", "sha256", "-time", &epoch.to_string()])
        .arg("-in")
        .arg(path)
        .arg("-out")
        .arg(&out);
    let result = run(cmd).and_then(|_| {
        std::fs::rename(&out, path).map_err(io_err(format!(
            "rename the signed image to {}",
            path.display()
        )))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&out);
    }
    result?;
    set_mode(path)?;

    // Read back: the image carries one signature, by this certificate,
    // over this image.
    let bytes = std::fs::read(path).map_err(io_err(format!("read {}", path.display())))?;
    let info = super::read_signature(&bytes)
        .map_err(|reason| SecureBootError::Signature {
            path: path.to_path_buf(),
            reason,
        })?
        .ok_or_else(|| SecureBootError::Signature {
            path: path.to_path_buf(),
            reason: "osslsigncode wrote no signature".into(),
        })?;
    let fingerprint = cert_fingerprint(&signing.cert)?;
    if info.cert_sha256 != fingerprint || !info.digest_matches {
        return Err(SecureBootError::Signature {
            path: path.to_path_buf(),
            reason: format!(
                "it does not match the image or the certificate {}",
                signing.cert.display()
            ),
        });
    }
    Ok(Signer {
        subject: cert.tbs_certificate.subject.to_string(),
        cert_sha256: fingerprint,
    })
}

/// osslsigncode creates its output 0600 under a strict umask; an image is
/// a plain readable file.
fn set_mode(path: &Path) -> Result<(), SecureBootError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(io_err(format!("set the mode of {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secureboot::{create_keys, KeyOptions};

    fn keys(dir: &Path) {
        create_keys(
            dir,
            &KeyOptions {
                name: "sign test".into(),
                days: 30,
                extra_db: Vec::new(),
            },
        )
        .unwrap();
    }

    fn signing(dir: &Path) -> Signing {
        Signing {
            key: SigningKey::File(dir.join("db.key")),
            cert: dir.join("db.crt"),
        }
    }

    /// The real systemd-stub, a PE32+ EFI application like a UKI.
    fn stub_copy(to: &Path) {
        let (stub, _) = crate::output::stub().unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(stub, to).unwrap();
    }

    #[test]
    fn signing_is_reproducible_and_sbverify_accepts_it() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("keys");
        keys(&k);
        let (a, b, c) = (
            d.path().join("a.efi"),
            d.path().join("b.efi"),
            d.path().join("c.efi"),
        );
        for p in [&a, &b, &c] {
            stub_copy(p);
        }
        let signer = sign_uki(&a, &signing(&k), 1_700_000_000).unwrap();
        // A second later the same inputs still give the same bytes.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(sign_uki(&b, &signing(&k), 1_700_000_000).unwrap(), signer);
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "two signings differ"
        );
        sign_uki(&c, &signing(&k), 1_700_000_001).unwrap();
        assert!(std::fs::read(&a).unwrap() != std::fs::read(&c).unwrap());

        assert_eq!(signer.subject, "CN=sign test db");
        let fp = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(k.join("db.crt"))
            .output()
            .unwrap();
        let fp = String::from_utf8_lossy(&fp.stdout)
            .to_lowercase()
            .replace(':', "");
        assert!(fp.trim().ends_with(&signer.cert_sha256), "{fp}");

        let verify = |cert: &Path| {
            Command::new("sbverify")
                .arg("--cert")
                .arg(cert)
                .arg(&a)
                .output()
                .expect("sbverify (sbsigntool) runs: run tests/setup")
        };
        let ok = verify(&k.join("db.crt"));
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let other = d.path().join("other");
        keys(&other);
        assert!(!verify(&other.join("db.crt")).status.success());

        // Signing a signed image replaces its signature.
        sign_uki(&a, &signing(&other), 1_700_000_000).unwrap();
        assert!(verify(&other.join("db.crt")).status.success());
        assert!(!verify(&k.join("db.crt")).status.success());
        let info = crate::secureboot::read_signature(&std::fs::read(&a).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(info.certificates, 1);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("keys");
        keys(&k);
        let efi = d.path().join("a.efi");
        stub_copy(&efi);
        let before = std::fs::read(&efi).unwrap();
        let wrong = Signing {
            key: SigningKey::File(k.join("KEK.key")),
            cert: k.join("db.crt"),
        };
        let e = sign_uki(&efi, &wrong, 0).unwrap_err().to_string();
        assert!(e.contains("osslsigncode"), "{e}");
        assert_eq!(
            std::fs::read(&efi).unwrap(),
            before,
            "the image is untouched"
        );
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(left.len(), 2, "no temporary file is left: {left:?}");
    }
}
