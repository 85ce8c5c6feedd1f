//! The image config (`images/*.toml`): which kernel, which modules, how the
//! initramfs is packed, which VMs the appliance runs, and the target that
//! `kiln run` / `kiln test` boot it on.

use crate::compress::Compression;
use kiln_schema::config::{self, ByteSize, ConfigError, KeyPath, ModulesConfig, OnDone, VmSpec};
use kiln_schema::kmod::ModuleIndex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Names the image; `[a-z0-9_-]`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub kernel: KernelSection,
    #[serde(default)]
    pub modules: Option<ModulesConfig>,
    #[serde(default)]
    pub initramfs: InitramfsSection,
    #[serde(default)]
    pub output: OutputSection,
    #[serde(default)]
    pub appliance: ApplianceSection,
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// VM configs by path, relative to this file.
    #[serde(default)]
    pub vms: Vec<PathBuf>,
    /// VMs written inline.
    #[serde(default)]
    pub vm: Vec<VmSpec>,
    #[serde(default)]
    pub target: TargetSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSection {
    /// `debian:<package>`, `host`, or a path to a bzImage.
    pub source: String,
    /// For a bzImage path: its `lib/modules/<release>` directory.
    #[serde(default)]
    pub modules_dir: Option<PathBuf>,
    /// For a bzImage path: its kernel config (checks the initramfs compression).
    #[serde(default)]
    pub config: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// For `debian:`: the apt sources to take the package from, instead of
    /// the host's.
    #[serde(default)]
    pub apt: Option<AptSection>,
}

/// `[kernel.apt]`: where a `debian:` kernel comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptSection {
    /// One-line apt sources, e.g.
    /// `"deb http://archive.ubuntu.com/ubuntu noble-updates main"`.
    pub sources: Vec<String>,
    /// The key that signs them (`.gpg` or `.asc`), relative to the image
    /// file; without it, the host's apt keys are trusted.
    #[serde(default)]
    pub keyring: Option<PathBuf>,
}

