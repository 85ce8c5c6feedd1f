//! The PVH `struct hvm_start_info` the VMM hands over in EBX.
//!
//! Layout (Xen public header `arch-x86/hvm/start_info.h`, also Linux
//! `include/xen/interface/hvm/start_info.h`), all little-endian:
//!
//! | offset | field                        |
//! |--------|------------------------------|
//! | 0      | u32 magic = 0x336ec578       |
//! | 4      | u32 version                  |
//! | 8      | u32 flags                    |
//! | 12     | u32 nr_modules               |
//! | 16     | u64 modlist_paddr            |
//! | 24     | u64 cmdline_paddr            |
//! | 32     | u64 rsdp_paddr               |
//! | 40     | u64 memmap_paddr   (v1+)     |
//! | 48     | u32 memmap_entries (v1+)     |
//! | 52     | u32 reserved       (v1+)     |
//!
//! A module entry is `{u64 paddr, u64 size, u64 cmdline_paddr, u64 reserved}`.
//! Parsed from bytes rather than cast, so no alignment or layout is assumed.

use crate::phys::{self, PhysMemory};

/// `hvm_start_info.magic`.
pub const MAGIC: u32 = 0x336e_c578;
/// Size of the version 0 structure.
pub const SIZE_V0: usize = 40;
/// Size of the version 1 structure (adds the memory map).
pub const SIZE_V1: usize = 56;
/// Size of one `hvm_modlist_entry`.
pub const MODULE_SIZE: usize = 32;
/// Longest command line read, in bytes (Linux's x86 COMMAND_LINE_SIZE).
pub const MAX_CMDLINE: usize = 2048;
/// Most modules looked at; more is surely a corrupt structure.
pub const MAX_MODULES: u32 = 64;

/// Why the start info cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("start info is shorter than {SIZE_V0} bytes")]
    Truncated,
    #[error("start info magic is {0:#x}, not {MAGIC:#x}; the guest was not booted through PVH")]
    BadMagic(u32),
    #[error("cannot read the start info")]
    Memory(#[source] phys::Error),
}

/// The fields of `hvm_start_info` the unikernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartInfo {
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    /// `(paddr, entries)` of the memory map; present from version 1 on.
    pub memmap: Option<(u64, u32)>,
}

/// One `hvm_modlist_entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module {
    pub paddr: u64,
    pub size: u64,
    pub cmdline_paddr: u64,
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let field = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(field.try_into().ok()?))
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    let field = bytes.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(field.try_into().ok()?))
}

impl StartInfo {
    /// Parses the structure from its bytes (at least [`SIZE_V0`], [`SIZE_V1`]
    /// for version 1 and later).
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let magic = u32_at(bytes, 0).ok_or(Error::Truncated)?;
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let field32 = |off| u32_at(bytes, off).ok_or(Error::Truncated);
        let field64 = |off| u64_at(bytes, off).ok_or(Error::Truncated);
        let version = field32(4)?;
        let memmap = if version >= 1 {
            Some((field64(40)?, field32(48)?))
        } else {
            None
        };
        Ok(Self {
            version,
            flags: field32(8)?,
            nr_modules: field32(12)?,
            modlist_paddr: field64(16)?,
            cmdline_paddr: field64(24)?,
            rsdp_paddr: field64(32)?,
            memmap,
        })
    }

    /// Reads the structure at physical address `paddr`.
    pub fn read(memory: &PhysMemory, paddr: u64) -> Result<Self, Error> {
        let head = memory.bytes(paddr, SIZE_V0 as u64).map_err(Error::Memory)?;
        let version = u32_at(head, 4).ok_or(Error::Truncated)?;
        if version == 0 {
            return Self::parse(head);
        }
        Self::parse(memory.bytes(paddr, SIZE_V1 as u64).map_err(Error::Memory)?)
    }

    /// The command line, without its NUL; empty when the VMM passed none.
    pub fn cmdline(&self, memory: &PhysMemory) -> Result<&'static [u8], phys::Error> {
        if self.cmdline_paddr == 0 {
            return Ok(&[]);
        }
        memory.c_str(self.cmdline_paddr, MAX_CMDLINE)
    }

    /// The raw module list (`nr_modules` entries, capped at [`MAX_MODULES`]).
    pub fn module_list(&self, memory: &PhysMemory) -> Result<&'static [u8], phys::Error> {
        let count = self.nr_modules.min(MAX_MODULES);
        if count == 0 {
            return Ok(&[]);
        }
        memory.bytes(self.modlist_paddr, u64::from(count) * MODULE_SIZE as u64)
    }
}

/// The module entries in a module list read by [`StartInfo::module_list`].
pub fn modules(list: &[u8]) -> impl Iterator<Item = Module> + '_ {
    list.chunks_exact(MODULE_SIZE).filter_map(|entry| {
        Some(Module {
            paddr: u64_at(entry, 0)?,
            size: u64_at(entry, 8)?,
            cmdline_paddr: u64_at(entry, 16)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(cmdline: u64, modules: (u64, u32), memmap: (u64, u32)) -> [u8; SIZE_V1] {
        let mut b = [0u8; SIZE_V1];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&modules.1.to_le_bytes());
        b[16..24].copy_from_slice(&modules.0.to_le_bytes());
        b[24..32].copy_from_slice(&cmdline.to_le_bytes());
        b[40..48].copy_from_slice(&memmap.0.to_le_bytes());
        b[48..52].copy_from_slice(&memmap.1.to_le_bytes());
        b
    }

    #[test]
    fn parses_a_version_1_structure() {
        let info = StartInfo::parse(&v1(0x2_0000, (0x3000, 2), (0x4000, 5))).unwrap();
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, 0x2_0000);
        assert_eq!((info.modlist_paddr, info.nr_modules), (0x3000, 2));
        assert_eq!(info.memmap, Some((0x4000, 5)));
    }

    #[test]
    fn version_0_has_no_memory_map() {
        let mut b = v1(0x2_0000, (0, 0), (0x4000, 5));
        b[4..8].copy_from_slice(&0u32.to_le_bytes());
        let info = StartInfo::parse(&b[..SIZE_V0]).unwrap();
        assert_eq!(info.memmap, None);
        assert_eq!(info.cmdline_paddr, 0x2_0000);
    }

    #[test]
    fn rejects_bad_magic_and_short_input() {
        let mut b = v1(0, (0, 0), (0, 0));
        assert_eq!(StartInfo::parse(&b[..SIZE_V0 + 4]), Err(Error::Truncated));
        b[0] ^= 1;
        assert_eq!(StartInfo::parse(&b), Err(Error::BadMagic(MAGIC ^ 1)));
        assert_eq!(StartInfo::parse(&b[..3]), Err(Error::Truncated));
    }

    #[test]
    fn reads_module_entries() {
        let mut list = [0u8; 2 * MODULE_SIZE];
        list[0..8].copy_from_slice(&0x80_0000u64.to_le_bytes());
        list[8..16].copy_from_slice(&0x1234u64.to_le_bytes());
        list[16..24].copy_from_slice(&0x9000u64.to_le_bytes());
        list[32..40].copy_from_slice(&0xa0_0000u64.to_le_bytes());
        let got: Vec<Module> = modules(&list).collect();
        assert_eq!(
            got,
            [
                Module {
                    paddr: 0x80_0000,
                    size: 0x1234,
                    cmdline_paddr: 0x9000
                },
                Module {
                    paddr: 0xa0_0000,
                    size: 0,
                    cmdline_paddr: 0
                },
            ]
        );
    }
}
