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
/// Largest guest RAM (and VMM memory limit) kiln accepts.
pub const MAX_MEMORY: ByteSize = ByteSize::gib(1024);
/// What the VMM process may use beside guest RAM, by default: its own code,
/// heap and stacks, and the kernel memory charged to it (vCPUs, page
/// tables, VFIO). The default `limits.memory` is `memory` plus this.
pub const VMM_MEMORY_BUDGET: ByteSize = ByteSize::mib(64);
/// The range of `restart.backoff` and `restart.max_backoff`.
pub const BACKOFF_RANGE: (Duration, Duration) = (Duration::millis(1), Duration::secs(3600));
/// The range of `test.timeout`.
pub const TEST_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::millis(1), Duration::secs(24 * 3600));

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
    /// What the VMM process may use (PID 1 confines it in a cgroup).
    #[serde(default, skip_serializing_if = "LimitsConfig::is_default")]
    pub limits: LimitsConfig,
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
    /// For a `debian:` kernel, put [`FAST_BOOT_CMDLINE`] before `cmdline`
    /// (each word whose key `cmdline` does not set itself); `false` keeps
    /// `cmdline` as written.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub fast_boot: bool,
    /// For a `debian:` kernel, boot the uncompressed vmlinux `kiln build`
    /// takes out of its bzImage, through its PVH entry, instead of the
    /// bzImage (docs/config.md#booting-the-vmlinux-through-pvh).
    #[serde(default, skip_serializing_if = "is_false")]
    pub pvh: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a `debian:` guest kernel gets on its command line by default, to
/// boot fast in a kiln VM (docs/config.md#fast-boot): no crypto self-tests
/// (`cryptomgr.notests`, and the KDF self-test and the kprobe-event setup
/// skipped), the TSC trusted without a watchdog (kiln's vCPUs have a
/// constant, kvmclock-described TSC), no IO-APIC timer check, no probing of
/// the PS/2 mouse port or of serial ports kiln's board does not have.
pub const FAST_BOOT_CMDLINE: &[&str] = &[
    "cryptomgr.notests",
    "initcall_blacklist=crypto_kdf108_init,init_kprobe_trace",
    "tsc=reliable",
    "no_timer_check",
    "i8042.noaux",
    "8250.nr_uarts=1",
];

impl BootSpec {
    /// The command line the guest gets: [`FAST_BOOT_CMDLINE`] first for a
    /// `debian:` kernel with `fast_boot` on, less any word whose key
    /// (before `=`) the user's `cmdline` sets, then the user's `cmdline`.
    pub fn effective_cmdline(&self) -> String {
        if !self.fast_boot || !matches!(self.kernel, Source::Debian(_)) {
            return self.cmdline.clone();
        }
        let key = |w: &str| w.split('=').next().unwrap_or(w).to_string();
        let users: Vec<String> = self.cmdline.split_whitespace().map(key).collect();
        let mut words: Vec<&str> = FAST_BOOT_CMDLINE
            .iter()
            .copied()
            .filter(|w| !users.contains(&key(w)))
            .collect();
        words.extend(self.cmdline.split_whitespace());
        words.join(" ")
    }
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
    /// The delay never grows beyond this.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
}

fn default_max_backoff() -> Duration {
    Duration::secs(30)
}

impl RestartConfig {
    /// The delay before restart number `done + 1`: `backoff` doubled
    /// `done` times, at most `max_backoff`.
    pub fn delay(&self, done: u32) -> std::time::Duration {
        let cap = self.max_backoff.get();
        1u32.checked_shl(done)
            .and_then(|factor| self.backoff.get().checked_mul(factor))
            .map_or(cap, |d| d.min(cap))
    }
}

/// The `[limits]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// The VMM process's memory limit (cgroup `memory.max`): guest RAM the
    /// guest touches counts, and so does the VMM's own. Default: `memory`
    /// plus [`VMM_MEMORY_BUDGET`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
}

impl LimitsConfig {
    pub(super) fn is_default(&self) -> bool {
        *self == LimitsConfig::default()
    }

