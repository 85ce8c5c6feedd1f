//! Step 3: the runtime as `/init` and each VM's payloads under
//! `/guests/<vm>/`, with each VM's run form pointing there. A `debian:`
//! guest kernel with `boot.pvh` goes in as its vmlinux, booted through
//! PVH ([`crate::kernel::vmlinux`]), unless that cannot be.

use super::inputs::{self, FileHashes};
use super::staging::Staging;
use super::{bootcheck, io, BuildError, Job};
use crate::compress::{self, Compression, Encoder};
use crate::cpio::Archive;
use crate::image::VmEntry;
use crate::kernel::vmlinux::{self, VmlinuxError};
use crate::kernel::{self, Kernel, KernelOrigin, KernelSource};
use crate::manifest::{self, Input, Payload};
use crate::payload;
use kiln_schema::config::{BootInput, ConfigError, InitrdBuild, KeyPath, Source, VmConfig};
use std::path::{Path, PathBuf};

/// What the payloads step staged.
pub(super) struct Guests {
    /// Each VM's run form, every path naming its place in the image.
    pub vms: Vec<VmConfig>,
    /// Every payload staged, for the manifest.
    pub payloads: Vec<Payload>,
}

/// Stages the runtime and every VM's kernel and initrd, recording the
/// runtime and the VM config files in `inputs`.
pub(super) fn stage(
    job: &Job,
    kernel: &Kernel,
    staging: &mut Staging,
    inputs: &mut Vec<Input>,
) -> Result<Guests, BuildError> {
    let image = job.image;
    let hashes = &job.hashes;
    // The runtime's place in the manifest's inputs, taken after the guests:
    // a config the user must fix (a `cargo:` payload with no workspace) is
    // said at its key before kiln's own files are looked for.
    let runtime_at = inputs.len();

    // Guests, each under /guests/<vm>/: the appliance config gets each VM's
    // run form, naming those places.
    let mut vms = Vec::new();
    let mut payloads = Vec::new();
    for entry in &image.vms {
        if entry.file != image.file {
            inputs.push(inputs::file("vm-config", &entry.file, &image.dir)?);
        }
        let spec = &entry.config;
        let name = spec.name.as_str();
        let at = entry.at.clone().key("boot");
        let mut guest_kernel = None;
        let mut initrd_size = 0u64;
        let vm = spec.resolve(|input| -> Result<PathBuf, BuildError> {
            let key = at.clone().key(input.key());
            let dest = format!("guests/{name}/{}", input.key());
            match input {
                BootInput::Kernel(s) => {
                    let bzimage = resolve_source(s, entry, &key, kernel)?;
                    let (p, note) = match s {
                        Source::Debian(_) if spec.boot.pvh => match guest_vmlinux(&bzimage, job)? {
                            Vmlinux::Pvh(v) => (v, None),
                            Vmlinux::Kept(why) => {
                                crate::progress::note(format!(
                                    "vm {name}: booting the bzImage {}: {why}",
                                    bzimage.display()
                                ));
                                (bzimage, Some(why))
                            }
                        },
                        _ if spec.boot.pvh => {
                            return Err(ConfigError::at_key(
                                &entry.file,
                                &entry.src,
                                &at.clone().key("pvh"),
                                "`pvh = true` unpacks a `debian:` kernel's bzImage; for another \
                                 kernel, give `kernel` an ELF with a PVH note, which boots \
                                 through PVH as it is, and leave `pvh` out"
                                    .to_string(),
                            )
                            .into())
                        }
                        _ => (bzimage, None),
                    };
                    let bootable = check_guest_kernel(&p, entry, &at)?;
                    let mut record =
                        payload_record(hashes, name, &dest, &s.to_string(), Some(&p), None)?;
                    record.entry = Some(entry_name(bootable).into());
                    record.entry_note = note;
                    if crate::progress::verbose() {
                        crate::progress::note(format!(
                            "vm {name}: guest kernel {} ({} bytes), {} entry",
                            p.display(),
                            record.size,
                            entry_name(bootable)
                        ));
                    }
                    payloads.push(record);
                    guest_kernel = Some(bootable);
                    staging.file(&dest, &p, 0o644);
                }
                BootInput::Initrd(s) => {
                    let p = resolve_source(s, entry, &key, kernel)?;
                    let record =
                        payload_record(hashes, name, &dest, &s.to_string(), Some(&p), None)?;
                    initrd_size = record.size;
                    payloads.push(record);
                    staging.file(&dest, &p, 0o644);
                }
                BootInput::BuiltInitrd(b) => {
                    let file = guest_initrd(b, entry, &key, kernel, job)?;
                    let record = payload_record(
                        hashes,
                        name,
                        &dest,
                        &format!("initramfs of {}", b.init),
                        Some(&file),
                        None,
                    )?;
                    initrd_size = record.size;
                    payloads.push(record);
                    staging.file(&dest, &file, 0o644);
                }
            }
            Ok(PathBuf::from(format!("/{dest}")))
        })?;
        if let Some(k) = guest_kernel {
            bootcheck::check_memory(k, initrd_size, spec.memory.bytes()).map_err(|m| {
                ConfigError::at_key(&entry.file, &entry.src, &entry.at.clone().key("memory"), m)
            })?;
        }
        vms.push(vm);
    }

    // The runtime as /init.
    let runtime = payload::runtime_binary(
        image
            .config
            .runtime
            .binary
            .as_ref()
            .map(|p| image.dir.join(p))
            .as_deref(),
        &image.dir,
    )?;
    inputs.insert(
        runtime_at,
        inputs::hashed(hashes, "runtime", "kiln-runtime", &runtime)?,
    );
    staging.file("init", &runtime, 0o755);
    Ok(Guests { vms, payloads })
}

