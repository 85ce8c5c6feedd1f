//! `kiln build`: from an image config to an output directory holding
//! `vmlinuz`, `initramfs.cpio.<ext>`, `cmdline` and `manifest.json`, and
//! the bootable formats asked for: `kiln.efi` (format `uki`) and `disk.img`
//! (format `disk`, which boots that UKI, so it writes `kiln.efi` too).
//!
//! [`build`] runs the steps in order, each in its own module:
//! [`kernel`] (resolve it), [`modules`] and [`payloads`] (stage the module
//! closure, the runtime and the guests into the initramfs tree),
//! [`initramfs`] (the appliance config, then the compressed archive),
//! [`outputs`] (kernel, cmdline, UKI, disk) and [`manifest`]. [`inputs`]
//! records what the build read; [`staging`] is the initramfs tree.
//!
//! The output is built in a temporary directory beside the destination and
//! renamed into place, so a failed or interrupted build leaves the previous
//! output intact. The compressed initramfs is cached by the hash of
//! everything that goes into it, so an unchanged rebuild only hashes inputs.

mod initramfs;
mod inputs;
mod kernel;
mod manifest;
mod modules;
mod outputs;
mod payloads;
mod staging;

use crate::image::Image;
use inputs::FileHashes;
use kiln_runtime::config::ConfigError;
use staging::Staging;
use std::path::{Path, PathBuf};

/// mtime of every archive entry when SOURCE_DATE_EPOCH is unset.
pub const DEFAULT_EPOCH: u64 = 0;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error(transparent)]
    Payload(#[from] crate::payload::PayloadError),
    #[error(transparent)]
    Cpio(#[from] crate::cpio::CpioError),
    #[error(transparent)]
    Compress(#[from] crate::compress::CompressError),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error("SOURCE_DATE_EPOCH is \"{0}\"; expected a whole number of seconds since 1970 (e.g. from `git log -1 --format=%ct`)")]
    Epoch(String),
    #[error("Cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// What a build produced.
#[derive(Debug)]
pub struct Built {
    pub out_dir: PathBuf,
    pub manifest: crate::manifest::Manifest,
    /// The initramfs came from the cache.
    pub cached: bool,
}

pub fn source_date_epoch() -> Result<u64, BuildError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| BuildError::Epoch(v)),
        _ => Ok(DEFAULT_EPOCH),
    }
}

/// What every step reads: the image, the archive timestamp, and the hashes
/// of the files read so far.
struct Job<'a> {
    image: &'a Image,
    epoch: u64,
    hashes: FileHashes,
}

/// Builds `image` into `out`.
pub fn build(image: &Image, out: &Path) -> Result<Built, BuildError> {
    let job = Job {
        image,
        epoch: source_date_epoch()?,
        hashes: FileHashes::default(),
    };
    let (kernel, kernel_inputs) = kernel::resolve(&job)?;
    let mut inputs = vec![inputs::file("image", &image.file, &image.dir)?];
    inputs.extend(kernel_inputs);
    // Found first, so a missing stub stops the build before the long work.
    let uki_stub = outputs::find_uki_stub(&job, &mut inputs)?;

    let mut staging = Staging::default();
    let modules = modules::stage(&job, &kernel, &mut staging)?;
    let guests = payloads::stage(&job, &kernel, &mut staging, &mut inputs)?;
    let vms = manifest::vms(&guests.vms);
    initramfs::stage_appliance_config(&job, &kernel, modules.config, guests.vms, &mut staging)?;

    // Build in a temporary directory beside the destination, then swap it in.
    let tmp = crate::atomic::temp_dir_beside(out).map_err(io(format!(
        "create a temporary directory beside {}",
        out.display()
    )))?;
    let initramfs = initramfs::write(&job, staging, tmp.path())?;
    let written = outputs::write(&job, &kernel, &initramfs, uki_stub.as_deref(), tmp.path())?;
    let manifest = manifest::write(
        &job,
        &kernel,
        manifest::Record {
            files: written.files,
            cmdline: written.cmdline,
            modules: modules.names,
            payloads: guests.payloads,
            inputs,
            vms,
        },
        tmp.path(),
    )?;
    outputs::replace_dir(tmp.keep(), out)?;
    Ok(Built {
        out_dir: out.to_path_buf(),
        manifest,
        cached: initramfs.cached,
    })
}
