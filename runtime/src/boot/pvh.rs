//! ELF kernels through the PVH boot protocol (xen/include/public/arch-x86/
//! hvm/start_info.h): segments loaded at their physical addresses, entered in
//! 32-bit protected mode at the XEN_ELFNOTE_PHYS32_ENTRY address with `ebx`
//! pointing at an hvm_start_info that lists the memory map, the command line
//! and the modules: the initrd first (when there is one), then the device
//! tree, last, with the module command line "kiln,fdt".

use super::e820::memory_map;
use super::{
    build_fdt, file_size, load_initrd, open, write_cmdline, BootError, BootSpec, KernelFormat,
    Loaded,
};
use crate::arch::x86_64::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, FDT_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_MAX, PVH_MODLIST_START, PVH_MODSTR_END, PVH_MODSTR_START,
};
use crate::arch::x86_64::regs::EntryPoint;
use crate::vm::memory::low_ram_end;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::{Elf, KernelLoader, PvhBootCapability};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

/// The module command line that marks the device tree module.
pub const FDT_MODULE_CMDLINE: &str = kiln_abi::fdt::MODULE_CMDLINE;
// The string and its NUL fit in the module strings area.
const _: () = assert!(PVH_MODSTR_START + (FDT_MODULE_CMDLINE.len() as u64) < PVH_MODSTR_END);

const ELFCLASS64: u8 = 2;

/// Checks what linux-loader leaves to the caller, so that a bad image gives
/// a precise error: the class, that every segment's bytes are in the file,
/// and that every segment fits in guest RAM. Returns where the image ends in
/// guest memory.
pub fn check_elf(path: &Path, mem_size: u64) -> Result<u64, BootError> {
    let mut file = open(path, "kernel image")?;
    let size = file_size(&file, path, "kernel image")?;
    let read_err = |source| BootError::Read {
        what: "kernel image",
        path: path.to_path_buf(),
        source,
    };
    let truncated = |expected: u64| BootError::Truncated {
        path: path.to_path_buf(),
        size,
        expected,
    };
    let mut ehdr = Elf64_Ehdr::default();
    let ehdr_len = std::mem::size_of::<Elf64_Ehdr>() as u64;
    if size < ehdr_len {
        return Err(truncated(ehdr_len));
    }
    file.read_exact(ehdr.as_mut_slice()).map_err(read_err)?;
    if ehdr.e_ident.get(4) != Some(&ELFCLASS64) {
        return Err(BootError::Elf32 {
            path: path.to_path_buf(),
        });
    }
    let phent = std::mem::size_of::<Elf64_Phdr>() as u64;
    let ph_end = ehdr
        .e_phoff
        .saturating_add(u64::from(ehdr.e_phnum).saturating_mul(phent));
    if ph_end > size {
        return Err(truncated(ph_end));
    }
    file.seek(SeekFrom::Start(ehdr.e_phoff)).map_err(read_err)?;
    let ram = low_ram_end(mem_size);
    let mut end = 0u64;
    for _ in 0..ehdr.e_phnum {
        let mut ph = Elf64_Phdr::default();
        file.read_exact(ph.as_mut_slice()).map_err(read_err)?;
        if ph.p_type != PT_LOAD {
            continue;
        }
        let file_end = ph.p_offset.saturating_add(ph.p_filesz);
        if file_end > size {
            return Err(truncated(file_end));
        }
        let mem_end = ph.p_paddr.saturating_add(ph.p_memsz.max(ph.p_filesz));
        if mem_end > ram {
            return Err(BootError::KernelTooLarge {
                path: path.to_path_buf(),
                need_mib: mem_end.div_ceil(1 << 20),
                have_mib: ram >> 20,
            });
        }
        end = end.max(mem_end);
    }
    Ok(end)
}

