//! The guest physical address map kiln gives every x86-64 guest.
//!
//! ```text
//! 0x0000_0500  GDT (a few entries), IDT right after it (empty)
//! 0x0000_6000  PVH hvm_start_info, module list at 0x6040, module strings at 0x6200
//! 0x0000_7000  Linux zero page (bzImage) or PVH memory map
//! 0x0000_8ff0  boot stack top (64-bit entry)
//! 0x0000_9000  page tables: PML4, PDPT, four page directories (identity map of 4 GiB)
//! 0x0002_0000  kernel command line
//! 0x0003_0000  device tree (as bzImage setup_data, or as a PVH module)
//! 0x0009_fc00  EBDA: MP table (reserved up to 1 MiB with the BIOS area)
//! 0x000e_0000  ACPI tables, RSDP first
//! 0x0010_0000  kernel load address (bzImage); ELF segments go where they ask
//! 0xc000_0000  32-bit MMIO hole up to 4 GiB: PCI BARs (32-bit window) to 0xe000_0000,
//!              PCI ECAM (bus 0, 1 MiB) at 0xe000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000  RAM above the hole when the guest has more than 3 GiB
//! above RAM      PCI 64-bit BAR window (1 GiB aligned, 64 GiB)
//! ```
//!
//! And the I/O ports (the [`crate::machine`] puts the devices there):
//!
//! ```text
//! 0x60, 0x64     i8042 data and command (reset line)
//! 0x70-0x71      CMOS RTC index and data
//! 0xf4-0xf7      exit port
//! 0x3f8-0x3ff    COM1
//! 0x600-0x601    ACPI sleep control and status
//! 0xcf8-0xcff    PCI configuration mechanism #1
//! 0xc000-0xffff  PCI I/O BAR window
//! ```

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;

pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
/// Room for module entries between the list and the strings (32 bytes each).
pub const PVH_MODLIST_MAX: usize = ((PVH_MODSTR_START - PVH_MODLIST_START) / 32) as usize;
pub const PVH_MODSTR_START: u64 = 0x6200;
pub const PVH_MODSTR_END: u64 = 0x7000;
pub const PVH_MEMMAP_START: u64 = 0x7000;

pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
/// Four page directories of 2 MiB pages map the first 4 GiB.
pub const PDE_START: u64 = 0xb000;
pub const PDE_COUNT: u64 = 4;

pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x10000;

pub const FDT_START: u64 = 0x30000;
pub const FDT_MAX_SIZE: usize = 0x10000;

/// Start of the Extended BIOS Data Area. Linux scans the last KiB of base
/// memory (639 KiB) for the MP floating pointer, so the MP table goes here.
pub const EBDA_START: u64 = 0x9fc00;
pub const MPTABLE_START: u64 = EBDA_START;

/// Where Linux looks for an RSDP when no boot protocol field names it.
pub const RSDP_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;

/// First byte above the legacy area; the bzImage protected-mode kernel loads here.
pub const HIMEM_START: u64 = 0x100000;

/// The 32-bit MMIO hole: from 3 GiB to 4 GiB nothing is RAM.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

/// The PCI 32-bit memory window for BARs.
pub const PCI_MMIO32_START: u64 = MMIO_HOLE_START;
pub const PCI_MMIO32_END: u64 = 0xe000_0000;
/// PCI Express enhanced configuration access (ECAM/MMCONFIG), bus 0 only:
/// 32 devices x 8 functions x 4 KiB.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// I/O port window for I/O BARs.
pub const PCI_IO_START: u16 = 0xc000;
pub const PCI_IO_END: u32 = 0x1_0000;
/// Size of the 64-bit BAR window above RAM.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;
/// The legacy PCI configuration mechanism #1 ports (0xCF8 address, 0xCFC data).
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_PORTS: u16 = 8;
/// The first IOAPIC pin for PCI INTx (pins 16-23 are free of ISA IRQs).
pub const PCI_INTX_FIRST_GSI: u32 = 16;
pub const PCI_INTX_GSIS: u32 = 8;

/// The 64-bit BAR window of a guest with `mem_size` bytes of RAM: above
/// every RAM byte, 1 GiB aligned.
pub fn pci_mmio64_start(mem_size: u64) -> u64 {
    let ram_end = if mem_size <= MMIO_HOLE_START {
        mem_size
    } else {
        MMIO_HOLE_END + (mem_size - MMIO_HOLE_START)
    };
    ram_end.max(MMIO_HOLE_END).next_multiple_of(1 << 30)
}

/// The GSI of INTx pin `pin` (1 = INTA) of device `device` on bus 0, as the
/// ACPI _PRT describes it: the usual swizzle over eight IOAPIC pins.
pub fn pci_intx_gsi(device: u8, pin: u8) -> u32 {
    PCI_INTX_FIRST_GSI + (u32::from(device) + u32::from(pin.max(1)) - 1) % PCI_INTX_GSIS
}

pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const APIC_ADDR: u32 = 0xfee0_0000;

/// KVM's TSS and identity-map pages (needed on Intel), just below the IOAPIC.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// The I/O port where the ACPI sleep control register sits; a write of
/// SLP_EN with SLP_TYP 5 (S5) powers the VM off.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register (reads as "woken").
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// The two sleep registers above, as one range.
pub const ACPI_SLEEP_PORTS: u16 = 2;

/// Serial COM1: a 16550A's eight registers.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_PORTS: u16 = 8;
pub const COM1_IRQ: u32 = 4;

/// The debug exit port: a write of N ends the VM with status N. Four ports
/// wide, for 32-bit writes.
pub const EXIT_PORT: u16 = kiln_abi::exit::PORT;
pub const EXIT_PORTS: u16 = kiln_abi::exit::PORT_SIZE;

/// The i8042 keyboard controller's data port and command/status port, two
/// one-port ranges so port 0x61 stays with KVM's speaker/PIT emulation.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;

/// The CMOS RTC: index port, then data port.
pub const CMOS_PORT: u16 = 0x70;
pub const CMOS_PORTS: u16 = 2;
