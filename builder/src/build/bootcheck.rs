//! Checks a kernel before it goes into an image, so what would fail at boot
//! fails the build at its key: the host kernel and every guest kernel must
//! be a whole 64-bit bzImage (or, for a guest, an ELF with a PVH entry
//! note), and each command line must fit what its kernel accepts.

use kiln_abi::bzimage::{self, HeaderError};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{elf, Endianness, FileKind};
use std::io::Read;
use std::path::Path;

/// The PVH entry point note (`XEN_ELFNOTE_PHYS32_ENTRY`), owner "Xen".
const PVH_NOTE_TYPE: u32 = 18;
const PVH_NOTE_OWNER: &[u8] = b"Xen";
/// The runtime's limit for a PVH guest's command line (its boot page).
pub const PVH_CMDLINE_MAX: usize = 0xffff;
/// How much of a bzImage holds its setup header.
const HEAD: u64 = 64 * 1024;

/// What kind of kernel a file is, once it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootable {
    /// A bzImage taking command lines up to this long.
    BzImage { cmdline_max: usize },
    /// An ELF with a PVH note.
    Pvh,
}

impl Bootable {
    pub fn cmdline_max(self) -> usize {
        match self {
            Bootable::BzImage { cmdline_max } => cmdline_max,
            Bootable::Pvh => PVH_CMDLINE_MAX,
        }
    }
}

/// Checks `path` as a kernel; `pvh`: an ELF with a PVH note is fine too
/// (guests; the host kernel is booted by firmware or QEMU as a bzImage).
/// The error says what was expected, without the path (the caller locates
/// it at the key).
pub fn check_kernel(path: &Path, pvh: bool) -> Result<Bootable, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(HEAD).read_to_end(&mut head))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if head.starts_with(b"\x7fELF") {
        if !pvh {
            return Err(format!(
                "{} is an ELF file; expected a bzImage (arch/x86/boot/bzImage, /boot/vmlinuz-*)",
                path.display()
            ));
        }
        let data =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        return check_pvh(&data)
            .map(|()| Bootable::Pvh)
            .map_err(|why| format!("{} {why}", path.display()));
    }
    let expected = if pvh {
        "expected a bzImage or an ELF with a PVH entry note"
    } else {
        "expected a bzImage"
    };
    match bzimage::check_64bit(&head, size) {
        Ok(_) => Ok(Bootable::BzImage {
            cmdline_max: bzimage::cmdline_size(&head)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0),
        }),
        Err(HeaderError::Truncated { expected: want }) => Err(format!(
            "{} is truncated: {size} bytes, but its header says {want}; {expected}, whole",
            path.display()
        )),
        Err(HeaderError::NotBzImage) => Err(format!(
            "{} is neither a bzImage nor an ELF kernel; {expected}",
            path.display()
        )),
        Err(HeaderError::OldProtocol { major, minor }) => Err(format!(
            "{} speaks boot protocol {major}.{minor:02}; expected a bzImage of protocol 2.12 or later (Linux 3.8+)",
            path.display()
        )),
        Err(HeaderError::No64BitEntry) => Err(format!(
            "{} has no 64-bit entry point; expected a 64-bit x86 bzImage",
            path.display()
        )),
    }
}

/// An ELF with a PVH note whose loadable segments are all in the file.
fn check_pvh(data: &[u8]) -> Result<(), String> {
    let found = match FileKind::parse(data) {
        Ok(FileKind::Elf64) => pvh_note::<elf::FileHeader64<Endianness>>(data),
        Ok(FileKind::Elf32) => pvh_note::<elf::FileHeader32<Endianness>>(data),
        _ => Err("is not a valid ELF file".to_string()),
    }?;
    if found {
        Ok(())
    } else {
        Err("is an ELF file without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); expected a PVH kernel or a bzImage".into())
    }
}

fn pvh_note<H: FileHeader<Endian = Endianness>>(data: &[u8]) -> Result<bool, String> {
    let truncated =
        |e: object::Error| format!("is truncated or damaged ({e}); expected a whole ELF file");
    let header = H::parse(data).map_err(truncated)?;
    let endian = header.endian().map_err(truncated)?;
    let mut found = false;
    for ph in header.program_headers(endian, data).map_err(truncated)? {
        if ph.p_type(endian) == elf::PT_LOAD {
            // The segment's bytes must be in the file.
            ph.data(endian, data).map_err(|()| {
                "is truncated: a loadable segment ends past the end of the file; expected a whole ELF file".to_string()
            })?;
        }
        if let Some(mut notes) = ph.notes(endian, data).map_err(truncated)? {
            while let Some(note) = notes.next().map_err(truncated)? {
                if note.name() == PVH_NOTE_OWNER && note.n_type(endian) == PVH_NOTE_TYPE {
                    found = true;
                }
            }
        }
    }
    Ok(found)
}