/// A guest kernel the runtime can boot, with a command line it takes.
fn check_guest_kernel(
    path: &Path,
    vm: &VmEntry,
    boot: &KeyPath,
) -> Result<bootcheck::Bootable, BuildError> {
    let err = |key: KeyPath, m: String| ConfigError::at_key(&vm.file, &vm.src, &key, m);
    let bootable =
        bootcheck::check_kernel(path, true).map_err(|m| err(boot.clone().key("kernel"), m))?;
    bootcheck::check_cmdline(&vm.config.boot.cmdline, bootable)
        .map_err(|m| err(boot.clone().key("cmdline"), m))?;
    Ok(bootable)
}

/// The entry a guest kernel boots through, as the manifest names it.
fn entry_name(b: bootcheck::Bootable) -> &'static str {
    match b {
        bootcheck::Bootable::Pvh { .. } => "pvh",
        bootcheck::Bootable::BzImage { .. } => "bzimage",
    }
}

/// What a `debian:` guest kernel with `boot.pvh` boots as.
#[derive(Debug, PartialEq, Eq)]
enum Vmlinux {
    /// Its vmlinux, which has a PVH entry: a file in the cache.
    Pvh(PathBuf),
    /// The bzImage, for this reason (no PVH note, a codec kiln does not
    /// unpack).
    Kept(String),
}

/// The vmlinux ELF inside `bzimage`, unpacked once into the cache
/// (`vmlinux/<key>.elf`, `<key>` a digest of kiln's version and the
/// bzImage's SHA-256) and reused; a bzImage whose vmlinux kiln cannot boot
/// through PVH is remembered beside it (`<key>.bzimage`, holding why), so
/// it is not unpacked at every build either.
fn guest_vmlinux(bzimage: &Path, job: &Job) -> Result<Vmlinux, BuildError> {
    let (sha256, _) = job.hashes.of(bzimage)?;
    let dir = kernel::cache_dir()?.join("vmlinux");
    vmlinux_cached(bzimage, &sha256, &dir)
}

