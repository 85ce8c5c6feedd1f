//! Reading an Authenticode signature back from a PE image: who signed it,
//! and whether the digest it signs is this image's.
//!
//! Parsing and hashing are Google's `authenticode` crate (the PE
//! certificate table, the PKCS#7 SignedData, the Authenticode image digest),
//! which kiln feeds through the `object` crate's PE parser. The RSA signature
//! itself is not checked here: that is the firmware's job (and
//! `sbverify --cert`'s); this says what the image claims and whether it
//! was changed since it was signed.

use authenticode::{AttributeCertificateIterator, PeOffsetError, PeOffsets, PeTrait};
use cms::signed_data::SignerIdentifier;
use object::pe::{ImageDataDirectory, IMAGE_DIRECTORY_ENTRY_SECURITY};
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64};
use object::LittleEndian as LE;
use std::ops::Range;
use x509_cert::der::Encode;

/// The OID of SHA-256, the digest kiln signs with and firmware expects.
const SHA256: &str = "2.16.840.1.101.3.4.2.1";

/// What a PE image's signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInfo {
    /// The signer certificate's subject and issuer.
    pub subject: String,
    pub issuer: String,
    /// SHA-256 of the signer certificate (DER), lowercase hex.
    pub cert_sha256: String,
    /// The digest algorithm's name (`sha256`) or OID.
    pub digest_algorithm: String,
    /// The image's Authenticode digest is the one the signature signs.
    pub digest_matches: bool,
    /// How many signatures the certificate table holds (the first counts).
    pub certificates: usize,
}

/// The image's signature, `None` when it has none; an error (a sentence)
/// when the image or its signature table is malformed.
pub fn read_signature(image: &[u8]) -> Result<Option<SignatureInfo>, String> {
    let pe = PeFile64::parse(image).map_err(|e| format!("not a PE32+ image ({e})"))?;
    let pe = Pe(&pe);
    let Some(table) = AttributeCertificateIterator::new(&pe)
        .map_err(|e| format!("its certificate table is invalid ({e})"))?
    else {
        return Ok(None);
    };
    let entries = table
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("its certificate table is invalid ({e})"))?;
    let Some(first) = entries.first() else {
        return Ok(None);
    };
    let sig = first
        .get_authenticode_signature()
        .map_err(|e| format!("its signature is not Authenticode ({e})"))?;
    let SignerIdentifier::IssuerAndSerialNumber(id) = &sig.signer_info().sid else {
        return Err("its signer is named by key identifier, not by certificate".into());
    };
    let cert = sig
        .certificates()
        .find(|c| {
            c.tbs_certificate.serial_number == id.serial_number
                && c.tbs_certificate.issuer == id.issuer
        })
        .ok_or("its signer's certificate is not in the signature")?;
    let der = cert
        .to_der()
        .map_err(|e| format!("its signer's certificate does not encode ({e})"))?;
    let oid = sig.digest_algorithm().oid.to_string();
    let digest_matches = if oid == SHA256 {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        authenticode::authenticode_digest(&pe, &mut h)
            .map_err(|e| format!("its layout cannot be hashed ({e})"))?;
        h.finalize().as_slice() == sig.digest()
    } else {
        false
    };
    Ok(Some(SignatureInfo {
        subject: cert.tbs_certificate.subject.to_string(),
        issuer: cert.tbs_certificate.issuer.to_string(),
        cert_sha256: crate::manifest::sha256_bytes(&der),
        digest_algorithm: if oid == SHA256 { "sha256".into() } else { oid },
        digest_matches,
        certificates: entries.len(),
    }))
}

/// `object`'s PE32+ view in the shape `authenticode` reads (it ships the
/// same adapter for a newer `object` than kiln's).
struct Pe<'a, 'data>(&'a PeFile64<'data>);

impl PeTrait for Pe<'_, '_> {
    fn data(&self) -> &[u8] {
        self.0.data()
    }