/// Checks a command line against its kernel's limit.
pub fn check_cmdline(cmdline: &str, kernel: Bootable) -> Result<(), String> {
    let max = kernel.cmdline_max();
    if cmdline.len() > max {
        return Err(format!(
            "the command line is {} bytes; expected at most {max}, the most this kernel accepts",
            cmdline.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit bzImage of `total` bytes whose header says it has `syssize`
    /// 16-byte units and takes `cmdline` bytes of command line.
    fn bzimage(total: usize, syssize: u32, cmdline: u32) -> Vec<u8> {
        let mut k = vec![0u8; total];
        k[0x1f1] = 4;
        k[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        k[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        k[0x211] = bzimage::LOADED_HIGH;
        k[0x236..0x238].copy_from_slice(&bzimage::XLF_KERNEL_64.to_le_bytes());
        k[0x238..0x23c].copy_from_slice(&cmdline.to_le_bytes());
        k
    }

    fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn a_whole_bzimage_passes_with_its_cmdline_limit() {
        let d = tempfile::tempdir().unwrap();
        let k = write(d.path(), "k", &bzimage(0xa00 + 0x100, 0x10, 2048));
        let b = check_kernel(&k, false).unwrap();
        assert_eq!(b, Bootable::BzImage { cmdline_max: 2048 });
        assert!(check_cmdline(&"x".repeat(2048), b).is_ok());
        let e = check_cmdline(&"x".repeat(2049), b).unwrap_err();
        assert!(e.contains("2049 bytes; expected at most 2048"), "{e}");
    }

    #[test]
    fn truncated_and_foreign_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        // The header says 0xa00 + 0x1000 bytes; the file has 0xb00.
        let k = write(d.path(), "cut", &bzimage(0xb00, 0x100, 2048));
        let e = check_kernel(&k, false).unwrap_err();
        assert!(
            e.contains("is truncated: 2816 bytes, but its header says 6656"),
            "{e}"
        );
        let junk = write(d.path(), "junk", &[7u8; 5000]);
        let e = check_kernel(&junk, true).unwrap_err();
        assert!(
            e.contains("neither a bzImage nor an ELF kernel; expected a bzImage or an ELF with a PVH entry note"),
            "{e}"
        );
        let short = write(d.path(), "short", b"MZ");
        assert!(check_kernel(&short, false)
            .unwrap_err()
            .contains("truncated"));
    }

    #[test]
    fn an_elf_needs_a_pvh_note_and_is_no_host_kernel() {
        use object::write::elf::{
            FileHeader as WFileHeader, ProgramHeader as WProgramHeader, Writer,
        };
        // A 64-bit ELF with one PT_NOTE segment holding `note`.
        let elf = |owner: &[u8], kind: u32| {
            let mut out = Vec::new();
            let mut w = Writer::new(Endianness::Little, true, &mut out);
            w.reserve_file_header();
            w.reserve_program_headers(1);
            let mut note = Vec::new();
            note.extend_from_slice(&(u32::try_from(owner.len()).unwrap() + 1).to_le_bytes());
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&kind.to_le_bytes());
            note.extend_from_slice(owner);
            note.push(0);
            while note.len() % 4 != 0 {
                note.push(0);
            }
            note.extend_from_slice(&0x100000u32.to_le_bytes());
            let off = w.reserve(note.len(), 4);
            w.write_file_header(&WFileHeader {
                os_abi: 0,
                abi_version: 0,
                e_type: elf::ET_EXEC,
                e_machine: elf::EM_X86_64,
                e_entry: 0x100000,
                e_flags: 0,
            })
            .unwrap();
            w.write_align_program_headers();
            w.write_program_header(&WProgramHeader {
                p_type: elf::PT_NOTE,
                p_flags: 0,
                p_offset: off as u64,
                p_vaddr: 0,
                p_paddr: 0,
                p_filesz: note.len() as u64,
                p_memsz: note.len() as u64,
                p_align: 4,
            });
            w.write_align(4);
            w.write(&note);
            out
        };
        let d = tempfile::tempdir().unwrap();
        let pvh = write(d.path(), "pvh", &elf(b"Xen", PVH_NOTE_TYPE));
        assert_eq!(check_kernel(&pvh, true).unwrap(), Bootable::Pvh);
        let e = check_kernel(&pvh, false).unwrap_err();
        assert!(e.contains("is an ELF file; expected a bzImage"), "{e}");
        let plain = write(d.path(), "plain", &elf(b"GNU", 3));
        let e = check_kernel(&plain, true).unwrap_err();
        assert!(e.contains("without a PVH entry note"), "{e}");
        let mut cut = elf(b"Xen", PVH_NOTE_TYPE);
        cut.truncate(cut.len() - 8);
        let cut = write(d.path(), "cut", &cut);
        let e = check_kernel(&cut, true).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
    }
}
