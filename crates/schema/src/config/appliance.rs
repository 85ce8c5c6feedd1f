//! The appliance config the builder writes into the image and the runtime
//! reads as PID 1: its VMs are in the run form ([`super::VmConfig`]), and
//! every path in it points inside the image.

use super::error::ConfigError;
use super::locate::KeyPath;
use super::run::VmConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Where the runtime, as PID 1, finds its appliance config.
pub const APPLIANCE_PATH: &str = "/etc/kiln/appliance.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    pub name: String,
    /// `uname -r` of the image's kernel: modules live in /lib/modules/<this>.
    pub kernel_release: String,
    /// What to do once every VM is done.
    #[serde(default)]
    pub on_done: OnDone,
    #[serde(default)]
    pub modules: ModulesConfig,
    #[serde(default, rename = "vm", skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<VmConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDone {
    #[default]
    Poweroff,
    Reboot,
    /// Keep running (for inspection over the console).
    Stay,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModulesConfig {
    /// Modules to load at boot (their dependencies come along), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load: Vec<String>,
    /// Parameters per module, e.g. `kvm_amd = "nested=1"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

impl ApplianceConfig {
    /// Value checks across VMs: unique names; each VM's own checks with
    /// paths resolved against `base_dir`.
    pub fn check(&self, file: &Path, src: &str, base_dir: &Path) -> Result<(), ConfigError> {
        check_unique_names(file, src, "vm", self.vms.iter().map(|v| v.name.as_str()))?;
        for (i, vm) in self.vms.iter().enumerate() {
            vm.check(file, src, &KeyPath::root().key("vm").index(i), base_dir)?;
        }
        Ok(())
    }
}

/// Rejects a VM name used twice, pointing at the second use.
pub fn check_unique_names<'a>(
    file: &Path,
    src: &str,
    table: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for (i, name) in names.enumerate() {
        if !seen.insert(name) {
            return Err(ConfigError::at_key(
                file,
                src,
                &KeyPath::root().key(table).index(i).key("name"),
                format!("VM name \"{name}\" is used twice; expected each VM to have its own name"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn duplicate_vm_names_point_at_the_second() {
        let src = "name = \"a\"\nkernel_release = \"6.1\"\n[[vm]]\nname = \"x\"\nmemory = \"64M\"\n[vm.boot]\nkernel = \"k\"\n[[vm]]\nname = \"x\"\nmemory = \"64M\"\n[vm.boot]\nkernel = \"k\"\n";
        let a: ApplianceConfig = parse(Path::new("a.toml"), src).unwrap();
        let e = a
            .check(Path::new("a.toml"), src, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("a.toml:9:1: key `vm[1].name`: VM name \"x\" is used twice"),
            "{e}"
        );
    }

    #[test]
    fn vms_boot_files_only() {
        let src = "name = \"a\"\nkernel_release = \"6.1\"\n[[vm]]\nname = \"x\"\nmemory = \"64M\"\n[vm.boot]\nkernel = \"cargo:k\"\n";
        let e = parse::<ApplianceConfig>(Path::new("a.toml"), src)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("a.toml:7:10: key `vm[0].boot.kernel`: \"cargo:k\" is a source for `kiln build` to resolve"),
            "{e}"
        );
    }

    #[test]
    fn on_done_values() {
        let a: ApplianceConfig = parse(
            Path::new("a.toml"),
            "name = \"a\"\nkernel_release = \"6\"\non_done = \"stay\"\n",
        )
        .unwrap();
        assert_eq!(a.on_done, OnDone::Stay);
        let e = parse::<ApplianceConfig>(
            Path::new("a.toml"),
            "name = \"a\"\nkernel_release = \"6\"\non_done = \"halt\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("key `on_done`"), "{e}");
    }
}
