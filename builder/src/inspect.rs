//! `kiln inspect DIR|FILE`: lists an image output directory (its manifest
//! and its initramfs) or a single initramfs archive, as text or JSON; an
//! image config (`IMAGE.toml`) is resolved without building (`summary`).

use crate::compress::{self, Compression};
use crate::cpio::{self, CpioError, ListedEntry};
use crate::progress::human_bytes;
use serde_json::{json, Map, Value};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot read '{}'; check the path", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("'{}' is not something kiln can inspect: give an image output directory (with manifest.json and initramfs.cpio.<ext>) or an initramfs archive (cpio newc, uncompressed or compressed with gzip, zstd, xz or legacy lz4)", path.display())]
    Unknown { path: PathBuf },
    #[error(transparent)]
    BootFile(#[from] crate::output::OutputError),
    #[error("'{}' has no manifest.json; point kiln inspect at a directory written by kiln build", dir.display())]
    NoManifest { dir: PathBuf },
    #[error("cannot parse '{}' as JSON; build the image again", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("'{}' has no initramfs.cpio or initramfs.cpio.<gz|zst|xz|lz4>; build the image again", dir.display())]
    NoInitramfs { dir: PathBuf },
    #[error("'{}' holds several initramfs archives ({found}); remove the stale ones or inspect one file directly", dir.display())]
    SeveralInitramfs { dir: PathBuf, found: String },
    #[error("cannot decompress '{}'", path.display())]
    Decompress {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list the archive '{}'", path.display())]
    Archive {
        path: PathBuf,
        #[source]
        source: CpioError,
    },
    #[error(transparent)]
    Config(#[from] kiln_schema::config::ConfigError),
    #[error("cannot write the listing")]
    Output {
        #[source]
        source: io::Error,
    },
}

/// What `kiln inspect` was pointed at. This is the extension point: each
/// kind kiln learns to list gets a variant and an arm in [`inspect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An image output directory (manifest.json + initramfs.cpio.<ext>).
    ImageDir,
    /// A cpio archive, possibly compressed, possibly several back to back.
    Initramfs,
    /// A Linux kernel (bzImage: "MZ" with "HdrS" at 0x202).
    Kernel,
    /// A UEFI executable such as kiln.efi (PE, "MZ").
    Pe,
    /// A disk image with a GPT ("EFI PART" in LBA 1).
    Gpt,
    /// An image config (`*.toml`): shown resolved, not built.
    ImageConfig,
    Unknown,
}

/// Lists `path`, a directory written by `kiln build` or an initramfs
/// archive, on `out`: text like `lsinitramfs -l`, or JSON.
pub fn inspect(path: &Path, json: bool, out: &mut dyn Write) -> Result<(), InspectError> {
    match kind_of(path)? {
        Kind::ImageDir => inspect_dir(path, json, out),
        Kind::Initramfs => inspect_archive(path, json, out),
        Kind::Kernel | Kind::Pe => inspect_boot_file(path, json, false, out),
        Kind::Gpt => inspect_boot_file(path, json, true, out),
        Kind::ImageConfig => {
            let image = crate::image::Image::load(path)?;
            crate::summary::write(&image, json, out).map_err(out_err)
        }
        Kind::Unknown => Err(InspectError::Unknown {
            path: path.to_path_buf(),
        }),
    }
}

/// A PE image (kiln.efi, or a bzImage with its EFI stub) or a GPT disk.
fn inspect_boot_file(
    path: &Path,
    json: bool,
    disk: bool,
    out: &mut dyn Write,
) -> Result<(), InspectError> {
    if json {
        return write_json(out, &boot_file_json(path, disk)?);
    }
    if let Some(text) = crate::output::describe(path) {
        write!(out, "{}", text?).map_err(out_err)?;
    }
    Ok(())
}

fn boot_file_json(path: &Path, disk: bool) -> Result<Value, InspectError> {
    let to_value = |v: Result<Value, serde_json::Error>| {
        v.map_err(|source| InspectError::Output {
            source: io::Error::other(source),
        })
    };
    if disk {
        to_value(serde_json::to_value(crate::output::list_disk(path)?))
    } else {
        Ok(crate::output::uki::uki_json(path)?)
    }
}

fn open_err(path: &Path) -> impl FnOnce(io::Error) -> InspectError + '_ {
    move |source| InspectError::Open {
        path: path.to_path_buf(),
        source,
    }
}

