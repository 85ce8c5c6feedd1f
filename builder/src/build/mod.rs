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
//! The output is built in a work directory beside the destination and
//! swapped into place atomically ([`destination`]), so a failed or
//! interrupted build leaves the previous output intact; a directory kiln did
//! not write is never replaced unless forced. The compressed initramfs is
//! cached by the hash of everything that goes into it, and the hashes of
//! unchanged input files are remembered by their stamps
//! ([`crate::hashes`]), so an unchanged rebuild reads no large file (apt and
//! cargo are skipped too: [`crate::kernel::resolved`], [`crate::cargo_fresh`]).

pub(crate) mod bootcheck;
mod destination;
mod initramfs;
mod inputs;
mod kernel;
mod manifest;
mod modules;
mod outputs;
mod payloads;
mod staging;

use crate::hashes::HashCache;
use crate::image::Image;
use destination::Destination;
pub use destination::{DestinationError, Replace};
use inputs::FileHashes;
use kiln_schema::config::ConfigError;
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
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error("Cannot take the uncompressed kernel out of {}; leave `boot.pvh` out of the VM's [boot] to boot the bzImage as it is", path.display())]
    Vmlinux {
        path: PathBuf,
        #[source]
        source: crate::kernel::vmlinux::VmlinuxError,
    },
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

/// Test hook: with `KILN_TEST_KILL_AT=<point>` in the environment, kiln
/// kills itself with SIGKILL at that point of a build (as `kill -9` or a
/// power cut would), so tests can show that no interrupt loses the previous
/// output. Points: `prepared`, each step's name once it is done (`kernel`,
/// `modules`, `payloads`, `initramfs`, `outputs`, `manifest`), `aside`
/// (fallback swap only) and `exchanged`.
fn kill_point(point: &str) {
    if std::env::var_os("KILN_TEST_KILL_AT").is_some_and(|v| v == point) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Builds `image` into `out`, replacing `out` only if it is a kiln output.
pub fn build(image: &Image, out: &Path) -> Result<Built, BuildError> {
    build_with(image, out, Replace::KilnOutput)
}

/// Builds `image` into `out`, replacing what `replace` allows there.
pub fn build_with(image: &Image, out: &Path, replace: Replace) -> Result<Built, BuildError> {
    // First, so a refused output path fails before the long work.
    let dest = Destination::prepare(out, &image.dir, replace)?;
    let hashes = match crate::kernel::cache_dir() {
        Ok(dir) => HashCache::open(&dir),
        Err(_) => HashCache::in_memory(),
    };
    let job = Job {
        image,
        epoch: source_date_epoch()?,
        hashes: FileHashes::new(hashes),
    };
    let (kernel, kernel_inputs) = kernel::resolve(&job)?;
    kill_point("kernel");
    let mut inputs = vec![inputs::file("image", &image.file, &image.dir)?];
    inputs.extend(kernel_inputs);
    // Found first, so a missing stub stops the build before the long work.
    let uki_stub = outputs::find_uki_stub(&job, &mut inputs)?;

    let mut staging = Staging::default();
    let modules = modules::stage(&job, &kernel, &mut staging)?;
    kill_point("modules");
    let guests = payloads::stage(&job, &kernel, &mut staging, &mut inputs)?;
    kill_point("payloads");
    initramfs::stage_appliance_config(&job, &kernel, modules.config, guests.vms, &mut staging)?;

    let dir = dest.dir();
    let initramfs = initramfs::write(&job, staging, &dir)?;
    kill_point("initramfs");
    let written = outputs::write(&job, &kernel, &initramfs, uki_stub.as_deref(), &dir)?;
    kill_point("outputs");
    let manifest = manifest::write(
        &job,
        &kernel,
        manifest::Record {
            files: written.files,
            cmdline: written.cmdline,
            modules: modules.names,
            payloads: guests.payloads,
            inputs,
            vms: manifest::vms(&image.vms),
            uki: written.uki,
            known: vec![(initramfs.name.clone(), initramfs.sha256.clone())],
        },
        &dir,
    )?;
    kill_point("manifest");
    job.hashes.save();
    dest.commit()?;
    Ok(Built {
        out_dir: out.to_path_buf(),
        manifest,
        cached: initramfs.cached,
    })
}
