//! Measured boot: the PCR 11 value a UKI will leave in the TPM, predicted at
//! build time, as `systemd-measure calculate` does.
//!
//! systemd-stub measures the UKI's own sections into PCR 11 before it
//! starts the kernel: for each section it knows, in a fixed order, the
//! section's name (with its NUL) and then its data (`VirtualSize` bytes)
//! are each hashed and extended into the PCR. Nothing else writes PCR 11
//! before the kernel runs, and it starts at zero, so the value depends on
//! those sections alone. kiln's PID 1 extends no PCR (docs/outputs.md says
//! why), so the prediction holds for the appliance's whole uptime.
//!
//! Which sections a stub measures, and in which order, depends on its
//! version; kiln knows the list of the stub it builds with (Debian 12's
//! systemd-boot-efi, 252) and predicts nothing for other versions rather
//! than guess.

use object::read::pe::PeFile64;
use object::LittleEndian as LE;
use sha2::{Digest, Sha256};

/// The TPM PCR systemd-stub measures a UKI's sections into.
pub const PCR: u32 = 11;

/// The sections systemd-stub 252 measures, in its order. `.pcrsig` is
/// never measured (it holds signatures of this very value); `.uname` and
/// `.sbat` are measured from 254 on, which kiln does not claim to know.
const SECTIONS_252: &[&str] = &[
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
];

/// A predicted PCR 11, in the sha256 bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcr11 {
    /// Lowercase hex.
    pub sha256: String,
    /// The systemd-stub version it was predicted for.
    pub stub: String,
}

impl Pcr11 {
    /// The JSON `systemd-measure calculate --json=pretty --phase=:` writes
    /// (one bank, one entry; no phase, as nothing extends PCR 11 later).
    pub fn to_json(&self) -> String {
        // Written out to keep systemd-measure's key order (pcr, then hash);
        // the hash is hex, which needs no escaping.
        format!(
            "{{\n  \"sha256\": [\n    {{\n      \"pcr\": {PCR},\n      \"hash\": \"{}\"\n    }}\n  ]\n}}\n",
            self.sha256
        )
    }
}

/// Why no prediction was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeasureError {
    #[error("not a PE32+ image ({0})")]
    NotPe(String),
    #[error("it is not built on systemd-stub (no .sdmagic section naming it)")]
    NoStub,
    #[error(
        "kiln does not know which sections systemd-stub {0} measures (it knows 252, Debian 12's)"
    )]
    UnknownStub(String),
    #[error("its section {0} lies outside the file")]
    Truncated(String),
    #[error("its section {0} is larger in memory than the whole file")]
    Oversized(String),
}

/// The systemd-stub version a UKI is built on, from the `.sdmagic`
/// section the stub carries (`#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####`).
pub fn stub_version(uki: &[u8]) -> Result<String, MeasureError> {
    let pe = PeFile64::parse(uki).map_err(|e| MeasureError::NotPe(e.to_string()))?;
    let magic = section_data(&pe, uki, ".sdmagic")?.ok_or(MeasureError::NoStub)?;
    let text = String::from_utf8_lossy(magic.raw);
    let version = text
        .split("systemd-stub ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or(MeasureError::NoStub)?;
    Ok(version.to_string())
}

/// PCR 11 after systemd-stub has measured `uki`.
pub fn predict_pcr11(uki: &[u8]) -> Result<Pcr11, MeasureError> {
    let stub = stub_version(uki)?;
    let major = stub
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    let sections = match major {
        Some(252) => SECTIONS_252,
        _ => return Err(MeasureError::UnknownStub(stub)),
    };
    let pe = PeFile64::parse(uki).map_err(|e| MeasureError::NotPe(e.to_string()))?;
    let mut pcr = [0u8; 32];
    for name in sections {
        let Some(data) = section_data(&pe, uki, name)? else {
            continue;
        };
        let mut with_nul = name.as_bytes().to_vec();
        with_nul.push(0);
        extend(&mut pcr, &Sha256::digest(&with_nul));
        extend(&mut pcr, data.digest().as_ref());
    }
    Ok(Pcr11 {
        sha256: crate::manifest::hex(&pcr),
        stub,
    })
}

/// TPM2_PCR_Extend of the sha256 bank with an event's `digest`.
fn extend(pcr: &mut [u8; 32], digest: &[u8]) {
    let mut h = Sha256::new();
    h.update(*pcr);
    h.update(digest);
    pcr.copy_from_slice(&h.finalize());
}

/// A section's data as the loaded image holds it: `VirtualSize` bytes, its
/// raw data in the file and then zeros.
#[derive(Debug)]
struct SectionData<'a> {
    raw: &'a [u8],
    zeros: usize,
}

impl SectionData<'_> {
    /// The sha256 of the data, the zeros hashed without being allocated.
    fn digest(&self) -> impl AsRef<[u8]> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut h = Sha256::new();
        h.update(self.raw);
        let mut left = self.zeros;
        while left > 0 {
            let n = left.min(ZEROS.len());
            h.update(&ZEROS[..n]);
            left -= n;
        }
        h.finalize()
    }
}

