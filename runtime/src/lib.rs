//! kiln-runtime: the appliance's PID 1 and its VMM.
//!
//! - [`config`]: the VM and appliance schema (shared with the builder).
//! - [`status`]: the console status lines of DESIGN.md.
//! - [`kmod`]: module dependency closure from modules.dep (shared with the builder).
//! - [`pci`]: the host's PCI devices in sysfs, and selector resolution.
//! - [`vfio`]: IOMMU group checks and binding devices to vfio-pci for the VMs.
//! - [`init`]: PID 1.
//! - [`vac`]: one hypervisor device node and its system-wide facts.
//! - [`vm`]: one VM on a `Vac`: memory, vCPUs, interrupt controllers, devices.
//! - [`arch`]: x86-64 layout, registers, CPUID, MSRs, MP and ACPI tables.
//! - [`boot`]: kernel loading (bzImage, PVH ELF), initrd, E820, device tree.
//! - [`devices`]: serial, i8042 reset, exit port, CMOS, ACPI sleep, the I/O bus.
//! - [`vmm`]: running one VM to its end, and the exit codes.
//! - [`watchdog`]: the VMM's heartbeat to PID 1 and its stuck-vCPU check.

pub mod arch;
pub mod boot;
pub mod config;
pub mod devices;
pub mod init;
pub mod kmod;
pub mod pci;
pub mod status;
pub mod vac;
pub mod vfio;
pub mod vm;
pub mod vmm;
pub mod watchdog;
