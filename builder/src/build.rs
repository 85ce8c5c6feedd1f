//! `kiln build`: from an image config to an output directory holding
//! `vmlinuz`, `initramfs.cpio.<ext>`, `cmdline` and `manifest.json`, and
//! the bootable formats asked for: `kiln.efi` (format `uki`) and `disk.img`
//! (format `disk`, which boots that UKI, so it writes `kiln.efi` too).
//!
//! The output is built in a temporary directory beside the destination and
//! renamed into place, so a failed or interrupted build leaves the previous
//! output intact. The compressed initramfs is cached by the hash of
//! everything that goes into it, so an unchanged rebuild only hashes inputs.

use crate::compress::{self, Compression, Encoder};
use crate::cpio::Archive;
use crate::image::{Format, Image};
use crate::kernel::{self, Kernel, KernelOrigin, KernelSource};
use crate::manifest::{self, Artifact, Input, KernelInfo, Manifest, ManifestVm, Payload};
use crate::output;
use crate::payload;
use crate::progress::{self, CountingWriter, Task};
use kiln_schema::config::{ApplianceConfig, BootInput, ConfigError, InitrdBuild, KeyPath, Source};
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// mtime of every archive entry when SOURCE_DATE_EPOCH is unset.
pub const DEFAULT_EPOCH: u64 = 0;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Payload(#[from] payload::PayloadError),
    #[error(transparent)]
    Cpio(#[from] crate::cpio::CpioError),
    #[error(transparent)]
    Compress(#[from] compress::CompressError),
    #[error(transparent)]
    Output(#[from] output::OutputError),
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
    pub manifest: Manifest,
    /// The initramfs came from the cache.
    pub cached: bool,
}

pub fn source_date_epoch() -> Result<u64, BuildError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| BuildError::Epoch(v)),
        _ => Ok(DEFAULT_EPOCH),
    }
}

/// SHA-256 and size of files, each read once per build: the runtime and
/// every payload are both a manifest record and part of the archive's cache
/// key, and a `debian:` guest kernel is also the image's own kernel.
#[derive(Default)]
struct FileHashes(std::cell::RefCell<std::collections::HashMap<PathBuf, (String, u64)>>);

impl FileHashes {
    fn of(&self, path: &Path) -> Result<(String, u64), BuildError> {
        if let Some(known) = self.0.borrow().get(path) {
            return Ok(known.clone());
        }
        let hashed = manifest::sha256_file(path).map_err(io(format!("read {}", path.display())))?;
        self.0
            .borrow_mut()
            .insert(path.to_path_buf(), hashed.clone());
        Ok(hashed)
    }
}

/// A file of the initramfs before it is written.
enum Content {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// The initramfs tree being assembled; directories are implied by the paths.
#[derive(Default)]
struct Staging {
    files: BTreeMap<String, (Content, u32)>,
}

impl Staging {
    fn file(&mut self, dest: impl Into<String>, src: &Path, mode: u32) {
        self.files
            .insert(dest.into(), (Content::File(src.to_path_buf()), mode));
    }

    fn bytes(&mut self, dest: impl Into<String>, data: Vec<u8>, mode: u32) {
        self.files.insert(dest.into(), (Content::Bytes(data), mode));
    }

    /// A hash of every path, mode and content: the cache key of the archive.
    fn digest(&self, extra: &str, hashes: &FileHashes) -> Result<String, BuildError> {
        let mut listing = String::from(extra);
        for (dest, (content, mode)) in &self.files {
            let hash = match content {
                Content::File(p) => hashes.of(p)?.0,
                Content::Bytes(b) => manifest::sha256_bytes(b),
            };
            listing.push_str(&format!("\n{dest} {mode:o} {hash}"));
        }
        Ok(manifest::sha256_bytes(listing.as_bytes()))
    }

