//! kiln-runtime: the appliance's PID 1 and its VMM.
//!
//! The VM and appliance schema and the module closure it shares with the
//! builder are in `kiln-schema` (`kiln_schema::config`, `kiln_schema::kmod`).
//!
//! - [`status`]: the console status lines (`kiln_schema::status`, re-exported).
//! - [`pci`]: the host's PCI devices in sysfs, and selector resolution.
//! - [`vfio`]: IOMMU group checks and binding devices to vfio-pci for the VMs.
//! - [`init`]: PID 1.
//! - [`vac`]: one hypervisor device node and its system-wide facts.
//! - [`vm`]: one VM on a `Vac`: memory, vCPUs, interrupt controllers, devices.
//! - [`arch`]: x86-64 layout, registers, CPUID, MSRs, MP and ACPI tables.
//! - [`boot`]: kernel loading (bzImage, PVH ELF), initrd, E820, device tree.
//! - [`devices`]: serial, i8042 reset, exit port, CMOS, ACPI sleep, the I/O bus.
//! - [`vmm`]: running one VM to its end, and the exit codes.

pub mod arch;
pub mod boot;
pub mod devices;
pub mod init;
pub mod pci;
pub use kiln_schema::status;
pub mod vac;
pub mod vfio;
pub mod vm;
pub mod vmm;
