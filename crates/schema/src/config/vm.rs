//! One VM as its author writes it (a VM config file, or a `[[vm]]` of an
//! image): what to boot, with how much, what to pass through, and what
//! `kiln test` expects of it. Its sources may be anything `kiln build`
//! resolves; [`VmSpec::resolve`] turns it into the run form
//! ([`super::run::VmConfig`]) a VMM boots. The tables both forms share are
//! defined here.

use super::error::ConfigError;
use super::locate::KeyPath;
use super::pci::PciSelector;
use super::run::{BootConfig, VmConfig};
use super::source::{InitrdBuild, InitrdSource, Source};
use super::units::{ByteSize, Duration};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};

/// Smallest guest RAM kiln accepts: below this neither hello nor Linux fit
/// their boot structures, page tables and stack.
pub const MIN_MEMORY: ByteSize = ByteSize::mib(16);

/// The authoring form of a VM: the VM config users write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// `[a-z0-9_-]`, unique in an appliance; used in status lines and paths.
    pub name: VmName,
    #[serde(default = "one")]
    pub vcpus: u8,
    /// Guest RAM, with a unit: `"128M"`.
    pub memory: ByteSize,
    /// Back guest RAM with huge pages.
    #[serde(default)]
    pub hugepages: bool,
    /// The KVM device node this VM runs on.
    #[serde(default = "default_hypervisor")]
    pub hypervisor: PathBuf,
    pub boot: BootSpec,
    /// PCI devices passed through with VFIO.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pci: Vec<PciAssignment>,
    /// How the VMM reaches the assigned devices.
    #[serde(default, skip_serializing_if = "VfioConfig::is_default")]
    pub vfio: VfioConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub restart: RestartConfig,
    /// What `kiln test` expects of this VM's console.
    #[serde(default)]
    pub test: TestExpectations,
}

pub(super) fn one() -> u8 {
    1
}

pub(super) fn default_hypervisor() -> PathBuf {
    PathBuf::from("/dev/kvm")
}

/// `[boot]` as written: sources of any kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    /// A bzImage or an ELF with a PVH note.
    pub kernel: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<InitrdSource>,
    #[serde(default)]
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciAssignment {
    /// A bus address or a vendor:device pair.
    pub device: PciSelector,
    /// With a vendor:device pair, which match (in bus order) to take.
    #[serde(default)]
    pub index: usize,
    /// Also bind the other endpoints of the device's IOMMU group to vfio-pci.
    #[serde(default)]
    pub bind_group: bool,
    /// Show the guest the device's expansion ROM (VBIOS, option ROM)
    /// through its ROM BAR; hidden otherwise.
    #[serde(default)]
    pub rom: bool,
}

/// The `[vfio]` table: which kernel interface the VMM uses for the VM's
/// `[[pci]]` devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfioConfig {
    #[serde(default)]
    pub backend: VfioBackend,
}

impl VfioConfig {
    pub(super) fn is_default(&self) -> bool {
        *self == VfioConfig::default()
    }
}

/// `vfio.backend`: the iommufd/cdev interface (Linux 6.6+ with
/// CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV), the legacy container/group
/// interface (type1v2), or whichever the host offers (`auto`: iommufd when
/// it is there for every device, else legacy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VfioBackend {
    #[default]
    Auto,
    Iommufd,
    Legacy,
}

impl fmt::Display for VfioBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VfioBackend::Auto => "auto",
            VfioBackend::Iommufd => "iommufd",
            VfioBackend::Legacy => "legacy",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Copy the guest's serial output to the runtime's console.
    #[serde(default = "yes")]
    pub echo: bool,
    /// Also write it to this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            echo: true,
            log: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Never,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    #[serde(default)]
    pub policy: RestartPolicy,
    /// Most restarts before the VM counts as failed.
    #[serde(default = "default_max_restarts")]
    pub max: u32,
    /// First delay before a restart; doubled after each one.
    #[serde(default = "default_backoff")]
    pub backoff: Duration,
}

fn default_max_restarts() -> u32 {
    3
}

fn default_backoff() -> Duration {
    Duration::secs(1)
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            policy: RestartPolicy::Never,
            max: default_max_restarts(),
            backoff: default_backoff(),
        }
    }
}

