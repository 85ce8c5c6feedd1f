//! Linux bzImage through the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst): the protected-mode kernel at 1 MiB,
//! a zero page with the setup header, E820 map, command line, initrd and a
//! SETUP_DTB setup_data node, entered in long mode at load address + 0x200.

use super::e820::memory_map;
use super::{
    align_up, build_fdt, file_size, load_initrd, open, write_cmdline, BootError, BootSpec,
    KernelFormat, Loaded,
};
use crate::arch::x86_64::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, FDT_START, HIMEM_START, ZERO_PAGE_START,
};
use crate::arch::x86_64::regs::EntryPoint;
use crate::vm::memory::low_ram_end;
use kiln_abi::bzimage::{self, HeaderError, BOOT_FLAG};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE, SETUP_DTB,
};
use linux_loader::loader::{BzImage, KernelLoader};
use std::io::{Read, Seek, SeekFrom};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

// kiln-abi's header check reads the fields linux-loader's struct holds.
const _: () = assert!(
    bzimage::SETUP_HEADER_START + std::mem::size_of::<setup_header>() == bzimage::SETUP_HEADER_END
);
const LOADER_UNDEFINED: u8 = 0xff;
const CAN_USE_HEAP: u8 = 0x80;
/// The 64-bit entry is 0x200 bytes into the protected-mode kernel.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Where a relocatable kernel decompresses itself when loaded lower
/// (CONFIG_PHYSICAL_START, 16 MiB on distribution kernels).
const DEFAULT_PREF_ADDRESS: u64 = 0x100_0000;

/// The setup header of a bzImage, checked for what kiln needs
/// (`kiln_abi::bzimage::check_64bit`).
pub fn read_header(
    file: &mut std::fs::File,
    path: &std::path::Path,
) -> Result<setup_header, BootError> {
    let read_err = |source| BootError::Read {
        what: "kernel image",
        path: path.to_path_buf(),
        source,
    };
    let size = file_size(file, path, "kernel image")?;
    let mut head = [0u8; bzimage::SETUP_HEADER_END];
    // A shorter file is refused below, as truncated, without being read.
    if size >= head.len() as u64 {
        file.seek(SeekFrom::Start(0)).map_err(read_err)?;
        file.read_exact(&mut head).map_err(read_err)?;
    }
    let path = path.to_path_buf();
    bzimage::check_64bit(&head, size).map_err(|e| match e {
        HeaderError::Truncated { expected } => BootError::Truncated {
            path,
            size,
            expected,
        },
        HeaderError::NotBzImage => BootError::UnknownFormat { path },
        HeaderError::OldProtocol { major, minor } => {
            BootError::OldBootProtocol { path, major, minor }
        }
        HeaderError::No64BitEntry => BootError::No64BitEntry { path },
    })?;
    let mut hdr = setup_header::default();
    hdr.as_mut_slice()
        .copy_from_slice(&head[bzimage::SETUP_HEADER_START..]);
    Ok(hdr)
}

/// The highest guest address the kernel occupies while it decompresses and
/// runs: its `init_size` from where it loads or relocates to.
pub fn kernel_footprint_end(hdr: &setup_header, file_payload: u64) -> u64 {
    let pref = if hdr.pref_address == 0 {
        DEFAULT_PREF_ADDRESS
    } else {
        hdr.pref_address
    };
    let align = u64::from(hdr.kernel_alignment).max(0x1000);
    // A relocatable kernel runs at max(load address aligned up, pref_address);
    // a fixed one at pref_address.
    let base = if hdr.relocatable_kernel != 0 {
        align_up(HIMEM_START, align).max(pref)
    } else {
        pref
    };
    let init = u64::from(hdr.init_size).max(file_payload);
    // Saturating: pref_address comes from the file and may be anything.
    base.saturating_add(init)
        .max(HIMEM_START.saturating_add(file_payload))
}

