//! Register state of the boot vCPU at the kernel's entry, for the two entry
//! conventions kiln supports, and the page tables the 64-bit one needs.

use super::gdt::{self, kvm_segment_from_gdt};
use super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_COUNT, PDE_START, PDPTE_START, PML4_START,
};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NW: u64 = 1 << 29;
const X86_CR0_CD: u64 = 1 << 30;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("Cannot write the boot GDT into guest memory; give the VM at least 16M of memory")]
    WriteGdt(#[source] vm_memory::GuestMemoryError),
    #[error(
        "Cannot write the boot page tables into guest memory; give the VM at least 16M of memory"
    )]
    WritePageTables(#[source] vm_memory::GuestMemoryError),
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// Linux 64-bit boot protocol: long mode, identity-mapped paging,
    /// `rsi` = zero page.
    Linux64 { entry: u64, zero_page: u64 },
    /// PVH: 32-bit protected mode without paging, `ebx` = hvm_start_info.
    Pvh32 { entry: u64, start_info: u64 },
}

/// General-purpose registers at entry.
pub fn boot_regs(entry: EntryPoint) -> kvm_regs {
    match entry {
        EntryPoint::Linux64 { entry, zero_page } => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: zero_page,
            ..Default::default()
        },
        EntryPoint::Pvh32 { entry, start_info } => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rbx: start_info,
            ..Default::default()
        },
    }
}

/// Writes the GDT (and, for 64-bit entry, the page tables) into guest
/// memory and fills the segment and control registers of `sregs`, which
/// should come from the vCPU so that fields kiln does not set keep KVM's
/// reset values.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    entry: EntryPoint,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let (table, code, data, tss): (&[u64], u8, u8, u8) = match entry {
        EntryPoint::Linux64 { .. } => (
            &gdt::GDT_64,
            gdt::GDT_64_CODE,
            gdt::GDT_64_DATA,
            gdt::GDT_64_TSS,
        ),
        EntryPoint::Pvh32 { .. } => (
            &gdt::GDT_32,
            gdt::GDT_32_CODE,
            gdt::GDT_32_DATA,
            gdt::GDT_32_TSS,
        ),
    };
    write_gdt(mem, table)?;
    // Indexing: `code`, `data` and `tss` are the constant slot numbers of
    // the table chosen with them just above, all within its length.
    let entry_at = |i: u8| table.get(usize::from(i)).copied().unwrap_or(0);
    sregs.gdt.base = GDT_START;
    // A table of a handful of 8-byte entries.
    #[allow(clippy::cast_possible_truncation)]
    {
        sregs.gdt.limit = (std::mem::size_of_val(table) - 1) as u16;
    }
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 0;

    let code_seg = kvm_segment_from_gdt(entry_at(code), code);
    let data_seg = kvm_segment_from_gdt(entry_at(data), data);
    sregs.cs = code_seg;
    sregs.ds = data_seg;
    sregs.es = data_seg;
    sregs.fs = data_seg;
    sregs.gs = data_seg;
    sregs.ss = data_seg;
    sregs.tr = kvm_segment_from_gdt(entry_at(tss), tss);

    match entry {
        EntryPoint::Linux64 { .. } => {
            write_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            // Caches on (CD and NW clear), as firmware would leave them.
            sregs.cr0 =
                (sregs.cr0 & !(X86_CR0_CD | X86_CR0_NW)) | X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryPoint::Pvh32 { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.cr3 = 0;
            sregs.efer = 0;
        }
    }
    Ok(())
}

fn write_gdt(mem: &GuestMemoryMmap, table: &[u64]) -> Result<(), RegsError> {
    let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(GDT_START))
        .map_err(RegsError::WriteGdt)?;
    // An empty IDT: the kernel installs its own before enabling interrupts.
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(RegsError::WriteGdt)
}

/// Identity-maps the first 4 GiB with 2 MiB pages: the 64-bit boot protocol
/// needs the kernel, zero page and command line mapped, and 4 GiB covers
/// everything kiln places below the MMIO hole.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    const PRESENT_WRITABLE: u64 = 0x3;
    const HUGE: u64 = 0x80;
    let w = |value: u64, at: u64| {
        mem.write_obj(value, GuestAddress(at))
            .map_err(RegsError::WritePageTables)
    };
    w(PDPTE_START | PRESENT_WRITABLE, PML4_START)?;
    for d in 0..PDE_COUNT {
        let pd = PDE_START + d * 0x1000;
        w(pd | PRESENT_WRITABLE, PDPTE_START + d * 8)?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((d << 30) | (i << 21)) | PRESENT_WRITABLE | HUGE).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))
            .map_err(RegsError::WritePageTables)?;
    }
    Ok(())
}

/// The FPU state after `fninit`, with SSE exceptions masked.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap()
    }

    #[test]
    fn long_mode_entry_has_paging_and_identity_map() {
        let m = mem();
        let mut s = kvm_sregs::default();
        let e = EntryPoint::Linux64 {
            entry: 0x100200,
            zero_page: 0x7000,
        };
        setup_sregs(&m, e, &mut s).unwrap();
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ds.selector, 0x18);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        // The last 2 MiB page of the fourth GiB maps to itself.
        let last: u64 = m
            .read_obj(GuestAddress(PDE_START + 3 * 0x1000 + 511 * 8))
            .unwrap();
        assert_eq!(last, (3u64 << 30) | (511 << 21) | 0x83);
        let gdt2: u64 = m.read_obj(GuestAddress(GDT_START + 16)).unwrap();
        assert_eq!(gdt2, gdt::GDT_64[2]);
        let r = boot_regs(e);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100200, 0x7000, 2));
    }

    #[test]
    fn pvh_entry_is_protected_mode_without_paging() {
        let m = mem();
        let mut s = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        let e = EntryPoint::Pvh32 {
            entry: 0x10_0000,
            start_info: 0x6000,
        };
        setup_sregs(&m, e, &mut s).unwrap();
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((s.cs.selector, s.cs.db, s.cs.l), (0x8, 1, 0));
        assert_eq!(s.efer, 0);
        let r = boot_regs(e);
        assert_eq!((r.rip, r.rbx), (0x10_0000, 0x6000));
    }
}