pub(crate) fn load(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<Loaded, BootError> {
    let path = spec.kernel;
    let image_end = check_elf(path, spec.mem_size)?;
    let mut file = open(path, "kernel image")?;
    let loaded =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            BootError::Load {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr.0,
        _ => {
            return Err(BootError::NoPvhEntry {
                path: path.to_path_buf(),
            })
        }
    };
    let kernel_end = image_end.max(loaded.kernel_end);

    write_cmdline(mem, spec.cmdline, CMDLINE_MAX_SIZE - 1)?;

    let mut modules = Vec::new();
    if let Some(p) = spec.initrd {
        let i = load_initrd(mem, p, spec.mem_size, kernel_end, u64::MAX)?;
        modules.push(hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        });
    }
    let dtb = build_fdt(spec)?;
    mem.write_slice(&dtb, GuestAddress(FDT_START))
        .map_err(|source| BootError::WriteBootData {
            what: "device tree",
            source,
        })?;
    let mut fdt_cmdline = FDT_MODULE_CMDLINE.as_bytes().to_vec();
    fdt_cmdline.push(0);
    mem.write_slice(&fdt_cmdline, GuestAddress(PVH_MODSTR_START))
        .map_err(|source| BootError::WriteBootData {
            what: "PVH module list",
            source,
        })?;
    modules.push(hvm_modlist_entry {
        paddr: FDT_START,
        size: dtb.len() as u64,
        cmdline_paddr: PVH_MODSTR_START,
        reserved: 0,
    });
    if modules.len() > PVH_MODLIST_MAX {
        return Err(BootError::TooManyModules {
            count: modules.len(),
        });
    }

    let memmap: Vec<hvm_memmap_table_entry> = memory_map(spec.mem_size)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    // One module at most, and a memory map of a handful of entries.
    #[allow(clippy::cast_possible_truncation)]
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: PVH_MODLIST_START,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: spec.rsdp.unwrap_or(0),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(BootError::Params)?;

    Ok(Loaded {
        format: KernelFormat::Elf,
        entry: EntryPoint::Pvh32 {
            entry,
            start_info: PVH_INFO_START,
        },
    })
}

