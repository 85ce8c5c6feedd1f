//! `manifest.json`: what an image is made of, so a build can be audited,
//! compared and reproduced.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub kiln_version: String,
    pub source_date_epoch: u64,
    pub kernel: KernelInfo,
    pub cmdline: String,
    pub compression: String,
    /// Every file of the output directory but the manifest itself.
    pub artifacts: Vec<Artifact>,
    /// Modules in the initramfs, in load order.
    pub modules: Vec<String>,
    /// Guest files in the initramfs.
    pub payloads: Vec<Payload>,
    /// What the build read, with hashes: a different hash means a different build.
    pub inputs: Vec<Input>,
    /// The machine `kiln run`/`kiln test` boot this image on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<crate::image::TargetSection>,
    /// The appliance's VMs and what `kiln test` expects of each, so a built
    /// directory can be judged without the configs it was built from.
    /// Absent from manifests written before `kiln test` existed.
    #[serde(default)]
    pub vms: Vec<ManifestVm>,
    /// What firmware and the TPM see of `kiln.efi`; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uki: Option<UkiInfo>,
}

/// `kiln.efi` under Secure Boot and measured boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UkiInfo {
    /// Who signed it (`[output.signing]`); absent: it is not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<crate::secureboot::sign::Signer>,
    /// PCR 11 (sha256 bank, lowercase hex) once systemd-stub has measured
    /// it, as in `kiln.pcrs.json`; absent for a stub kiln cannot predict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr11: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestVm {
    pub name: String,
    #[serde(default)]
    pub test: kiln_schema::config::TestExpectations,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub release: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// For `debian:`: every package of the kernel (a split kernel has
    /// several), with the SHA-256 of its .deb.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<crate::kernel::DebPackage>,
    /// The `[kernel.apt]` sources the packages came from; absent: the
    /// build host's apt sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apt_sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub vm: String,
    /// Its path inside the initramfs.
    pub path: String,
    pub source: String,
    pub size: u64,
    pub sha256: String,
    /// For a guest kernel, the entry the VMM boots it through: `pvh` (an ELF
    /// with a PVH note, such as the vmlinux kiln takes out of a `debian:`
    /// bzImage) or `bzimage` (the 64-bit boot protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Why a `debian:` guest kernel with `boot.pvh` still boots as a
    /// bzImage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub kind: String,
    /// A path relative to the image file, a package name, or a source string.
    pub name: String,
    pub sha256: String,
}

/// SHA-256 of a file, streamed, as lowercase hex, and its size.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    sha256_read(&mut std::fs::File::open(path)?)
}

/// SHA-256 of everything `r` yields, streamed, as lowercase hex, and how
/// many bytes that was.
pub fn sha256_read(r: &mut impl Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size = size.saturating_add(n as u64);
        h.update(&buf[..n]);
    }
    Ok((hex(&h.finalize()), size))
}

pub fn sha256_bytes(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