pub(crate) fn load(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<Loaded, BootError> {
    let path = spec.kernel;
    let mut file = open(path, "kernel image")?;
    let hdr = read_header(&mut file, path)?;
    let size = file_size(&file, path, "kernel image")?;
    let setup_size = bzimage::setup_size(hdr.setup_sects);
    // read_header checked that the file holds the setup sectors and more.
    let payload = size.saturating_sub(setup_size);
    let kernel_end = kernel_footprint_end(&hdr, payload);
    let ram = low_ram_end(spec.mem_size);
    if kernel_end > ram {
        return Err(BootError::KernelTooLarge {
            path: path.to_path_buf(),
            need_mib: kernel_end.div_ceil(1 << 20),
            have_mib: ram >> 20,
        });
    }

    let loaded =
        BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            BootError::Load {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let mut params = boot_params {
        hdr: loaded.setup_header.unwrap_or(hdr),
        ..Default::default()
    };

    let max_cmdline = (params.hdr.cmdline_size as usize).clamp(1, CMDLINE_MAX_SIZE - 1);
    write_cmdline(mem, spec.cmdline, max_cmdline)?;

    let initrd = match spec.initrd {
        Some(p) => {
            let limit = u64::from(params.hdr.initrd_addr_max) + 1;
            Some(load_initrd(mem, p, spec.mem_size, kernel_end, limit)?)
        }
        None => None,
    };

    // The device tree rides in a setup_data node: 16 bytes of header
    // (next, type, len) followed by the blob.
    let dtb = build_fdt(spec)?;
    let mut node = Vec::with_capacity(16 + dtb.len());
    node.extend_from_slice(&0u64.to_le_bytes());
    node.extend_from_slice(&SETUP_DTB.to_le_bytes());
    let dtb_len = u32::try_from(dtb.len()).map_err(|_| BootError::FdtTooLarge(dtb.len()))?;
    node.extend_from_slice(&dtb_len.to_le_bytes());
    node.extend_from_slice(&dtb);
    mem.write_slice(&node, GuestAddress(FDT_START))
        .map_err(|source| BootError::WriteBootData {
            what: "device tree",
            source,
        })?;

    fill_zero_page(&mut params, spec, initrd.map(|i| (i.addr, i.size)));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::Params)?;

    Ok(Loaded {
        format: KernelFormat::BzImage,
        entry: EntryPoint::Linux64 {
            entry: loaded.kernel_load.0 + ENTRY_64_OFFSET,
            zero_page: ZERO_PAGE_START,
        },
    })
}

/// Fills the boot loader's part of the zero page.
pub fn fill_zero_page(params: &mut boot_params, spec: &BootSpec, initrd: Option<(u64, u64)>) {
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    // A constant below 1 MiB.
    #[allow(clippy::cast_possible_truncation)]
    {
        params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    }
    params.ext_cmd_line_ptr = 0;
    if let Some((addr, size)) = initrd {
        // The low halves here, the high halves in the ext_ fields.
        params.hdr.ramdisk_image = (addr & 0xffff_ffff) as u32;
        params.hdr.ramdisk_size = (size & 0xffff_ffff) as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    params.hdr.setup_data = FDT_START;
    if let Some(rsdp) = spec.rsdp {
        params.acpi_rsdp_addr = rsdp;
    }
    let map = memory_map(spec.mem_size);
    let n = map.len().min(E820_MAX_ENTRIES_ZEROPAGE);
    let mut table = params.e820_table;
    for (slot, e) in table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_table = table;
    // n <= E820_MAX_ENTRIES_ZEROPAGE (128).
    params.e820_entries = u8::try_from(n).unwrap_or(u8::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_abi::bzimage::LOADED_HIGH;
    use linux_loader::loader::bootparam::XLF_KERNEL_64;
    use std::io::Write;

    const HDR_MAGIC: u32 = u32::from_le_bytes(bzimage::MAGIC);
    use std::path::Path;

    /// A synthetic bzImage: a setup header announcing `syssize` 16-byte
    /// paragraphs of payload, and `payload` bytes actually present.
    pub(crate) fn fake_bzimage(payload: usize, syssize: u32, init_size: u32) -> Vec<u8> {
        let setup_sects = 4u8;
        let mut img = vec![0u8; (usize::from(setup_sects) + 1) * 512 + payload];
        let mut hdr = setup_header {
            setup_sects,
            syssize,
            boot_flag: BOOT_FLAG,
            header: HDR_MAGIC,
            version: 0x020f,
            loadflags: LOADED_HIGH,
            code32_start: 0x100000,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags: XLF_KERNEL_64,
            cmdline_size: 2048,
            pref_address: 0x100_0000,
            init_size,
            ..Default::default()
        };
        hdr.jump = 0x66eb;
        img[0x1f1..0x1f1 + std::mem::size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
        img
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
            cmdline: "console=ttyS0 reboot=k",
            mem_size,
            cpus: 2,
            pci: &[],
            rsdp: Some(0xe0000),
        }
    }

    fn zero_page(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
    }

    #[test]
    fn loads_kernel_initrd_cmdline_and_zero_page() {
        let dir = tempfile::tempdir().unwrap();
        let k = write(dir.path(), "bz", &fake_bzimage(0x1000, 0x100, 0x40_0000));
        let initrd = write(dir.path(), "initrd", &[0xa5; 10_000]);
        let size = 64u64 << 20;
        let mem = crate::vm::memory::create(size, false).unwrap();
        let l = load(&mem, &spec(&k, Some(&initrd), size)).unwrap();
        assert_eq!(l.format, KernelFormat::BzImage);
        assert_eq!(
            l.entry,
            EntryPoint::Linux64 {
                entry: 0x100200,
                zero_page: ZERO_PAGE_START
            }
        );
        let zp = zero_page(&mem);
        let hdr = zp.hdr;
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, HDR_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, u32::try_from(CMDLINE_START).unwrap());
        assert_eq!({ hdr.setup_data }, FDT_START);
        assert_eq!({ zp.acpi_rsdp_addr }, 0xe0000);
        // The initrd sits page-aligned at the top of RAM.
        let (ri, rs) = ({ hdr.ramdisk_image }, { hdr.ramdisk_size });
        assert_eq!(rs, 10_000);
        assert_eq!(u64::from(ri), (size - 10_000) & !0xfff);
        let mut b = [0u8; 4];
        mem.read_slice(&mut b, GuestAddress(u64::from(ri))).unwrap();
        assert_eq!(b, [0xa5; 4]);
        // The E820 map is the one of e820::memory_map.
        let n = zp.e820_entries as usize;
        let table = zp.e820_table;
        let got: Vec<(u64, u64, u32)> = table[..n]
            .iter()
            .map(|e| (e.addr, e.size, e.r#type))
            .collect();
        let want: Vec<(u64, u64, u32)> = memory_map(size)
            .iter()
            .map(|e| (e.addr, e.size, e.kind))
            .collect();
        assert_eq!(got, want);
        // Command line, NUL-terminated.
        let mut c = [0u8; 23];
        mem.read_slice(&mut c, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&c, b"console=ttyS0 reboot=k\0");
        // The setup_data node carries the device tree.
        let kind: u32 = mem.read_obj(GuestAddress(FDT_START + 8)).unwrap();
        assert_eq!(kind, SETUP_DTB);
        let magic: u32 = mem.read_obj(GuestAddress(FDT_START + 16)).unwrap();
        assert_eq!(u32::from_be(magic), 0xd00d_feed);
    }

    #[test]
    fn truncated_image_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        // syssize announces 0x200 paragraphs (8 KiB) but only 4 KiB follow.
        let k = write(dir.path(), "bz", &fake_bzimage(0x1000, 0x200, 0x40_0000));
        let mem = crate::vm::memory::create(64 << 20, false).unwrap();
        let e = load(&mem, &spec(&k, None, 64 << 20)).unwrap_err();
        assert!(
            matches!(e, BootError::Truncated { expected, .. } if expected == 5 * 512 + 0x2000),
            "{e}"
        );
        let short = write(dir.path(), "short", &fake_bzimage(0, 0, 0)[..0x210]);
        let e = load(&mem, &spec(&short, None, 64 << 20)).unwrap_err();
        assert!(e.to_string().contains("is truncated"), "{e}");
    }

    #[test]
    fn wrong_magic_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = fake_bzimage(0x1000, 0x100, 0x1000);
        img[0x1fe] = 0; // boot flag
        let k = write(dir.path(), "bz", &img);
        let mem = crate::vm::memory::create(64 << 20, false).unwrap();
        let e = load(&mem, &spec(&k, None, 64 << 20)).unwrap_err();
        assert!(
            e.to_string().contains("neither a Linux bzImage nor an ELF"),
            "{e}"
        );
        let junk = write(dir.path(), "junk", b"#!/bin/sh\necho not a kernel\n");
        let e = crate::boot::load(&mem, &spec(&junk, None, 64 << 20)).unwrap_err();
        assert!(matches!(e, BootError::UnknownFormat { .. }), "{e}");
    }

    #[test]
    fn kernel_larger_than_memory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        // init_size of 64 MiB from the 16 MiB pref_address needs 80 MiB.
        let k = write(dir.path(), "bz", &fake_bzimage(0x1000, 0x100, 64 << 20));
        let mem = crate::vm::memory::create(32 << 20, false).unwrap();
        let e = load(&mem, &spec(&k, None, 32 << 20)).unwrap_err();
        assert!(
            matches!(
                e,
                BootError::KernelTooLarge {
                    need_mib: 80,
                    have_mib: 32,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("raise `memory`"), "{e}");
    }

    #[test]
    fn initrd_larger_than_memory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let k = write(dir.path(), "bz", &fake_bzimage(0x1000, 0x100, 0x40_0000));
        let initrd = write(dir.path(), "initrd", &vec![0u8; 20 << 20]);
        let mem = crate::vm::memory::create(32 << 20, false).unwrap();
        let e = load(&mem, &spec(&k, Some(&initrd), 32 << 20)).unwrap_err();
        assert!(matches!(e, BootError::InitrdTooLarge { .. }), "{e}");
    }

    #[test]
    fn old_protocol_and_32_bit_kernels_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = fake_bzimage(0x1000, 0x100, 0x1000);
        img[0x206] = 0x0a; // version 2.10
        let k = write(dir.path(), "old", &img);
        let mem = crate::vm::memory::create(64 << 20, false).unwrap();
        let e = load(&mem, &spec(&k, None, 64 << 20)).unwrap_err();
        assert!(e.to_string().contains("boot protocol 2.10"), "{e}");
        let mut img = fake_bzimage(0x1000, 0x100, 0x1000);
        img[0x236] = 0; // xloadflags
        let k = write(dir.path(), "k32", &img);
        let e = load(&mem, &spec(&k, None, 64 << 20)).unwrap_err();
        assert!(matches!(e, BootError::No64BitEntry { .. }), "{e}");
    }

    #[test]
    fn command_line_longer_than_the_kernel_takes() {
        let dir = tempfile::tempdir().unwrap();
        let k = write(dir.path(), "bz", &fake_bzimage(0x1000, 0x100, 0x1000));
        let mem = crate::vm::memory::create(64 << 20, false).unwrap();
        let long = "x".repeat(3000);
        let mut s = spec(&k, None, 64 << 20);
        s.cmdline = &long;
        let e = load(&mem, &s).unwrap_err();
        assert!(
            matches!(
                e,
                BootError::CmdlineTooLong {
                    len: 3000,
                    max: 2048
                }
            ),
            "{e}"
        );
    }
}