/// The data of the first section called `name`, as the stub takes it.
/// `VirtualSize` comes from the file: a section larger in memory than the
/// whole file is refused rather than hashed (a 1 KiB file could otherwise
/// name 4 GiB of zeros).
fn section_data<'a>(
    pe: &PeFile64,
    data: &'a [u8],
    name: &str,
) -> Result<Option<SectionData<'a>>, MeasureError> {
    let Some(s) = pe
        .section_table()
        .iter()
        .find(|s| s.raw_name() == name.as_bytes())
    else {
        return Ok(None);
    };
    let size = |v: u32| usize::try_from(v).map_err(|_| MeasureError::Oversized(name.to_string()));
    let vsize = size(s.virtual_size.get(LE))?;
    let raw = size(s.size_of_raw_data.get(LE))?.min(vsize);
    let start = size(s.pointer_to_raw_data.get(LE))?;
    let bytes = start
        .checked_add(raw)
        .and_then(|end| data.get(start..end))
        .ok_or_else(|| MeasureError::Truncated(name.to_string()))?;
    if vsize > data.len() {
        return Err(MeasureError::Oversized(name.to_string()));
    }
    Ok(Some(SectionData {
        raw: bytes,
        zeros: vsize - raw,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// Debian's systemd ships it; it predicts PCR 11 for a list of section files.
    const SYSTEMD_MEASURE: &str = "/usr/lib/systemd/systemd-measure";

    fn uki(dir: &Path, cmdline: &str) -> (Vec<u8>, [std::path::PathBuf; 3]) {
        let (stub, _) = crate::output::stub().unwrap_or_else(|e| panic!("{e}"));
        let mut kernel: Vec<u8> = (0..300_000u32)
            .map(|i| u8::try_from(i * 13 % 251).unwrap())
            .collect();
        kernel[0x202..0x206].copy_from_slice(b"HdrS");
        let initrd: Vec<u8> = (0..70_001u32)
            .map(|i| u8::try_from(i % 7).unwrap())
            .collect();
        let (k, i) = (dir.join("vmlinuz"), dir.join("initrd"));
        std::fs::write(&k, kernel).unwrap();
        std::fs::write(&i, initrd).unwrap();
        let osrel = dir.join("osrel");
        std::fs::write(&osrel, crate::output::os_release("m")).unwrap();
        let out = dir.join("kiln.efi");
        crate::output::build_uki(
            &stub,
            &k,
            &i,
            cmdline,
            &crate::output::os_release("m"),
            &out,
        )
        .unwrap();
        (std::fs::read(out).unwrap(), [k, i, osrel])
    }

    #[test]
    fn prediction_agrees_with_systemd_measure() {
        assert!(
            Path::new(SYSTEMD_MEASURE).is_file(),
            "{SYSTEMD_MEASURE} is missing: run tests/setup"
        );
        let d = tempfile::tempdir().unwrap();
        let (bytes, [k, i, osrel]) = uki(d.path(), "console=ttyS0 panic=-1");
        let cmdline = d.path().join("cmdline");
        std::fs::write(&cmdline, "console=ttyS0 panic=-1").unwrap();
        let p = predict_pcr11(&bytes).unwrap();
        assert!(p.stub.starts_with("252"), "{}", p.stub);
        let out = Command::new(SYSTEMD_MEASURE)
            .arg("calculate")
            .arg(format!("--linux={}", k.display()))
            .arg(format!("--osrel={}", osrel.display()))
            .arg(format!("--cmdline={}", cmdline.display()))
            .arg(format!("--initrd={}", i.display()))
            .args(["--bank=sha256", "--phase=:", "--json=short"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(ours, theirs);

        // A changed command line changes the prediction.
        let (other, _) = uki(d.path(), "console=ttyS0 panic=-1 quiet");
        assert_ne!(predict_pcr11(&other).unwrap().sha256, p.sha256);
    }

    /// Found by the `uki` fuzz target: a section's VirtualSize of 4 GiB in
    /// a 1 KiB file made `kiln inspect` allocate 4 GiB of zeros to hash.
    #[test]
    fn a_section_larger_than_the_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut bytes, _) = uki(d.path(), "x");
        // The section's entry in the section table: its name, then its
        // VirtualSize.
        let table = bytes.windows(8).position(|w| w == b".osrel\0\0").unwrap();
        bytes[table + 8..table + 12].copy_from_slice(&0xffff_f000u32.to_le_bytes());
        assert_eq!(
            predict_pcr11(&bytes).unwrap_err(),
            MeasureError::Oversized(".osrel".into())
        );
    }

    #[test]
    fn only_known_stubs_are_predicted() {
        let d = tempfile::tempdir().unwrap();
        let (mut bytes, _) = uki(d.path(), "x");
        let at = bytes
            .windows(17)
            .position(|w| w == b"systemd-stub 252.")
            .unwrap();
        bytes[at + 13..at + 16].copy_from_slice(b"999");
        let e = predict_pcr11(&bytes).unwrap_err();
        assert!(
            matches!(e, MeasureError::UnknownStub(ref v) if v.starts_with("999.")),
            "{e}"
        );
        let kernel = std::fs::read(d.path().join("vmlinuz")).unwrap();
        assert!(predict_pcr11(&kernel).is_err());
    }
}
