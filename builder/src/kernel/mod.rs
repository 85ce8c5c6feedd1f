//! Where an image's kernel comes from, and which modules it has.
//!
//! A kernel source is `debian:<package>` (a Debian kernel package, fetched
//! with apt and cached; from the host's apt sources, or from the image's
//! own `[kernel.apt]` sources through a private apt state), `host` (the running kernel) or a path to a bzImage
//! with optional modules directory and config. [`resolve`] turns it into a
//! [`Kernel`]: files on disk plus where they came from, for the manifest.
//! [`module_index`] gives the kernel's module dependencies for
//! [`kiln_schema::kmod`]. [`vmlinux`] unpacks a bzImage's uncompressed
//! kernel, for guests booted through PVH.

pub mod apt;
pub mod debian;
pub mod kconfig;
pub mod modinfo;
pub mod resolved;
pub mod vmlinux;

pub use apt::{check_keyring_name, check_source_line, AptRepo};
pub use kconfig::KernelConfig;

use kiln_abi::bzimage;
use kiln_schema::kmod::{KmodError, ModuleEntry, ModuleIndex};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A kernel as named in an image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// `debian:<package>`: a kernel image package or a metapackage for one.
    Debian(String),
    /// `host`: the running kernel's files in /boot and /lib/modules.
    Host,
    /// A bzImage file, with its `lib/modules/<release>` directory and
    /// `.config` when the image needs modules or config checks.
    Path {
        bzimage: PathBuf,
        modules_dir: Option<PathBuf>,
        config: Option<PathBuf>,
    },
}

impl KernelSource {
    /// Parses `debian:<package>`, `host`, or a bzImage path (write `./host`
    /// for a file called `host`). `modules_dir` and `config` go with a path
    /// only: the other sources bring their own. Relative paths are kept as
    /// given; resolving them against the config's folder is the caller's.
    pub fn parse(
        source: &str,
        modules_dir: Option<PathBuf>,
        config: Option<PathBuf>,
    ) -> Result<Self, KernelError> {
        let invalid = |reason: &str| KernelError::InvalidSource {
            source_text: source.to_string(),
            reason: reason.to_string(),
        };
        let extras = modules_dir.is_some() || config.is_some();
        let text = source.trim();
        if let Some(package) = text.strip_prefix("debian:") {
            let package = package.trim();
            if package.is_empty() {
                return Err(invalid("it names no package after \"debian:\", e.g. \"debian:linux-image-cloud-amd64\""));
            }
            if !is_debian_package_name(package) {
                return Err(invalid("a Debian package name has lower-case letters, digits and + - . only, and starts with a letter or digit"));
            }
            if extras {
                return Err(invalid("modules_dir and config go with a bzImage path only; a Debian package brings its own"));
            }
            return Ok(KernelSource::Debian(package.to_string()));
        }
        if text == "host" {
            if extras {
                return Err(invalid("modules_dir and config go with a bzImage path only; the running kernel's come from /lib/modules and /boot"));
            }
            return Ok(KernelSource::Host);
        }
        if text.is_empty() {
            return Err(invalid(
                "expected \"debian:<package>\", \"host\" or the path of a bzImage",
            ));
        }
        Ok(KernelSource::Path {
            bzimage: PathBuf::from(source),
            modules_dir,
            config,
        })
    }
}

impl fmt::Display for KernelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSource::Debian(p) => write!(f, "debian:{p}"),
            KernelSource::Host => f.write_str("host"),
            KernelSource::Path { bzimage, .. } => write!(f, "{}", bzimage.display()),
        }
    }
}

/// Debian policy 5.6.1; also keeps option-like text off apt's command line.
fn is_debian_package_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// A kernel's files, ready to go into an image.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    pub config: Option<KernelConfig>,
    /// The `lib/modules/<release>` directory, when the kernel has modules.
    pub modules_dir: Option<PathBuf>,
    pub origin: KernelOrigin,
    /// Where [`module_index`] keeps the index it derives for a module tree
    /// without `modules.dep` (a cached Debian package); `None`: not kept.
    pub index_cache: Option<PathBuf>,
}

/// Where a kernel came from, for the image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KernelOrigin {
    Debian {
        /// The package the config names (maybe a metapackage).
        requested: String,
        /// The versioned package it resolved to.
        package: String,
        version: String,
        deb_sha256: String,
        /// Every package unpacked into the kernel's tree, `package` first
        /// (a split kernel also has e.g. `linux-modules-<release>`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        packages: Vec<DebPackage>,
        /// The apt sources of `[kernel.apt]`; empty: the host's.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        apt_sources: Vec<String>,
    },
    Host {
        files: Vec<FileDigest>,
    },
    Path {
        files: Vec<FileDigest>,
    },
}

/// One downloaded package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebPackage {
    pub package: String,
    pub version: String,
    /// Of the .deb file.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

