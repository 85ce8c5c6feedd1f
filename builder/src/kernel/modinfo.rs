//! What depmod would write, for a module tree that has no `modules.dep`
//! (Debian's kernel packages leave that to depmod at install time): each
//! module's ELF `.modinfo` section carries `depends=` (the modules it needs,
//! found by modpost at build time) and `softdep=`, which is all depmod uses
//! for the dependencies of in-tree modules.

use super::KernelError;
use kiln_schema::kmod::{module_name_from_path, normalize_name};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The dependency fields of one module's `.modinfo`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=`: the module's own name, when given.
    pub name: Option<String>,
    /// `depends=`: names of the modules it needs.
    pub depends: Vec<String>,
    /// Each `softdep=` value, e.g. `pre: ccp post: foo`.
    pub softdeps: Vec<String>,
    /// `alias=` values without wildcards (`crypto-md5`, `crc32c`): what
    /// soft dependencies may name. Device-ID patterns are left out.
    pub aliases: Vec<String>,
}

/// Reads the `.modinfo` section of a module's ELF image.
pub fn parse_modinfo(elf: &[u8]) -> Result<ModInfo, String> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF object ({e})"))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or("no .modinfo section: not a kernel module")?;
    let data = section
        .data()
        .map_err(|e| format!("unreadable .modinfo section ({e})"))?;
    let mut info = ModInfo::default();
    for field in data.split(|&b| b == 0) {
        let Ok(field) = std::str::from_utf8(field) else {
            continue; // descriptions may hold any bytes; the keys we need are ASCII
        };
        match field.split_once('=') {
            Some(("name", v)) => info.name = Some(v.to_string()),
            Some(("depends", v)) => info.depends.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_string),
            ),
            Some(("softdep", v)) => info.softdeps.push(v.trim().to_string()),
            Some(("alias", v)) if !v.contains(['*', '?', '[']) && !v.trim().is_empty() => {
                info.aliases.push(v.trim().to_string())
            }
            _ => {}
        }
    }
    Ok(info)
}

/// `modules.dep` (direct dependencies only), `modules.softdep` and
/// `modules.alias` (exact aliases only) texts for the module tree at `dir`
/// (a `lib/modules/<release>` directory).
pub(super) struct Scan {
    pub dep: String,
    pub softdep: String,
    pub alias: String,
    /// `<module>: <dependency>...` for each module that needs modules the
    /// tree does not have (a distribution's split-off extras): such a
    /// module is in `dep` without them, and is an error only if loaded.
    pub missing: String,
    pub modules: usize,
}

