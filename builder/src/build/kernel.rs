//! Step 1: the image's kernel, from Debian, the host or a path, checked
//! against the initramfs compression it must unpack.

use super::{bootcheck, inputs, BuildError, Job};
use crate::compress;
use crate::image::Image;
use crate::kernel::{self, Kernel, KernelError, KernelSource};
use crate::manifest::Input;

/// Resolves the kernel `[kernel]` asks for, with what it was read from
/// (packages or files, and the apt keyring that verified them).
pub(super) fn resolve(job: &Job) -> Result<(Kernel, Vec<Input>), BuildError> {
    let image = job.image;
    let cfg = &image.config;
    let source = KernelSource::parse(
        &cfg.kernel.source,
        cfg.kernel.modules_dir.as_ref().map(|p| image.dir.join(p)),
        cfg.kernel.config.as_ref().map(|p| image.dir.join(p)),
    )
    .map_err(|e| image.error_at("kernel.source", e.to_string()))?;
    let apt = image.apt_repo();
    let kernel = kernel::resolve_with(&source, apt.as_ref())
        .map_err(|e| locate_package(image, &source, e))?;
    let bootable = bootcheck::check_kernel(&kernel.vmlinuz, false)
        .map_err(|m| image.error_at("kernel.source", m))?;
    bootcheck::check_cmdline(cfg.kernel.cmdline.trim(), bootable)
        .map_err(|m| image.error_at("kernel.cmdline", m))?;
    if let Some(kc) = &kernel.config {
        compress::check_kernel_support(cfg.initramfs.compression, |sym| kc.is_enabled(sym))
            .map_err(|e| image.error_at("initramfs.compression", e.to_string()))?;
    }
    let mut read = inputs::kernel(&kernel);
    if let Some(keyring) = apt.as_ref().and_then(|a| a.keyring.as_ref()) {
        read.push(inputs::file("apt-keyring", keyring, &image.dir)?);
    }
    Ok((kernel, read))
}

/// A `debian:` package apt does not know, or a path that is no bzImage, is
/// the image's mistake: located at `kernel.source`. Other failures (apt
/// missing, a download) stay as they are.
fn locate_package(image: &Image, source: &KernelSource, e: KernelError) -> BuildError {
    match (source, &e) {
        (
            KernelSource::Debian(_),
            KernelError::PackageNotFound { .. } | KernelError::NotInSources { .. },
        )
        | (KernelSource::Path { .. }, KernelError::NotABzImage { .. }) => {
            image.error_at("kernel.source", e.to_string()).into()
        }
        _ => e.into(),
    }
}
