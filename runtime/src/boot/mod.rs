//! Putting a guest kernel into memory and telling it what it has: the
//! kernel image (a bzImage through the Linux 64-bit boot protocol, or an ELF
//! through PVH), its initrd, command line, memory map and device tree.
//!
//! - [`bzimage`]: Linux bzImage and its zero page.
//! - [`pvh`]: ELF kernels with a Xen PVH entry note, and hvm_start_info.
//! - [`e820`]: the guest memory map both protocols describe.
//! - [`fdt`]: the device tree both protocols pass along.

pub mod bzimage;
pub mod e820;
pub mod fdt;
pub mod pvh;

use crate::arch::x86_64::layout::{CMDLINE_START, FDT_MAX_SIZE};
use crate::arch::x86_64::regs::EntryPoint;
use crate::vm::memory::low_ram_end;
use fdt::PciDeviceInfo;
use linux_loader::cmdline::Cmdline;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("Cannot read {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is neither a Linux bzImage nor an ELF file; give `boot.kernel` a bzImage or an ELF with a PVH entry note", path.display())]
    UnknownFormat { path: PathBuf },
    #[error("{} is truncated: it has {size} bytes but its headers describe {expected}; rebuild or copy it again", path.display())]
    Truncated {
        path: PathBuf,
        size: u64,
        expected: u64,
    },
    #[error("{} uses Linux boot protocol {major}.{minor:02}; kiln needs 2.12 or later (Linux 3.8+) for the 64-bit entry", path.display())]
    OldBootProtocol {
        path: PathBuf,
        major: u16,
        minor: u16,
    },
    #[error("{} has no 64-bit entry point (XLF_KERNEL_64); build a 64-bit x86 kernel", path.display())]
    No64BitEntry { path: PathBuf },
    #[error("{} is a 32-bit ELF; kiln loads ELF64 images only", path.display())]
    Elf32 { path: PathBuf },
    #[error("{} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); kiln boots ELF kernels through PVH only: add the note or boot a bzImage", path.display())]
    NoPvhEntry { path: PathBuf },
    #[error("{} needs guest memory up to {need_mib} MiB but the VM has {have_mib} MiB below 3 GiB; raise `memory`", path.display())]
    KernelTooLarge {
        path: PathBuf,
        need_mib: u64,
        have_mib: u64,
    },
    #[error("Cannot load the kernel {}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("The kernel command line is {len} bytes; this kernel takes at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("The kernel command line is not valid (printable ASCII only)")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("Cannot write the kernel command line into guest memory")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("The initrd {} ({size} bytes) does not fit in guest memory between the kernel (ends at {kernel_end:#x}) and {limit:#x}; raise `memory`", path.display())]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("Cannot copy the initrd {} into guest memory", path.display())]
    LoadInitrd {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error(transparent)]
    Fdt(#[from] fdt::FdtError),
    #[error("The device tree is {0} bytes, more than the {FDT_MAX_SIZE} kiln reserves for it; assign fewer devices")]
    FdtTooLarge(usize),
    #[error("Cannot write the {what} into guest memory")]
    WriteBootData {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("Cannot write the boot parameters into guest memory")]
    Params(#[source] linux_loader::configurator::Error),
    #[error("{count} boot modules do not fit the PVH module list")]
    TooManyModules { count: usize },
}

/// Everything the boot code needs to know about the VM.
#[derive(Debug, Clone)]
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub mem_size: u64,
    pub cpus: u8,
    pub pci: &'a [PciDeviceInfo],
    /// Guest address of the ACPI RSDP, when the VM has ACPI tables.
    pub rsdp: Option<u64>,
}

/// Which boot protocol a kernel image speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

impl KernelFormat {
    /// The entry the guest boots through, as the stats line and kiln's
    /// manifest name it: `bzimage` (64-bit boot protocol) or `pvh`.
    pub fn entry(self) -> &'static str {
        match self {
            KernelFormat::BzImage => "bzimage",
            KernelFormat::Elf => "pvh",
        }
    }
}

/// A kernel in guest memory, ready to enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub format: KernelFormat,
    pub entry: EntryPoint,
}

/// Where an initrd went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// Tells a bzImage from an ELF by their magic numbers.
pub fn detect(path: &Path) -> Result<KernelFormat, BootError> {
    let mut head = [0u8; 0x206];
    let mut file = open(path, "kernel image")?;
    let n = read_up_to(&mut file, &mut head).map_err(|source| BootError::Read {
        what: "kernel image",
        path: path.to_path_buf(),
        source,
    })?;
    let head = head.get(..n).unwrap_or_default();
    if head.starts_with(b"\x7fELF") {
        return Ok(KernelFormat::Elf);
    }
    if kiln_abi::bzimage::has_header(head) {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::UnknownFormat {
        path: path.to_path_buf(),
    })
}

/// Loads the kernel, initrd, command line and boot parameters for `spec`.
pub fn load(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<Loaded, BootError> {
    match detect(spec.kernel)? {
        KernelFormat::BzImage => bzimage::load(mem, spec),
        KernelFormat::Elf => pvh::load(mem, spec),
    }
}

pub(crate) fn open(path: &Path, what: &'static str) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn file_size(file: &File, path: &Path, what: &'static str) -> Result<u64, BootError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|source| BootError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
}

/// Reads as much of `buf` as the file has.
pub(crate) fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..) {
        if rest.is_empty() {
            break;
        }
        match file.read(rest) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes the command line (NUL-terminated) at [`CMDLINE_START`]; `max` is
/// the longest the kernel accepts, without the NUL.
pub(crate) fn write_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    max: usize,
) -> Result<(), BootError> {
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.trim().is_empty() {
        return mem
            .write_obj(0u8, GuestAddress(CMDLINE_START))
            .map_err(|source| BootError::WriteBootData {
                what: "kernel command line",
                source,
            });
    }
    let cl = Cmdline::try_from(cmdline, max + 1).map_err(BootError::Cmdline)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(BootError::WriteCmdline)
}

/// Copies the initrd as high as possible below `limit` (and below the end of
/// low RAM), page-aligned, and above `kernel_end`.
pub(crate) fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
    kernel_end: u64,
    limit: u64,
) -> Result<InitrdPlacement, BootError> {
    let mut file = open(path, "initrd")?;
    let size = file_size(&file, path, "initrd")?;
    let top = low_ram_end(mem_size).min(limit);
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        kernel_end,
        limit: top,
    };
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !(PAGE - 1);
    if addr < kernel_end {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|source| BootError::LoadInitrd {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(InitrdPlacement { addr, size })
}

/// Builds the device tree and checks that it fits its slot.
pub(crate) fn build_fdt(spec: &BootSpec) -> Result<Vec<u8>, BootError> {
    let blob = fdt::build(spec.mem_size, spec.cpus, spec.cmdline, spec.pci)?;
    if blob.len() > FDT_MAX_SIZE {
        return Err(BootError::FdtTooLarge(blob.len()));
    }
    Ok(blob)
}

pub(crate) fn align_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to).saturating_mul(to)
}
