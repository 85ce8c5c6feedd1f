//! Checks a kernel before it goes into an image, so what would fail at boot
//! fails the build at its key: the host kernel and every guest kernel must
//! be a whole 64-bit bzImage (or, for a guest, an ELF with a PVH entry
//! note), and each command line must fit what its kernel accepts.

use kiln_abi::bzimage::{self, HeaderError};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{elf, Endianness, FileKind, ReadRef};
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
    /// An ELF with a PVH note whose loadable segments end at this guest
    /// physical address.
    Pvh { load_end: u64 },
}

impl Bootable {
    pub fn cmdline_max(self) -> usize {
        match self {
            Bootable::BzImage { cmdline_max } => cmdline_max,
            Bootable::Pvh { .. } => PVH_CMDLINE_MAX,
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
        // Read through a cache of the ranges the checks look at: a vmlinux
        // is 53 MB, and only its headers and notes matter here.
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let cache = object::ReadCache::new(file);
        return check_pvh(&cache)
            .map(|load_end| Bootable::Pvh { load_end })
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

/// An ELF with a PVH note whose loadable segments are all in the file;
/// returns the guest physical address where its loadable segments end.
pub fn check_pvh<'d, R: ReadRef<'d>>(data: R) -> Result<u64, String> {
    let (found, end) = match FileKind::parse(data) {
        Ok(FileKind::Elf64) => pvh_note::<elf::FileHeader64<Endianness>, R>(data),
        Ok(FileKind::Elf32) => pvh_note::<elf::FileHeader32<Endianness>, R>(data),
        _ => Err("is not a valid ELF file".to_string()),
    }?;
    if found {
        Ok(end)
    } else {
        Err("is an ELF file without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); expected a PVH kernel or a bzImage".into())
    }
}

fn pvh_note<'d, H: FileHeader<Endian = Endianness>, R: ReadRef<'d>>(
    data: R,
) -> Result<(bool, u64), String> {
    let truncated =
        |e: object::Error| format!("is truncated or damaged ({e}); expected a whole ELF file");
    let size = data.len().map_err(|()| "cannot be read".to_string())?;
    let header = H::parse(data).map_err(truncated)?;
    let endian = header.endian().map_err(truncated)?;
    let mut found = false;
    let mut end = 0u64;
    for ph in header.program_headers(endian, data).map_err(truncated)? {
        if ph.p_type(endian) == elf::PT_LOAD {
            // The segment's bytes must be in the file.
            let (memsz, filesz, paddr, offset): (u64, u64, u64, u64) = (
                ph.p_memsz(endian).into(),
                ph.p_filesz(endian).into(),
                ph.p_paddr(endian).into(),
                ph.p_offset(endian).into(),
            );
            if offset.checked_add(filesz).is_none_or(|e| e > size) {
                return Err("is truncated: a loadable segment ends past the end of the file; expected a whole ELF file".to_string());
            }
            end = end.max(paddr.saturating_add(memsz.max(filesz)));
        }
        if let Some(mut notes) = ph.notes(endian, data).map_err(truncated)? {
            while let Some(note) = notes.next().map_err(truncated)? {
                if note.name() == PVH_NOTE_OWNER && note.n_type(endian) == PVH_NOTE_TYPE {
                    found = true;
                }
            }
        }
    }
    Ok((found, end))
}

/// Where guest RAM below the PCI hole ends: the runtime loads kernels and
/// initrds only there (`low_ram_end` in runtime/src/vm/memory.rs).
const LOW_RAM_MAX: u64 = 3 << 30;

/// Checks that a PVH kernel's segments and the initrd (`initrd` bytes),
/// which the runtime places above them, fit in `memory` bytes of guest RAM.
/// A bzImage is checked by the runtime (it relocates itself).
pub fn check_memory(kernel: Bootable, initrd: u64, memory: u64) -> Result<(), String> {
    let Bootable::Pvh { load_end } = kernel else {
        return Ok(());
    };
    let need = load_end
        .saturating_add(initrd.div_ceil(PAGE).saturating_mul(PAGE))
        .div_ceil(MIB)
        .saturating_mul(MIB);
    if need > memory.min(LOW_RAM_MAX) {
        return Err(format!(
            "is {} MiB, but the guest kernel loads up to {} MiB and its initrd takes {} KiB above that; expected at least {} MiB, and more for the guest to run in",
            memory / MIB,
            load_end.div_ceil(MIB),
            initrd.div_ceil(1024),
            need / MIB,
        ));
    }
    Ok(())
}

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

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
pub(crate) mod tests {
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

    /// A 64-bit ELF with one PT_NOTE segment holding a note of `owner` and
    /// `kind` (with a PVH entry address), and a PT_LOAD of `load` bytes at
    /// guest address 16 MiB when `load` is not 0.
    pub(crate) fn elf_with_note(owner: &[u8], kind: u32, load: usize) -> Vec<u8> {
        let text = vec![0x90; load];
        let loads: &[(u64, &[u8], u64)] = if load > 0 {
            &[(0x100_0000, &text, load as u64)]
        } else {
            &[]
        };
        elf_exec(owner, kind, loads)
    }

    /// A 64-bit executable ELF: a PT_NOTE holding one note of `owner` and
    /// `kind` whose descriptor is the entry address (16 MiB), then a
    /// PT_LOAD per `(guest address, file bytes, memory size)`, each in the
    /// file in that order.
    pub(crate) fn elf_exec(owner: &[u8], kind: u32, loads: &[(u64, &[u8], u64)]) -> Vec<u8> {
        use object::write::elf::{
            FileHeader as WFileHeader, ProgramHeader as WProgramHeader, Writer,
        };
        let mut out = Vec::new();
        let mut w = Writer::new(Endianness::Little, true, &mut out);
        w.reserve_file_header();
        w.reserve_program_headers(1 + u32::try_from(loads.len()).unwrap());
        let mut note = Vec::new();
        note.extend_from_slice(&(u32::try_from(owner.len()).unwrap() + 1).to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&kind.to_le_bytes());
        note.extend_from_slice(owner);
        note.push(0);
        while note.len() % 4 != 0 {
            note.push(0);
        }
        note.extend_from_slice(&0x100_0000u32.to_le_bytes());
        let off = w.reserve(note.len(), 4);
        let load_offs: Vec<usize> = loads.iter().map(|l| w.reserve(l.1.len(), 4096)).collect();
        w.write_file_header(&WFileHeader {
            os_abi: 0,
            abi_version: 0,
            e_type: elf::ET_EXEC,
            e_machine: elf::EM_X86_64,
            e_entry: 0x100_0000,
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
        for (&(at, data, memsz), &offset) in loads.iter().zip(&load_offs) {
            w.write_program_header(&WProgramHeader {
                p_type: elf::PT_LOAD,
                p_flags: elf::PF_R | elf::PF_X,
                p_offset: offset as u64,
                p_vaddr: 0xffff_ffff_8000_0000 + at,
                p_paddr: at,
                p_filesz: data.len() as u64,
                p_memsz: memsz,
                p_align: 4096,
            });
        }
        w.write_align(4);
        w.write(&note);
        for &(_, data, _) in loads {
            w.write_align(4096);
            w.write(data);
        }
        out
    }

    #[test]
    fn an_elf_needs_a_pvh_note_and_is_no_host_kernel() {
        let elf = |owner: &[u8], kind: u32| elf_with_note(owner, kind, 0);
        let d = tempfile::tempdir().unwrap();
        let pvh = write(d.path(), "pvh", &elf(b"Xen", PVH_NOTE_TYPE));
        assert_eq!(
            check_kernel(&pvh, true).unwrap(),
            Bootable::Pvh { load_end: 0 }
        );
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

    #[test]
    fn a_pvh_kernel_and_its_initrd_must_fit_in_memory() {
        let d = tempfile::tempdir().unwrap();
        // Loaded at 16 MiB, 1 MiB long: it ends at 17 MiB.
        let k = write(
            d.path(),
            "k",
            &elf_with_note(b"Xen", PVH_NOTE_TYPE, 1 << 20),
        );
        let b = check_kernel(&k, true).unwrap();
        assert_eq!(b, Bootable::Pvh { load_end: 17 << 20 });
        assert!(check_memory(b, 3 << 20, 20 << 20).is_ok());
        let e = check_memory(b, (3 << 20) + 1, 20 << 20).unwrap_err();
        assert_eq!(
            e,
            "is 20 MiB, but the guest kernel loads up to 17 MiB and its initrd takes 3073 KiB above that; expected at least 21 MiB, and more for the guest to run in"
        );
        // A bzImage relocates itself; the runtime checks it.
        let bz = Bootable::BzImage { cmdline_max: 2048 };
        assert!(check_memory(bz, 1 << 30, 16 << 20).is_ok());
    }
}
