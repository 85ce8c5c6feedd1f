//! One VM as a VMM runs it: the run form, whose kernel and initrd are files.
//! `kiln build` writes VMs in this form into `/etc/kiln/appliance.toml`
//! ([`super::VmSpec::resolve`]); it has no `[test]` table and no way to say
//! `cargo:` or `debian:`, so the runtime never meets a source it would have
//! to refuse at boot.

use super::error::ConfigError;
use super::locate::KeyPath;
use super::source::Source;
use super::units::ByteSize;
use super::vm::{
    check_file, check_values, default_hypervisor, one, ConsoleConfig, LimitsConfig, PciAssignment,
    RestartConfig, Sizes, VfioConfig, VmName,
};
use serde::{de, Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};

/// The run form of a VM. Its keys are those of [`super::VmSpec`] less
/// `[test]`, so it reads and writes as a VM config with file sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
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
    pub boot: BootConfig,
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
}

/// `[boot]` of the run form: files, relative to the config that names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// A bzImage or an ELF with a PVH note.
    #[serde(deserialize_with = "file_path")]
    pub kernel: PathBuf,
    #[serde(
        default,
        deserialize_with = "optional_file_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
}

impl VmConfig {
    /// The VMM process's memory limit (see [`LimitsConfig::vmm_memory`]).
    pub fn vmm_memory_limit(&self) -> ByteSize {
        self.limits.vmm_memory(self.memory)
    }

    /// Checks what the types cannot: value ranges, and that the kernel and
    /// initrd exist. `at` is where this VM sits in `src`, and relative paths
    /// resolve against `base_dir`.
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
        let boot = at.clone().key("boot");
        check_file(
            file,
            src,
            &boot.clone().key("kernel"),
            &self.boot.kernel,
            base_dir,
        )?;
        if let Some(initrd) = &self.boot.initrd {
            check_file(file, src, &boot.key("initrd"), initrd, base_dir)?;
        }
        Ok(())
    }
}

/// A path, refusing the source kinds only `kiln build` resolves: the same
/// text means a package in a VM config, so it must not mean a file here.
fn file_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let text = String::deserialize(d)?;
    match Source::parse(&text).map_err(de::Error::custom)? {
        Source::Path(p) => Ok(p),
        other => Err(de::Error::custom(format!(
            "\"{other}\" is a source for `kiln build` to resolve; expected a file path"
        ))),
    }
}

fn optional_file_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    file_path(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, VmSpec};

    const RUN: &str = "name = \"hello\"\nmemory = \"64M\"\n[boot]\nkernel = \"hello/kernel\"\ninitrd = \"hello/initrd\"\n";

    #[test]
    fn sources_kiln_build_resolves_are_refused_where_they_stand() {
        for (src, at) in [
            (
                "name = \"a\"\nmemory = \"64M\"\n[boot]\nkernel = \"cargo:kiln-hello\"\n",
                "t.toml:4:10: key `boot.kernel`: ",
            ),
            (
                "name = \"a\"\nmemory = \"64M\"\n[boot]\nkernel = \"k\"\ninitrd = \"debian:x\"\n",
                "t.toml:5:10: key `boot.initrd`: ",
            ),
        ] {
            let e = parse::<VmConfig>(Path::new("t.toml"), src)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(at), "{e}");
            assert!(e.contains("for `kiln build` to resolve"), "{e}");
        }
        let e = parse::<VmConfig>(
            Path::new("t.toml"),
            "name = \"a\"\nmemory = \"64M\"\n[boot]\nkernel = \"k\"\ninitrd = { init = \"k\" }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("key `boot.initrd`"), "{e}");
    }

    #[test]
    fn a_test_table_is_not_part_of_the_run_form() {
        let e = parse::<VmConfig>(
            Path::new("t.toml"),
            &format!("{RUN}[test]\nexpect = [\"ok\"]\n"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("key `test`: unknown key"), "{e}");
    }

    #[test]
    fn resolving_keeps_the_vm_and_drops_its_test_table() {
        let spec: VmSpec = parse(
            Path::new("t.toml"),
            "name = \"hello\"\nvcpus = 2\nmemory = \"64M\"\n[boot]\nkernel = \"cargo:kiln-hello\"\ninitrd = { init = \"cargo:kiln-guest-init\" }\ncmdline = \"quiet\"\n[[pci]]\ndevice = \"1234:11e8\"\n[test]\nexpect = [\"ok\"]\n",
        )
        .unwrap();
        let mut asked = Vec::new();
        let run = spec
            .resolve(|input| {
                asked.push(input.key());
                Ok::<_, ()>(PathBuf::from(format!("/guests/hello/{}", input.key())))
            })
            .unwrap();
        assert_eq!(asked, ["kernel", "initrd"]);
        assert_eq!(run.boot.kernel, Path::new("/guests/hello/kernel"));
        assert_eq!(
            run.boot.initrd.as_deref(),
            Some(Path::new("/guests/hello/initrd"))
        );
        assert_eq!(run.boot.cmdline, "quiet");
        assert_eq!((run.vcpus, run.pci.len()), (2, 1));
        let text = toml::to_string(&run).unwrap();
        assert!(!text.contains("test"), "{text}");
        assert_eq!(parse::<VmConfig>(Path::new("t.toml"), &text).unwrap(), run);
    }

    /// PID 1 hands each VMM its VM in the run form, and `kiln-runtime run`
    /// reads a VM config: the one must be the other's subset.
    #[test]
    fn the_run_form_reads_as_a_vm_config_with_file_sources() {
        let run: VmConfig = parse(Path::new("t.toml"), RUN).unwrap();
        let text = toml::to_string(&run).unwrap();
        let spec: VmSpec = parse(Path::new("t.toml"), &text).unwrap();
        let again = spec
            .resolve(|input| match input {
                crate::config::BootInput::Kernel(s) | crate::config::BootInput::Initrd(s) => {
                    s.as_path().map(Path::to_path_buf).ok_or(())
                }
                crate::config::BootInput::BuiltInitrd(_) => Err(()),
            })
            .unwrap();
        assert_eq!(again, run);
    }

    #[test]
    fn check_finds_missing_files_at_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let run: VmConfig = parse(Path::new("a.toml"), RUN).unwrap();
        std::fs::create_dir_all(dir.path().join("hello")).unwrap();
        std::fs::write(dir.path().join("hello/kernel"), b"k").unwrap();
        let e = run
            .check(Path::new("a.toml"), RUN, &KeyPath::root(), dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("a.toml:5:1: key `boot.initrd`: file "), "{e}");
        std::fs::write(dir.path().join("hello/initrd"), b"i").unwrap();
        run.check(Path::new("a.toml"), RUN, &KeyPath::root(), dir.path())
            .unwrap();
    }

    #[test]
    fn limits_reach_the_vmm_and_its_values_are_range_checked() {
        let src = format!("{RUN}[limits]\nmemory = \"40M\"\n[restart]\nbackoff = \"2h\"\n");
        let run: VmConfig = parse(Path::new("a.toml"), &src).unwrap();
        assert_eq!(run.vmm_memory_limit(), ByteSize::mib(40));
        let text = toml::to_string(&run).unwrap();
        assert!(text.contains("[limits]\nmemory = \"40M\""), "{text}");
        let e = run
            .check(Path::new("a.toml"), &src, &KeyPath::root(), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("a.toml:9:1: key `restart.backoff`: 2h is out of range"),
            "{e}"
        );
        let plain: VmConfig = parse(Path::new("a.toml"), RUN).unwrap();
        assert_eq!(plain.vmm_memory_limit(), ByteSize::mib(64 + 64));
    }
}