/// Per-VM expectations for `kiln test`: regular expressions matched against
/// the VM's console lines.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestExpectations {
    /// Each must appear for the VM to pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect: Vec<String>,
    /// Any of these failing the VM at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fail: Vec<String>,
    /// How long the VM may take to report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// A VM name: `[a-z0-9_-]`, 1 to 32 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmName(String);

impl VmName {
    pub fn new(name: &str) -> Result<Self, String> {
        let valid = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(VmName(name.to_string()))
        } else {
            Err(format!(
                "\"{name}\" is not a valid VM name; expected 1 to 32 characters of a-z, 0-9, '_' and '-'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for VmName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for VmName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = VmName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a VM name of a-z, 0-9, '_' and '-'")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<VmName, E> {
                VmName::new(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// One thing a VM boots from, as its author named it; [`VmSpec::resolve`]
/// asks for each to be made a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootInput<'a> {
    /// `boot.kernel`.
    Kernel(&'a Source),
    /// `boot.initrd` given as a source.
    Initrd(&'a Source),
    /// `boot.initrd = { init = ... }`: an initramfs to build.
    BuiltInitrd(&'a InitrdBuild),
}

impl BootInput<'_> {
    /// The key under `[boot]` that names this input.
    pub fn key(&self) -> &'static str {
        match self {
            BootInput::Kernel(_) => "kernel",
            BootInput::Initrd(_) | BootInput::BuiltInitrd(_) => "initrd",
        }
    }
}

impl VmSpec {
    /// Checks what the types cannot: value ranges, and that every file the
    /// VM boots from exists. `at` is where this VM sits in `src` (the root
    /// for a VM config file, `vm[i]` inside an image or appliance), and
    /// relative paths resolve against `base_dir`.
    pub fn check(
        &self,
        file: &Path,
        src: &str,
        at: &KeyPath,
        base_dir: &Path,
    ) -> Result<(), ConfigError> {
        check_size(self.vcpus, self.memory, file, src, at)?;
        let boot = at.clone().key("boot");
        let check_source = |key: KeyPath, source: &Source| match source {
            Source::Path(p) => check_file(file, src, &key, p, base_dir),
            Source::Cargo(_) | Source::Debian(_) => Ok(()),
        };
        check_source(boot.clone().key("kernel"), &self.boot.kernel)?;
        match &self.boot.initrd {
            Some(InitrdSource::File(s)) => check_source(boot.clone().key("initrd"), s)?,
            Some(InitrdSource::Build(b)) => {
                check_source(boot.clone().key("initrd").key("init"), &b.init)?
            }
            None => {}
        }
        Ok(())
    }

    /// The run form of this VM: `to_file` makes each boot input a file
    /// (kernel first, then the initrd) and says where the VMM finds it.
    /// The `[test]` table stays behind: it is `kiln test`'s, not the VMM's.
    pub fn resolve<E>(
        &self,
        mut to_file: impl FnMut(BootInput<'_>) -> Result<PathBuf, E>,
    ) -> Result<VmConfig, E> {
        let kernel = to_file(BootInput::Kernel(&self.boot.kernel))?;
        let initrd = match &self.boot.initrd {
            None => None,
            Some(InitrdSource::File(s)) => Some(to_file(BootInput::Initrd(s))?),
            Some(InitrdSource::Build(b)) => Some(to_file(BootInput::BuiltInitrd(b))?),
        };
        Ok(VmConfig {
            name: self.name.clone(),
            vcpus: self.vcpus,
            memory: self.memory,
            hugepages: self.hugepages,
            hypervisor: self.hypervisor.clone(),
            boot: BootConfig {
                kernel,
                initrd,
                cmdline: self.boot.cmdline.clone(),
            },
            pci: self.pci.clone(),
            vfio: self.vfio,
            console: self.console.clone(),
            restart: self.restart.clone(),
        })
    }
}

/// The range checks both forms share: at least one vCPU, and guest RAM of
/// at least [`MIN_MEMORY`] in whole pages.
pub(super) fn check_size(
    vcpus: u8,
    memory: ByteSize,
    file: &Path,
    src: &str,
    at: &KeyPath,
) -> Result<(), ConfigError> {
    let err = |key: &str, msg: String| ConfigError::at_key(file, src, &at.clone().key(key), msg);
    if vcpus == 0 {
        return Err(err("vcpus", "expected at least 1 vCPU".into()));
    }
    if memory < MIN_MEMORY {
        return Err(err(
            "memory",
            format!("{memory} is too little; expected at least {MIN_MEMORY}"),
        ));
    }
    if memory.bytes() % 4096 != 0 {
        return Err(err(
            "memory",
            format!("{memory} is not a whole number of 4 KiB pages"),
        ));
    }
    Ok(())
}

/// Checks that `path` (relative to `base_dir`) is a file, naming `key` if not.
pub(super) fn check_file(
    file: &Path,
    src: &str,
    key: &KeyPath,
    path: &Path,
    base_dir: &Path,
) -> Result<(), ConfigError> {
    let full = base_dir.join(path);
    if full.is_file() {
        return Ok(());
    }
    Err(ConfigError::at_key(
        file,
        src,
        key,
        format!(
            "file {} does not exist; expected a path relative to {}",
            full.display(),
            base_dir.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn vm(src: &str) -> Result<VmSpec, String> {
        parse::<VmSpec>(Path::new("configs/t.toml"), src).map_err(|e| e.to_string())
    }

    const GOOD: &str = "name = \"hello\"\nmemory = \"64M\"\n[boot]\nkernel = \"hello.elf\"\n";

    #[test]
    fn parses_a_minimal_vm() {
        let v = vm(GOOD).unwrap();
        assert_eq!(v.vcpus, 1);
        assert_eq!(v.memory, ByteSize::mib(64));
        assert_eq!(v.hypervisor, PathBuf::from("/dev/kvm"));
        assert_eq!(v.restart.policy, RestartPolicy::Never);
        assert!(v.console.echo);
    }

    #[test]
    fn misspelled_key_names_file_line_key_and_choices() {
        let e = vm("name = \"hello\"\nmemroy = \"64M\"\n[boot]\nkernel = \"k\"\n").unwrap_err();
        assert!(
            e.starts_with("configs/t.toml:2:1: key `memroy`: unknown key; expected one of"),
            "{e}"
        );
        assert!(e.contains("`memory`"), "{e}");
    }

    #[test]
    fn unitless_and_negative_memory() {
        let e = vm("name = \"a\"\nmemory = 512\n[boot]\nkernel = \"k\"\n").unwrap_err();
        assert!(
            e.starts_with("configs/t.toml:2:10: key `memory`: the number 512 has no unit"),
            "{e}"
        );
        let e = vm("name = \"a\"\nmemory = \"-64M\"\n[boot]\nkernel = \"k\"\n").unwrap_err();
        assert!(e.contains("key `memory`: expected a positive size"), "{e}");
    }

    #[test]
    fn missing_required_key() {
        let e = vm("name = \"a\"\n[boot]\nkernel = \"k\"\n").unwrap_err();
        assert!(
            e.contains("key `memory`: this required key is missing"),
            "{e}"
        );
    }

    #[test]
    fn malformed_pci_selector_is_located() {
        let e = vm(&format!("{GOOD}\n[[pci]]\ndevice = \"12345:11e8\"\n")).unwrap_err();
        assert!(
            e.starts_with("configs/t.toml:7:10: key `pci[0].device`"),
            "{e}"
        );
        assert!(e.contains("vendor id"), "{e}");
    }

    #[test]
    fn pci_rom_defaults_to_hidden_and_a_bad_value_is_located() {
        let v = vm(&format!("{GOOD}\n[[pci]]\ndevice = \"1234:11e8\"\n")).unwrap();
        assert!(!v.pci[0].rom);
        let v = vm(&format!(
            "{GOOD}\n[[pci]]\ndevice = \"1234:11e8\"\nrom = true\n"
        ))
        .unwrap();
        assert!(v.pci[0].rom);
        let e = vm(&format!(
            "{GOOD}\n[[pci]]\ndevice = \"1234:11e8\"\nrom = \"yes\"\n"
        ))
        .unwrap_err();
        assert!(e.starts_with("configs/t.toml:8:7: key `pci[0].rom`"), "{e}");
    }

    #[test]
    fn bad_name_and_restart_policy() {
        let e = vm("name = \"Hello\"\nmemory = \"64M\"\n[boot]\nkernel = \"k\"\n").unwrap_err();
        assert!(
            e.contains("key `name`") && e.contains("not a valid VM name"),
            "{e}"
        );
        let e = vm(&format!("{GOOD}[restart]\npolicy = \"sometimes\"\n")).unwrap_err();
        assert!(
            e.contains("key `restart.policy`") && e.contains("on-failure"),
            "{e}"
        );
    }

    #[test]
    fn missing_kernel_file_is_reported_at_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let v = vm(GOOD).unwrap();
        let e = v
            .check(
                Path::new("configs/t.toml"),
                GOOD,
                &KeyPath::root(),
                dir.path(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("configs/t.toml:4:1: key `boot.kernel`: file "),
            "{e}"
        );
        assert!(e.contains("hello.elf does not exist"), "{e}");
        std::fs::write(dir.path().join("hello.elf"), b"x").unwrap();
        v.check(
            Path::new("configs/t.toml"),
            GOOD,
            &KeyPath::root(),
            dir.path(),
        )
        .unwrap();
    }

    #[test]
    fn too_little_memory() {
        let src = "name = \"a\"\nmemory = \"1M\"\n[boot]\nkernel = \"cargo:x\"\n";
        let e = vm(src)
            .unwrap()
            .check(Path::new("t.toml"), src, &KeyPath::root(), Path::new("."))
            .unwrap_err();
        assert!(
            e.to_string().contains("key `memory`: 1M is too little"),
            "{e}"
        );
    }

    #[test]
    fn initrd_forms() {
        let v = vm(&format!(
            "{GOOD}initrd = {{ init = \"cargo:kiln-guest-init\" }}\n"
        ))
        .unwrap();
        assert!(matches!(v.boot.initrd, Some(InitrdSource::Build(_))));
        let v = vm(&format!("{GOOD}initrd = \"initrd.img\"\n")).unwrap();
        assert!(matches!(
            v.boot.initrd,
            Some(InitrdSource::File(Source::Path(_)))
        ));
        let e = vm(&format!(
            "{GOOD}initrd = {{ init = \"x\", compresion = \"xz\" }}\n"
        ))
        .unwrap_err();
        assert!(e.contains("compresion"), "{e}");
    }

    #[test]
    fn vfio_backend_defaults_to_auto_and_is_located_when_wrong() {
        assert_eq!(vm(GOOD).unwrap().vfio.backend, VfioBackend::Auto);
        let v = vm(&format!("{GOOD}[vfio]\nbackend = \"iommufd\"\n")).unwrap();
        assert_eq!(v.vfio.backend, VfioBackend::Iommufd);
        let text = toml::to_string(&v).unwrap();
        assert!(text.contains("[vfio]\nbackend = \"iommufd\""), "{text}");
        assert_eq!(vm(&text).unwrap(), v);
        // The default is left out of what init hands the VMM.
        assert!(!toml::to_string(&vm(GOOD).unwrap())
            .unwrap()
            .contains("vfio"));
        let e = vm(&format!("{GOOD}[vfio]\nbackend = \"cdev\"\n")).unwrap_err();
        assert!(
            e.starts_with("configs/t.toml:6:11: key `vfio.backend`"),
            "{e}"
        );
        assert!(e.contains("`auto`, `iommufd`, `legacy`"), "{e}");
        let e = vm(&format!("{GOOD}[vfio]\nbakend = \"legacy\"\n")).unwrap_err();
        assert!(e.contains("key `vfio.bakend`: unknown key"), "{e}");
    }

    #[test]
    fn round_trips_through_toml() {
        let v = vm(&format!(
            "{GOOD}[[pci]]\ndevice = \"1234:11e8\"\n[test]\nexpect = [\"ok\"]\ntimeout = \"30s\"\n"
        ))
        .unwrap();
        let text = toml::to_string(&v).unwrap();
        assert_eq!(vm(&text).unwrap(), v);
    }
}
