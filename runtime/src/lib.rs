//! kiln-runtime: the appliance's PID 1 and its VMM.
//!
//! The VM and appliance schema and the module closure it shares with the
//! builder are in `kiln-schema` (`kiln_schema::config`, `kiln_schema::kmod`).
//!
//! - [`status`]: writing the console status lines (their grammar is `kiln_abi::status`).
//! - [`host`]: the host's PCI devices, IOMMU groups and binding to
//!   vfio-pci, which PID 1 does for the VMs.
//! - [`init`]: PID 1.
//! - [`vac`]: one hypervisor device node and its system-wide facts.
//! - [`vm`]: one VM on a `Vac`: memory, interrupt controllers, its buses,
//!   vCPUs, and how a VM ends (exit codes).
//! - [`machine`]: the board: the devices of a VM and where they sit.
//! - [`arch`]: x86-64 layout, registers, CPUID, MSRs, MP and ACPI tables.
//! - [`boot`]: kernel loading (bzImage, PVH ELF), initrd, E820, device tree.
//! - [`devices`]: serial, i8042 reset, exit port, CMOS, ACPI sleep, the
//!   guest PCI bus, and the bus type (ports, MMIO) they sit on.
//! - [`vfio`]: in the VMM, the VM's VFIO devices as passed-through PCI
//!   functions.
//! - [`proc_status`]: memory fields of `/proc/<pid>/status`.
//! - [`sandbox`]: what confines a VMM once its VM is set up, before its
//!   guest runs (its jail, landlock, seccomp), and PID 1's report of it.
//! - [`vmm`]: running one VM to its end.
//! - [`watchdog`]: the VMM's heartbeat to PID 1 and its stuck-vCPU check.

pub mod arch;
pub mod boot;
// What a guest drives: every sum and difference there is checked,
// saturating or argued (tests are exempt, as for unwrap).
#[cfg_attr(not(test), deny(clippy::arithmetic_side_effects))]
pub mod devices;
pub mod host;
pub mod init;
pub mod machine;
pub mod proc_status;
pub mod sandbox;
pub mod status;
pub mod vac;
#[cfg_attr(not(test), deny(clippy::arithmetic_side_effects))]
pub mod vfio;
pub mod vm;
pub mod vmm;
pub mod watchdog;