fn vmlinux_cached(bzimage: &Path, sha256: &str, dir: &Path) -> Result<Vmlinux, BuildError> {
    let digest = manifest::sha256_bytes(
        format!(
            "kiln {} vmlinux, trailing zeros trimmed\nbzimage {sha256}\n",
            env!("CARGO_PKG_VERSION")
        )
        .as_bytes(),
    );
    let elf = dir.join(format!("{digest}.elf"));
    let kept = dir.join(format!("{digest}.bzimage"));
    if elf.is_file() {
        return Ok(Vmlinux::Pvh(elf));
    }
    if let Ok(why) = std::fs::read_to_string(&kept) {
        return Ok(Vmlinux::Kept(why));
    }
    let image = std::fs::read(bzimage).map_err(io(format!("read {}", bzimage.display())))?;
    let unpacked = match vmlinux::extract(&image, vmlinux::MAX_VMLINUX) {
        Ok(mut v) => match bootcheck::check_pvh(v.as_slice()) {
            Ok(_) => {
                vmlinux::trim_zeros(&mut v).map_err(|source| BuildError::Vmlinux {
                    path: bzimage.to_path_buf(),
                    source,
                })?;
                Ok(v)
            }
            Err(why) => Err(format!("its vmlinux {why}")),
        },
        Err(e @ VmlinuxError::UnknownCompression { .. }) => Err(e.to_string()),
        Err(source) => {
            return Err(BuildError::Vmlinux {
                path: bzimage.to_path_buf(),
                source,
            })
        }
    };
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    match unpacked {
        Ok(v) => {
            store(&elf, &v).map_err(io(format!("write {}", elf.display())))?;
            Ok(Vmlinux::Pvh(elf))
        }
        Err(why) => {
            store(&kept, why.as_bytes()).map_err(io(format!("write {}", kept.display())))?;
            Ok(Vmlinux::Kept(why))
        }
    }
}