    fn into_archive(self, host_layout: bool) -> Archive {
        let mut ar = Archive::new();
        if host_layout {
            for dir in [
                "proc",
                "sys",
                "dev",
                "run",
                "etc/kiln",
                "lib/modules",
                "guests",
            ] {
                ar.add_dir(dir, 0o755);
            }
            ar.add_dir("tmp", 0o1777);
        }
        ar.add_char_device("dev/console", 0o600, 5, 1);
        for (dest, (content, mode)) in self.files {
            match content {
                Content::File(p) => ar.add_file(&dest, &p, mode),
                Content::Bytes(b) => ar.add_bytes(&dest, b, mode),
            }
        }
        ar
    }
}

/// Writes `ar` compressed to `path`, returning its size.
fn write_archive(
    ar: &Archive,
    path: &Path,
    c: Compression,
    level: Option<i32>,
    epoch: u64,
) -> Result<u64, BuildError> {
    let file = std::fs::File::create(path).map_err(io(format!("create {}", path.display())))?;
    let task = Task::bytes(format!("compressing ({c})"), None);
    let counted = CountingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        task: &task,
    };
    let mut enc = Encoder::new(c, level, counted).map_err(io("start the compressor"))?;
    // cpio newc stores 32-bit mtimes; later dates clamp (far beyond any build).
    let mtime = u32::try_from(epoch).unwrap_or(u32::MAX);
    ar.write(&mut enc, mtime)?;
    let mut out = enc.finish().map_err(io("finish compressing"))?;
    out.flush()
        .map_err(io(format!("write {}", path.display())))?;
    let size = std::fs::metadata(path)
        .map_err(io(format!("stat {}", path.display())))?
        .len();
    task.finish(progress::human_bytes(size));
    Ok(size)
}