#[cfg(test)]
// The test ELF images are a few KiB: their offsets fit every width.
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal ELF64 with one PT_LOAD segment of `code` at `paddr` and,
    /// when `pvh_entry` is given, a PT_NOTE with the Xen PVH entry note.
    pub fn fake_elf(paddr: u64, code: &[u8], pvh_entry: Option<u32>) -> Vec<u8> {
        let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
        let ehsize = 64u64;
        let phoff = ehsize;
        let note_off = phoff + 56 * u64::from(phnum);
        let mut note = Vec::new();
        if let Some(e) = pvh_entry {
            note.extend_from_slice(&4u32.to_le_bytes()); // namesz "Xen\0"
            note.extend_from_slice(&4u32.to_le_bytes()); // descsz
            note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&e.to_le_bytes());
        }
        let code_off = (note_off + note.len() as u64).div_ceil(16) * 16;
        let mut out = vec![0u8; code_off as usize];
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // ELFCLASS64
        out[5] = 1; // little endian
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[52..54].copy_from_slice(&(ehsize as u16).to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&phnum.to_le_bytes());
        let mut ph = |i: u64, kind: u32, off: u64, addr: u64, len: u64, align: u64| {
            let at = (phoff + 56 * i) as usize;
            out[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            out[at + 4..at + 8].copy_from_slice(&5u32.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            out[at + 16..at + 24].copy_from_slice(&addr.to_le_bytes());
            out[at + 24..at + 32].copy_from_slice(&addr.to_le_bytes());
            out[at + 32..at + 40].copy_from_slice(&len.to_le_bytes());
            out[at + 40..at + 48].copy_from_slice(&len.to_le_bytes());
            out[at + 48..at + 56].copy_from_slice(&align.to_le_bytes());
        };
        ph(0, PT_LOAD, code_off, paddr, code.len() as u64, 16);
        if pvh_entry.is_some() {
            ph(1, 4, note_off, 0, note.len() as u64, 4);
        }
        let note_at = note_off as usize;
        out[note_at..note_at + note.len()].copy_from_slice(&note);
        out.extend_from_slice(code);
        out
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    fn spec<'a>(kernel: &'a Path, initrd: Option<&'a Path>, mem_size: u64) -> BootSpec<'a> {
        BootSpec {
            kernel,
            initrd,
            cmdline: "hello world",
            mem_size,
            cpus: 1,
            pci: &[],
            rsdp: None,
        }
    }

    #[test]
    fn loads_segments_and_writes_start_info_with_fdt_last() {
        let dir = tempfile::tempdir().unwrap();
        let k = write(
            dir.path(),
            "k.elf",
            &fake_elf(0x20_0000, &[0xf4; 32], Some(0x20_0010)),
        );
        let initrd = write(dir.path(), "initrd", &[7u8; 5000]);
        let size = 32u64 << 20;
        let mem = crate::vm::memory::create(size, false).unwrap();
        let l = load(&mem, &spec(&k, Some(&initrd), size)).unwrap();
        assert_eq!(l.format, KernelFormat::Elf);
        assert_eq!(
            l.entry,
            EntryPoint::Pvh32 {
                entry: 0x20_0010,
                start_info: PVH_INFO_START
            }
        );
        let code: [u8; 4] = mem.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!(code, [0xf4; 4]);

        let si: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(si.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(si.version, 1);
        assert_eq!(si.cmdline_paddr, CMDLINE_START);
        assert_eq!(si.nr_modules, 2);
        let map = memory_map(size);
        assert_eq!(si.memmap_entries as usize, map.len());
        for (i, e) in map.iter().enumerate() {
            let m: hvm_memmap_table_entry = mem
                .read_obj(GuestAddress(si.memmap_paddr + 24 * i as u64))
                .unwrap();
            assert_eq!((m.addr, m.size, m.type_), (e.addr, e.size, e.kind));
        }
        let first: hvm_modlist_entry = mem.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!(first.size, 5000);
        assert_eq!(first.cmdline_paddr, 0);
        let last: hvm_modlist_entry = mem.read_obj(GuestAddress(si.modlist_paddr + 32)).unwrap();
        assert_eq!(last.paddr, FDT_START);
        let magic: u32 = mem.read_obj(GuestAddress(last.paddr)).unwrap();
        assert_eq!(u32::from_be(magic), 0xd00d_feed);
        let mut s = [0u8; 9];
        mem.read_slice(&mut s, GuestAddress(last.cmdline_paddr))
            .unwrap();
        assert_eq!(&s, b"kiln,fdt\0");
        let mut c = [0u8; 12];
        mem.read_slice(&mut c, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&c, b"hello world\0");
    }

    #[test]
    fn without_initrd_the_fdt_is_the_only_module() {
        let dir = tempfile::tempdir().unwrap();
        let k = write(
            dir.path(),
            "k.elf",
            &fake_elf(0x20_0000, &[0xf4; 32], Some(0x20_0000)),
        );
        let mem = crate::vm::memory::create(16 << 20, false).unwrap();
        load(&mem, &spec(&k, None, 16 << 20)).unwrap();
        let si: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(si.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!(m.paddr, FDT_START);
    }

    #[test]
    fn elf_without_pvh_note_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k = write(dir.path(), "k.elf", &fake_elf(0x20_0000, &[0xf4; 32], None));
        let mem = crate::vm::memory::create(16 << 20, false).unwrap();
        let e = load(&mem, &spec(&k, None, 16 << 20)).unwrap_err();
        assert!(matches!(e, BootError::NoPvhEntry { .. }), "{e}");
        assert!(e.to_string().contains("PVH entry note"), "{e}");
    }

    #[test]
    fn truncated_elf_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let img = fake_elf(0x20_0000, &[0xf4; 4096], Some(0x20_0000));
        let k = write(dir.path(), "k.elf", &img[..img.len() - 100]);
        let mem = crate::vm::memory::create(16 << 20, false).unwrap();
        let e = load(&mem, &spec(&k, None, 16 << 20)).unwrap_err();
        assert!(matches!(e, BootError::Truncated { .. }), "{e}");
        let k = write(dir.path(), "tiny.elf", &img[..40]);
        let e = load(&mem, &spec(&k, None, 16 << 20)).unwrap_err();
        assert!(matches!(e, BootError::Truncated { .. }), "{e}");
    }

    #[test]
    fn elf_beyond_guest_memory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let k = write(
            dir.path(),
            "k.elf",
            &fake_elf(0x200_0000, &[0xf4; 32], Some(0x200_0000)),
        );
        let mem = crate::vm::memory::create(16 << 20, false).unwrap();
        let e = load(&mem, &spec(&k, None, 16 << 20)).unwrap_err();
        assert!(
            matches!(
                e,
                BootError::KernelTooLarge {
                    need_mib: 33,
                    have_mib: 16,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn elf32_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = fake_elf(0x20_0000, &[0xf4; 32], Some(0x20_0000));
        img[4] = 1;
        let k = write(dir.path(), "k.elf", &img);
        let mem = crate::vm::memory::create(16 << 20, false).unwrap();
        let e = load(&mem, &spec(&k, None, 16 << 20)).unwrap_err();
        assert!(matches!(e, BootError::Elf32 { .. }), "{e}");
    }
}