impl FileDigest {
    fn of(path: &Path) -> Result<Self, KernelError> {
        let size = std::fs::metadata(path)
            .map_err(|source| KernelError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            })?
            .len();
        Ok(FileDigest {
            path: path.to_path_buf(),
            size,
            sha256: debian::sha256_file(path)?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("Kernel source \"{source_text}\" is not valid: {reason}")]
    InvalidSource { source_text: String, reason: String },
    #[error("Cannot find a cache directory for kiln; set KILN_CACHE_DIR or HOME")]
    NoCacheDir,
    #[error("Cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{tool}` is not installed: \"debian:\" kernel sources need Debian's apt; on another system give the path of a bzImage instead")]
    AptMissing {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("apt has no package lists yet; run `apt-get update` as root, then build again")]
    AptNoLists,
    #[error("\"{package}\" was never resolved with apt on this machine, and --offline forbids asking apt; build once without --offline")]
    NotResolvedOffline { package: String },
    #[error("The [kernel.apt] table is not valid: {reason}")]
    InvalidApt { reason: String },
    #[error("`apt-get update` failed for the sources of [kernel.apt]; check their URLs and suites, and that the keyring signs them. Sources:\n{sources}\napt said:\n{output}")]
    AptUpdateFailed { sources: String, output: String },
    #[error("Package \"{package}\" is in none of the sources of [kernel.apt], even after `apt-get update`; check the name and the suites. Sources:\n{sources}")]
    NotInSources { package: String, sources: String },
    #[error("apt knows no Debian package \"{package}\"; check the name (e.g. linux-image-cloud-amd64, see `apt-cache search linux-image`) or run `apt-get update`")]
    PackageNotFound { package: String },
    #[error("`{command}` failed:\n{output}")]
    AptFailed {
        command: String,
        output: String,
        /// What made kiln update the lists.
        #[source]
        after: Box<KernelError>,
    },
    #[error("Cannot download {package} {version} with apt-get; check the network and the apt sources, or run `apt-get update` if this version left the archive. apt said:\n{output}")]
    DownloadFailed {
        package: String,
        version: String,
        output: String,
    },
    #[error("{} has SHA-256 {actual}, but apt's index says {expected}; delete it and build again", path.display())]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("Cannot unpack {}; delete it and build again to download it anew", deb.display())]
    Unpack {
        deb: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} has no data.tar member: it is not a Debian package", deb.display())]
    NoDataMember { deb: PathBuf },
    #[error("{} packs its files as {member}, which kiln cannot unpack (it reads xz, zstd, gzip and plain tar)", deb.display())]
    UnsupportedCompression { deb: PathBuf, member: String },
    #[error("Package {package} has no boot/vmlinuz-* nor usr/lib/modules/*/vmlinuz: it is not a kernel image package; name one such as linux-image-cloud-amd64")]
    NoVmlinuz { package: String },
    #[error("Package {package} holds several kernels ({}); name a package with one kernel or give a bzImage path", found.join(", "))]
    SeveralKernels { package: String, found: Vec<String> },
    #[error("The running kernel {release} has no image at {}; install its package, or use \"debian:<package>\" or a bzImage path", path.display())]
    HostKernelMissing { release: String, path: PathBuf },
    #[error("{} is not a bzImage (no Linux boot header with a version string); give the bzImage (arch/x86/boot/bzImage), not vmlinux", path.display())]
    NotABzImage { path: PathBuf },
    #[error("{} is not a directory; modules_dir must be the kernel's lib/modules/<release> directory", path.display())]
    NotAModulesDir { path: PathBuf },
    #[error("Kernel {release} comes without modules; give its lib/modules/<release> directory as modules_dir, or use a kernel package that ships them")]
    NoModules { release: String },
    #[error("Cannot read the module information of {}: {reason}", path.display())]
    ModInfo { path: PathBuf, reason: String },
    #[error("Module {} needs \"{dependency}\", which is not in {}; that module ships in another package (e.g. linux-modules-extra-<release>): load another module, or give a kernel whose modules are complete", chain.join(" → "), dir.display())]
    MissingDependency {
        /// From the module the image asks for to the one that needs
        /// `dependency`.
        chain: Vec<String>,
        dependency: String,
        dir: PathBuf,
    },
    #[error(transparent)]
    Modules(#[from] KmodError),
}

/// A Debian package other than a kernel (e.g. `systemd-boot-efi`, the UKI
/// stub), fetched, checked and cached exactly like a kernel package.
#[derive(Debug, Clone)]
pub struct DebianPackage {
    /// The unpacked package's root directory in the cache.
    pub root: PathBuf,
    pub package: String,
    pub version: String,
    pub deb_sha256: String,
}

pub fn fetch_package(name: &str) -> Result<DebianPackage, KernelError> {
    let cache = cache_dir()?;
    let unpacked = debian::fetch(name, &cache, &apt::Apt::host(&cache))?;
    let main = unpacked.main();
    Ok(DebianPackage {
        root: unpacked.root(),
        package: main.package,
        version: main.version,
        deb_sha256: main.sha256,
    })
}

/// kiln's cache: `$KILN_CACHE_DIR`, else `<XDG cache dir>/kiln`
/// (`~/.cache/kiln`).
pub fn cache_dir() -> Result<PathBuf, KernelError> {
    cache_dir_from(std::env::var_os("KILN_CACHE_DIR"), dirs::cache_dir())
}

fn cache_dir_from(env: Option<OsString>, xdg: Option<PathBuf>) -> Result<PathBuf, KernelError> {
    let dir = match env {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => xdg.ok_or(KernelError::NoCacheDir)?.join("kiln"),
    };
    std::path::absolute(&dir).map_err(|source| KernelError::Io {
        action: "resolve",
        path: dir,
        source,
    })
}

/// Finds (and for `debian:` fetches and unpacks, once) the kernel's files.
pub fn resolve(source: &KernelSource) -> Result<Kernel, KernelError> {
    resolve_with(source, None)
}

/// [`resolve`], a `debian:` source taken from `apt`'s sources (through a
/// private apt state in the cache) when given, else from the host's.
pub fn resolve_with(source: &KernelSource, apt: Option<&AptRepo>) -> Result<Kernel, KernelError> {
    match source {
        KernelSource::Debian(package) => resolve_debian(package, apt),
        KernelSource::Host => resolve_host(),
        KernelSource::Path {
            bzimage,
            modules_dir,
            config,
        } => resolve_path(bzimage, modules_dir.as_deref(), config.as_deref()),
    }
}

fn resolve_debian(requested: &str, repo: Option<&AptRepo>) -> Result<Kernel, KernelError> {
    let cache = cache_dir()?;
    let apt = match repo {
        Some(r) => apt::Apt::private(&cache, r)?,
        None => apt::Apt::host(&cache),
    };
    let unpacked = debian::fetch(requested, &cache, &apt)?;
    let main = unpacked.main();
    let layout = find_layout(&unpacked.root(), &main.package)?;
    Ok(Kernel {
        vmlinuz: layout.vmlinuz,
        config: match &layout.config {
            Some(c) => read_config(c, false)?,
            None => None,
        },
        modules_dir: layout.modules_dir,
        origin: KernelOrigin::Debian {
            requested: requested.to_string(),
            package: main.package.clone(),
            version: main.version.clone(),
            deb_sha256: main.sha256.clone(),
            packages: unpacked.packages.clone(),
            apt_sources: apt.sources.clone(),
        },
        index_cache: Some(unpacked.dir.join("modindex-v1")),
        release: layout.release,
    })
}

/// Where an unpacked kernel package keeps its files.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    release: String,
    vmlinuz: PathBuf,
    config: Option<PathBuf>,
    modules_dir: Option<PathBuf>,
}

/// Finds the one kernel in an unpacked tree: `boot/vmlinuz-<release>` and
/// `boot/config-<release>` (Debian ≤ 6.x, Ubuntu), or
/// `usr/lib/modules/<release>/{vmlinuz,config}` (Debian ≥ 7); modules in
/// `lib/modules/<release>` or `usr/lib/modules/<release>`. Only regular
/// files count: a symlink would point into the host's /usr or /boot.
fn find_layout(root: &Path, package: &str) -> Result<Layout, KernelError> {
    let is_file = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let module_roots = ["usr/lib/modules", "lib/modules"].map(|d| root.join(d));
    let mut found: Vec<String> = names(&root.join("boot"))
        .into_iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string))
        .filter(|r| is_file(&root.join("boot").join(format!("vmlinuz-{r}"))))
        .collect();
    for dir in &module_roots {
        found.extend(
            names(dir)
                .into_iter()
                .filter(|r| is_file(&dir.join(r).join("vmlinuz"))),
        );
    }
    found.sort();
    found.dedup();
    let release = match found.as_slice() {
        [] => {
            return Err(KernelError::NoVmlinuz {
                package: package.to_string(),
            })
        }
        [one] => one.clone(),
        _ => {
            return Err(KernelError::SeveralKernels {
                package: package.to_string(),
                found,
            })
        }
    };
    let first_file = |candidates: Vec<PathBuf>| candidates.into_iter().find(|p| is_file(p));
    let in_boot = |kind: &str| root.join("boot").join(format!("{kind}-{release}"));
    let candidates = |kind: &str| -> Vec<PathBuf> {
        std::iter::once(in_boot(kind))
            .chain(module_roots.iter().map(|d| d.join(&release).join(kind)))
            .collect()
    };
    let vmlinuz = first_file(candidates("vmlinuz")).ok_or_else(|| KernelError::NoVmlinuz {
        package: package.to_string(),
    })?;
    let config = first_file(candidates("config"));
    // The directory with the modules themselves; a package may also leave
    // an empty lib/modules/<release> beside usr/lib/modules/<release>.
    let dirs: Vec<PathBuf> = module_roots
        .iter()
        .map(|d| d.join(&release))
        .filter(|d| d.is_dir())
        .collect();
    let modules_dir = dirs
        .iter()
        .find(|d| d.join("kernel").is_dir())
        .or(dirs.first())
        .cloned();
    Ok(Layout {
        release,
        vmlinuz,
        config,
        modules_dir,
    })
}