fn out_err(source: io::Error) -> InspectError {
    InspectError::Output { source }
}

fn kind_of(path: &Path) -> Result<Kind, InspectError> {
    let meta = fs::metadata(path).map_err(open_err(path))?;
    if meta.is_dir() {
        return Ok(Kind::ImageDir);
    }
    if path.extension().is_some_and(|e| e == "toml") {
        return Ok(Kind::ImageConfig);
    }
    let mut head = Vec::with_capacity(1024);
    File::open(path)
        .and_then(|f| f.take(1024).read_to_end(&mut head))
        .map_err(open_err(path))?;
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    Ok(
        if at(0, b"0707") || compress::detect(&head) != Compression::None {
            Kind::Initramfs
        } else if at(0, b"MZ") && kiln_abi::bzimage::has_header(&head) {
            Kind::Kernel
        } else if at(0, b"MZ") {
            Kind::Pe
        } else if at(512, b"EFI PART") {
            Kind::Gpt
        } else {
            Kind::Unknown
        },
    )
}

/// One archive inside an initramfs file.
struct Segment {
    compression: Compression,
    /// Byte offset of the segment in the file.
    offset: u64,
    entries: Vec<ListedEntry>,
}

/// Reads every archive in an initramfs file: uncompressed ones (e.g. early
/// microcode) one after the other, then a compressed one, which runs to the
/// end of the file, the way the kernel reads an initrd.
fn read_segments(path: &Path) -> Result<Vec<Segment>, InspectError> {
    let archive_err = |source| InspectError::Archive {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open_err(path))?;
    let mut reader = cpio::Reader::new(BufReader::with_capacity(1 << 20, file));
    let mut segments = Vec::new();
    while let Some(next) = reader.skip_padding().map_err(archive_err)? {
        let offset = reader.offset();
        if next == b'0' {
            let entries = reader
                .read_archive(&mut |_, _| Ok(()))
                .map_err(archive_err)?;
            segments.push(Segment {
                compression: Compression::None,
                offset,
                entries,
            });
            continue;
        }
        let (compression, data) =
            compress::decoder(reader.into_inner()).map_err(|source| InspectError::Decompress {
                path: path.to_path_buf(),
                source,
            })?;
        if compression == Compression::None {
            return Err(InspectError::Unknown {
                path: path.to_path_buf(),
            });
        }
        let entries = cpio::read(data).map_err(|e| match e {
            // A failing decoder shows up as a read error of the archive.
            CpioError::Read { source, .. } => InspectError::Decompress {
                path: path.to_path_buf(),
                source,
            },
            other => archive_err(other),
        })?;
        segments.push(Segment {
            compression,
            offset,
            entries,
        });
        break;
    }
    Ok(segments)
}

fn entry_json(e: &ListedEntry) -> Value {
    let mut v = json!({
        "path": e.path,
        "type": cpio::type_name(e.mode),
        "mode": cpio::mode_string(e.mode),
        "st_mode": e.mode,
        "size": e.size,
        "mtime": e.mtime,
    });
    if let (Some(t), Some(map)) = (&e.link_target, v.as_object_mut()) {
        map.insert("link_target".into(), json!(t));
    }
    if let (Some((major, minor)), Some(map)) = (e.rdev, v.as_object_mut()) {
        map.insert("rdev".into(), json!([major, minor]));
    }
    v
}

