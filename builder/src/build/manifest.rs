//! Step 6: `manifest.json`, the record of what the build read and wrote.

use super::{io, BuildError, Job};
use crate::image::VmEntry;
use crate::kernel::{Kernel, KernelOrigin};
use crate::manifest::{Artifact, Input, KernelInfo, Manifest, ManifestVm, Payload};
use std::path::Path;

/// What the earlier steps gathered for the manifest.
pub(super) struct Record {
    /// The output's files, in order (from the outputs step).
    pub files: Vec<String>,
    pub cmdline: String,
    /// Module names (from the modules step).
    pub modules: Vec<String>,
    /// From the payloads step.
    pub payloads: Vec<Payload>,
    /// Every input, in the order the steps read them.
    pub inputs: Vec<Input>,
    pub vms: Vec<ManifestVm>,
    /// From the outputs step: `kiln.efi`'s signer and PCR 11.
    pub uki: Option<crate::manifest::UkiInfo>,
    /// Artifacts whose SHA-256 and size are known already (the initramfs).
    pub known: Vec<(String, (String, u64))>,
}

/// The VMs as the manifest lists them: `kiln test` reads each VM's
/// `[test]` table from there.
pub(super) fn vms(vms: &[VmEntry]) -> Vec<ManifestVm> {
    vms.iter()
        .map(|entry| ManifestVm {
            name: entry.config.name.to_string(),
            test: entry.config.test.clone(),
        })
        .collect()
}

/// Hashes every artifact in `dir` and writes `dir/manifest.json`.
pub(super) fn write(
    job: &Job,
    kernel: &Kernel,
    record: Record,
    dir: &Path,
) -> Result<Manifest, BuildError> {
    let cfg = &job.image.config;
    let mut artifacts = Vec::new();
    for file in record.files {
        // vmlinuz is a byte copy of the kernel, which was hashed already.
        let path = match file.as_str() {
            "vmlinuz" => kernel.vmlinuz.clone(),
            _ => dir.join(&file),
        };
        let known = record.known.iter().find(|(f, _)| *f == file);
        let (sha256, size) = match known {
            Some((_, hashed)) => hashed.clone(),
            None => job.hashes.of(&path)?,
        };
        artifacts.push(Artifact { file, size, sha256 });
    }
    let manifest = Manifest {
        name: cfg.name.clone(),
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        source_date_epoch: job.epoch,
        kernel: kernel_info(kernel, &cfg.kernel.source),
        cmdline: record.cmdline,
        compression: cfg.initramfs.compression.to_string(),
        artifacts,
        modules: record.modules,
        payloads: record.payloads,
        inputs: record.inputs,
        target: Some(cfg.target.clone()),
        vms: record.vms,
        uki: record.uki,
    };
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| BuildError::Io {
        what: "serialise the manifest".into(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(dir.join("manifest.json"), json + "\n").map_err(io("write manifest.json"))?;
    Ok(manifest)
}

fn kernel_info(kernel: &Kernel, source: &str) -> KernelInfo {
    KernelInfo {
        release: kernel.release.clone(),
        source: source.to_string(),
        package: match &kernel.origin {
            KernelOrigin::Debian { package, .. } => Some(package.clone()),
            _ => None,
        },
        version: match &kernel.origin {
            KernelOrigin::Debian { version, .. } => Some(version.clone()),
            _ => None,
        },
        packages: match &kernel.origin {
            KernelOrigin::Debian { packages, .. } => packages.clone(),
            _ => Vec::new(),
        },
        apt_sources: match &kernel.origin {
            KernelOrigin::Debian { apt_sources, .. } => apt_sources.clone(),
            _ => Vec::new(),
        },
    }
}