    /// The VMM process's memory limit for a VM of `guest` RAM:
    /// `limits.memory`, or guest RAM plus [`VMM_MEMORY_BUDGET`].
    pub fn vmm_memory(&self, guest: ByteSize) -> ByteSize {
        self.memory.unwrap_or(ByteSize(
            guest.bytes().saturating_add(VMM_MEMORY_BUDGET.bytes()),
        ))
    }
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
            max_backoff: default_max_backoff(),
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
        // The same rule the console grammar reads a guest line's prefix by.
        if kiln_abi::console::is_vm_name(name) {
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
        check_values(
            &Sizes {
                vcpus: self.vcpus,
                memory: self.memory,
                limits: &self.limits,
                restart: &self.restart,
            },
            file,
            src,
            at,
        )?;
        if let Some(t) = self.test.timeout {
            let (lo, hi) = TEST_TIMEOUT_RANGE;
            t.check_range(lo, hi).map_err(|m| {
                ConfigError::at_key(file, src, &at.clone().key("test").key("timeout"), m)
            })?;
        }
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
                cmdline: self.boot.effective_cmdline(),
            },
            pci: self.pci.clone(),
            vfio: self.vfio,
            console: self.console.clone(),
            restart: self.restart.clone(),
            limits: self.limits,
        })
    }
}

/// The values both forms range-check.
pub(super) struct Sizes<'a> {
    pub vcpus: u8,
    pub memory: ByteSize,
    pub limits: &'a LimitsConfig,
    pub restart: &'a RestartConfig,
}