pub fn default_cmdline() -> String {
    "console=ttyS0 panic=-1 quiet".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitramfsSection {
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Compression level; the format's default when absent.
    #[serde(default)]
    pub level: Option<i32>,
}

fn default_compression() -> Compression {
    Compression::Zstd
}

impl Default for InitramfsSection {
    fn default() -> Self {
        InitramfsSection {
            compression: default_compression(),
            level: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `vmlinuz` + `initramfs.cpio.<ext>` + `cmdline` (always produced).
    Initramfs,
    /// `kiln.efi`: a unified kernel image.
    Uki,
    /// `disk.img`: a GPT disk with an EFI system partition.
    Disk,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    #[serde(default = "default_formats")]
    pub formats: Vec<Format>,
    /// Secure Boot: sign `kiln.efi` (and so the disk's `BOOTX64.EFI`).
    #[serde(default)]
    pub signing: Option<SigningSection>,
}

/// `[output.signing]`: the db key and certificate `kiln.efi` is
/// Authenticode-signed with (`kiln keys` makes them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSection {
    /// The private key: a PEM file relative to the image file, or a
    /// PKCS#11 URI (`pkcs11:token=...;object=...`) with `pkcs11_module`.
    pub key: String,
    /// The key's X.509 certificate (PEM), relative to the image file.
    pub cert: PathBuf,
    /// The PKCS#11 module (a `.so`) that holds a `pkcs11:` key.
    #[serde(default)]
    pub pkcs11_module: Option<PathBuf>,
}

fn default_formats() -> Vec<Format> {
    vec![Format::Initramfs]
}

impl Default for OutputSection {
    fn default() -> Self {
        OutputSection {
            formats: default_formats(),
            signing: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceSection {
    #[serde(default)]
    pub on_done: OnDone,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// A prebuilt static kiln-runtime; by default it is built from the
    /// workspace holding the image, or taken from beside the kiln binary.
    #[serde(default)]
    pub binary: Option<PathBuf>,
}

/// The machine `kiln run` and `kiln test` boot the image on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    #[serde(default = "default_target_memory")]
    pub memory: ByteSize,
    #[serde(default = "default_smp")]
    pub smp: u8,
    /// Extra QEMU `-device` arguments, e.g. `"edu,dma_mask=0xffffffffffffffff"`.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Any other QEMU arguments, appended last.
    #[serde(default)]
    pub qemu_args: Vec<String>,
}

/// The range of `target.memory` (the emulated machine's RAM).
pub const TARGET_MEMORY_RANGE: (ByteSize, ByteSize) = (ByteSize::mib(128), ByteSize::gib(1024));

fn default_target_memory() -> ByteSize {
    ByteSize::mib(2048)
}

fn default_smp() -> u8 {
    1
}

impl Default for TargetSection {
    fn default() -> Self {
        TargetSection {
            memory: default_target_memory(),
            smp: default_smp(),
            devices: Vec::new(),
            qemu_args: Vec::new(),
        }
    }
}

/// One VM of an image, with where it was written (for error locations and
/// for resolving its relative paths).
#[derive(Debug, Clone)]
pub struct VmEntry {
    pub config: VmSpec,
    /// The file it came from: a VM config, or the image file itself.
    pub file: PathBuf,
    pub src: String,
    /// Its place in `file` (root for a VM config file, `vm[i]` inline).
    pub at: KeyPath,
    pub base_dir: PathBuf,
}

/// A loaded, checked image with all its VMs.
#[derive(Debug, Clone)]
pub struct Image {
    pub config: ImageConfig,
    pub file: PathBuf,
    pub src: String,
    pub dir: PathBuf,
    pub vms: Vec<VmEntry>,
}

/// Why the built-in default image did not load.
#[derive(Debug, thiserror::Error)]
pub enum DefaultImageError {
    #[error(transparent)]
    Missing(#[from] crate::installed::InstalledError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl Image {
    /// Loads an image file, its VM configs, and checks every value and path.
    pub fn load(file: &Path) -> Result<Image, ConfigError> {
        let (config, src): (ImageConfig, String) = config::load(file)?;
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        Self::from_parts(config, file, src, dir)
    }

    /// The built-in default appliance (`kiln build` with no IMAGE): the
    /// hello image installed beside kiln, else the one in the source tree
    /// kiln was built from (see [`crate::installed`]).
    pub fn load_default() -> Result<Image, DefaultImageError> {
        Ok(Image::load(&crate::installed::default_image()?)?)
    }

    pub fn from_parts(
        config: ImageConfig,
        file: &Path,
        src: String,
        dir: PathBuf,
    ) -> Result<Image, ConfigError> {
        let err = |key: KeyPath, msg: String| ConfigError::at_key(file, &src, &key, msg);
        if kiln_schema::config::VmName::new(&config.name).is_err() {
            return Err(err(
                KeyPath::parse("name"),
                format!(
                    "\"{}\" is not a valid image name; expected a-z, 0-9, '_' and '-'",
                    config.name
                ),
            ));
        }
        if !config.output.formats.contains(&Format::Initramfs) {
            return Err(err(
                KeyPath::parse("output.formats"),
                "expected \"initramfs\" among the formats: every other format is built from it"
                    .into(),
            ));
        }
        if let Some(signing) = &config.output.signing {
            check_signing(signing, &config.output.formats, &dir)
                .map_err(|(key, msg)| err(key, msg))?;
        }
        if let Some(apt) = &config.kernel.apt {
            check_apt(apt, &config.kernel.source, &dir).map_err(|(key, msg)| err(key, msg))?;
        }
        if config.target.smp == 0 {
            return Err(err(
                KeyPath::parse("target.smp"),
                "expected at least 1 CPU".into(),
            ));
        }
        config
            .target
            .memory
            .check_range(TARGET_MEMORY_RANGE.0, TARGET_MEMORY_RANGE.1)
            .map_err(|m| err(KeyPath::parse("target.memory"), m))?;
        let mut vms = Vec::new();
        for (i, path) in config.vms.iter().enumerate() {
            let full = dir.join(path);
            let at = KeyPath::root().key("vms").index(i);
            if !full.is_file() {
                return Err(err(
                    at,
                    format!(
                        "VM config {} does not exist; expected a path relative to {}",
                        full.display(),
                        dir.display()
                    ),
                ));
            }
            let (vm, vsrc): (VmSpec, String) = config::load(&full)?;
            let base_dir = full
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.clone());
            vm.check(&full, &vsrc, &KeyPath::root(), &base_dir)?;
            vms.push(VmEntry {
                config: vm,
                file: full,
                src: vsrc,
                at: KeyPath::root(),
                base_dir,
            });
        }
        for (i, vm) in config.vm.iter().enumerate() {
            let at = KeyPath::root().key("vm").index(i);
            vm.check(file, &src, &at, &dir)?;
            vms.push(VmEntry {
                config: vm.clone(),
                file: file.to_path_buf(),
                src: src.clone(),
                at,
                base_dir: dir.clone(),
            });
        }
        // Names must be unique across both ways of declaring VMs: point at the
        // second declaration, in the image file.
        let mut seen = std::collections::BTreeMap::new();
        for (n, entry) in vms.iter().enumerate() {
            let name = entry.config.name.as_str();
            if let Some(first) = seen.insert(name.to_string(), n) {
                let key = if n < config.vms.len() {
                    KeyPath::root().key("vms").index(n)
                } else {
                    KeyPath::root()
                        .key("vm")
                        .index(n - config.vms.len())
                        .key("name")
                };
                let first_file = vms[first].file.display();
                return Err(err(
                    key,
                    format!("VM name \"{name}\" is used twice (first in {first_file}); expected each VM to have its own name"),
                ));
            }
        }
        if vms.is_empty() {
            return Err(err(
                KeyPath::root(),
                "the image declares no VM; expected `vms = [\"../configs/x.toml\"]` or a `[[vm]]` table".into(),
            ));
        }
        Ok(Image {
            config,
            file: file.to_path_buf(),
            src,
            dir,
            vms,
        })
    }

    /// Where a key of the image file is, for errors found later in the build.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::at_key(&self.file, &self.src, &KeyPath::parse(key), message)
    }

    /// The `[kernel.apt]` sources, the keyring's path resolved.
    pub fn apt_repo(&self) -> Option<crate::kernel::AptRepo> {
        self.config
            .kernel
            .apt
            .as_ref()
            .map(|a| crate::kernel::AptRepo {
                sources: a.sources.clone(),
                keyring: a.keyring.as_ref().map(|k| self.dir.join(k)),
            })
    }

    /// `[output.signing]`, paths resolved against the image file.
    pub fn signing(&self) -> Option<crate::secureboot::Signing> {
        use crate::secureboot::{Signing, SigningKey};
        let s = self.config.output.signing.as_ref()?;
        let key = match &s.pkcs11_module {
            Some(module) => SigningKey::Pkcs11 {
                uri: s.key.clone(),
                module: self.dir.join(module),
            },
            None => SigningKey::File(self.dir.join(&s.key)),
        };
        Some(Signing {
            key,
            cert: self.dir.join(&s.cert),
        })
    }

    /// Whether any VM passes a PCI device through.
    pub fn uses_pci(&self) -> bool {
        self.vms.iter().any(|v| !v.config.pci.is_empty())
    }

    /// The modules to load: the image's list, or KVM for both vendors plus
    /// VFIO when a VM assigns a device.
    pub fn modules(&self) -> ModulesConfig {
        if let Some(m) = &self.config.modules {
            return m.clone();
        }
        let mut load = vec!["kvm-amd".to_string(), "kvm-intel".to_string()];
        if self.uses_pci() {
            load.extend(["vfio-pci".to_string(), "vfio-iommu-type1".to_string()]);
        }
        ModulesConfig {
            load,
            params: Default::default(),
        }
    }

    /// [`Image::modules`] for a kernel with this module index: by default
    /// iommufd too, when a VM assigns a device and the kernel has it as a
    /// module, as the runtime then uses VFIO's iommufd/cdev interface
    /// (it looks for /dev/iommu, which only the loaded module makes).
    ///
    /// With a UEFI format (`uki`, `disk`), efivarfs too when it is a module,
    /// so PID 1 can read the firmware's Secure Boot state; the runtime skips
    /// it on a machine booted without UEFI (`kiln run`'s direct boot).
    pub fn modules_for(&self, index: &ModuleIndex) -> ModulesConfig {
        let mut modules = self.modules();
        if self.config.modules.is_none() && self.uses_pci() && index.get("iommufd").is_some() {
            modules.load.push("iommufd".to_string());
        }
        let uefi = self
            .config
            .output
            .formats
            .iter()
            .any(|f| matches!(f, Format::Uki | Format::Disk));
        if self.config.modules.is_none() && uefi && index.get("efivarfs").is_some() {
            modules.load.push("efivarfs".to_string());
        }
        modules
    }
}

/// Checks `[output.signing]`; the error's key and message.
fn check_signing(
    signing: &SigningSection,
    formats: &[Format],
    dir: &Path,
) -> Result<(), (KeyPath, String)> {
    let at = KeyPath::root().key("output").key("signing");
    if !formats
        .iter()
        .any(|f| matches!(f, Format::Uki | Format::Disk))
    {
        return Err((
            at,
            "signing applies to kiln.efi; expected \"uki\" or \"disk\" among output.formats".into(),
        ));
    }
    let exists = |key: &str, path: &Path| {
        let full = dir.join(path);
        if full.is_file() {
            Ok(())
        } else {
            Err((
                at.clone().key(key),
                format!(
                    "{} does not exist; expected a path relative to {} (`kiln keys DIR` writes DIR/db.key and DIR/db.crt)",
                    full.display(),
                    dir.display()
                ),
            ))
        }
    };
    exists("cert", &signing.cert)?;
    let uri = signing.key.starts_with("pkcs11:");
    match &signing.pkcs11_module {
        Some(module) if uri => exists("pkcs11_module", module),
        Some(_) => Err((
            at.clone().key("key"),
            format!("\"{}\" is not a PKCS#11 URI; with pkcs11_module, expected a key such as \"pkcs11:token=kiln;object=db\"", signing.key),
        )),
        None if uri => Err((
            at.clone().key("pkcs11_module"),
            "a pkcs11: key needs the module of its token; expected e.g. pkcs11_module = \"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so\"".into(),
        )),
        None => exists("key", Path::new(&signing.key)),
    }
}

/// Checks `[kernel.apt]`; the error's key and message.
fn check_apt(apt: &AptSection, source: &str, dir: &Path) -> Result<(), (KeyPath, String)> {
    let at = KeyPath::root().key("kernel").key("apt");
    if !source.trim().starts_with("debian:") {
        return Err((
            at,
            format!("apt sources go with a \"debian:<package>\" kernel source, not \"{source}\"; remove [kernel.apt] or name a package"),
        ));
    }
    if apt.sources.is_empty() {
        return Err((
            at.key("sources"),
            "expected at least one source, e.g. \"deb http://archive.ubuntu.com/ubuntu noble-updates main\"".into(),
        ));
    }
    for (i, line) in apt.sources.iter().enumerate() {
        crate::kernel::check_source_line(line).map_err(|reason| {
            (
                at.clone().key("sources").index(i),
                format!("\"{line}\" is not a valid apt source: {reason}"),
            )
        })?;
    }
    if let Some(k) = &apt.keyring {
        let key = at.clone().key("keyring");
        crate::kernel::check_keyring_name(k).map_err(|m| (key.clone(), m))?;
        let full = dir.join(k);
        if !full.is_file() {
            return Err((
                key,
                format!(
                    "keyring {} does not exist; expected a path relative to {}",
                    full.display(),
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    const VM: &str = "name = \"a\"\nmemory = \"64M\"\n[boot]\nkernel = \"cargo:kiln-hello\"\n";

    fn image(extra: &str) -> String {
        format!("name = \"t\"\nkernel = {{ source = \"debian:linux-image-cloud-amd64\" }}\n{extra}")
    }

    #[test]
    fn loads_vms_by_path_and_inline() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "configs/a.toml", VM);
        let img = write(
            d.path(),
            "images/t.toml",
            &image("vms = [\"../configs/a.toml\"]\n[[vm]]\nname = \"b\"\nmemory = \"32M\"\n[vm.boot]\nkernel = \"cargo:x\"\n"),
        );
        let i = Image::load(&img).unwrap();
        let names: Vec<_> = i.vms.iter().map(|v| v.config.name.to_string()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(i.config.initramfs.compression, Compression::Zstd);
        assert_eq!(i.modules().load, ["kvm-amd", "kvm-intel"]);
    }

    #[test]
    fn missing_vm_config_is_located_in_the_image() {
        let d = tempfile::tempdir().unwrap();
        let img = write(
            d.path(),
            "images/t.toml",
            &image("vms = [\n  \"../configs/nope.toml\",\n]\n"),
        );
        let e = Image::load(&img).unwrap_err().to_string();
        assert!(e.contains("t.toml:4:3: key `vms[0]`: VM config "), "{e}");
        assert!(e.contains("nope.toml does not exist"), "{e}");
    }

    #[test]
    fn duplicate_vm_name_across_files() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "configs/a.toml", VM);
        let img = write(
            d.path(),
            "images/t.toml",
            &image("vms = [\"../configs/a.toml\"]\n[[vm]]\nname = \"a\"\nmemory = \"32M\"\n[vm.boot]\nkernel = \"cargo:x\"\n"),
        );
        let e = Image::load(&img).unwrap_err().to_string();
        assert!(
            e.contains("t.toml:5:1: key `vm[0].name`: VM name \"a\" is used twice (first in "),
            "{e}"
        );
    }

    #[test]
    fn errors_inside_a_referenced_vm_config_name_that_file() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "configs/a.toml",
            "name = \"a\"\nmemory = \"64\"\n[boot]\nkernel = \"k\"\n",
        );
        let img = write(
            d.path(),
            "images/t.toml",
            &image("vms = [\"../configs/a.toml\"]\n"),
        );
        let e = Image::load(&img).unwrap_err().to_string();
        assert!(
            e.contains("configs/a.toml:2:10: key `memory`: \"64\" has no unit"),
            "{e}"
        );
    }

    #[test]
    fn target_memory_and_inline_vm_values_are_range_checked() {
        let d = tempfile::tempdir().unwrap();
        let inline = "[[vm]]\nname = \"b\"\nmemory = \"32M\"\n[vm.boot]\nkernel = \"cargo:x\"\n";
        let img = write(
            d.path(),
            "images/t.toml",
            &image(&format!("[target]\nmemory = \"2T\"\n{inline}")),
        );
        let e = Image::load(&img).unwrap_err().to_string();
        assert!(
            e.contains("t.toml:4:1: key `target.memory`: 2T is out of range; expected a size from 128M to 1T"),
            "{e}"
        );
        let img = write(
            d.path(),
            "images/t.toml",
            &image(&format!("{inline}[vm.restart]\nbackoff = \"2h\"\n")),
        );
        let e = Image::load(&img).unwrap_err().to_string();
        assert!(
            e.contains("t.toml:9:1: key `vm[0].restart.backoff`: 2h is out of range; expected a duration from 1ms to 1h"),
            "{e}"
        );
    }

    #[test]
    fn missing_kernel_file_of_an_inline_vm() {
        let d = tempfile::tempdir().unwrap();
        let img = write(
            d.path(),
            "images/t.toml",
            &image("[[vm]]\nname = \"b\"\nmemory = \"32M\"\n[vm.boot]\nkernel = \"guests/missing.elf\"\n"),
        );
        let e = Image::load(&img).unwrap_err().to_string();
        assert!(
            e.contains("t.toml:7:1: key `vm[0].boot.kernel`: file "),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_in_the_image() {
        let d = tempfile::tempdir().unwrap();
        let img = write(
            d.path(),
            "images/t.toml",
            &image("[initramfs]\ncompression = \"bzip2\"\n"),
        );
        let e = Image::load(&img).unwrap_err().to_string();
        assert!(
            e.contains("t.toml:4:15: key `initramfs.compression`"),
            "{e}"
        );
        let img = write(
            d.path(),
            "images/u.toml",
            &image("[target]\nmemroy = \"1G\"\n"),
        );
        let e = Image::load(&img).unwrap_err().to_string();
        assert!(
            e.contains("u.toml:4:1: key `target.memroy`: unknown key; expected one of"),
            "{e}"
        );
        let img = write(d.path(), "images/v.toml", &image("[[vm]]\nname = \"b\"\nmemory = \"32M\"\nvcpus = -1\n[vm.boot]\nkernel = \"cargo:x\"\n"));
        let e = Image::load(&img).unwrap_err().to_string();
        assert!(e.contains("v.toml:6:9: key `vm[0].vcpus`"), "{e}");
    }

    #[test]
    fn apt_sources_are_read_and_checked() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "images/keys/u.gpg", "key");
        let img = |name: &str, kernel: &str| {
            write(
                d.path(),
                &format!("images/{name}.toml"),
                &format!("name = \"t\"\n{kernel}\n[[vm]]\nname = \"b\"\nmemory = \"32M\"\n[vm.boot]\nkernel = \"cargo:x\"\n"),
            )
        };
        let ok = img(
            "ok",
            "[kernel]\nsource = \"debian:linux-image-virtual\"\n[kernel.apt]\nsources = [\"deb http://archive.ubuntu.com/ubuntu noble-updates main\"]\nkeyring = \"keys/u.gpg\"",
        );
        let i = Image::load(&ok).unwrap();
        let repo = i.apt_repo().unwrap();
        assert_eq!(
            repo.sources,
            ["deb http://archive.ubuntu.com/ubuntu noble-updates main"]
        );
        assert_eq!(repo.keyring, Some(d.path().join("images/keys/u.gpg")));
        assert!(Image::load(&img("none", "kernel = { source = \"host\" }"))
            .unwrap()
            .apt_repo()
            .is_none());

        let e = |name: &str, apt: &str| {
            let f = img(
                name,
                &format!("[kernel]\nsource = \"debian:linux-image-virtual\"\n[kernel.apt]\n{apt}"),
            );
            Image::load(&f).unwrap_err().to_string()
        };
        let m = e(
            "a",
            "sources = [\"deb http://x/u noble main\"]\nkeyrings = \"k.gpg\"",
        );
        assert!(
            m.contains("a.toml:6:1: key `kernel.apt.keyrings`: unknown key"),
            "{m}"
        );
        let m = e(
            "b",
            "sources = [\n  \"deb http://x/u noble main\",\n  \"deb http://x/u noble\",\n]",
        );
        assert!(m.contains("b.toml:7:3: key `kernel.apt.sources[1]`: \"deb http://x/u noble\" is not a valid apt source: suite \"noble\" needs at least one component"), "{m}");
        let m = e("c", "sources = []");
        assert!(
            m.contains("c.toml:5:1: key `kernel.apt.sources`: expected at least one source"),
            "{m}"
        );
        let m = e(
            "d",
            "sources = [\"deb http://x/u noble main\"]\nkeyring = \"keys/missing.gpg\"",
        );
        assert!(
            m.contains("d.toml:6:1: key `kernel.apt.keyring`: keyring ")
                && m.contains("missing.gpg does not exist"),
            "{m}"
        );
        let m = e(
            "e",
            "sources = [\"deb http://x/u noble main\"]\nkeyring = \"keys/u.key\"",
        );
        assert!(
            m.contains("key `kernel.apt.keyring`: keys/u.key is not named .gpg or .asc"),
            "{m}"
        );
        let f = img(
            "f",
            "[kernel]\nsource = \"host\"\n[kernel.apt]\nsources = [\"deb http://x/u noble main\"]",
        );
        let m = Image::load(&f).unwrap_err().to_string();
        assert!(m.contains("f.toml:4:9: key `kernel.apt`: apt sources go with a \"debian:<package>\" kernel source"), "{m}");
    }

    #[test]
    fn signing_is_read_and_checked() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "keys/db.key", "k");
        write(d.path(), "keys/db.crt", "c");
        write(d.path(), "softhsm.so", "m");
        let img = |name: &str, output: &str| {
            write(
                d.path(),
                &format!("{name}.toml"),
                &image(&format!("[[vm]]\nname = \"b\"\nmemory = \"32M\"\n[vm.boot]\nkernel = \"cargo:x\"\n[output]\n{output}")),
            )
        };
        let ok = img(
            "ok",
            "formats = [\"initramfs\", \"disk\"]\nsigning = { key = \"keys/db.key\", cert = \"keys/db.crt\" }",
        );
        let s = Image::load(&ok).unwrap().signing().unwrap();
        assert_eq!(
            s.key,
            crate::secureboot::SigningKey::File(d.path().join("keys/db.key"))
        );
        assert_eq!(s.cert, d.path().join("keys/db.crt"));
        let hsm = img(
            "hsm",
            "formats = [\"initramfs\", \"uki\"]\n[output.signing]\nkey = \"pkcs11:token=kiln;object=db\"\ncert = \"keys/db.crt\"\npkcs11_module = \"softhsm.so\"",
        );
        assert_eq!(
            Image::load(&hsm).unwrap().signing().unwrap().key,
            crate::secureboot::SigningKey::Pkcs11 {
                uri: "pkcs11:token=kiln;object=db".into(),
                module: d.path().join("softhsm.so"),
            }
        );
        assert!(Image::load(&img("none", "")).unwrap().signing().is_none());

        let e = |name: &str, output: &str| Image::load(&img(name, output)).unwrap_err().to_string();
        let m = e(
            "a",
            "signing = { key = \"keys/db.key\", cert = \"keys/db.crt\" }",
        );
        assert!(m.contains("a.toml:9:1: key `output.signing`: signing applies to kiln.efi; expected \"uki\" or \"disk\""), "{m}");
        let m = e("b", "formats = [\"initramfs\", \"uki\"]\nsigning = { key = \"keys/nope.key\", cert = \"keys/db.crt\" }");
        assert!(
            m.contains("key `output.signing.key`: ") && m.contains("keys/nope.key does not exist"),
            "{m}"
        );
        let m = e("c", "formats = [\"initramfs\", \"uki\"]\nsigning = { key = \"pkcs11:object=db\", cert = \"keys/db.crt\" }");
        assert!(
            m.contains(
                "key `output.signing.pkcs11_module`: a pkcs11: key needs the module of its token"
            ),
            "{m}"
        );
        let m = e("d", "formats = [\"initramfs\", \"uki\"]\nsigning = { key = \"keys/db.key\", cert = \"keys/db.crt\", pkcs11_module = \"softhsm.so\" }");
        assert!(
            m.contains("key `output.signing.key`: \"keys/db.key\" is not a PKCS#11 URI"),
            "{m}"
        );
        let m = e("e", "formats = [\"initramfs\", \"uki\"]\nsigning = { key = \"keys/db.key\", crt = \"keys/db.crt\" }");
        assert!(
            m.contains("unknown field `crt`") || m.contains("unknown key"),
            "{m}"
        );
    }

    #[test]
    fn iommufd_is_loaded_for_passthrough_when_the_kernel_has_it() {
        let d = tempfile::tempdir().unwrap();
        let vm = |pci: &str| {
            format!(
                "[[vm]]\nname = \"b\"\nmemory = \"32M\"\n{pci}[vm.boot]\nkernel = \"cargo:x\"\n"
            )
        };
        let pci = "pci = [{ device = \"1234:11e8\" }]\n";
        let passthrough = Image::load(&write(d.path(), "images/p.toml", &image(&vm(pci)))).unwrap();
        let plain = Image::load(&write(d.path(), "images/q.toml", &image(&vm("")))).unwrap();
        let listed = Image::load(&write(
            d.path(),
            "images/r.toml",
            &image(&format!("[modules]\nload = [\"vfio-pci\"]\n{}", vm(pci))),
        ))
        .unwrap();
        let with = ModuleIndex::from_modules_dep(
            "kernel/vfio.ko: kernel/iommufd.ko\nkernel/iommufd.ko:\n",
            None,
            None,
        )
        .unwrap();
        let builtin =
            ModuleIndex::from_modules_dep("kernel/vfio.ko:\n", None, Some("kernel/iommufd.ko\n"))
                .unwrap();
        assert_eq!(
            passthrough.modules_for(&with).load,
            [
                "kvm-amd",
                "kvm-intel",
                "vfio-pci",
                "vfio-iommu-type1",
                "iommufd"
            ]
        );
        assert_eq!(
            passthrough.modules_for(&builtin).load,
            passthrough.modules().load
        );
        assert_eq!(plain.modules_for(&with).load, ["kvm-amd", "kvm-intel"]);
        assert_eq!(listed.modules_for(&with).load, ["vfio-pci"]);
    }

    #[test]
    fn efivarfs_is_loaded_for_uefi_formats_when_the_kernel_has_it() {
        let d = tempfile::tempdir().unwrap();
        let img = |name: &str, extra: &str| {
            let text = image(&format!(
                "[[vm]]\nname = \"b\"\nmemory = \"32M\"\n[vm.boot]\nkernel = \"cargo:x\"\n{extra}"
            ));
            Image::load(&write(d.path(), &format!("images/{name}.toml"), &text)).unwrap()
        };
        let module =
            ModuleIndex::from_modules_dep("kernel/fs/efivarfs/efivarfs.ko:\n", None, None).unwrap();
        let builtin = ModuleIndex::from_modules_dep(
            "kernel/kvm.ko:\n",
            None,
            Some("kernel/fs/efivarfs/efivarfs.ko\n"),
        )
        .unwrap();
        let disk = img("d", "[output]\nformats = [\"initramfs\", \"disk\"]\n");
        assert_eq!(
            disk.modules_for(&module).load,
            ["kvm-amd", "kvm-intel", "efivarfs"]
        );
        assert_eq!(disk.modules_for(&builtin).load, ["kvm-amd", "kvm-intel"]);
        let plain = img("p", "");
        assert_eq!(plain.modules_for(&module).load, ["kvm-amd", "kvm-intel"]);
        let listed = img(
            "l",
            "[modules]\nload = [\"kvm\"]\n[output]\nformats = [\"initramfs\", \"uki\"]\n",
        );
        assert_eq!(listed.modules_for(&module).load, ["kvm"]);
    }

    #[test]
    fn no_vms_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let img = write(d.path(), "images/t.toml", &image(""));
        let e = Image::load(&img).unwrap_err().to_string();
        assert!(e.contains("declares no VM"), "{e}");
    }
}
