//! `kiln.efi`: a unified kernel image. systemd-stub (a small EFI
//! application) with the kernel, the initramfs, the command line and an
//! os-release appended as PE sections; at boot the stub finds them by name
//! and starts the kernel. Firmware boots it directly, and boot managers
//! (systemd-boot, rEFInd, a firmware boot entry) list it from `.osrel`.
//!
//! The sections are added the way systemd's `ukify` adds them: new section
//! headers after the stub's own (in the room the headers leave before the
//! first section's data), each new section placed after the last one in
//! memory (SectionAlignment) and in the file (FileAlignment), `.linux` last.
//! The stub's timestamp is kept, and nothing else varies, so the same inputs
//! give the same bytes.
//!
//! PE images are written by hand here: the `object` crate parses them (and
//! its structure definitions give every field offset below), but no
//! maintained Rust crate edits an existing PE image in place; `object`'s
//! writer only builds new COFF/PE files from scratch.

use super::{io_err, round_up, write_atomically, OutputError};
use kiln_abi::bzimage;
use object::pe::{
    ImageDataDirectory, ImageDosHeader, ImageFileHeader, ImageNtHeaders64, ImageOptionalHeader64,
    ImageSectionHeader,
};
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64, SectionTable};
use object::LittleEndian as LE;
use std::mem::{offset_of, size_of};
use std::path::Path;

/// A section of a PE image, as `kiln inspect` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeSection {
    pub name: String,
    pub virtual_address: u32,
    pub virtual_size: u32,
    /// Where its data starts in the file.
    pub raw_offset: u32,
    pub raw_size: u32,
}

/// The os-release of an appliance's UKI: boot managers show PRETTY_NAME,
/// and IMAGE_ID/IMAGE_VERSION say which image and kiln built it.
pub fn os_release(image_name: &str) -> String {
    let version = env!("CARGO_PKG_VERSION");
    let name = quote(&format!("kiln appliance {image_name}"));
    let pretty = quote(&format!("kiln appliance {image_name} (kiln {version})"));
    let id = quote(image_name);
    format!(
        "NAME={name}\nID=kiln\nVERSION_ID={version}\nPRETTY_NAME={pretty}\nIMAGE_ID={id}\nIMAGE_VERSION={version}\n"
    )
}

