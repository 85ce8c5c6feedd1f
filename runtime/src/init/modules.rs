//! Loading the appliance's kernel modules, dependencies first.

use kiln_schema::config::ApplianceConfig;
use kiln_schema::kmod::{KmodError, ModuleIndex};
use std::ffi::CString;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModuleLoadError {
    #[error("Cannot read {}; the image has no module index for this kernel", path.display())]
    Index {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Kmod(#[from] KmodError),
}

/// The CPU vendor's KVM module; the other vendor's is skipped, not an error.
fn skip_for_vendor(name: &str, vendor: &str) -> bool {
    let n = name.replace('-', "_");
    (n == "kvm_amd" && vendor == "GenuineIntel") || (n == "kvm_intel" && vendor == "AuthenticAMD")
}

fn cpu_vendor() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("vendor_id")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_default()
}

/// Loads every module the appliance asks for, with its dependencies, in
/// order. A module that fails is reported and the rest still load: the VMs
/// that need it will then fail with their own clear error.
pub fn load_all(appliance: &ApplianceConfig) -> Result<(), ModuleLoadError> {
    if appliance.modules.load.is_empty() {
        return Ok(());
    }
    let dir = Path::new("/lib/modules").join(&appliance.kernel_release);
    let dep_path = dir.join("modules.dep");
    let dep = std::fs::read_to_string(&dep_path).map_err(|source| ModuleLoadError::Index {
        path: dep_path,
        source,
    })?;
    let softdep = std::fs::read_to_string(dir.join("modules.softdep")).ok();
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).ok();
    let index = ModuleIndex::from_modules_dep(&dep, softdep.as_deref(), builtin.as_deref())?;
    let vendor = cpu_vendor();
    let wanted: Vec<&str> = appliance
        .modules
        .load
        .iter()
        .map(String::as_str)
        .filter(|m| !skip_for_vendor(m, &vendor) && !super::firmware::skip_module(m))
        .collect();
    for module in index.closure(&wanted)? {
        let params = appliance
            .modules
            .params
            .iter()
            .find(|(k, _)| k.replace('-', "_") == module.name.replace('-', "_"))
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        load_one(&dir.join(&module.path), &module.name, params);
    }
    Ok(())
}

fn load_one(path: &Path, name: &str, params: &str) {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            return super::say(&format!(
                "error: module {name}: cannot open {}: {e}",
                path.display()
            ))
        }
    };
    let Ok(c_params) = CString::new(params) else {
        return super::say(&format!(
            "error: module {name}: its parameters contain a NUL byte"
        ));
    };
    match nix::kmod::finit_module(&file, &c_params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => super::say(&refused(name, params, e)),
    }
}

/// The console line for a module the kernel would not load; the
/// parameters are named because a bad value is the usual cause (the
/// kernel's own message, just above, says which).
fn refused(name: &str, params: &str, e: nix::errno::Errno) -> String {
    if params.is_empty() {
        format!("error: module {name}: the kernel refused to load it: {e}")
    } else {
        format!(
            "error: module {name}: the kernel refused to load it with parameters \"{params}\": {e}; check modules.params"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_module_choice() {
        assert!(skip_for_vendor("kvm-amd", "GenuineIntel"));
        assert!(skip_for_vendor("kvm_intel", "AuthenticAMD"));
        assert!(!skip_for_vendor("kvm-amd", "AuthenticAMD"));
        assert!(!skip_for_vendor("kvm", "GenuineIntel"));
    }

    #[test]
    fn a_refused_module_names_its_parameters() {
        assert_eq!(
            refused("kvm_amd", "nested=maybe", nix::errno::Errno::EINVAL),
            "error: module kvm_amd: the kernel refused to load it with parameters \"nested=maybe\": EINVAL: Invalid argument; check modules.params"
        );
        assert_eq!(
            refused("kvm", "", nix::errno::Errno::ENOEXEC),
            "error: module kvm: the kernel refused to load it: ENOEXEC: Exec format error"
        );
    }
}
