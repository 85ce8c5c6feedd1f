//! Step 4: the appliance config staged as `/etc/kiln/appliance.toml`, then
//! the staged tree written as the compressed initramfs, or taken from the
//! cache when everything in it is unchanged.

use super::inputs;
use super::staging::Staging;
use super::{io, BuildError, Job};
use crate::compress::{Compression, Encoder};
use crate::cpio::Archive;
use crate::kernel::{self, Kernel};
use crate::progress::{self, CountingWriter, Task};
use kiln_schema::config::{ApplianceConfig, ModulesConfig, VmConfig};
use sha2::{Digest, Sha256};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The initramfs in the output directory.
pub(super) struct Initramfs {
    /// `initramfs.cpio.<ext>`.
    pub name: String,
    pub path: PathBuf,
    /// It came from the cache.
    pub cached: bool,
    /// Its SHA-256 and size, known without reading it again: from the
    /// cached copy's remembered hash, or hashed as it was written.
    pub sha256: (String, u64),
}

/// Stages the config PID 1 reads: the modules to load and the VMs, every
/// path pointing inside the image.
pub(super) fn stage_appliance_config(
    job: &Job,
    kernel: &Kernel,
    modules: ModulesConfig,
    vms: Vec<VmConfig>,
    staging: &mut Staging,
) -> Result<(), BuildError> {
    let image = job.image;
    let cfg = &image.config;
    let appliance = ApplianceConfig {
        name: cfg.name.clone(),
        kernel_release: kernel.release.clone(),
        on_done: cfg.appliance.on_done,
        modules,
        vms,
    };
    let text = format!(
        "# Written by kiln {} from {}; every path points inside this image.\n{}",
        env!("CARGO_PKG_VERSION"),
        inputs::relative(&image.file, &image.dir),
        toml::to_string(&appliance).map_err(
            |e| image.error_at("", format!("cannot serialise the appliance config: {e}"))
        )?
    );
    staging.bytes(
        kiln_schema::config::APPLIANCE_PATH.trim_start_matches('/'),
        text.into_bytes(),
        0o644,
    );
    Ok(())
}

/// Writes the staged tree as the compressed initramfs into `dir`, reusing
/// the cached archive of the same contents when there is one.
pub(super) fn write(job: &Job, staging: Staging, dir: &Path) -> Result<Initramfs, BuildError> {
    let cfg = &job.image.config;
    let compression = cfg.initramfs.compression;
    let epoch = job.epoch;
    let name = match compression.extension() {
        "" => "initramfs.cpio".to_string(),
        ext => format!("initramfs.cpio.{ext}"),
    };
    let key = staging.digest(
        &format!(
            "kiln {} epoch {epoch} compression {compression} level {:?}",
            env!("CARGO_PKG_VERSION"),
            cfg.initramfs.level
        ),
        &job.hashes,
    )?;
    let cache_file = kernel::cache_dir()?
        .join("initramfs")
        .join(format!("{key}-{name}"));
    let path = dir.join(&name);
    // std::fs::copy clones the file where the filesystem can (btrfs, XFS).
    let cached = cache_file.is_file() && std::fs::copy(&cache_file, &path).is_ok();
    let sha256 = if cached {
        progress::note(format!(
            "initramfs unchanged, reused {}",
            cache_file.display()
        ));
        job.hashes.of(&cache_file)?
    } else {
        let ar = staging.into_archive(true);
        let written = write_archive(&ar, &path, compression, cfg.initramfs.level, epoch)?;
        store_in_cache(&path, &cache_file);
        written
    };
    Ok(Initramfs {
        name,
        path,
        cached,
        sha256,
    })
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len = self.len.saturating_add(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `ar` compressed to `path`, returning its SHA-256 and size.
fn write_archive(
    ar: &Archive,
    path: &Path,
    c: Compression,
    level: Option<i32>,
    epoch: u64,
) -> Result<(String, u64), BuildError> {
    let file = std::fs::File::create(path).map_err(io(format!("create {}", path.display())))?;
    let task = Task::bytes(format!("compressing ({c})"), None);
    let counted = CountingWriter {
        inner: HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            len: 0,
        },
        task: &task,
    };
    let mut enc = Encoder::new(c, level, counted).map_err(io("start the compressor"))?;
    // cpio newc stores 32-bit mtimes; later dates clamp (far beyond any build).
    let mtime = u32::try_from(epoch).unwrap_or(u32::MAX);
    ar.write(&mut enc, mtime)?;
    let mut out = enc.finish().map_err(io("finish compressing"))?;
    out.flush()
        .map_err(io(format!("write {}", path.display())))?;
    let hashed = out.inner;
    let size = hashed.len;
    task.finish(progress::human_bytes(size));
    Ok((crate::manifest::hex(&hashed.hasher.finalize()), size))
}

/// Best effort: a cache that cannot be written only costs time next build.
fn store_in_cache(file: &Path, cache_file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(mut tmp) = crate::atomic::temp_file_beside(cache_file) else {
        return;
    };
    let copied = std::fs::File::open(file)
        .and_then(|mut f| std::io::copy(&mut f, tmp.as_file_mut()))
        .and_then(|_| {
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
        });
    if copied.is_ok() {
        let _ = tmp.persist(cache_file);
    }
}
