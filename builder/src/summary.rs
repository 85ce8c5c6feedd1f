//! `kiln inspect IMAGE.toml`: the image as kiln resolves it (defaults
//! filled in, every VM config read and checked), without building, like
//! `mkosi summary`; as `key  value` lines or JSON.

use crate::image::Image;
use serde_json::{json, Map, Value};
use std::io::{self, Write};

/// The resolved image as JSON: the image config with its defaults, the
/// module list it loads (before the kernel adds iommufd or efivarfs), and
/// every VM, inline or by path, with the file it was read from.
pub fn resolved(image: &Image) -> Result<Value, serde_json::Error> {
    let mut top = match serde_json::to_value(&image.config)? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    top.remove("vm");
    top.remove("vms");
    top.insert("file".into(), json!(image.file));
    top.insert("modules".into(), serde_json::to_value(image.modules())?);
    let mut vms = Vec::new();
    for vm in &image.vms {
        let mut v = match serde_json::to_value(&vm.config)? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        v.insert("file".into(), json!(vm.file));
        vms.push(Value::Object(v));
    }
    top.insert("vms".into(), Value::Array(vms));
    Ok(Value::Object(top))
}

/// Writes the resolved image: JSON, or one `key  value` line per setting,
/// the image's first, then each VM's under a `vm <name>` heading.
pub fn write(image: &Image, json: bool, out: &mut dyn Write) -> io::Result<()> {
    let value = resolved(image).map_err(io::Error::other)?;
    if json {
        // `From` keeps a write error's kind (a closed pipe stays one).
        serde_json::to_writer_pretty(&mut *out, &value).map_err(io::Error::from)?;
        return writeln!(out);
    }
    let Value::Object(mut top) = value else {
        return Ok(());
    };
    let vms = top.remove("vms");
    writeln!(
        out,
        "image {} ({})",
        image.config.name,
        image.file.display()
    )?;
    let mut lines = Vec::new();
    flatten("", &Value::Object(top), &mut lines);
    write_lines(&lines, out)?;
    for vm in vms.iter().filter_map(Value::as_array).flatten() {
        let Value::Object(mut vm) = vm.clone() else {
            continue;
        };
        let name = vm.remove("name").unwrap_or_default();
        let file = vm.remove("file").unwrap_or_default();
        writeln!(
            out,
            "vm {} ({})",
            name.as_str().unwrap_or_default(),
            file.as_str().unwrap_or_default()
        )?;
        let mut lines = Vec::new();
        flatten("", &Value::Object(vm), &mut lines);
        write_lines(&lines, out)?;
    }
    Ok(())
}

fn write_lines(lines: &[(String, String)], out: &mut dyn Write) -> io::Result<()> {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in lines {
        writeln!(out, "  {k:<width$}  {v}")?;
    }
    Ok(())
}

/// Dotted keys and their values as text; lists of plain values on one line.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&key(k), v, out);
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object()) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), item, out);
            }
        }
        Value::Array(items) if items.is_empty() => out.push((prefix.to_string(), "none".into())),
        Value::Array(items) => {
            let text: Vec<String> = items.iter().map(scalar).collect();
            out.push((prefix.to_string(), text.join(", ")));
        }
        Value::Null => {}
        other => out.push((prefix.to_string(), scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn image(dir: &Path) -> Image {
        std::fs::create_dir_all(dir.join("configs")).unwrap();
        std::fs::write(dir.join("configs/a.elf"), b"\x7fELF").unwrap();
        std::fs::write(
            dir.join("configs/a.toml"),
            "name = \"a\"\nmemory = \"64M\"\n[boot]\nkernel = \"a.elf\"\n[[pci]]\ndevice = \"1234:11e8\"\n",
        )
        .unwrap();
        let file = dir.join("i.toml");
        std::fs::write(
            &file,
            "name = \"i\"\nvms = [\"configs/a.toml\"]\n[kernel]\nsource = \"debian:linux-image-cloud-amd64\"\n\
             [[vm]]\nname = \"b\"\nmemory = \"32M\"\nvcpus = 2\n[vm.boot]\nkernel = \"cargo:kiln-hello\"\n",
        )
        .unwrap();
        Image::load(&file).unwrap()
    }

    #[test]
    fn the_json_has_every_default_and_every_vm() {
        let d = tempfile::tempdir().unwrap();
        let img = image(d.path());
        let v = resolved(&img).unwrap();
        assert_eq!(v["name"], "i");
        assert_eq!(v["initramfs"]["compression"], "zstd");
        assert_eq!(v["target"]["memory"], "2G");
        // The default module set, with VFIO because VM a assigns a device.
        assert_eq!(
            v["modules"]["load"],
            json!(["kvm-amd", "kvm-intel", "vfio-pci", "vfio-iommu-type1"])
        );
        assert_eq!(v["vms"][0]["name"], "a");
        assert_eq!(v["vms"][0]["vcpus"], 1);
        assert!(v["vms"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("configs/a.toml"));
        assert_eq!(v["vms"][1]["boot"]["kernel"], "cargo:kiln-hello");
    }

    #[test]
    fn the_text_is_one_setting_a_line() {
        let d = tempfile::tempdir().unwrap();
        let img = image(d.path());
        let mut out = Vec::new();
        write(&img, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("image i ("), "{text}");
        let has = |k: &str, v: &str| {
            lines
                .iter()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [k, v])
        };
        assert!(
            has("kernel.source", "debian:linux-image-cloud-amd64"),
            "{text}"
        );
        assert!(has("initramfs.compression", "zstd"), "{text}");
        assert!(has("pci[0].device", "1234:11e8"), "{text}");
        assert!(lines.iter().any(|l| l.starts_with("vm b (")), "{text}");
        assert!(has("vcpus", "2"), "{text}");
    }
}
