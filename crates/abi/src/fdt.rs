//! Names in the device tree kiln hands every guest (as the PVH module whose
//! command line is [`MODULE_CMDLINE`]): the runtime writes them, the hello
//! unikernel looks its devices up by them. The tree's shape is documented
//! where it is built, `runtime/src/boot/fdt.rs`.

/// Command line of the PVH module that carries the device tree.
pub const MODULE_CMDLINE: &str = "kiln,fdt";
/// The first four bytes of a flattened device tree (big-endian 0xd00dfeed).
pub const MAGIC: [u8; 4] = [0xd0, 0x0d, 0xfe, 0xed];

/// Node names, without their unit address (`memory@0` is a [`node::MEMORY`]).
pub mod node {
    pub const CHOSEN: &str = "chosen";
    pub const MEMORY: &str = "memory";
    pub const CPUS: &str = "cpus";
    pub const CPU: &str = "cpu";
    pub const SERIAL: &str = "serial";
    pub const EXIT: &str = "exit";
    /// The PCI host: its children are the assigned functions.
    pub const PCI: &str = "pci";
    /// One assigned PCI function, `device@<dev>,<fn>`.
    pub const PCI_FUNCTION: &str = "device";
}

/// Property names.
pub mod prop {
    pub const COMPATIBLE: &str = "compatible";
    pub const MODEL: &str = "model";
    pub const DEVICE_TYPE: &str = "device_type";
    pub const REG: &str = "reg";
    pub const ADDRESS_CELLS: &str = "#address-cells";
    pub const SIZE_CELLS: &str = "#size-cells";
    pub const BOOTARGS: &str = "bootargs";
    pub const STDOUT_PATH: &str = "stdout-path";
    pub const INTERRUPTS: &str = "interrupts";
    pub const CLOCK_FREQUENCY: &str = "clock-frequency";
    pub const CURRENT_SPEED: &str = "current-speed";
    pub const BUS_RANGE: &str = "bus-range";
    pub const VENDOR_ID: &str = "vendor-id";
    pub const DEVICE_ID: &str = "device-id";
    /// Empty: the node's `reg` is in I/O port space, not memory.
    pub const IO_PORT: &str = "kiln,io-port";
    /// The PCI segment (domain) of an assigned function on the host.
    pub const DOMAIN: &str = "kiln,domain";
}

/// `compatible` of the root node.
pub const COMPATIBLE_VM: &str = "kiln,vm";
/// `model` of the root node.
pub const MODEL_VM: &str = "kiln virtual machine";
/// `compatible` of the console UART.
pub const COMPATIBLE_UART: &str = "ns16550a";
/// `compatible` of the exit device ([`crate::exit::PORT`]).
pub const COMPATIBLE_EXIT_PORT: &str = "kiln,exit-port";
/// `compatible` of the PCI host of the assigned functions.
pub const COMPATIBLE_PCI_HOST: &str = "kiln,pci-assigned";

/// `device_type` values.
pub mod device_type {
    pub const MEMORY: &str = "memory";
    pub const CPU: &str = "cpu";
    pub const PCI: &str = "pci";
}

/// A node name without its unit address: `memory@0` → `memory`.
pub fn base_name(name: &str) -> &str {
    match name.split_once('@') {
        Some((base, _)) => base,
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names_drop_the_unit_address() {
        assert_eq!(base_name("memory@0"), node::MEMORY);
        assert_eq!(base_name("pci"), node::PCI);
        assert_eq!(base_name("device@3,0"), node::PCI_FUNCTION);
    }
}
