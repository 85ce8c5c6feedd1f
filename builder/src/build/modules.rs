//! Step 2: the kernel modules the appliance loads, their dependency closure
//! and a `modules.dep` of exactly that closure, staged under
//! `/lib/modules/<release>/`.

use super::staging::Staging;
use super::{io, BuildError, Job};
use crate::compress;
use crate::kernel::{self, Kernel};
use kiln_schema::config::ModulesConfig;
use std::path::Path;

/// What the modules step decided.
pub(super) struct Modules {
    /// `[modules]` as the appliance config carries it (defaults filled in
    /// from the kernel's module index).
    pub config: ModulesConfig,
    /// Every module staged, for the manifest.
    pub names: Vec<String>,
}

/// Stages the closure of what the appliance loads, each module stored
/// uncompressed, with a matching modules.dep.
pub(super) fn stage(
    job: &Job,
    kernel: &Kernel,
    staging: &mut Staging,
) -> Result<Modules, BuildError> {
    let image = job.image;
    let mut modules = image.modules();
    let mut module_names = Vec::new();
    if !modules.load.is_empty() {
        let tree = kernel::module_tree(kernel)?;
        modules = image.modules_for(&tree.index);
        let index = &tree.index;
        let names: Vec<&str> = modules.load.iter().map(String::as_str).collect();
        let locate = |e: &dyn std::fmt::Display, pos: Option<usize>| {
            let key = match (image.load_written(), pos) {
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
    check_params(job, &modules, &module_names)?;
    if image.uses_pci() && image.load_written() {
        check_vfio(job, kernel, &module_names)?;
    }
    Ok(Modules {
        config: modules,
        names: module_names,
    })
}

/// A VM that assigns a PCI device needs vfio-pci (and with it the IOMMU
/// backend); a written `modules.load` must bring it when the kernel has it
/// as a module (a kernel with it built in needs nothing).
fn check_vfio(job: &Job, kernel: &Kernel, loaded: &[String]) -> Result<(), BuildError> {
    let has = |m: &str| loaded.iter().any(|n| n.replace('-', "_") == m);
    if has("vfio_pci") {
        return Ok(());
    }
    let tree = kernel::module_tree(kernel)?;
    if tree.index.get("vfio-pci").is_none() {
        return Ok(());
    }
    let vm = job
        .image
        .vms
        .iter()
        .find(|v| !v.config.pci.is_empty())
        .map(|v| v.config.name.as_str())
        .unwrap_or_default();
    Err(job
        .image
        .error_at(
            "modules.load",
            format!(
                "VM \"{vm}\" assigns a PCI device ([[pci]]), which needs VFIO; expected \"vfio-pci\" and \"vfio-iommu-type1\" in modules.load (or leave modules.load out: the default adds them)"
            ),
        )
        .into())
}

/// Every `modules.params` entry must name a module the image loads (or one
/// of their dependencies): the runtime passes parameters only when it loads
/// a module, so any other entry would be dropped without a word.
fn check_params(job: &Job, modules: &ModulesConfig, loaded: &[String]) -> Result<(), BuildError> {
    let canon = |n: &str| n.replace('-', "_");
    let loaded: Vec<String> = loaded.iter().map(|n| canon(n)).collect();
    for name in modules.params.keys() {
        if !loaded.contains(&canon(name)) {
            let listed = if loaded.is_empty() {
                "none".to_string()
            } else {
                loaded.join(", ")
            };
            return Err(job
                .image
                .error_at(
                    &format!("modules.params.{name}"),
                    format!(
                        "module \"{name}\" is not loaded, so these parameters would never apply; \
                         expected one of the modules the image loads ({listed}), or add it to modules.load"
                    ),
                )
                .into());
        }
    }
    Ok(())
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