    fn num_sections(&self) -> usize {
        self.0.section_table().len()
    }

    fn section_data_range(&self, index: usize) -> Result<Range<usize>, PeOffsetError> {
        // `authenticode` numbers sections from 1, as `object` does.
        let s = self
            .0
            .section_table()
            .section(object::SectionIndex(index))
            .map_err(|_| PeOffsetError)?;
        let start = s.pointer_to_raw_data.get(LE) as usize;
        let size = s.size_of_raw_data.get(LE) as usize;
        Ok(start..start.checked_add(size).ok_or(PeOffsetError)?)
    }

    fn certificate_table_range(&self) -> Result<Option<Range<usize>>, PeOffsetError> {
        let Some(dir) = self.0.data_directory(IMAGE_DIRECTORY_ENTRY_SECURITY) else {
            return Ok(None);
        };
        // The security directory holds a file offset, not an address.
        let start = dir.virtual_address.get(LE) as usize;
        let size = dir.size.get(LE) as usize;
        Ok(Some(start..start.checked_add(size).ok_or(PeOffsetError)?))
    }

    fn offsets(&self) -> Result<PeOffsets, PeOffsetError> {
        let data = self.0.data();
        let oh = self.0.nt_headers().optional_header();
        let oh_bytes = object::pod::bytes_of(oh);
        let oh_at = (oh_bytes.as_ptr() as usize)
            .checked_sub(data.as_ptr() as usize)
            .ok_or(PeOffsetError)?;
        let check_sum = oh_at
            .checked_add(std::mem::offset_of!(
                object::pe::ImageOptionalHeader64,
                check_sum
            ))
            .ok_or(PeOffsetError)?;
        let dir = std::mem::size_of::<ImageDataDirectory>();
        let security = oh_at
            .checked_add(oh_bytes.len())
            .and_then(|d| d.checked_add(dir * IMAGE_DIRECTORY_ENTRY_SECURITY))
            .ok_or(PeOffsetError)?;
        Ok(PeOffsets {
            check_sum,
            after_check_sum: check_sum + 4,
            security_data_dir: security,
            after_security_data_dir: security + dir,
            after_header: oh.size_of_headers() as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsigned_image_has_no_signature() {
        let (stub, _) = crate::output::stub().unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(stub).unwrap();
        assert_eq!(read_signature(&bytes), Ok(None));
        assert!(read_signature(b"MZ not a PE").is_err());
    }

    #[test]
    fn a_changed_byte_no_longer_matches_the_signature() {
        use crate::secureboot::{create_keys, sign_uki, KeyOptions, Signing, SigningKey};
        let d = tempfile::tempdir().unwrap();
        create_keys(
            d.path(),
            &KeyOptions {
                name: "inspect test".into(),
                days: 30,
                extra_db: Vec::new(),
            },
        )
        .unwrap();
        let efi = d.path().join("a.efi");
        let (stub, _) = crate::output::stub().unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(stub, &efi).unwrap();
        let signing = Signing {
            key: SigningKey::File(d.path().join("db.key")),
            cert: d.path().join("db.crt"),
        };
        sign_uki(&efi, &signing, 0).unwrap();
        let mut bytes = std::fs::read(&efi).unwrap();
        let info = read_signature(&bytes).unwrap().unwrap();
        assert!(info.digest_matches);
        assert_eq!(info.subject, "CN=inspect test db");
        assert_eq!(info.issuer, "CN=inspect test db");
        assert_eq!(info.digest_algorithm, "sha256");
        // One byte inside the first section's data.
        let pe = PeFile64::parse(bytes.as_slice()).unwrap();
        let at = pe
            .section_table()
            .iter()
            .next()
            .unwrap()
            .pointer_to_raw_data
            .get(LE) as usize;
        bytes[at + 16] ^= 1;
        let info = read_signature(&bytes).unwrap().unwrap();
        assert!(!info.digest_matches);
    }
}