fn resolve_host() -> Result<Kernel, KernelError> {
    let osrelease = Path::new("/proc/sys/kernel/osrelease");
    let release = std::fs::read_to_string(osrelease)
        .map_err(|source| KernelError::Io {
            action: "read",
            path: osrelease.to_path_buf(),
            source,
        })?
        .trim()
        .to_string();
    let vmlinuz = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return Err(KernelError::HostKernelMissing {
            release,
            path: vmlinuz,
        });
    }
    let config_path = PathBuf::from(format!("/boot/config-{release}"));
    let config = read_config(&config_path, false)?;
    let modules_dir = Some(PathBuf::from(format!("/lib/modules/{release}"))).filter(|d| d.is_dir());
    let mut files = vec![FileDigest::of(&vmlinuz)?];
    if config.is_some() {
        files.push(FileDigest::of(&config_path)?);
    }
    Ok(Kernel {
        release,
        vmlinuz,
        config,
        modules_dir,
        origin: KernelOrigin::Host { files },
        index_cache: None,
    })
}

fn resolve_path(
    bzimage: &Path,
    modules_dir: Option<&Path>,
    config: Option<&Path>,
) -> Result<Kernel, KernelError> {
    let release = bzimage_release(bzimage)?;
    let modules_dir = match modules_dir {
        None => None,
        Some(d) if d.join(&release).is_dir() => Some(d.join(&release)), // lib/modules given
        Some(d) if d.is_dir() => {
            if d.file_name().is_some_and(|n| n != release.as_str()) {
                crate::progress::note(format!(
                    "modules_dir {} is not named for the kernel's release {release}; its modules may not load",
                    d.display()
                ));
            }
            Some(d.to_path_buf())
        }
        Some(d) => {
            return Err(KernelError::NotAModulesDir {
                path: d.to_path_buf(),
            })
        }
    };
    let mut files = vec![FileDigest::of(bzimage)?];
    let config = match config {
        Some(c) => {
            files.push(FileDigest::of(c)?);
            read_config(c, true)?
        }
        None => None,
    };
    Ok(Kernel {
        release,
        vmlinuz: bzimage.to_path_buf(),
        config,
        modules_dir,
        origin: KernelOrigin::Path { files },
        index_cache: None,
    })
}