/// Scans every module under `dir` on all cores.
pub(super) fn scan(dir: &Path) -> Result<Scan, KernelError> {
    let files = module_files(dir)?;
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(files.len().max(1));
    let mut infos: Vec<(usize, Result<ModInfo, KernelError>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(rel) = files.get(i) else { break };
                        done.push((i, read_modinfo(dir, rel)));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    infos.sort_by_key(|(i, _)| *i);

    // Files are sorted so that the copy depmod would pick comes first.
    let mut by_name: HashMap<String, &str> = HashMap::new();
    for rel in &files {
        if let Some(name) = module_name_from_path(rel) {
            by_name.entry(name).or_insert(rel);
        }
    }
    let mut dep = String::new();
    let mut softdep = String::new();
    let mut alias = String::new();
    let mut missing = String::new();
    let mut modules = 0;
    for (i, info) in infos {
        let info = info?;
        let Some(rel) = files.get(i) else { continue };
        let Some(name) = module_name_from_path(rel) else {
            continue;
        };
        if by_name.get(&name) != Some(&rel.as_str()) {
            continue; // shadowed by a copy with priority
        }
        modules += 1;
        dep.push_str(rel);
        dep.push(':');
        let mut absent = Vec::new();
        for d in &info.depends {
            match by_name.get(&normalize_name(d)) {
                Some(path) => {
                    dep.push(' ');
                    dep.push_str(path);
                }
                None => absent.push(normalize_name(d)),
            }
        }
        dep.push('\n');
        if !absent.is_empty() {
            let _ = writeln!(missing, "{name}: {}", absent.join(" "));
        }
        for value in &info.softdeps {
            let _ = writeln!(softdep, "softdep {name} {value}");
        }
        for a in &info.aliases {
            let _ = writeln!(alias, "alias {a} {name}");
        }
    }
    Ok(Scan {
        dep,
        softdep,
        alias,
        missing,
        modules,
    })
}

fn read_modinfo(dir: &Path, rel: &str) -> Result<ModInfo, KernelError> {
    let path = dir.join(rel);
    let io = |source| KernelError::Io {
        action: "read kernel module",
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(io)?;
    let mut data = Vec::new();
    crate::compress::decoder(std::io::BufReader::new(file))
        .and_then(|(_, mut d)| d.read_to_end(&mut data))
        .map_err(io)?;
    parse_modinfo(&data).map_err(|reason| KernelError::ModInfo {
        path: path.clone(),
        reason,
    })
}

/// Module files under `dir`, relative with `/`, without following
/// symlinks (`build` and `source` point into kernel headers). `updates/`
/// comes first, as in depmod's default search order; the rest sorted.
fn module_files(dir: &Path) -> Result<Vec<String>, KernelError> {
    let mut files = Vec::new();
    let mut todo: Vec<(PathBuf, String)> = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = todo.pop() {
        let io = |source| KernelError::Io {
            action: "list module directory",
            path: abs.clone(),
            source,
        };
        for entry in std::fs::read_dir(&abs).map_err(io)? {
            let entry = entry.map_err(io)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // in-tree module paths are ASCII
            };
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type().map_err(io)?;
            if kind.is_dir() {
                todo.push((entry.path(), child));
            } else if kind.is_file() && module_name_from_path(&name).is_some() {
                files.push(child);
            }
        }
    }
    files.sort_by(|a, b| {
        (!a.starts_with("updates/"), a.as_str()).cmp(&(!b.starts_with("updates/"), b.as_str()))
    });
    Ok(files)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use object::write::{Object, StandardSection};
    use object::{Architecture, BinaryFormat, Endianness, SectionKind};

    /// A relocatable x86-64 ELF with the given `.modinfo` strings, as
    /// modpost leaves them in a `.ko`.
    pub(crate) fn fake_module(fields: &[&str]) -> Vec<u8> {
        let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = obj.section_id(StandardSection::Text);
        obj.append_section_data(text, &[0xc3], 1);
        let modinfo = obj.add_section(
            Vec::new(),
            b".modinfo".to_vec(),
            SectionKind::ReadOnlyString,
        );
        let mut data = Vec::new();
        for f in fields {
            data.extend_from_slice(f.as_bytes());
            data.push(0);
        }
        obj.append_section_data(modinfo, &data, 1);
        obj.write().unwrap()
    }

    #[test]
    fn reads_dependency_fields() {
        let elf = fake_module(&[
            "softdep=pre: ccp",
            "license=GPL",
            "description=a = b",
            "depends=kvm,irqbypass",
            "softdep=post: x y",
            "alias=crypto-kvm",
            "alias=pci:v00001022d*",
            "name=kvm_amd",
        ]);
        let info = parse_modinfo(&elf).unwrap();
        assert_eq!(
            info,
            ModInfo {
                name: Some("kvm_amd".into()),
                depends: vec!["kvm".into(), "irqbypass".into()],
                softdeps: vec!["pre: ccp".into(), "post: x y".into()],
                aliases: vec!["crypto-kvm".into()],
            }
        );
        let none = parse_modinfo(&fake_module(&["depends=", "name=irqbypass"])).unwrap();
        assert!(none.depends.is_empty());
    }

    #[test]
    fn rejects_non_modules() {
        assert!(parse_modinfo(b"not an elf")
            .unwrap_err()
            .contains("not an ELF"));
        let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = obj.section_id(StandardSection::Text);
        obj.append_section_data(text, &[0xc3], 1);
        let elf = obj.write().unwrap();
        assert!(parse_modinfo(&elf).unwrap_err().contains("no .modinfo"));
    }
}