/// The range checks both forms share: at least one vCPU, guest RAM from
/// [`MIN_MEMORY`] to [`MAX_MEMORY`] in whole pages, the VMM's memory limit
/// and the restart delays.
pub(super) fn check_values(
    v: &Sizes<'_>,
    file: &Path,
    src: &str,
    at: &KeyPath,
) -> Result<(), ConfigError> {
    let err = |key: &str, msg: String| {
        let path = key.split('.').fold(at.clone(), KeyPath::key);
        ConfigError::at_key(file, src, &path, msg)
    };
    if v.vcpus == 0 {
        return Err(err(
            "vcpus",
            "0 is out of range; expected 1 to 255 vCPUs".into(),
        ));
    }
    v.memory
        .check_range(MIN_MEMORY, MAX_MEMORY)
        .map_err(|m| err("memory", m))?;
    if v.memory.bytes() % 4096 != 0 {
        return Err(err(
            "memory",
            format!("{} is not a whole number of 4 KiB pages", v.memory),
        ));
    }
    if let Some(limit) = v.limits.memory {
        limit
            .check_range(MIN_MEMORY, MAX_MEMORY)
            .map_err(|m| err("limits.memory", m))?;
    }
    let (lo, hi) = BACKOFF_RANGE;
    let restart = v.restart;
    restart
        .backoff
        .check_range(lo, hi)
        .map_err(|m| err("restart.backoff", m))?;
    restart
        .max_backoff
        .check_range(lo, hi)
        .map_err(|m| err("restart.max_backoff", m))?;
    if restart.backoff > restart.max_backoff {
        return Err(err(
            "restart.backoff",
            format!(
                "{} is more than restart.max_backoff ({}); expected at most that",
                restart.backoff.human(),
                restart.max_backoff.human()
            ),
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
    let message = if full.is_dir() {
        format!("{} is a directory; expected a file", full.display())
    } else if full.exists() {
        format!("{} is not a regular file; expected a file", full.display())
    } else {
        format!(
            "file {} does not exist; expected a path relative to {}",
            full.display(),
            base_dir.display()
        )
    };
    Err(ConfigError::at_key(file, src, key, message))
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

    fn boot(kernel: &str, cmdline: &str, fast_boot: Option<bool>) -> BootSpec {
        let fast = fast_boot.map_or(String::new(), |b| format!("fast_boot = {b}\n"));
        let src = format!(
            "name = \"a\"\nmemory = \"64M\"\n[boot]\nkernel = \"{kernel}\"\ncmdline = \"{cmdline}\"\n{fast}"
        );
        vm(&src).unwrap().boot
    }

    #[test]
    fn a_debian_kernel_gets_the_fast_boot_words_first() {
        let b = boot(
            "debian:linux-image-cloud-amd64",
            "console=ttyS0 quiet",
            None,
        );
        let want = format!("{} console=ttyS0 quiet", FAST_BOOT_CMDLINE.join(" "));
        assert_eq!(b.effective_cmdline(), want);
    }

    #[test]
    fn the_users_words_replace_fast_boot_words_of_the_same_key() {
        let b = boot(
            "debian:linux-image-amd64",
            "tsc=unstable 8250.nr_uarts=4 quiet",
            None,
        );
        let line = b.effective_cmdline();
        assert!(line.contains("cryptomgr.notests"), "{line}");
        assert!(!line.contains("tsc=reliable"), "{line}");
        assert!(!line.contains("nr_uarts=1"), "{line}");
        assert!(
            line.ends_with("tsc=unstable 8250.nr_uarts=4 quiet"),
            "{line}"
        );
    }

    #[test]
    fn fast_boot_off_or_another_kernel_keeps_the_cmdline_as_written() {
        let off = boot("debian:linux-image-amd64", "quiet", Some(false));
        assert_eq!(off.effective_cmdline(), "quiet");
        let own = boot("bzImage", "quiet", None);
        assert_eq!(own.effective_cmdline(), "quiet");
        let cargo = boot("cargo:kiln-hello", "hello.exit=0", Some(true));
        assert_eq!(cargo.effective_cmdline(), "hello.exit=0");
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
    fn integer_ranges_are_said_in_words() {
        let e = vm("name = \"a\"\nvcpus = 300\nmemory = \"64M\"\n[boot]\nkernel = \"k\"\n")
            .unwrap_err();
        assert_eq!(
            e,
            "configs/t.toml:2:9: key `vcpus`: 300 is out of range; expected 1 to 255 vCPUs"
        );
        let e =
            vm("name = \"a\"\nvcpus = -1\nmemory = \"64M\"\n[boot]\nkernel = \"k\"\n").unwrap_err();
        assert!(
            e.contains("-1 is out of range; expected 1 to 255 vCPUs"),
            "{e}"
        );
        let e = vm(&format!("{GOOD}[restart]\nmax = -3\n")).unwrap_err();
        assert!(
            e.contains("key `restart.max`: -3 is out of range; expected 0 to 4294967295 restarts"),
            "{e}"
        );
        let e = vm(&format!(
            "{GOOD}[[pci]]\ndevice = \"1234:11e8\"\nindex = -1\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("-1 is out of range; expected a whole number from 0 to"),
            "{e}"
        );
        let spec: VmSpec = parse(
            Path::new("t.toml"),
            "name = \"a\"\nvcpus = 0\nmemory = \"64M\"\n[boot]\nkernel = \"k\"\n",
        )
        .unwrap();
        let e = spec
            .check(
                Path::new("t.toml"),
                "vcpus = 0\n",
                &KeyPath::root(),
                Path::new("."),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0 is out of range; expected 1 to 255 vCPUs"),
            "{e}"
        );
    }

    #[test]
    fn a_directory_is_not_a_kernel_file() {
        let d = std::env::temp_dir();
        let spec: VmSpec = parse(Path::new("t.toml"), GOOD).unwrap();
        let mut spec = spec;
        spec.boot.kernel = Source::Path(d.clone());
        let e = spec
            .check(Path::new("t.toml"), GOOD, &KeyPath::root(), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "key `boot.kernel`: {} is a directory; expected a file",
                d.display()
            )),
            "{e}"
        );
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
            e.to_string()
                .contains("key `memory`: 1M is out of range; expected a size from 16M to 1T"),
            "{e}"
        );
    }

    fn checked(src: &str) -> Result<VmSpec, String> {
        let v = vm(src)?;
        v.check(Path::new("t.toml"), src, &KeyPath::root(), Path::new("."))
            .map_err(|e| e.to_string())?;
        Ok(v)
    }

    const CARGO: &str = "name = \"a\"\nmemory = \"64M\"\n[boot]\nkernel = \"cargo:x\"\n";

    #[test]
    fn every_duration_and_size_is_range_checked_with_its_location() {
        for (extra, at, key, expected) in [
            (
                "[restart]\nbackoff = \"2h\"\n",
                "6:1",
                "restart.backoff",
                "2h is out of range; expected a duration from 1ms to 1h",
            ),
            (
                "[restart]\nbackoff = \"0ms\"\n",
                "6:1",
                "restart.backoff",
                "expected a duration from 1ms to 1h",
            ),
            (
                "[restart]\nmax_backoff = \"2h\"\n",
                "6:1",
                "restart.max_backoff",
                "expected a duration from 1ms to 1h",
            ),
            (
                "[restart]\nbackoff = \"1m\"\nmax_backoff = \"10s\"\n",
                "6:1",
                "restart.backoff",
                "1m is more than restart.max_backoff (10s)",
            ),
            (
                "[test]\ntimeout = \"25h\"\n",
                "6:1",
                "test.timeout",
                "expected a duration from 1ms to 24h",
            ),
            (
                "[limits]\nmemory = \"2T\"\n",
                "6:1",
                "limits.memory",
                "2T is out of range; expected a size from 16M to 1T",
            ),
        ] {
            let e = checked(&format!("{CARGO}{extra}")).unwrap_err();
            assert!(
                e.starts_with(&format!("t.toml:{at}: key `{key}`: ")) && e.contains(expected),
                "{extra}: {e}"
            );
        }
        let e = checked(&CARGO.replace("64M", "2T")).unwrap_err();
        assert!(
            e.starts_with("t.toml:2:1: key `memory`: 2T is out of range"),
            "{e}"
        );
    }

    #[test]
    fn the_issue_s_backoff_is_refused_where_it_is_written() {
        // It passed validation and panicked PID 1 in `Instant::now() + delay`.
        let e = vm(&format!(
            "{CARGO}[restart]\nbackoff = \"3000000000000000h\"\n"
        ))
        .unwrap_err();
        assert!(
            e.starts_with("configs/t.toml:6:11: key `restart.backoff`: ")
                && e.contains("out of range"),
            "{e}"
        );
    }

    #[test]
    fn restart_delay_doubles_up_to_its_cap_without_overflow() {
        let v = checked(&format!(
            "{CARGO}[restart]\npolicy = \"always\"\nmax = 25\nbackoff = \"10ms\"\n"
        ))
        .unwrap();
        assert_eq!(v.restart.max_backoff, Duration::secs(30));
        let ms = |n| v.restart.delay(n).as_millis();
        assert_eq!((ms(0), ms(1), ms(2)), (10, 20, 40));
        // The issue saw 164 s by the 15th attempt; now the cap holds.
        assert_eq!(ms(14), 30_000);
        for n in [31, 32, 33, 64, u32::MAX] {
            assert_eq!(ms(n), 30_000, "attempt {n}");
        }
        // Whatever the values (even unchecked ones), never a panic.
        let r = RestartConfig {
            backoff: Duration(std::time::Duration::MAX),
            max_backoff: Duration(std::time::Duration::MAX),
            ..RestartConfig::default()
        };
        assert_eq!(r.delay(5), std::time::Duration::MAX);
    }

    #[test]
    fn vmm_memory_limit_is_guest_ram_plus_the_budget_unless_set() {
        let v = checked(CARGO).unwrap();
        assert_eq!(v.limits.vmm_memory(v.memory), ByteSize::mib(64 + 64));
        let v = checked(&format!("{CARGO}[limits]\nmemory = \"32M\"\n")).unwrap();
        assert_eq!(v.limits.vmm_memory(v.memory), ByteSize::mib(32));
        let text = toml::to_string(&v).unwrap();
        assert!(text.contains("[limits]\nmemory = \"32M\""), "{text}");
        assert_eq!(vm(&text).unwrap(), v);
        assert!(!toml::to_string(&checked(CARGO).unwrap())
            .unwrap()
            .contains("limits"));
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
