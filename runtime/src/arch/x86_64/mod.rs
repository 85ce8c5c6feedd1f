//! What an x86-64 guest expects to find at reset: the guest physical layout,
//! descriptor tables and page tables, CPUID and MSR values, and the MP table
//! that announces its CPUs.

pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
