//! Step 5: the files of the output directory beside the initramfs: the
//! kernel, the command line and the bootable formats asked for (`kiln.efi`,
//! `disk.img`).

use super::initramfs::Initramfs;
use super::{inputs, io, BuildError, Job};
use crate::image::Format;
use crate::kernel::Kernel;
use crate::manifest::Input;
use crate::output;
use crate::progress::{self, Task};
use std::path::{Path, PathBuf};

/// What the outputs step wrote.
pub(super) struct Written {
    /// Every artifact's file name, in manifest order.
    pub files: Vec<String>,
    /// The kernel command line, as written to `cmdline`.
    pub cmdline: String,
    /// `kiln.efi`'s signer and predicted PCR 11, when there is one.
    pub uki: Option<crate::manifest::UkiInfo>,
}

/// The systemd-boot stub when a format needs it: a disk image boots the
/// UKI, so `disk` builds `kiln.efi` too.
pub(super) fn find_uki_stub(
    job: &Job,
    inputs: &mut Vec<Input>,
) -> Result<Option<PathBuf>, BuildError> {
    let formats = &job.image.config.output.formats;
    if !(formats.contains(&Format::Uki) || formats.contains(&Format::Disk)) {
        return Ok(None);
    }
    let (stub, stub_name) = output::stub()?;
    inputs.push(inputs::hashed(&job.hashes, "uki-stub", &stub_name, &stub)?);
    if let Some(signing) = job.image.signing() {
        inputs.push(inputs::file("signing-cert", &signing.cert, &job.image.dir)?);
    }
    Ok(Some(stub))
}

/// Writes `vmlinuz`, `cmdline` and, with `uki_stub`, `kiln.efi` (and
/// `disk.img` for format `disk`) into `dir`, beside `initramfs`.
pub(super) fn write(
    job: &Job,
    kernel: &Kernel,
    initramfs: &Initramfs,
    uki_stub: Option<&Path>,
    dir: &Path,
) -> Result<Written, BuildError> {
    let cfg = &job.image.config;
    std::fs::copy(&kernel.vmlinuz, dir.join("vmlinuz"))
        .map_err(io(format!("copy {}", kernel.vmlinuz.display())))?;
    let cmdline = cfg.kernel.cmdline.trim().to_string();
    std::fs::write(dir.join("cmdline"), format!("{cmdline}\n")).map_err(io("write cmdline"))?;

    let mut files = vec![
        "vmlinuz".to_string(),
        initramfs.name.clone(),
        "cmdline".to_string(),
    ];
    let mut uki = None;
    if let Some(stub) = uki_stub {
        let task = Task::step("building kiln.efi");
        let efi = dir.join("kiln.efi");
        output::build_uki(
            stub,
            &dir.join("vmlinuz"),
            &initramfs.path,
            &cmdline,
            &output::os_release(&cfg.name),
            &efi,
        )?;
        // Signed (with [output.signing]) before the disk is made of it.
        uki = Some(output::seal_uki(
            &efi,
            job.image.signing().as_ref(),
            job.epoch,
        )?);
        task.finish(file_size(&efi));
        files.push("kiln.efi".to_string());
        if dir.join(output::PCRS_FILE).is_file() {
            files.push(output::PCRS_FILE.to_string());
        }
        if cfg.output.formats.contains(&Format::Disk) {
            let task = Task::step("building disk.img");
            let disk = dir.join("disk.img");
            output::build_disk(&efi, job.epoch, &disk)?;
            task.finish(file_size(&disk));
            files.push("disk.img".to_string());
        }
    }
    Ok(Written {
        files,
        cmdline,
        uki,
    })
}

fn file_size(path: &Path) -> String {
    std::fs::metadata(path)
        .map(|m| progress::human_bytes(m.len()))
        .unwrap_or_default()
}