/// Parses a kernel config; a missing file is `None` unless `required`.
fn read_config(path: &Path, required: bool) -> Result<Option<KernelConfig>, KernelError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(KernelConfig::parse(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
        Err(source) => Err(KernelError::Io {
            action: "read kernel config",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The release (`uname -r`) in a bzImage's setup header
/// (`kiln_abi::bzimage::release`).
pub fn bzimage_release(path: &Path) -> Result<String, KernelError> {
    let not_bz = || KernelError::NotABzImage {
        path: path.to_path_buf(),
    };
    let file = std::fs::File::open(path).map_err(|source| KernelError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    // The string lives in the setup sectors, at most 64 KiB in.
    let mut head = Vec::new();
    file.take(64 * 1024)
        .read_to_end(&mut head)
        .map_err(|source| KernelError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
    if !bzimage::has_header(&head) {
        return Err(not_bz());
    }
    bzimage::release(&head)
        .map(str::to_string)
        .ok_or_else(not_bz)
}

const INDEX_DEP: &str = "modules.dep";
const INDEX_SOFTDEP: &str = "modules.softdep";
const INDEX_ALIAS: &str = "modules.alias";
/// kiln's own: modules whose dependencies are not in the tree.
const INDEX_MISSING: &str = "modules.missing";

/// The kernel's module dependencies; see [`module_tree`].
pub fn module_index(kernel: &Kernel) -> Result<ModuleIndex, KernelError> {
    module_tree(kernel).map(|t| t.index)
}

/// A kernel's module index, with what its tree lacks.
#[derive(Debug, Clone)]
pub struct ModuleTree {
    pub index: ModuleIndex,
    /// Module name → the modules it needs that are not in the tree (they
    /// ship in a package not unpacked, e.g. Ubuntu's linux-modules-extra).
    pub missing: BTreeMap<String, Vec<String>>,
    /// The modules directory, for errors.
    pub dir: PathBuf,
}

impl ModuleTree {
    /// Fails when a module of `closure` (the modules loaded for
    /// `requested`) needs a module the tree lacks, naming the chain from
    /// the requested module to it.
    pub fn check(&self, requested: &[&str], closure: &[ModuleEntry]) -> Result<(), KernelError> {
        let Some((broken, absent)) = closure
            .iter()
            .find_map(|e| self.missing.get(&e.name).map(|m| (e, m)))
        else {
            return Ok(());
        };
        let dependency = absent.first().cloned().unwrap_or_default();
        let error = |chain: Vec<String>| KernelError::MissingDependency {
            chain,
            dependency: dependency.clone(),
            dir: self.dir.clone(),
        };
        for r in requested {
            let Ok(sub) = self.index.closure(&[r]) else {
                continue;
            };
            if !sub.contains(broken) {
                continue;
            }
            let mut chain = vec![r.to_string()];
            chain.extend(self.path(&sub, r, &broken.name));
            return Err(error(chain));
        }
        Err(error(vec![broken.name.clone()]))
    }

    /// The names after `from` on a shortest path of hard dependencies
    /// from `from` to `to` within `sub`; just `to` when it is reached some
    /// other way (a soft dependency).
    fn path(&self, sub: &[ModuleEntry], from: &str, to: &str) -> Vec<String> {
        let name_of: HashMap<&str, &str> = sub
            .iter()
            .map(|e| (e.path.as_str(), e.name.as_str()))
            .collect();
        let deps: HashMap<&str, Vec<&str>> = self
            .index
            .to_modules_dep(sub)
            .lines()
            .filter_map(|l| {
                let (path, deps) = l.split_once(':')?;
                let name = *name_of.get(path)?;
                let deps = deps
                    .split_whitespace()
                    .filter_map(|d| name_of.get(d).copied())
                    .collect();
                Some((name, deps))
            })
            .collect();
        let from = kiln_schema::kmod::normalize_name(from);
        let mut came_from: HashMap<&str, &str> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([from.as_str()]);
        while let Some(at) = queue.pop_front() {
            if at == to {
                let mut path = vec![to.to_string()];
                let mut cur = to;
                while let Some(prev) = came_from.get(cur) {
                    if *prev == from {
                        break;
                    }
                    path.push(prev.to_string());
                    cur = prev;
                }
                path.reverse();
                if from == to {
                    path.clear(); // the requested module itself lacks one
                }
                return path;
            }
            for d in deps.get(at).into_iter().flatten() {
                if *d != from && !came_from.contains_key(d) {
                    came_from.insert(d, at);
                    queue.push_back(d);
                }
            }
        }
        vec![to.to_string()]
    }
}

/// The kernel's module dependencies: from its `modules.dep` when there is
/// one (an installed kernel), else from each module's `.modinfo` (a Debian
/// package, which leaves modules.dep to depmod), kept in
/// [`Kernel::index_cache`] so later builds skip the scan. Exact aliases
/// (`modules.alias`) are included so soft dependencies such as
/// `pre: crc32c` find their modules. Modules may be compressed (`.ko.xz`,
/// `.ko.zst`, `.ko.gz`); the index names them as they are in the tree.
pub fn module_tree(kernel: &Kernel) -> Result<ModuleTree, KernelError> {
    let dir = kernel
        .modules_dir
        .as_deref()
        .ok_or_else(|| KernelError::NoModules {
            release: kernel.release.clone(),
        })?;
    let tree = |index, missing: Option<String>| ModuleTree {
        index,
        missing: parse_missing(missing.as_deref().unwrap_or("")),
        dir: dir.to_path_buf(),
    };
    let builtin = read_optional(&dir.join("modules.builtin"))?;
    let stored = [Some(dir), kernel.index_cache.as_deref()];
    for from in stored.into_iter().flatten() {
        if let Some(dep) = read_optional(&from.join(INDEX_DEP))? {
            let softdep = read_optional(&from.join(INDEX_SOFTDEP))?;
            let alias = read_optional(&from.join(INDEX_ALIAS))?;
            // Absent from indexes cached before kiln allowed incomplete
            // trees (which it then refused): nothing missing.
            let missing = read_optional(&from.join(INDEX_MISSING))?;
            let index = index(
                &dep,
                softdep.as_deref(),
                alias.as_deref(),
                builtin.as_deref(),
            )?;
            return Ok(tree(index, missing));
        }
    }
    let task = crate::progress::Task::step(format!("Reading modules of {}", kernel.release));
    let scan = modinfo::scan(dir)?;
    let direct = index(
        &scan.dep,
        Some(&scan.softdep),
        Some(&scan.alias),
        builtin.as_deref(),
    )?;
    // Rewritten in depmod's form and parsed again, so this build and the
    // cached ones walk the very same index (same inputs, same order).
    let all = direct.modules();
    let dep = direct.to_modules_dep(&all);
    let softdep = direct.to_modules_softdep(&all);
    let index = index(&dep, Some(&softdep), Some(&scan.alias), builtin.as_deref())?;
    task.finish(format!("{} modules", scan.modules));
    if let Some(cache) = &kernel.index_cache {
        let files = [
            (INDEX_DEP, dep.as_str()),
            (INDEX_SOFTDEP, softdep.as_str()),
            (INDEX_ALIAS, scan.alias.as_str()),
            (INDEX_MISSING, scan.missing.as_str()),
        ];
        if let Err(e) = write_index_cache(cache, &files) {
            crate::progress::note(format!(
                "Not caching the module index in {}: {e}",
                cache.display()
            ));
        }
    }
    Ok(tree(index, Some(scan.missing)))
}

/// `<module>: <dependency>...` lines.
fn parse_missing(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| {
            let (module, deps) = l.split_once(':')?;
            let deps: Vec<String> = deps.split_whitespace().map(str::to_string).collect();
            (!deps.is_empty()).then(|| (module.trim().to_string(), deps))
        })
        .collect()
}

fn index(
    dep: &str,
    softdep: Option<&str>,
    alias: Option<&str>,
    builtin: Option<&str>,
) -> Result<ModuleIndex, KernelError> {
    let index = ModuleIndex::from_modules_dep(dep, softdep, builtin)?;
    Ok(match alias {
        Some(alias) => index.with_aliases(alias)?,
        None => index,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, KernelError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KernelError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the files into a temporary directory renamed to `cache`, so a
/// reader sees all of them or none.
fn write_index_cache(cache: &Path, files: &[(&str, &str)]) -> std::io::Result<()> {
    let tmp = crate::atomic::temp_dir_beside(cache)?;
    for (name, text) in files {
        std::fs::write(tmp.path().join(name), text)?;
    }
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, cache) {
        let _ = std::fs::remove_dir_all(&tmp);
        // A concurrent build may have written the same index first.
        if !cache.join(INDEX_DEP).is_file() {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_source_kind() {
        assert_eq!(
            KernelSource::parse("debian:linux-image-cloud-amd64", None, None).unwrap(),
            KernelSource::Debian("linux-image-cloud-amd64".into())
        );
        assert_eq!(
            KernelSource::parse("host", None, None).unwrap(),
            KernelSource::Host
        );
        assert_eq!(
            KernelSource::parse("k/bzImage", Some("k/modules".into()), None).unwrap(),
            KernelSource::Path {
                bzimage: "k/bzImage".into(),
                modules_dir: Some("k/modules".into()),
                config: None
            }
        );
        assert_eq!(
            KernelSource::parse("./host", None, None).unwrap(),
            KernelSource::Path {
                bzimage: "./host".into(),
                modules_dir: None,
                config: None
            }
        );
    }

    #[test]
    fn rejects_bad_sources_saying_why() {
        let err =
            |s: &str, m: Option<PathBuf>| KernelSource::parse(s, m, None).unwrap_err().to_string();
        assert!(err("debian:", None).contains("names no package"));
        assert!(err("debian:-o=Dir::Cache=/x", None).contains("Debian package name"));
        assert!(err("debian:Linux", None).contains("Debian package name"));
        assert!(err("debian:linux-image-amd64", Some("m".into())).contains("bzImage path only"));
        assert!(err("host", Some("m".into())).contains("bzImage path only"));
        assert!(err("  ", None).contains("expected"));
    }

    #[test]
    fn cache_dir_prefers_the_variable() {
        assert_eq!(
            cache_dir_from(Some("/c".into()), Some("/home/u/.cache".into())).unwrap(),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_dir_from(Some("".into()), Some("/home/u/.cache".into())).unwrap(),
            PathBuf::from("/home/u/.cache/kiln")
        );
        assert!(matches!(
            cache_dir_from(None, None),
            Err(KernelError::NoCacheDir)
        ));
    }

    /// A minimal bzImage head: boot flag, `HdrS`, and a version string.
    fn fake_bzimage(version: &str) -> Vec<u8> {
        let mut img = vec![0u8; 0x1000];
        img[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        img[0x202..0x206].copy_from_slice(b"HdrS");
        let at = 0x800usize;
        img[0x20e..0x210].copy_from_slice(&u16::try_from(at - 0x200).unwrap().to_le_bytes());
        img[at..at + version.len()].copy_from_slice(version.as_bytes());
        img
    }

    #[test]
    fn path_kernel_reads_release_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let bz = dir.path().join("bzImage");
        std::fs::write(
            &bz,
            fake_bzimage("6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP"),
        )
        .unwrap();
        let modules = dir.path().join("lib/modules");
        std::fs::create_dir_all(modules.join("6.1.0-56-cloud-amd64")).unwrap();
        let config = dir.path().join("config");
        std::fs::write(&config, "CONFIG_KVM=m\n").unwrap();

        let k = resolve(&KernelSource::Path {
            bzimage: bz.clone(),
            modules_dir: Some(modules.clone()),
            config: Some(config),
        })
        .unwrap();
        assert_eq!(k.release, "6.1.0-56-cloud-amd64");
        assert_eq!(k.modules_dir, Some(modules.join("6.1.0-56-cloud-amd64")));
        assert!(k.config.as_ref().unwrap().is_module("KVM"));
        match &k.origin {
            KernelOrigin::Path { files } => {
                assert_eq!(files.len(), 2);
                assert_eq!(files[0].path, bz);
                assert_eq!(files[0].size, 0x1000);
                assert_eq!(files[0].sha256.len(), 64);
            }
            other => panic!("unexpected {other:?}"),
        }

        std::fs::write(&bz, b"\x7fELF not a bzImage").unwrap();
        let err = resolve(&KernelSource::Path {
            bzimage: bz,
            modules_dir: None,
            config: None,
        })
        .unwrap_err();
        assert!(matches!(err, KernelError::NotABzImage { .. }), "{err}");
    }

    fn synthetic_tree(root: &Path) {
        let m = |rel: &str, fields: &[&str]| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let elf = modinfo::tests::fake_module(fields);
            if rel.ends_with(".xz") {
                use std::io::Write;
                let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(&elf).unwrap();
                std::fs::write(p, e.finish().unwrap()).unwrap();
            } else {
                std::fs::write(p, elf).unwrap();
            }
        };
        m(
            "kernel/virt/lib/irqbypass.ko",
            &["depends=", "name=irqbypass"],
        );
        m(
            "kernel/arch/x86/kvm/kvm.ko.xz",
            &["depends=irqbypass", "name=kvm"],
        );
        m(
            "kernel/arch/x86/kvm/kvm-amd.ko",
            &["softdep=pre: ccp", "depends=kvm", "name=kvm_amd"],
        );
        m(
            "kernel/drivers/crypto/ccp/ccp.ko",
            &["depends=", "name=ccp"],
        );
        // An updated copy shadows the in-tree one, as with depmod.
        m(
            "updates/ccp.ko",
            &["alias=crypto-ccp", "depends=", "name=ccp"],
        );
        m(
            "kernel/lib/libcrc32c.ko",
            &["softdep=pre: crc32c", "depends=", "name=libcrc32c"],
        );
        m(
            "kernel/arch/x86/crypto/crc32c-intel.ko",
            &["alias=crc32c", "alias=cpu:type:x86,ven*", "depends="],
        );
        std::fs::write(root.join("modules.builtin"), "kernel/lib/crc32c.ko\n").unwrap();
        std::os::unix::fs::symlink("/nonexistent/headers", root.join("build")).unwrap();
    }

    #[test]
    fn module_index_from_modinfo_is_cached_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("lib/modules/6.1.0-test");
        synthetic_tree(&modules);
        let cache = dir.path().join("cache/modindex-v1");
        let kernel = Kernel {
            release: "6.1.0-test".into(),
            vmlinuz: dir.path().join("vmlinuz"),
            config: None,
            modules_dir: Some(modules.clone()),
            origin: KernelOrigin::Path { files: vec![] },
            index_cache: Some(cache.clone()),
        };
        let idx = module_index(&kernel).unwrap();
        let closure = idx.closure(&["kvm-amd", "crc32c"]).unwrap();
        let got: Vec<(&str, &str)> = closure
            .iter()
            .map(|e| (e.name.as_str(), e.path.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("ccp", "updates/ccp.ko"),
                ("irqbypass", "kernel/virt/lib/irqbypass.ko"),
                ("kvm", "kernel/arch/x86/kvm/kvm.ko.xz"),
                ("kvm_amd", "kernel/arch/x86/kvm/kvm-amd.ko"),
            ]
        );
        assert!(idx.is_builtin("crc32c"));
        // The soft dependency names an alias; the image's text names the module.
        let crc = idx.closure(&["libcrc32c"]).unwrap();
        assert_eq!(
            crc.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["crc32c_intel", "libcrc32c"]
        );
        assert_eq!(
            idx.to_modules_softdep(&crc),
            "softdep libcrc32c pre: crc32c_intel\n"
        );
        let alias = std::fs::read_to_string(cache.join("modules.alias")).unwrap();
        assert!(alias.contains("alias crc32c crc32c_intel\n") && !alias.contains("cpu:type"));
        let dep = std::fs::read_to_string(cache.join("modules.dep")).unwrap();
        assert!(dep.contains(
            "kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko.xz kernel/virt/lib/irqbypass.ko\n"
        ));
        assert!(!dep.contains("kernel/drivers/crypto/ccp/ccp.ko"));

        // The second time comes from the cache: remove a module to prove
        // the tree is not read again, and get the same answer.
        std::fs::remove_file(modules.join("kernel/virt/lib/irqbypass.ko")).unwrap();
        let again = module_index(&kernel).unwrap();
        assert_eq!(again.closure(&["kvm-amd"]).unwrap(), closure);
    }

    #[test]
    fn module_index_prefers_an_installed_modules_dep() {
        // No .ko files at all: the index can only come from the text files.
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("6.1.0-host");
        std::fs::create_dir_all(&modules).unwrap();
        let write = |name: &str, text: &str| std::fs::write(modules.join(name), text).unwrap();
        write(
            "modules.dep",
            "kernel/kvm-amd.ko: kernel/kvm.ko kernel/irqbypass.ko\nkernel/kvm.ko: kernel/irqbypass.ko\nkernel/irqbypass.ko:\nkernel/crc32c-intel.ko:\n",
        );
        write(
            "modules.softdep",
            "# Soft dependencies\nsoftdep kvm_amd pre: crc32c\n",
        );
        write(
            "modules.alias",
            "alias pci:v*d*sv*sd*bc*sc*i* kvm\nalias crc32c crc32c_intel\n",
        );
        write("modules.builtin", "kernel/vfio.ko\n");
        let kernel = Kernel {
            release: "6.1.0-host".into(),
            vmlinuz: dir.path().join("vmlinuz"),
            config: None,
            modules_dir: Some(modules.clone()),
            origin: KernelOrigin::Host { files: vec![] },
            index_cache: None,
        };
        let idx = module_index(&kernel).unwrap();
        let c = idx.closure(&["kvm_amd", "vfio"]).unwrap();
        let got: Vec<&str> = c.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(got, ["crc32c_intel", "irqbypass", "kvm", "kvm_amd"]);
        assert!(idx.is_builtin("vfio"));
    }

    #[test]
    fn host_kernel_is_found_or_its_absence_explained() {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let release = release.trim();
        match resolve(&KernelSource::Host) {
            Ok(k) => {
                assert_eq!(k.release, release);
                assert!(k.vmlinuz.is_file());
                assert!(matches!(k.origin, KernelOrigin::Host { ref files } if !files.is_empty()));
            }
            Err(KernelError::HostKernelMissing { release: r, path }) => {
                assert_eq!(r, release);
                assert_eq!(path, PathBuf::from(format!("/boot/vmlinuz-{release}")));
                assert!(!path.exists());
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn a_missing_dependency_fails_only_the_modules_that_load_it() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("m");
        synthetic_tree(&modules);
        std::fs::remove_file(modules.join("kernel/virt/lib/irqbypass.ko")).unwrap();
        let cache = dir.path().join("modindex-v1");
        let kernel = Kernel {
            release: "x".into(),
            vmlinuz: dir.path().join("vmlinuz"),
            config: None,
            modules_dir: Some(modules.clone()),
            origin: KernelOrigin::Path { files: vec![] },
            index_cache: Some(cache.clone()),
        };
        for pass in ["scanned", "cached"] {
            let tree = module_tree(&kernel).unwrap();
            assert_eq!(
                tree.missing,
                BTreeMap::from([("kvm".to_string(), vec!["irqbypass".to_string()])]),
                "{pass}"
            );
            // ccp and libcrc32c do not need the missing module.
            let fine = ["ccp", "libcrc32c"];
            tree.check(&fine, &tree.index.closure(&fine).unwrap())
                .unwrap();
            let wanted = ["ccp", "kvm-amd"];
            let closure = tree.index.closure(&wanted).unwrap();
            let err = tree.check(&wanted, &closure).unwrap_err();
            match &err {
                KernelError::MissingDependency {
                    chain, dependency, ..
                } => {
                    assert_eq!(chain, &["kvm-amd", "kvm"], "{pass}");
                    assert_eq!(dependency, "irqbypass");
                }
                other => panic!("unexpected {other}"),
            }
            let text = err.to_string();
            assert!(
                text.starts_with("Module kvm-amd → kvm needs \"irqbypass\", which is not in "),
                "{text}"
            );
            // The module asked for lacks one itself.
            let err = tree.check(&["kvm"], &tree.index.closure(&["kvm"]).unwrap());
            assert!(
                matches!(&err, Err(KernelError::MissingDependency { chain, .. }) if chain == &["kvm"]),
                "{err:?}"
            );
            assert!(cache.join("modules.missing").is_file());
        }
        let none = Kernel {
            modules_dir: None,
            ..kernel
        };
        assert!(matches!(
            module_index(&none),
            Err(KernelError::NoModules { .. })
        ));
    }

    #[test]
    fn compressed_modules_are_read() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("6.8.0-test");
        let put = |rel: &str, data: Vec<u8>| {
            let p = modules.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        };
        let elf = |f: &[&str]| modinfo::tests::fake_module(f);
        put(
            "kernel/drivers/vfio/vfio.ko.zst",
            zstd::encode_all(&elf(&["depends=iommufd", "name=vfio"])[..], 3).unwrap(),
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf(&["depends=", "name=iommufd"])).unwrap();
        put(
            "kernel/drivers/iommu/iommufd/iommufd.ko.gz",
            gz.finish().unwrap(),
        );
        let kernel = Kernel {
            release: "6.8.0-test".into(),
            vmlinuz: dir.path().join("vmlinuz"),
            config: None,
            modules_dir: Some(modules),
            origin: KernelOrigin::Path { files: vec![] },
            index_cache: None,
        };
        let idx = module_index(&kernel).unwrap();
        let c = idx.closure(&["vfio"]).unwrap();
        let got: Vec<(&str, &str)> = c
            .iter()
            .map(|e| (e.name.as_str(), e.path.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("iommufd", "kernel/drivers/iommu/iommufd/iommufd.ko.gz"),
                ("vfio", "kernel/drivers/vfio/vfio.ko.zst")
            ]
        );
    }

    #[test]
    fn finds_each_package_layout() {
        let dir = tempfile::tempdir().unwrap();
        let put = |root: &Path, rel: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, rel).unwrap();
        };
        // Debian 12 / Ubuntu: boot/, lib/modules (Ubuntu's modules in their
        // own package, unpacked into the same tree).
        let old = dir.path().join("old");
        put(&old, "boot/vmlinuz-6.8.0-151-generic");
        put(&old, "boot/config-6.8.0-151-generic");
        put(&old, "boot/System.map-6.8.0-151-generic");
        put(&old, "lib/modules/6.8.0-151-generic/kernel/a.ko.zst");
        let l = find_layout(&old, "p").unwrap();
        assert_eq!(
            l,
            Layout {
                release: "6.8.0-151-generic".into(),
                vmlinuz: old.join("boot/vmlinuz-6.8.0-151-generic"),
                config: Some(old.join("boot/config-6.8.0-151-generic")),
                modules_dir: Some(old.join("lib/modules/6.8.0-151-generic")),
            }
        );
        // Debian 7.x: all under usr/lib/modules/<release>; a boot/ symlink
        // (into the host's /usr) and an empty lib/modules/<release> are
        // not taken.
        let new = dir.path().join("new");
        let rel = "7.3.1+bpo-cloud-amd64";
        put(&new, &format!("usr/lib/modules/{rel}/vmlinuz"));
        put(&new, &format!("usr/lib/modules/{rel}/config"));
        put(&new, &format!("usr/lib/modules/{rel}/kernel/b.ko.xz"));
        std::fs::create_dir_all(new.join(format!("lib/modules/{rel}"))).unwrap();
        std::fs::create_dir_all(new.join("boot")).unwrap();
        std::os::unix::fs::symlink(
            format!("/usr/lib/modules/{rel}/vmlinuz"),
            new.join(format!("boot/vmlinuz-{rel}")),
        )
        .unwrap();
        let l = find_layout(&new, "p").unwrap();
        assert_eq!(l.release, rel);
        assert_eq!(
            l.vmlinuz,
            new.join(format!("usr/lib/modules/{rel}/vmlinuz"))
        );
        assert_eq!(
            l.config,
            Some(new.join(format!("usr/lib/modules/{rel}/config")))
        );
        assert_eq!(
            l.modules_dir,
            Some(new.join(format!("usr/lib/modules/{rel}")))
        );
        // No kernel, or two.
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(matches!(
            find_layout(&empty, "p"),
            Err(KernelError::NoVmlinuz { .. })
        ));
        put(&new, "boot/vmlinuz-7.2.0-cloud-amd64");
        assert!(matches!(
            find_layout(&new, "p"),
            Err(KernelError::SeveralKernels { found, .. }) if found.len() == 2
        ));
    }
}