fn entries_json(segments: &[Segment]) -> Value {
    Value::Array(
        segments
            .iter()
            .flat_map(|s| s.entries.iter().map(entry_json))
            .collect(),
    )
}

fn write_listing(
    out: &mut dyn Write,
    path: &Path,
    segments: &[Segment],
) -> Result<(), InspectError> {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let on_disk = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    for (i, seg) in segments.iter().enumerate() {
        let data: u64 = seg.entries.iter().map(|e| e.size).sum();
        let format = match seg.compression {
            Compression::None => "cpio newc, uncompressed".to_owned(),
            c => format!("cpio newc, {c}-compressed"),
        };
        let place = if segments.len() > 1 {
            format!(" (archive {} at byte {})", i + 1, seg.offset)
        } else {
            String::new()
        };
        writeln!(
            out,
            "{name}{place}: {format}, {} entries, {} of data, file {}",
            seg.entries.len(),
            human_bytes(data),
            human_bytes(on_disk)
        )
        .map_err(out_err)?;
        for e in &seg.entries {
            let size = match e.rdev {
                Some((major, minor)) => format!("{major}, {minor}"),
                None => e.size.to_string(),
            };
            let target = e
                .link_target
                .as_deref()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default();
            writeln!(
                out,
                "{} {size:>10} {}{target}",
                cpio::mode_string(e.mode),
                e.path
            )
            .map_err(out_err)?;
        }
    }
    Ok(())
}

fn inspect_archive(path: &Path, json: bool, out: &mut dyn Write) -> Result<(), InspectError> {
    let segments = read_segments(path)?;
    if json {
        write_json(out, &entries_json(&segments))
    } else {
        write_listing(out, path, &segments)
    }
}

fn write_json(out: &mut dyn Write, v: &Value) -> Result<(), InspectError> {
    serde_json::to_writer_pretty(&mut *out, v).map_err(|e| out_err(e.into()))?;
    writeln!(out).map_err(out_err)
}