/// Turns a payload source into a file on this machine.
fn resolve_source(
    src: &Source,
    vm: &VmEntry,
    key: &KeyPath,
    host: &Kernel,
) -> Result<PathBuf, BuildError> {
    match src {
        Source::Path(p) => Ok(vm.base_dir.join(p)),
        Source::Cargo(pkg) => payload::cargo_payload(pkg, &vm.base_dir).map_err(|e| match e {
            // Which config asked is the user's to fix: say where.
            payload::PayloadError::NoWorkspace { .. } => {
                ConfigError::at_key(&vm.file, &vm.src, key, e.to_string()).into()
            }
            e => e.into(),
        }),
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
/// with the same writer as the host's, as a file in the cache
/// (`initramfs/<key>-guest-initrd.cpio[.<ext>]`, `<key>` a digest of the
/// binary, the compression and the archive time): built once, not at
/// every build.
fn guest_initrd(
    b: &InitrdBuild,
    vm: &VmEntry,
    key: &KeyPath,
    host: &Kernel,
    job: &Job,
) -> Result<PathBuf, BuildError> {
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
    let epoch = job.epoch;
    let (init_sha256, _) = job.hashes.of(&init)?;
    let digest = manifest::sha256_bytes(
        format!(
            "kiln {} guest initrd\ncompression {c}\nepoch {epoch}\ninit {init_sha256}\n",
            env!("CARGO_PKG_VERSION")
        )
        .as_bytes(),
    );
    let name = match c.extension() {
        "" => format!("{digest}-guest-initrd.cpio"),
        ext => format!("{digest}-guest-initrd.cpio.{ext}"),
    };
    let cached = kernel::cache_dir()?.join("initramfs").join(name);
    if cached.is_file() {
        return Ok(cached);
    }
    let bytes = guest_initrd_bytes(c, &init, epoch)?;
    store(&cached, &bytes).map_err(io(format!("write {}", cached.display())))?;
    Ok(cached)
}

/// The guest initramfs around `init`, compressed with `c`.
fn guest_initrd_bytes(c: Compression, init: &Path, epoch: u64) -> Result<Vec<u8>, BuildError> {
    let mut ar = Archive::new();
    for dir in ["proc", "sys", "dev"] {
        ar.add_dir(dir, 0o755);
    }
    ar.add_char_device("dev/console", 0o600, 5, 1);
    ar.add_file("init", init, 0o755);
    let mut enc = Encoder::new(c, None, Vec::new()).map_err(io("start the compressor"))?;
    ar.write(&mut enc, u32::try_from(epoch).unwrap_or(u32::MAX))?;
    enc.finish()
        .map_err(io("finish compressing the guest initramfs"))
}

/// Writes `bytes` to `path` under a temporary name, readable by all (like
/// the cached initramfs), then renames it into place.
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = crate::atomic::temp_file_beside(path)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
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
        entry: None,
        entry_note: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::bootcheck::tests::elf_with_note;
    use crate::kernel::vmlinux::tests::{bzimage_around, compressed};

    const XEN_PVH: u32 = 18;

    fn bzimage_of(c: Compression, elf: &[u8]) -> Vec<u8> {
        let p = compressed(c, elf);
        bzimage_around(&p, 0, (p.len() + 16).next_multiple_of(16))
    }

    #[test]
    fn a_pvh_vmlinux_is_unpacked_once_per_bzimage_and_codec() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("vmlinux");
        let elf = elf_with_note(b"Xen", XEN_PVH, 64 << 10);
        for c in [
            Compression::Lz4,
            Compression::Gzip,
            Compression::Xz,
            Compression::Zstd,
        ] {
            let bz = d.path().join(format!("vmlinuz.{c}"));
            std::fs::write(&bz, bzimage_of(c, &elf)).unwrap();
            let sha = format!("sha-of-{c}");
            let Vmlinux::Pvh(v) = vmlinux_cached(&bz, &sha, &cache).unwrap() else {
                panic!("{c}: kept the bzImage");
            };
            assert!(std::fs::read(&v).unwrap() == elf, "{c}");
            // Cached: the same file, even with the bzImage gone.
            std::fs::remove_file(&bz).unwrap();
            assert_eq!(vmlinux_cached(&bz, &sha, &cache).unwrap(), Vmlinux::Pvh(v));
        }
        // Nothing left half-written beside them.
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 4);
    }

    #[test]
    fn no_pvh_note_or_an_unknown_codec_keeps_the_bzimage_and_says_why() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("vmlinux");
        let bz = d.path().join("vmlinuz");
        let plain = elf_with_note(b"GNU", 3, 4096);
        std::fs::write(&bz, bzimage_of(Compression::Zstd, &plain)).unwrap();
        let got = vmlinux_cached(&bz, "a", &cache).unwrap();
        let Vmlinux::Kept(why) = &got else {
            panic!("{got:?}")
        };
        assert!(
            why.starts_with("its vmlinux is an ELF file without a PVH entry note"),
            "{why}"
        );
        assert_eq!(vmlinux_cached(&bz, "a", &cache).unwrap(), got, "remembered");
        std::fs::write(&bz, bzimage_around(b"BZh91AY&SY12345678", 0, 64)).unwrap();
        let Vmlinux::Kept(why) = vmlinux_cached(&bz, "b", &cache).unwrap() else {
            panic!("bzip2 unpacked")
        };
        assert!(
            why.contains("compressed in a way kiln does not unpack"),
            "{why}"
        );
    }

    #[test]
    fn a_damaged_payload_fails_the_build_and_caches_nothing() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("vmlinux");
        let bz = d.path().join("vmlinuz");
        let mut k = bzimage_of(Compression::Gzip, &elf_with_note(b"Xen", XEN_PVH, 4096));
        let n = k.len();
        k.truncate(n - 32);
        std::fs::write(&bz, &k).unwrap();
        let e = vmlinux_cached(&bz, "c", &cache).unwrap_err();
        assert!(matches!(e, BuildError::Vmlinux { .. }), "{e}");
        assert!(!cache.exists() || std::fs::read_dir(&cache).unwrap().count() == 0);
    }
}