/// An os-release value in double quotes, with the shell-special characters
/// escaped as os-release(5) asks.
fn quote(value: &str) -> String {
    let mut s = String::from("\"");
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// Builds the UKI `out` from systemd-stub `stub`, a bzImage `kernel`, the
/// (compressed) `initrd`, the kernel command line and an os-release text.
/// `.uname` holds the kernel release read from the bzImage header.
pub fn build_uki(
    stub: &Path,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    osrel: &str,
    out: &Path,
) -> Result<(), OutputError> {
    let stub_bytes = std::fs::read(stub).map_err(io_err(format!("read {}", stub.display())))?;
    let kernel_bytes =
        std::fs::read(kernel).map_err(io_err(format!("read {}", kernel.display())))?;
    if !is_bzimage(&kernel_bytes) {
        return Err(OutputError::NotBzImage {
            path: kernel.to_path_buf(),
        });
    }
    let initrd_bytes =
        std::fs::read(initrd).map_err(io_err(format!("read {}", initrd.display())))?;
    let uname = kernel_release(&kernel_bytes);

    // Order matters: small text first, `.linux` last so it may grow in memory.
    let cmdline = cmdline.trim();
    let mut sections: Vec<(&str, &[u8])> = vec![
        (".osrel", osrel.as_bytes()),
        (".cmdline", cmdline.as_bytes()),
    ];
    if let Some(u) = &uname {
        sections.push((".uname", u.as_bytes()));
    }
    sections.push((".initrd", &initrd_bytes));
    sections.push((".linux", &kernel_bytes));
    // An empty section means "none": the stub then uses its defaults.
    sections.retain(|(_, data)| !data.is_empty());

    let image = add_sections(&stub_bytes, stub, &sections)?;
    write_atomically(out, |f| {
        use std::io::Write;
        f.write_all(&image)
            .map_err(io_err(format!("write {}", out.display())))
    })
}

/// Whether `data` is a Linux bzImage (the `HdrS` boot protocol header).
fn is_bzimage(data: &[u8]) -> bool {
    bzimage::has_header(data)
}

/// The kernel release (`uname -r`) from a bzImage's `kernel_version` string,
/// e.g. "6.1.0-56-cloud-amd64 (debian-kernel@...) #1 SMP ...".
fn kernel_release(image: &[u8]) -> Option<String> {
    bzimage::release(image).map(str::to_string)
}

const SECTION_HEADER: usize = size_of::<ImageSectionHeader>();
const SCN_DATA: u32 = object::pe::IMAGE_SCN_CNT_INITIALIZED_DATA | object::pe::IMAGE_SCN_MEM_READ;
// ukify marks `.linux` as code: older stubs jump into it in place (the EFI
// handover protocol).
const SCN_CODE: u32 = object::pe::IMAGE_SCN_CNT_CODE | object::pe::IMAGE_SCN_MEM_READ;

/// Field offsets inside the NT headers, from the `object` crate's layouts.
const FILE_HEADER: usize = offset_of!(ImageNtHeaders64, file_header);
const OPTIONAL_HEADER: usize = offset_of!(ImageNtHeaders64, optional_header);
const NUMBER_OF_SECTIONS: usize = FILE_HEADER + offset_of!(ImageFileHeader, number_of_sections);
const SYMBOL_TABLE: usize = FILE_HEADER + offset_of!(ImageFileHeader, pointer_to_symbol_table);
const NUMBER_OF_SYMBOLS: usize = FILE_HEADER + offset_of!(ImageFileHeader, number_of_symbols);
const SIZE_OF_CODE: usize = OPTIONAL_HEADER + offset_of!(ImageOptionalHeader64, size_of_code);
const SIZE_OF_INITIALIZED_DATA: usize =
    OPTIONAL_HEADER + offset_of!(ImageOptionalHeader64, size_of_initialized_data);
const SIZE_OF_IMAGE: usize = OPTIONAL_HEADER + offset_of!(ImageOptionalHeader64, size_of_image);
const SIZE_OF_HEADERS: usize = OPTIONAL_HEADER + offset_of!(ImageOptionalHeader64, size_of_headers);
const CHECK_SUM: usize = OPTIONAL_HEADER + offset_of!(ImageOptionalHeader64, check_sum);
const DATA_DIRECTORIES: usize = size_of::<ImageNtHeaders64>();

/// The stub with `add` appended as new sections, in that order.
pub(crate) fn add_sections(
    stub: &[u8],
    stub_path: &Path,
    add: &[(&str, &[u8])],
) -> Result<Vec<u8>, OutputError> {
    let pe_err = |source| OutputError::Pe {
        path: stub_path.to_path_buf(),
        source,
    };
    let bad = |reason: String| OutputError::Stub {
        path: stub_path.to_path_buf(),
        reason,
    };
    let corrupt = || bad("its headers are corrupt".into());
    let dos = ImageDosHeader::parse(stub).map_err(pe_err)?;
    let nt_off = dos.nt_headers_offset() as usize;
    let mut table_off = u64::from(dos.nt_headers_offset());
    let (nt, dirs) = ImageNtHeaders64::parse(stub, &mut table_off).map_err(pe_err)?;
    let table_off = usize::try_from(table_off).map_err(|_| corrupt())?;
    let fh = nt.file_header();
    let oh = nt.optional_header();
    if fh.machine.get(LE) != object::pe::IMAGE_FILE_MACHINE_AMD64
        || oh.subsystem() != object::pe::IMAGE_SUBSYSTEM_EFI_APPLICATION
    {
        return Err(bad(
            "it is not an x86-64 EFI application; expected linuxx64.efi.stub".into(),
        ));
    }
    let sections = SectionTable::parse(fh, stub, table_off as u64).map_err(pe_err)?;
    if let Some((name, _)) = add
        .iter()
        .find(|(n, _)| sections.iter().any(|s| s.raw_name() == n.as_bytes()))
    {
        return Err(bad(format!(
            "it already has a {name} section (is it a UKI already?); expected the bare stub"
        )));
    }
    let file_align = oh.file_alignment();
    let section_align = oh.section_alignment();
    if !file_align.is_power_of_two() || !section_align.is_power_of_two() {
        return Err(bad("its alignments are not powers of two".into()));
    }
    let (file_align, section_align) = (u64::from(file_align), u64::from(section_align));

    // The new headers must fit before the first section's data.
    let old_count = usize::from(fh.number_of_sections.get(LE));
    let table_end = table_off + (old_count + add.len()) * SECTION_HEADER;
    let first_data = sections
        .iter()
        .filter(|s| s.size_of_raw_data.get(LE) > 0)
        .map(|s| s.pointer_to_raw_data.get(LE) as usize)
        .min()
        .unwrap_or(stub.len());
    if table_end > first_data {
        return Err(bad(format!(
            "its headers have room for {} more section headers, and {} are needed",
            first_data.saturating_sub(table_off + old_count * SECTION_HEADER) / SECTION_HEADER,
            add.len()
        )));
    }
    let size_of_headers =
        u64::from(oh.size_of_headers()).max(round_up(table_end as u64, file_align));

    // Where the stub's section data ends; a signature or a COFF symbol table
    // after it is dropped (a signature would not match the new image anyway).
    let sections_end = sections
        .iter()
        .map(|s| u64::from(s.pointer_to_raw_data.get(LE)) + u64::from(s.size_of_raw_data.get(LE)))
        .max()
        .unwrap_or(size_of_headers)
        .max(size_of_headers);
    let mut data_end = stub.len() as u64;
    let security = dirs.get(object::pe::IMAGE_DIRECTORY_ENTRY_SECURITY);
    let cert_table = security
        .map(|d| {
            (
                u64::from(d.virtual_address.get(LE)),
                u64::from(d.size.get(LE)),
            )
        })
        .filter(|(_, size)| *size > 0);
    let symbols = u64::from(fh.pointer_to_symbol_table.get(LE));
    for start in cert_table
        .map(|(at, _)| at)
        .into_iter()
        .chain((symbols > 0).then_some(symbols))
    {
        if start < sections_end {
            return Err(bad(
                "its signature or symbol table lies among its sections; expected an unsigned, stripped stub".into(),
            ));
        }
        data_end = data_end.min(start);
    }
    let data_end = usize::try_from(data_end.max(sections_end)).map_err(|_| corrupt())?;
    let mut image = stub
        .get(..data_end)
        .ok_or_else(|| bad("its sections extend beyond the end of the file".into()))?
        .to_vec();

    let mut next_va = sections
        .iter()
        .map(|s| {
            let va = u64::from(s.virtual_address.get(LE));
            va + u64::from(s.virtual_size.get(LE).max(s.size_of_raw_data.get(LE)))
        })
        .max()
        .unwrap_or(size_of_headers);
    next_va = round_up(next_va, section_align);
    let mut code_size = u64::from(oh.size_of_code());
    let mut data_size = u64::from(oh.size_of_initialized_data());
    let too_large = |what: &str, size: u64| OutputError::TooLarge {
        what: what.to_string(),
        size,
    };
    let u32_of = |what: &str, v: u64| u32::try_from(v).map_err(|_| too_large(what, v));
    let usize_of = |what: &str, v: u64| usize::try_from(v).map_err(|_| too_large(what, v));

    for (i, (name, data)) in add.iter().enumerate() {
        let mut raw_name = [0u8; 8];
        raw_name
            .get_mut(..name.len())
            .ok_or_else(|| bad(format!("section name {name} is longer than 8 bytes")))?
            .copy_from_slice(name.as_bytes());
        let len = data.len() as u64;
        let raw_ptr = round_up(image.len() as u64, file_align);
        let raw_size = round_up(len, file_align);
        let characteristics = if *name == ".linux" {
            SCN_CODE
        } else {
            SCN_DATA
        };
        if *name == ".linux" {
            code_size += raw_size;
        } else {
            data_size += raw_size;
        }
        let header = ImageSectionHeader {
            name: raw_name,
            virtual_size: object::U32::new(LE, u32_of(name, len)?),
            virtual_address: object::U32::new(LE, u32_of("the image", next_va)?),
            size_of_raw_data: object::U32::new(LE, u32_of(name, raw_size)?),
            pointer_to_raw_data: object::U32::new(LE, u32_of("the image", raw_ptr)?),
            pointer_to_relocations: object::U32::new(LE, 0),
            pointer_to_linenumbers: object::U32::new(LE, 0),
            number_of_relocations: object::U16::new(LE, 0),
            number_of_linenumbers: object::U16::new(LE, 0),
            characteristics: object::U32::new(LE, characteristics),
        };
        put(
            &mut image,
            table_off + (old_count + i) * SECTION_HEADER,
            object::pod::bytes_of(&header),
        )
        .ok_or_else(corrupt)?;
        image.resize(usize_of("the image", raw_ptr)?, 0);
        image.extend_from_slice(data);
        image.resize(usize_of("the image", raw_ptr + raw_size)?, 0);
        next_va = round_up(next_va + len, section_align);
    }

    let count = u16::try_from(old_count + add.len())
        .map_err(|_| bad("it would have too many sections".into()))?;
    put(
        &mut image,
        nt_off + NUMBER_OF_SECTIONS,
        &count.to_le_bytes(),
    )
    .ok_or_else(corrupt)?;
    put(
        &mut image,
        nt_off + SIZE_OF_IMAGE,
        &u32_of("the image", next_va)?.to_le_bytes(),
    )
    .ok_or_else(corrupt)?;
    put(
        &mut image,
        nt_off + SIZE_OF_HEADERS,
        &u32_of("the headers", size_of_headers)?.to_le_bytes(),
    )
    .ok_or_else(corrupt)?;
    put(
        &mut image,
        nt_off + SIZE_OF_CODE,
        &u32_of("the code", code_size)?.to_le_bytes(),
    )
    .ok_or_else(corrupt)?;
    put(
        &mut image,
        nt_off + SIZE_OF_INITIALIZED_DATA,
        &u32_of("the data", data_size)?.to_le_bytes(),
    )
    .ok_or_else(corrupt)?;
    if cert_table.is_some() {
        let entry = nt_off
            + DATA_DIRECTORIES
            + object::pe::IMAGE_DIRECTORY_ENTRY_SECURITY * size_of::<ImageDataDirectory>();
        put(&mut image, entry, &[0; size_of::<ImageDataDirectory>()]).ok_or_else(corrupt)?;
    }
    if symbols > 0 {
        put(&mut image, nt_off + SYMBOL_TABLE, &[0; 4]).ok_or_else(corrupt)?;
        put(&mut image, nt_off + NUMBER_OF_SYMBOLS, &[0; 4]).ok_or_else(corrupt)?;
    }
    put(&mut image, nt_off + CHECK_SUM, &[0; 4]).ok_or_else(corrupt)?;
    let sum = pe_checksum(&image).ok_or_else(|| too_large("the image", image.len() as u64))?;
    put(&mut image, nt_off + CHECK_SUM, &sum.to_le_bytes()).ok_or_else(corrupt)?;
    Ok(image)
}

/// Overwrites `image[at..at + bytes.len()]`; `None` when that lies beyond
/// the image (only when its headers lie about their own size).
fn put(image: &mut [u8], at: usize, bytes: &[u8]) -> Option<()> {
    image.get_mut(at..at + bytes.len())?.copy_from_slice(bytes);
    Some(())
}

/// The PE image checksum (as `imagehlp!CheckSumMappedFile` computes it):
/// the one's-complement-style 16-bit sum of the file, taken with the
/// checksum field zeroed, plus the file length. Firmware rarely checks it,
/// but a wrong one makes signing tools and `pefile` complain.
fn pe_checksum(image: &[u8]) -> Option<u32> {
    let mut sum: u32 = 0;
    for word in image.chunks(2) {
        let byte = |i: usize| word.get(i).copied().unwrap_or(0);
        let w = u16::from_le_bytes([byte(0), byte(1)]);
        sum += u32::from(w);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum.checked_add(u32::try_from(image.len()).ok()?)
}

/// The sections of a PE image (a UKI or any EFI application), in file order.
pub fn list_uki(path: &Path) -> Result<Vec<PeSection>, OutputError> {
    let data = std::fs::read(path).map_err(io_err(format!("read {}", path.display())))?;
    sections_of(&data, path)
}

fn sections_of(data: &[u8], path: &Path) -> Result<Vec<PeSection>, OutputError> {
    let table = match PeFile64::parse(data) {
        Ok(pe) => pe.section_table(),
        // A 32-bit EFI application (IA-32 firmware) lists the same way.
        Err(source) => match object::read::pe::PeFile32::parse(data) {
            Ok(pe) => pe.section_table(),
            Err(_) => {
                return Err(OutputError::Pe {
                    path: path.to_path_buf(),
                    source,
                })
            }
        },
    };
    Ok(table
        .iter()
        .map(|s| PeSection {
            name: String::from_utf8_lossy(s.raw_name()).into_owned(),
            virtual_address: s.virtual_address.get(LE),
            virtual_size: s.virtual_size.get(LE),
            raw_offset: s.pointer_to_raw_data.get(LE),
            raw_size: s.size_of_raw_data.get(LE),
        })
        .collect())
}

/// A human listing of a PE image for `kiln inspect`: its sections, and the
/// text of a UKI's `.osrel` (PRETTY_NAME), `.uname` and `.cmdline`.
pub(crate) fn describe(path: &Path) -> Result<String, OutputError> {
    use std::fmt::Write;
    let data = std::fs::read(path).map_err(io_err(format!("read {}", path.display())))?;
    let sections = sections_of(&data, path)?;
    let is_uki = sections.iter().any(|s| s.name == ".linux");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: PE image, {} ({} sections)",
        path.display(),
        if is_uki {
            "unified kernel image"
        } else if is_bzimage(&data) {
            "Linux kernel with an EFI stub"
        } else {
            "EFI application"
        },
        sections.len()
    );
    let _ = writeln!(
        out,
        "  {:<10} {:>10} {:>10} {:>10} {:>10}",
        "section", "address", "size", "offset", "file size"
    );
    for s in &sections {
        let _ = writeln!(
            out,
            "  {:<10} {:>#10x} {:>10} {:>#10x} {:>10}",
            s.name, s.virtual_address, s.virtual_size, s.raw_offset, s.raw_size
        );
    }
    let text = |name: &str| {
        sections.iter().find(|s| s.name == name).and_then(|s| {
            let start = s.raw_offset as usize;
            let len = s.virtual_size.min(s.raw_size) as usize;
            let bytes = data.get(start..start + len)?;
            Some(String::from_utf8_lossy(bytes).trim().to_string())
        })
    };
    if let Some(osrel) = text(".osrel") {
        if let Some(pretty) = osrel.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")) {
            let _ = writeln!(out, "  os-release: {}", pretty.trim_matches('"'));
        }
    }
    if let Some(uname) = text(".uname") {
        let _ = writeln!(out, "  kernel:     {uname}");
    }
    if let Some(cmdline) = text(".cmdline") {
        let _ = writeln!(out, "  cmdline:    {cmdline}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::read::pe::ImageNtHeaders;
    use std::path::PathBuf;

    /// The real systemd-stub: these tests never pass by skipping.
    fn stub() -> PathBuf {
        crate::output::stub()
            .map(|(p, _)| p)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A stand-in bzImage: the boot protocol header and `kernel_version`
    /// string the UKI builder reads, then `len` bytes of a pattern.
    fn fake_bzimage(release: &str, len: usize) -> Vec<u8> {
        let mut k: Vec<u8> = (0..len)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        k[..2].copy_from_slice(b"MZ");
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        let version = format!("{release} (builder@kiln) #1 SMP\0");
        k[0x300..0x300 + version.len()].copy_from_slice(version.as_bytes());
        k
    }

    struct Inputs {
        _dir: tempfile::TempDir,
        kernel: PathBuf,
        initrd: PathBuf,
        out: PathBuf,
        kernel_bytes: Vec<u8>,
        initrd_bytes: Vec<u8>,
    }

    fn inputs(kernel_len: usize, initrd_len: usize) -> Inputs {
        let dir = tempfile::tempdir().unwrap();
        let kernel_bytes = fake_bzimage("6.1.0-99-test", kernel_len);
        let initrd_bytes: Vec<u8> = (0..initrd_len)
            .map(|i| u8::try_from(i % 253).unwrap() ^ 0x5a)
            .collect();
        let kernel = dir.path().join("vmlinuz");
        let initrd = dir.path().join("initramfs.cpio.zst");
        std::fs::write(&kernel, &kernel_bytes).unwrap();
        std::fs::write(&initrd, &initrd_bytes).unwrap();
        Inputs {
            out: dir.path().join("kiln.efi"),
            _dir: dir,
            kernel,
            initrd,
            kernel_bytes,
            initrd_bytes,
        }
    }

    fn build(i: &Inputs, cmdline: &str) -> Vec<u8> {
        build_uki(
            &stub(),
            &i.kernel,
            &i.initrd,
            cmdline,
            &os_release("t"),
            &i.out,
        )
        .unwrap();
        std::fs::read(&i.out).unwrap()
    }

    #[test]
    fn sections_are_appended_aligned_after_the_stubs_own() {
        let i = inputs(1_000_003, 300_001);
        let uki = build(&i, "console=ttyS0 panic=-1\n");
        let stub_bytes = std::fs::read(stub()).unwrap();
        let old = PeFile64::parse(stub_bytes.as_slice()).expect("the stub parses");
        let new = PeFile64::parse(uki.as_slice()).expect("the UKI is a valid PE32+ image");
        let (oh_old, oh) = (
            old.nt_headers().optional_header(),
            new.nt_headers().optional_header(),
        );
        let (fa, sa) = (oh.file_alignment(), oh.section_alignment());
        assert_eq!(
            (fa, sa),
            (oh_old.file_alignment(), oh_old.section_alignment())
        );
        assert_eq!(oh.address_of_entry_point(), oh_old.address_of_entry_point());
        assert_eq!(
            new.nt_headers().file_header().time_date_stamp.get(LE),
            old.nt_headers().file_header().time_date_stamp.get(LE),
            "the stub's timestamp is kept"
        );

        let old_secs: Vec<_> = old.section_table().iter().copied().collect();
        let secs: Vec<_> = new.section_table().iter().copied().collect();
        let release = "6.1.0-99-test";
        let osrel = os_release("t");
        let expected: [(&str, &[u8]); 5] = [
            (".osrel", osrel.as_bytes()),
            (".cmdline", b"console=ttyS0 panic=-1"),
            (".uname", release.as_bytes()),
            (".initrd", &i.initrd_bytes),
            (".linux", &i.kernel_bytes),
        ];
        assert_eq!(secs.len(), old_secs.len() + expected.len());
        // The stub's sections and their data are untouched.
        for (a, b) in old_secs.iter().zip(&secs) {
            assert_eq!(object::pod::bytes_of(a), object::pod::bytes_of(b));
            let (p, n) = (
                b.pointer_to_raw_data.get(LE) as usize,
                b.size_of_raw_data.get(LE) as usize,
            );
            assert_eq!(stub_bytes[p..p + n], uki[p..p + n]);
        }
        let mut prev_end = old_secs
            .iter()
            .map(|s| {
                s.virtual_address.get(LE) + s.virtual_size.get(LE).max(s.size_of_raw_data.get(LE))
            })
            .max()
            .unwrap();
        let mut prev_raw_end = old_secs
            .iter()
            .map(|s| s.pointer_to_raw_data.get(LE) + s.size_of_raw_data.get(LE))
            .max()
            .unwrap();
        for (s, (name, data)) in secs[old_secs.len()..].iter().zip(expected) {
            assert_eq!(s.raw_name(), name.as_bytes());
            let (va, vsize) = (s.virtual_address.get(LE), s.virtual_size.get(LE));
            let (ptr, raw) = (s.pointer_to_raw_data.get(LE), s.size_of_raw_data.get(LE));
            assert_eq!(va % sa, 0, "{name} address is section-aligned");
            assert!(
                va >= prev_end,
                "{name} does not overlap the previous section"
            );
            assert!(va - prev_end < sa, "{name} follows the previous section");
            assert_eq!((ptr % fa, raw % fa), (0, 0), "{name} data is file-aligned");
            assert!(ptr >= prev_raw_end && raw >= vsize && raw - vsize < fa);
            assert_eq!(vsize as usize, data.len(), "{name} size");
            assert_eq!(
                &uki[ptr as usize..ptr as usize + data.len()],
                data,
                "{name} data"
            );
            let code = s.characteristics.get(LE) & object::pe::IMAGE_SCN_CNT_CODE != 0;
            assert_eq!(code, name == ".linux");
            prev_end = va + vsize;
            prev_raw_end = ptr + raw;
        }
        assert_eq!(
            u32::try_from(uki.len()).unwrap(),
            prev_raw_end,
            "nothing trails the last section"
        );
        assert_eq!(
            oh.size_of_image(),
            u32::try_from(round_up(prev_end.into(), sa.into())).unwrap()
        );
        let table_end = {
            let dos = ImageDosHeader::parse(uki.as_slice()).unwrap();
            let mut off = u64::from(dos.nt_headers_offset());
            ImageNtHeaders64::parse(uki.as_slice(), &mut off).unwrap();
            u32::try_from(off).unwrap() + u32::try_from(secs.len() * SECTION_HEADER).unwrap()
        };
        assert!(oh.size_of_headers() >= table_end);
        assert!(oh.size_of_headers() <= secs[0].pointer_to_raw_data.get(LE));

        // The checksum is the image's own.
        let at = ImageDosHeader::parse(uki.as_slice())
            .unwrap()
            .nt_headers_offset() as usize
            + CHECK_SUM;
        let mut zeroed = uki.clone();
        zeroed[at..at + 4].fill(0);
        assert_eq!(oh.check_sum(), pe_checksum(&zeroed).unwrap());
        assert_ne!(oh.check_sum(), 0);
    }

    #[test]
    fn checksum_agrees_with_the_stubs_own() {
        let mut data = std::fs::read(stub()).unwrap();
        let pe = PeFile64::parse(data.as_slice()).unwrap();
        let stored = pe.nt_headers().optional_header().check_sum();
        assert_ne!(
            stored, 0,
            "Debian's stub carries a checksum to compare with"
        );
        let at = ImageDosHeader::parse(data.as_slice())
            .unwrap()
            .nt_headers_offset() as usize
            + CHECK_SUM;
        data[at..at + 4].fill(0);
        assert_eq!(pe_checksum(&data), Some(stored));
    }

    #[test]
    fn same_inputs_give_the_same_bytes() {
        let i = inputs(200_000, 50_000);
        let a = build(&i, "console=ttyS0");
        let b = build(&i, "console=ttyS0");
        assert!(a == b, "two builds differ");
        let c = build(&i, "console=ttyS1");
        assert!(a != c, "the command line is in the image");
    }

    #[test]
    fn objdump_reads_the_uki() {
        let i = inputs(300_000, 70_000);
        build(&i, "quiet");
        let out = std::process::Command::new("objdump")
            .arg("-h")
            .arg(&i.out)
            .output()
            .expect("objdump (binutils, which the Rust linker needs) runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for (name, size) in [(".linux", 300_000), (".initrd", 70_000), (".cmdline", 5)] {
            let line = text
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(name))
                .unwrap_or_else(|| panic!("objdump lists no {name}:\n{text}"));
            let listed = line.split_whitespace().nth(2).unwrap();
            assert_eq!(u64::from_str_radix(listed, 16).unwrap(), size, "{line}");
        }
    }

    #[test]
    fn header_room_is_checked() {
        let data = std::fs::read(stub()).unwrap();
        let pe = PeFile64::parse(data.as_slice()).unwrap();
        let secs: Vec<_> = pe.section_table().iter().copied().collect();
        let dos = ImageDosHeader::parse(data.as_slice()).unwrap();
        let mut off = u64::from(dos.nt_headers_offset());
        ImageNtHeaders64::parse(data.as_slice(), &mut off).unwrap();
        let table_end = usize::try_from(off).unwrap() + secs.len() * SECTION_HEADER;
        let first = secs
            .iter()
            .map(|s| s.pointer_to_raw_data.get(LE))
            .min()
            .unwrap() as usize;
        let room = (first - table_end) / SECTION_HEADER;
        assert!(room >= 5, "the stub has room for the five UKI sections");
        let names: Vec<String> = (0..=room).map(|n| format!(".s{n}")).collect();
        let add: Vec<(&str, &[u8])> = names
            .iter()
            .map(|n| (n.as_str(), b"x".as_slice()))
            .collect();
        assert!(add_sections(&data, &stub(), &add[..room]).is_ok());
        let e = add_sections(&data, &stub(), &add).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "room for {room} more section headers, and {} are needed",
                room + 1
            )),
            "{e}"
        );
    }

    #[test]
    fn a_uki_is_not_a_stub() {
        let i = inputs(100_000, 1000);
        build(&i, "x");
        let again = i.out.with_extension("2.efi");
        let e = build_uki(&i.out, &i.kernel, &i.initrd, "x", "ID=kiln", &again)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already has a .osrel section"), "{e}");
        assert!(!again.exists());
    }

    #[test]
    fn bad_inputs_are_named() {
        let i = inputs(100_000, 1000);
        let e = build_uki(
            Path::new("/nonexistent/linuxx64.efi.stub"),
            &i.kernel,
            &i.initrd,
            "",
            "",
            &i.out,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/linuxx64.efi.stub"), "{e}");
        let e = build_uki(&stub(), &i.initrd, &i.initrd, "", "", &i.out)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("initramfs.cpio.zst is not a Linux bzImage"),
            "{e}"
        );
        let e = build_uki(&i.kernel, &i.kernel, &i.initrd, "", "", &i.out);
        assert!(matches!(e, Err(OutputError::Pe { .. })), "{e:?}");
        // A PE image that is not an EFI application (a Windows console program).
        let mut console = std::fs::read(stub()).unwrap();
        let at = ImageDosHeader::parse(console.as_slice())
            .unwrap()
            .nt_headers_offset() as usize
            + OPTIONAL_HEADER
            + offset_of!(ImageOptionalHeader64, subsystem);
        console[at..at + 2].copy_from_slice(&3u16.to_le_bytes());
        let not_efi = i.out.with_extension("exe");
        std::fs::write(&not_efi, console).unwrap();
        let e = build_uki(&not_efi, &i.kernel, &i.initrd, "", "", &i.out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("it is not an x86-64 EFI application"), "{e}");
        assert!(!i.out.exists());
    }

    #[test]
    fn listing_shows_sections_and_text() {
        let i = inputs(100_000, 1000);
        let uki = build(&i, "console=ttyS0 quiet");
        let list = list_uki(&i.out).unwrap();
        let pe = PeFile64::parse(uki.as_slice()).unwrap();
        assert_eq!(list.len(), pe.section_table().len());
        let linux = list.iter().find(|s| s.name == ".linux").unwrap();
        assert_eq!(linux.virtual_size, 100_000);
        assert_eq!(list.last(), Some(linux));
        let text = crate::output::describe(&i.out).unwrap().unwrap();
        assert!(text.contains("unified kernel image"), "{text}");
        assert!(text.contains("cmdline:    console=ttyS0 quiet"), "{text}");
        assert!(text.contains("kernel:     6.1.0-99-test"), "{text}");
        assert!(
            text.contains("os-release: kiln appliance t (kiln "),
            "{text}"
        );
        let stub_text = crate::output::describe(&stub()).unwrap().unwrap();
        assert!(stub_text.contains("EFI application"), "{stub_text}");
        let kernel_text = crate::output::describe(&i.kernel);
        assert!(
            matches!(kernel_text, Some(Err(OutputError::Pe { .. }))),
            "a bzImage without a PE header is no PE image: {kernel_text:?}"
        );
    }

    #[test]
    fn kernel_release_comes_from_the_setup_header() {
        assert_eq!(
            kernel_release(&fake_bzimage("6.1.0-56-cloud-amd64", 4096)).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        let mut k = fake_bzimage("x", 4096);
        k[0x20e..0x210].fill(0);
        assert_eq!(kernel_release(&k), None);
        assert_eq!(kernel_release(&k[..0x100]), None);
    }

    #[test]
    fn os_release_quotes_values() {
        let text = os_release("hello");
        assert!(text.contains("NAME=\"kiln appliance hello\"\n"), "{text}");
        assert!(text.contains("\nID=kiln\n"), "{text}");
        assert!(text.contains(&format!("VERSION_ID={}\n", env!("CARGO_PKG_VERSION"))));
        assert!(text.contains("IMAGE_ID=\"hello\"\n"), "{text}");
        assert_eq!(quote("a\"b$c`d\\"), "\"a\\\"b\\$c\\`d\\\\\"");
    }
}