/// The initramfs of an output directory: exactly one initramfs.cpio[.ext].
fn find_initramfs(dir: &Path) -> Result<PathBuf, InspectError> {
    let found: Vec<PathBuf> = Compression::ALL
        .into_iter()
        .map(|c| match c.extension() {
            "" => dir.join("initramfs.cpio"),
            ext => dir.join(format!("initramfs.cpio.{ext}")),
        })
        .filter(|p| p.is_file())
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(InspectError::NoInitramfs {
            dir: dir.to_path_buf(),
        }),
        many => Err(InspectError::SeveralInitramfs {
            dir: dir.to_path_buf(),
            found: many
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn inspect_dir(dir: &Path, json: bool, out: &mut dyn Write) -> Result<(), InspectError> {
    let manifest_path = dir.join("manifest.json");
    let text = match fs::read(&manifest_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(InspectError::NoManifest {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(open_err(&manifest_path)(e)),
    };
    // Read generically: the manifest's schema belongs to the builder, and
    // inspect prints whatever keys it has.
    let manifest: Value =
        serde_json::from_slice(&text).map_err(|source| InspectError::Manifest {
            path: manifest_path.clone(),
            source,
        })?;
    let initramfs = find_initramfs(dir)?;
    let segments = read_segments(&initramfs)?;
    let (efi, disk) = (dir.join("kiln.efi"), dir.join("disk.img"));
    if json {
        let mut doc = json!({ "manifest": manifest, "initramfs": entries_json(&segments) });
        if efi.is_file() {
            doc["uki"] = boot_file_json(&efi, false)?;
        }
        if disk.is_file() {
            doc["disk"] = boot_file_json(&disk, true)?;
        }
        return write_json(out, &doc);
    }
    writeln!(out, "image: {}", dir.display()).map_err(out_err)?;
    writeln!(out, "manifest.json:").map_err(out_err)?;
    match &manifest {
        Value::Object(map) => write_object(out, map, 2, false),
        other => writeln!(out, "  {}", scalar(None, other)),
    }
    .map_err(out_err)?;
    if let Ok(cmdline) = fs::read_to_string(dir.join("cmdline")) {
        writeln!(out, "cmdline: {}", cmdline.trim_end()).map_err(out_err)?;
    }
    writeln!(out).map_err(out_err)?;
    write_listing(out, &initramfs, &segments)?;
    for (file, disk) in [(&efi, false), (&disk, true)] {
        if file.is_file() {
            writeln!(out, "\n{}:", file.display()).map_err(out_err)?;
            inspect_boot_file(file, false, disk, out)?;
        }
    }
    Ok(())
}

/// Sizes are shown with a human-readable value alongside.
fn is_size_key(key: &str) -> bool {
    key == "size" || key == "bytes" || key.ends_with("_size") || key.ends_with("_bytes")
}

fn scalar(key: Option<&str>, v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match (key, n.as_u64()) {
            (Some(k), Some(b)) if is_size_key(k) => format!("{b} ({})", human_bytes(b)),
            _ => n.to_string(),
        },
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        other => other.to_string(),
    }
}

/// Writes a JSON object as indented `key: value` lines; with `bullet`, the
/// first key carries the "- " of an array item.
fn write_object(
    out: &mut dyn Write,
    map: &Map<String, Value>,
    indent: usize,
    bullet: bool,
) -> io::Result<()> {
    for (i, (k, v)) in map.iter().enumerate() {
        let lead = match (bullet, i) {
            (true, 0) => format!("{}- ", " ".repeat(indent)),
            (true, _) => " ".repeat(indent + 2),
            (false, _) => " ".repeat(indent),
        };
        let inner = if bullet { indent + 4 } else { indent + 2 };
        match v {
            Value::Object(m) if !m.is_empty() => {
                writeln!(out, "{lead}{k}:")?;
                write_object(out, m, inner, false)?;
            }
            Value::Array(a) if !a.is_empty() => {
                writeln!(out, "{lead}{k}:")?;
                write_array(out, a, inner)?;
            }
            _ => writeln!(out, "{lead}{k}: {}", scalar(Some(k), v))?,
        }
    }
    Ok(())
}

fn write_array(out: &mut dyn Write, items: &[Value], indent: usize) -> io::Result<()> {
    let pad = " ".repeat(indent);
    for item in items {
        match item {
            Value::Object(m) if !m.is_empty() => write_object(out, m, indent, true)?,
            Value::Array(a) if !a.is_empty() => {
                writeln!(out, "{pad}-")?;
                write_array(out, a, indent + 2)?;
            }
            _ => writeln!(out, "{pad}- {}", scalar(None, item))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Encoder;
    use crate::cpio::Archive;

    fn sample_archive() -> Archive {
        let mut a = Archive::new();
        a.add_bytes("init", vec![0x7f; 1234], 0o755);
        a.add_symlink("bin/sh", "../init");
        a.add_char_device("dev/console", 0o600, 5, 1);
        a.add_bytes("etc/kiln/appliance.toml", b"[vm.hello]\n".to_vec(), 0o644);
        a
    }

    fn write_archive(path: &Path, c: Compression, a: &Archive) {
        let mut enc = Encoder::new(c, None, Vec::new()).unwrap();
        a.write(&mut enc, 0).unwrap();
        fs::write(path, enc.finish().unwrap()).unwrap();
    }

    fn run(path: &Path, json: bool) -> Result<String, InspectError> {
        let mut out = Vec::new();
        inspect(path, json, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn lists_a_compressed_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("initrd.img");
        write_archive(&path, Compression::Gzip, &sample_archive());
        let text = run(&path, false).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0]
                .starts_with("initrd.img: cpio newc, gzip-compressed, 8 entries, 1.2 KiB of data"),
            "{}",
            lines[0]
        );
        assert_eq!(lines.len(), 9);
        assert!(
            lines.contains(&"lrwxrwxrwx          7 bin/sh -> ../init"),
            "{text}"
        );
        assert!(
            lines.contains(&"crw-------       5, 1 dev/console"),
            "{text}"
        );
        assert!(lines.contains(&"-rwxr-xr-x       1234 init"), "{text}");
        assert!(lines.contains(&"drwxr-xr-x          0 etc/kiln"), "{text}");

        let v: Value = serde_json::from_str(&run(&path, true).unwrap()).unwrap();
        let entries = v.as_array().unwrap();
        assert_eq!(entries.len(), 8);
        let console = entries.iter().find(|e| e["path"] == "dev/console").unwrap();
        assert_eq!(console["type"], "char");
        assert_eq!(console["rdev"], json!([5, 1]));
        let sh = entries.iter().find(|e| e["path"] == "bin/sh").unwrap();
        assert_eq!(sh["link_target"], "../init");
    }

    #[test]
    fn lists_an_early_archive_followed_by_a_compressed_one() {
        let tmp = tempfile::tempdir().unwrap();
        let mut early = Archive::new();
        early.add_bytes("kernel/x86/microcode/AuthenticAMD.bin", vec![1; 10], 0o644);
        let mut bytes = Vec::new();
        early.write(&mut bytes, 0).unwrap();
        bytes.extend_from_slice(&[0; 512]);
        let mut enc = Encoder::new(Compression::Zstd, None, bytes).unwrap();
        sample_archive().write(&mut enc, 0).unwrap();
        let path = tmp.path().join("initrd");
        fs::write(&path, enc.finish().unwrap()).unwrap();
        let text = run(&path, false).unwrap();
        let headers: Vec<&str> = text.lines().filter(|l| l.starts_with("initrd")).collect();
        assert_eq!(headers.len(), 2, "{text}");
        assert!(headers[0].contains("(archive 1 at byte 0): cpio newc, uncompressed, 4 entries"));
        assert!(
            headers[1].contains("zstd-compressed, 8 entries"),
            "{}",
            headers[1]
        );
    }

    /// Runs `sh -c script` in `dir`; a missing tool fails the test loudly.
    fn shell(dir: &Path, script: &str) -> Vec<u8> {
        let out = std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`{script}` failed (needs GNU cpio and zstd: apt-get install cpio zstd): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn lists_a_debian_style_initrd_made_by_reference_tools() {
        // Debian's layout: an uncompressed early archive (microcode) from GNU
        // cpio, then the main archive from GNU cpio compressed by zstd.
        let tmp = tempfile::tempdir().unwrap();
        let early = tmp.path().join("early");
        fs::create_dir_all(early.join("kernel/x86/microcode")).unwrap();
        fs::write(
            early.join("kernel/x86/microcode/GenuineIntel.bin"),
            [9u8; 33],
        )
        .unwrap();
        let main = tmp.path().join("main");
        fs::create_dir_all(main.join("scripts")).unwrap();
        fs::write(main.join("init"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("usr/bin", main.join("bin")).unwrap();
        let mut initrd = shell(&early, "find . | LC_ALL=C sort | cpio -o -H newc --quiet");
        let early_len = initrd.len();
        initrd.extend(shell(
            &main,
            "find . | LC_ALL=C sort | cpio -o -H newc --quiet | zstd -q -c",
        ));
        let path = tmp.path().join("initrd.img-6.1.0");
        fs::write(&path, &initrd).unwrap();

        let text = run(&path, false).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("(archive 1 at byte 0): cpio newc, uncompressed, 5 entries"),
            "{text}"
        );
        assert!(
            lines[6].contains(&format!(
                "(archive 2 at byte {early_len}): cpio newc, zstd-compressed, 4 entries"
            )),
            "{text}"
        );
        assert!(
            lines.contains(&"-rw-r--r--         33 kernel/x86/microcode/GenuineIntel.bin"),
            "{text}"
        );
        assert!(
            lines.contains(&"lrwxrwxrwx          7 bin -> usr/bin"),
            "{text}"
        );
    }

    #[test]
    fn lists_an_output_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let manifest = json!({
            "name": "hello",
            "kernel": { "version": "6.1.0-test" },
            "artifacts": [
                { "path": "vmlinuz", "size": 8_000_000, "sha256": "ab12" },
                { "path": "initramfs.cpio.zst", "size": 2048, "sha256": "cd34" }
            ],
            "modules": ["kvm", "kvm-amd"],
            "payloads": []
        });
        fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
        fs::write(dir.join("cmdline"), "console=ttyS0 quiet\n").unwrap();
        write_archive(
            &dir.join("initramfs.cpio.zst"),
            Compression::Zstd,
            &sample_archive(),
        );

        let text = run(dir, false).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "manifest.json:",
            "  name: hello",
            "  kernel:",
            "    version: 6.1.0-test",
            "  artifacts:",
            "    - path: vmlinuz",
            "      size: 8000000 (7.6 MiB)",
            "      sha256: ab12",
            "    - path: initramfs.cpio.zst",
            "  modules:",
            "    - kvm-amd",
            "  payloads: []",
            "cmdline: console=ttyS0 quiet",
            "-rwxr-xr-x       1234 init",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in:\n{text}");
        }
        assert!(lines
            .iter()
            .any(|l| l.starts_with("initramfs.cpio.zst: cpio newc, zstd-compressed, 8 entries")));

        let v: Value = serde_json::from_str(&run(dir, true).unwrap()).unwrap();
        assert_eq!(v["manifest"], manifest);
        assert_eq!(v["initramfs"].as_array().unwrap().len(), 8);

        // A second initramfs is ambiguous; none at all is an error too.
        write_archive(
            &dir.join("initramfs.cpio.gz"),
            Compression::Gzip,
            &sample_archive(),
        );
        assert!(matches!(
            run(dir, false),
            Err(InspectError::SeveralInitramfs { .. })
        ));
        fs::remove_file(dir.join("initramfs.cpio.gz")).unwrap();
        fs::remove_file(dir.join("initramfs.cpio.zst")).unwrap();
        assert!(matches!(
            run(dir, false),
            Err(InspectError::NoInitramfs { .. })
        ));
        fs::remove_file(dir.join("manifest.json")).unwrap();
        assert!(matches!(
            run(dir, false),
            Err(InspectError::NoManifest { .. })
        ));
    }

    #[test]
    fn refuses_what_it_cannot_list() {
        let tmp = tempfile::tempdir().unwrap();
        let text = tmp.path().join("notes.txt");
        fs::write(&text, "just text").unwrap();
        let err = run(&text, false).unwrap_err();
        assert!(matches!(err, InspectError::Unknown { .. }));
        assert!(err.to_string().contains("image output directory"), "{err}");

        let mut pe = b"MZ".to_vec();
        pe.resize(1024, 0);
        let efi = tmp.path().join("kiln.efi");
        fs::write(&efi, &pe).unwrap();
        assert!(matches!(run(&efi, false), Err(InspectError::BootFile(_))));

        let broken = tmp.path().join("broken.cpio.gz");
        let mut gz = Encoder::new(Compression::Gzip, None, Vec::new()).unwrap();
        gz.write_all(b"0707 this is not a header at all, just text padding it out to 110 bytes and more and more and more").unwrap();
        fs::write(&broken, gz.finish().unwrap()).unwrap();
        assert!(matches!(
            run(&broken, false),
            Err(InspectError::Archive { .. })
        ));
        assert!(matches!(
            run(&tmp.path().join("missing"), false),
            Err(InspectError::Open { .. })
        ));
    }
}