/// Builds `image` into `out`.
pub fn build(image: &Image, out: &Path) -> Result<Built, BuildError> {
    let cfg = &image.config;
    let epoch = source_date_epoch()?;
    let compression = cfg.initramfs.compression;

    let source = KernelSource::parse(
        &cfg.kernel.source,
        cfg.kernel.modules_dir.as_ref().map(|p| image.dir.join(p)),
        cfg.kernel.config.as_ref().map(|p| image.dir.join(p)),
    )
    .map_err(|e| image.error_at("kernel.source", e.to_string()))?;
    let apt = image.apt_repo();
    let kernel = kernel::resolve_with(&source, apt.as_ref())?;
    if let Some(kc) = &kernel.config {
        compress::check_kernel_support(compression, |sym| kc.is_enabled(sym))
            .map_err(|e| image.error_at("initramfs.compression", e.to_string()))?;
    }

    let mut staging = Staging::default();
    let hashes = FileHashes::default();
    let mut inputs = vec![input_file("image", &image.file, &image.dir)?];
    inputs.extend(kernel_inputs(&kernel));
    if let Some(keyring) = apt.as_ref().and_then(|a| a.keyring.as_ref()) {
        inputs.push(input_file("apt-keyring", keyring, &image.dir)?);
    }

    // A disk image boots the UKI, so `disk` builds `kiln.efi` too. The stub
    // is found first, so a missing one stops the build before the long work.
    let formats = &cfg.output.formats;
    let uki_stub = if formats.contains(&Format::Uki) || formats.contains(&Format::Disk) {
        let (stub, stub_name) = output::stub()?;
        inputs.push(input_hash(&hashes, "uki-stub", &stub_name, &stub)?);
        Some(stub)
    } else {
        None
    };

    // Modules: the closure of what the appliance loads, with a matching modules.dep.
    let mut modules = image.modules();
    let mut module_names = Vec::new();
    if !modules.load.is_empty() {
        let tree = kernel::module_tree(&kernel)?;
        modules = image.modules_for(&tree.index);
        let index = &tree.index;
        let names: Vec<&str> = modules.load.iter().map(String::as_str).collect();
        let locate = |e: &dyn std::fmt::Display, pos: Option<usize>| {
            let key = match (cfg.modules.is_some(), pos) {
                (true, Some(i)) => format!("modules.load[{i}]"),
                _ => "modules.load".to_string(),
            };
            image.error_at(&key, e.to_string())
        };
        let closure = index.closure(&names).map_err(|e| {
            let pos = modules
                .load
                .iter()
                .position(|m| e.to_string().contains(&format!("\"{m}\"")));
            locate(&e, pos)
        })?;
        tree.check(&names, &closure).map_err(|e| {
            let pos = match &e {
                kernel::KernelError::MissingDependency { chain, .. } => {
                    modules.load.iter().position(|m| chain.first() == Some(m))
                }
                _ => None,
            };
            locate(&e, pos)
        })?;
        let moddir = kernel.modules_dir.clone().ok_or_else(|| {
            image.error_at(
                "kernel.modules_dir",
                "modules are requested but this kernel has no modules directory",
            )
        })?;
        let base = format!("lib/modules/{}", kernel.release);
        let mut closure = closure;
        for m in &mut closure {
            let src = moddir.join(&m.path);
            // finit_module() takes a compressed module only on kernels built
            // with in-kernel decompression: store every module plain.
            match [".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .find(|ext| m.path.ends_with(*ext))
            {
                Some(ext) => {
                    let plain = format!("{}.ko", &m.path[..m.path.len() - ext.len()]);
                    staging.bytes(format!("{base}/{plain}"), decompress_file(&src)?, 0o644);
                    m.path = plain;
                }
                None => staging.file(format!("{base}/{}", m.path), &src, 0o644),
            }
            module_names.push(m.name.clone());
        }
        staging.bytes(
            format!("{base}/modules.dep"),
            index.to_modules_dep(&closure).into_bytes(),
            0o644,
        );
    }

    // The runtime as /init.
    let runtime = payload::runtime_binary(
        cfg.runtime
            .binary
            .as_ref()
            .map(|p| image.dir.join(p))
            .as_deref(),
        &image.dir,
    )?;
    inputs.push(input_hash(&hashes, "runtime", "kiln-runtime", &runtime)?);
    staging.file("init", &runtime, 0o755);

    // Guests, each under /guests/<vm>/: the appliance config gets each VM's
    // run form, naming those places.
    let mut vms = Vec::new();
    let mut payloads = Vec::new();
    for entry in &image.vms {
        if entry.file != image.file {
            inputs.push(input_file("vm-config", &entry.file, &image.dir)?);
        }
        let spec = &entry.config;
        let name = spec.name.as_str();
        let at = entry.at.clone().key("boot");
        let vm = spec.resolve(|input| -> Result<PathBuf, BuildError> {
            let key = at.clone().key(input.key());
            let dest = format!("guests/{name}/{}", input.key());
            match input {
                BootInput::Kernel(s) | BootInput::Initrd(s) => {
                    let p = resolve_source(s, entry, &key, &kernel)?;
                    payloads.push(payload_record(
                        &hashes,
                        name,
                        &dest,
                        &s.to_string(),
                        Some(&p),
                        None,
                    )?);
                    staging.file(&dest, &p, 0o644);
                }
                BootInput::BuiltInitrd(b) => {
                    let bytes = guest_initrd(b, entry, &key, &kernel, epoch)?;
                    payloads.push(payload_record(
                        &hashes,
                        name,
                        &dest,
                        &format!("initramfs of {}", b.init),
                        None,
                        Some(&bytes),
                    )?);
                    staging.bytes(&dest, bytes, 0o644);
                }
            }
            Ok(PathBuf::from(format!("/{dest}")))
        })?;
        vms.push(vm);
    }

    // `kiln test` reads each VM's [test] table from the manifest.
    let manifest_vms = image
        .vms
        .iter()
        .map(|entry| ManifestVm {
            name: entry.config.name.to_string(),
            test: entry.config.test.clone(),
        })
        .collect();
    let appliance = ApplianceConfig {
        name: cfg.name.clone(),
        kernel_release: kernel.release.clone(),
        on_done: cfg.appliance.on_done,
        modules: modules.clone(),
        vms,
    };
    let text = format!(
        "# Written by kiln {} from {}; every path points inside this image.\n{}",
        env!("CARGO_PKG_VERSION"),
        relative(&image.file, &image.dir),
        toml::to_string(&appliance).map_err(
            |e| image.error_at("", format!("cannot serialise the appliance config: {e}"))
        )?
    );
    staging.bytes(
        kiln_schema::config::APPLIANCE_PATH.trim_start_matches('/'),
        text.into_bytes(),
        0o644,
    );

    // Build in a temporary directory beside the destination, then swap it in.
    let tmp = crate::atomic::temp_dir_beside(out).map_err(io(format!(
        "create a temporary directory beside {}",
        out.display()
    )))?;

    let initramfs_name = match compression.extension() {
        "" => "initramfs.cpio".to_string(),
        ext => format!("initramfs.cpio.{ext}"),
    };
    let key = staging.digest(
        &format!(
            "kiln {} epoch {epoch} compression {compression} level {:?}",
            env!("CARGO_PKG_VERSION"),
            cfg.initramfs.level
        ),
        &hashes,
    )?;
    let cache_file = kernel::cache_dir()?
        .join("initramfs")
        .join(format!("{key}-{initramfs_name}"));
    let initramfs = tmp.path().join(&initramfs_name);
    let cached = cache_file.is_file() && std::fs::copy(&cache_file, &initramfs).is_ok();
    if cached {
        progress::note(format!(
            "initramfs unchanged, reused {}",
            cache_file.display()
        ));
    } else {
        let ar = staging.into_archive(true);
        write_archive(&ar, &initramfs, compression, cfg.initramfs.level, epoch)?;
        store_in_cache(&initramfs, &cache_file);
    }

    std::fs::copy(&kernel.vmlinuz, tmp.path().join("vmlinuz"))
        .map_err(io(format!("copy {}", kernel.vmlinuz.display())))?;
    let cmdline = cfg.kernel.cmdline.trim().to_string();
    std::fs::write(tmp.path().join("cmdline"), format!("{cmdline}\n"))
        .map_err(io("write cmdline"))?;

    let mut files = vec!["vmlinuz", initramfs_name.as_str(), "cmdline"];
    if let Some(stub) = &uki_stub {
        let task = Task::step("building kiln.efi");
        let efi = tmp.path().join("kiln.efi");
        output::build_uki(
            stub,
            &tmp.path().join("vmlinuz"),
            &initramfs,
            &cmdline,
            &output::os_release(&cfg.name),
            &efi,
        )?;
        task.finish(file_size(&efi));
        files.push("kiln.efi");
        if cfg.output.formats.contains(&Format::Disk) {
            let task = Task::step("building disk.img");
            let disk = tmp.path().join("disk.img");
            output::build_disk(&efi, epoch, &disk)?;
            task.finish(file_size(&disk));
            files.push("disk.img");
        }
    }

    let mut artifacts = Vec::new();
    for file in files {
        // vmlinuz is a byte copy of the kernel, which was hashed already.
        let path = match file {
            "vmlinuz" => kernel.vmlinuz.clone(),
            _ => tmp.path().join(file),
        };
        let (sha256, size) = hashes.of(&path)?;
        artifacts.push(Artifact {
            file: file.to_string(),
            size,
            sha256,
        });
    }
    let manifest = Manifest {
        name: cfg.name.clone(),
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        source_date_epoch: epoch,
        kernel: kernel_info(&kernel, &cfg.kernel.source),
        cmdline,
        compression: compression.to_string(),
        artifacts,
        modules: module_names,
        payloads,
        inputs,
        target: Some(cfg.target.clone()),
        vms: manifest_vms,
    };
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| BuildError::Io {
        what: "serialise the manifest".into(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(tmp.path().join("manifest.json"), json + "\n")
        .map_err(io("write manifest.json"))?;

    replace_dir(tmp.keep(), out)?;
    Ok(Built {
        out_dir: out.to_path_buf(),
        manifest,
        cached,
    })
}

fn decompress_file(path: &Path) -> Result<Vec<u8>, BuildError> {
    let what = format!("decompress {}", path.display());
    let file = std::fs::File::open(path).map_err(io(what.clone()))?;
    let (_, mut reader) =
        compress::decoder(std::io::BufReader::new(file)).map_err(io(what.clone()))?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut out).map_err(io(what))?;
    Ok(out)
}

fn file_size(path: &Path) -> String {
    std::fs::metadata(path)
        .map(|m| progress::human_bytes(m.len()))
        .unwrap_or_default()
}

/// Puts the finished directory at `out`, replacing what was there only once
/// the new one is complete.
fn replace_dir(new: PathBuf, out: &Path) -> Result<(), BuildError> {
    if out.exists() {
        let old = new.with_extension("old");
        std::fs::rename(out, &old)
            .map_err(io(format!("move the previous {} aside", out.display())))?;
        std::fs::rename(&new, out)
            .map_err(io(format!("rename the new build to {}", out.display())))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&new, out)
            .map_err(io(format!("rename the new build to {}", out.display())))?;
    }
    Ok(())
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

/// Turns a payload source into a file on this machine.
fn resolve_source(
    src: &Source,
    vm: &crate::image::VmEntry,
    key: &KeyPath,
    host: &Kernel,
) -> Result<PathBuf, BuildError> {
    match src {
        Source::Path(p) => Ok(vm.base_dir.join(p)),
        Source::Cargo(pkg) => Ok(payload::cargo_build(pkg, &vm.base_dir)?),
        Source::Debian(pkg) => {
            // A guest's `debian:` is from the host's apt sources: the image's
            // kernel is the same only if it came from there too.
            let same_as_host = matches!(&host.origin,
                KernelOrigin::Debian { requested, package, apt_sources, .. }
                    if apt_sources.is_empty() && (requested == pkg || package == pkg));
            let k = if same_as_host {
                host.vmlinuz.clone()
            } else {
                kernel::resolve(&KernelSource::Debian(pkg.clone()))
                    .map_err(|e| ConfigError::at_key(&vm.file, &vm.src, key, e.to_string()))?
                    .vmlinuz
            };
            Ok(k)
        }
    }
}

/// A Linux guest's initramfs holding one static binary as /init, written
/// with the same writer as the host's.
fn guest_initrd(
    b: &InitrdBuild,
    vm: &crate::image::VmEntry,
    key: &KeyPath,
    host: &Kernel,
    epoch: u64,
) -> Result<Vec<u8>, BuildError> {
    let c: Compression = b
        .compression
        .parse()
        .map_err(|e: compress::CompressError| {
            ConfigError::at_key(
                &vm.file,
                &vm.src,
                &key.clone().key("compression"),
                e.to_string(),
            )
        })?;
    let init = resolve_source(&b.init, vm, &key.clone().key("init"), host)?;
    payload::check_static(&init)?;
    let mut ar = Archive::new();
    for dir in ["proc", "sys", "dev"] {
        ar.add_dir(dir, 0o755);
    }
    ar.add_char_device("dev/console", 0o600, 5, 1);
    ar.add_file("init", &init, 0o755);
    let mut enc = Encoder::new(c, None, Vec::new()).map_err(io("start the compressor"))?;
    ar.write(&mut enc, u32::try_from(epoch).unwrap_or(u32::MAX))?;
    enc.finish()
        .map_err(io("finish compressing the guest initramfs"))
}

fn payload_record(
    hashes: &FileHashes,
    vm: &str,
    dest: &str,
    source: &str,
    file: Option<&Path>,
    bytes: Option<&[u8]>,
) -> Result<Payload, BuildError> {
    let (sha256, size) = match (file, bytes) {
        (Some(p), _) => hashes.of(p)?,
        (None, Some(b)) => (manifest::sha256_bytes(b), b.len() as u64),
        (None, None) => (String::new(), 0),
    };
    Ok(Payload {
        vm: vm.to_string(),
        path: format!("/{dest}"),
        source: source.to_string(),
        size,
        sha256,
    })
}

fn relative(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| {
            path.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// A config file read by the build, named relative to the image's folder so
/// the manifest is the same whichever directory kiln ran from.
fn input_file(kind: &str, path: &Path, image_dir: &Path) -> Result<Input, BuildError> {
    let (sha256, _) =
        manifest::sha256_file(path).map_err(io(format!("read {}", path.display())))?;
    let name = match (
        std::fs::canonicalize(path),
        std::fs::canonicalize(image_dir),
    ) {
        (Ok(p), Ok(d)) => pathdiff(&p, &d),
        _ => relative(path, image_dir),
    };
    Ok(Input {
        kind: kind.to_string(),
        name,
        sha256,
    })
}

fn input_hash(
    hashes: &FileHashes,
    kind: &str,
    name: &str,
    path: &Path,
) -> Result<Input, BuildError> {
    let (sha256, _) = hashes.of(path)?;
    Ok(Input {
        kind: kind.to_string(),
        name: name.to_string(),
        sha256,
    })
}

/// `path` relative to `base`, with `..` where needed (both absolute).
fn pathdiff(path: &Path, base: &Path) -> String {
    let p: Vec<_> = path.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = std::iter::repeat_n("..".to_string(), b.len() - common).collect();
    parts.extend(
        p[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

/// The kernel as build inputs: the package with its .deb hash, or each file
/// by name and hash (never by absolute path, which depends on the machine).
fn kernel_inputs(kernel: &Kernel) -> Vec<Input> {
    match &kernel.origin {
        KernelOrigin::Debian {
            package,
            version,
            deb_sha256,
            packages,
            ..
        } if packages.is_empty() => vec![Input {
            kind: "kernel-package".into(),
            name: format!("{package}={version}"),
            sha256: deb_sha256.clone(),
        }],
        KernelOrigin::Debian { packages, .. } => packages
            .iter()
            .map(|p| Input {
                kind: "kernel-package".into(),
                name: format!("{}={}", p.package, p.version),
                sha256: p.sha256.clone(),
            })
            .collect(),
        KernelOrigin::Host { files } | KernelOrigin::Path { files } => files
            .iter()
            .map(|f| Input {
                kind: "kernel-file".into(),
                name: f
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha256: f.sha256.clone(),
            })
            .collect(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_for_inputs() {
        assert_eq!(
            pathdiff(Path::new("/a/configs/x.toml"), Path::new("/a/images")),
            "../configs/x.toml"
        );
        assert_eq!(
            pathdiff(Path::new("/a/images/h.toml"), Path::new("/a/images")),
            "h.toml"
        );
    }
}
