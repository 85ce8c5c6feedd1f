//! The device tree kiln hands every guest: its memory, CPUs, console, exit
//! port and the PCI devices assigned to it. Linux on x86 mostly ignores it
//! (it has the zero page); the hello unikernel reads it to find its devices.
//!
//! ```text
//! / { compatible = "kiln,vm"; #address-cells = <2>; #size-cells = <2>;
//!     chosen { bootargs = "<cmdline>"; stdout-path = "/serial@3f8"; };
//!     memory@0 { device_type = "memory"; reg = <RAM ranges>; };
//!     cpus { cpu@N { device_type = "cpu"; reg = <N>; }; };     (reg = APIC id)
//!     serial@3f8 { compatible = "ns16550a"; reg = <0 0x3f8 0 8>; interrupts = <4>; kiln,io-port; };
//!     exit@f4 { compatible = "kiln,exit-port"; reg = <0 0xf4 0 4>; kiln,io-port; };
//!     pci { device_type = "pci"; compatible = "kiln,pci-assigned";
//!           reg = <0 0xe0000000 0 0x100000>; bus-range = <0 0>;   (ECAM)
//!           #address-cells = <3>; #size-cells = <2>;
//!         device@<dev>,<fn> { compatible = "pci<vendor>,<device>";
//!                             reg = <(bus << 16 | dev << 11 | fn << 8) 0 0 0 0>;
//!                             vendor-id = <v>; device-id = <d>; kiln,domain = <seg>; }; };
//! };
//! ```
//!
//! The names are kiln-abi's (`kiln_abi::fdt`), which the hello unikernel reads.

use crate::arch::x86_64::layout::{COM1_IRQ, COM1_PORT, EXIT_PORT, PCI_ECAM_SIZE, PCI_ECAM_START};
use crate::vm::memory::ram_ranges;
use kiln_abi::exit::PORT_SIZE as EXIT_PORT_SIZE;
use kiln_abi::fdt::{
    device_type, node, prop, COMPATIBLE_EXIT_PORT, COMPATIBLE_PCI_HOST, COMPATIBLE_UART,
    COMPATIBLE_VM, MODEL_VM,
};
use kiln_schema::config::Bdf;
use vm_fdt::FdtWriter;

/// A PCI device the guest can find in its device tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciDeviceInfo {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
}

impl PciDeviceInfo {
    /// The PCI binding's `phys.hi` cell without the space bits.
    pub fn reg(&self) -> u32 {
        (u32::from(self.bdf.bus) << 16)
            | (u32::from(self.bdf.device & 0x1f) << 11)
            | (u32::from(self.bdf.function & 0x7) << 8)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    #[error("Cannot build the guest device tree")]
    Write(#[from] vm_fdt::Error),
}

/// Builds the device tree blob.
pub fn build(
    mem_size: u64,
    cpus: u8,
    cmdline: &str,
    pci: &[PciDeviceInfo],
) -> Result<Vec<u8>, FdtError> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_string(prop::COMPATIBLE, COMPATIBLE_VM)?;
    w.property_string(prop::MODEL, MODEL_VM)?;
    w.property_u32(prop::ADDRESS_CELLS, 2)?;
    w.property_u32(prop::SIZE_CELLS, 2)?;

    let chosen = w.begin_node(node::CHOSEN)?;
    w.property_string(prop::BOOTARGS, cmdline)?;
    w.property_string(
        prop::STDOUT_PATH,
        &format!("/{}@{COM1_PORT:x}", node::SERIAL),
    )?;
    w.end_node(chosen)?;

    let memory = w.begin_node(&format!("{}@0", node::MEMORY))?;
    w.property_string(prop::DEVICE_TYPE, device_type::MEMORY)?;
    let reg: Vec<u64> = ram_ranges(mem_size)
        .into_iter()
        .flat_map(|(start, len)| [start, len])
        .collect();
    w.property_array_u64(prop::REG, &reg)?;
    w.end_node(memory)?;

    let cpus_node = w.begin_node(node::CPUS)?;
    w.property_u32(prop::ADDRESS_CELLS, 1)?;
    w.property_u32(prop::SIZE_CELLS, 0)?;
    for id in 0..u32::from(cpus) {
        let cpu = w.begin_node(&format!("{}@{id:x}", node::CPU))?;
        w.property_string(prop::DEVICE_TYPE, device_type::CPU)?;
        w.property_u32(prop::REG, id)?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus_node)?;

    let serial = w.begin_node(&format!("{}@{COM1_PORT:x}", node::SERIAL))?;
    w.property_string(prop::COMPATIBLE, COMPATIBLE_UART)?;
    w.property_array_u64(prop::REG, &[u64::from(COM1_PORT), 8])?;
    w.property_u32(prop::INTERRUPTS, COM1_IRQ)?;
    w.property_u32(prop::CLOCK_FREQUENCY, 1_843_200)?;
    w.property_u32(prop::CURRENT_SPEED, 115_200)?;
    w.property_null(prop::IO_PORT)?;
    w.end_node(serial)?;

    let exit = w.begin_node(&format!("{}@{EXIT_PORT:x}", node::EXIT))?;
    w.property_string(prop::COMPATIBLE, COMPATIBLE_EXIT_PORT)?;
    w.property_array_u64(
        prop::REG,
        &[u64::from(EXIT_PORT), u64::from(EXIT_PORT_SIZE)],
    )?;
    w.property_null(prop::IO_PORT)?;
    w.end_node(exit)?;

    // The PCI bus binding (IEEE 1275): 3-cell addresses whose first cell
    // (phys.hi) holds bus, device and function; config space, size 0.
    let pci_node = w.begin_node(node::PCI)?;
    w.property_string(prop::DEVICE_TYPE, device_type::PCI)?;
    w.property_string(prop::COMPATIBLE, COMPATIBLE_PCI_HOST)?;
    // The bus's ECAM window (config space of bus 0), as for pci-host-ecam-generic.
    w.property_array_u64(prop::REG, &[PCI_ECAM_START, PCI_ECAM_SIZE])?;
    w.property_array_u32(prop::BUS_RANGE, &[0, 0])?;
    w.property_u32(prop::ADDRESS_CELLS, 3)?;
    w.property_u32(prop::SIZE_CELLS, 2)?;
    for dev in pci {
        let name = format!(
            "{}@{:x},{:x}",
            node::PCI_FUNCTION,
            dev.bdf.device,
            dev.bdf.function
        );
        let node = w.begin_node(&name)?;
        w.property_string(
            prop::COMPATIBLE,
            &format!("pci{:x},{:x}", dev.vendor, dev.device),
        )?;
        w.property_array_u32(prop::REG, &[dev.reg(), 0, 0, 0, 0])?;
        w.property_u32(prop::VENDOR_ID, u32::from(dev.vendor))?;
        w.property_u32(prop::DEVICE_ID, u32::from(dev.device))?;
        w.property_u32(prop::DOMAIN, u32::from(dev.bdf.domain))?;
        w.end_node(node)?;
    }
    w.end_node(pci_node)?;

    w.end_node(root)?;
    Ok(w.finish()?)
}

#[cfg(test)]
pub(crate) mod reader {
    //! A minimal FDT reader for the tests: walks the structure block and
    //! returns every property as (node path, name, value).

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    pub fn properties(blob: &[u8]) -> Vec<(String, String, Vec<u8>)> {
        assert_eq!(be32(blob, 0), 0xd00d_feed, "magic");
        assert_eq!(be32(blob, 4) as usize, blob.len(), "totalsize");
        let off_struct = be32(blob, 8) as usize;
        let off_strings = be32(blob, 12) as usize;
        let mut path: Vec<String> = Vec::new();
        let mut out = Vec::new();
        let mut at = off_struct;
        loop {
            let token = be32(blob, at);
            at += 4;
            match token {
                1 => {
                    let end = at + blob[at..].iter().position(|&c| c == 0).unwrap();
                    path.push(String::from_utf8(blob[at..end].to_vec()).unwrap());
                    at = (end + 1).div_ceil(4) * 4;
                }
                2 => {
                    path.pop();
                }
                3 => {
                    let len = be32(blob, at) as usize;
                    let name_off = off_strings + be32(blob, at + 4) as usize;
                    let name_end =
                        name_off + blob[name_off..].iter().position(|&c| c == 0).unwrap();
                    let name = String::from_utf8(blob[name_off..name_end].to_vec()).unwrap();
                    let value = blob[at + 8..at + 8 + len].to_vec();
                    out.push((format!("/{}", path[1..].join("/")), name, value));
                    at = (at + 8 + len).div_ceil(4) * 4;
                }
                4 => {}
                9 => break,
                t => panic!("bad token {t}"),
            }
        }
        out
    }

    pub fn get<'a>(
        props: &'a [(String, String, Vec<u8>)],
        node: &str,
        name: &str,
    ) -> Option<&'a [u8]> {
        props
            .iter()
            .find(|(n, p, _)| n == node && p == name)
            .map(|(_, _, v)| v.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::reader::{get, properties};
    use super::*;

    fn u32s(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }
    fn u64s(b: &[u8]) -> Vec<u64> {
        b.chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn describes_memory_cpus_console_and_cmdline() {
        let blob = build(5 << 30, 2, "console=ttyS0", &[]).unwrap();
        let p = properties(&blob);
        assert_eq!(get(&p, "/", "compatible"), Some(&b"kiln,vm\0"[..]));
        assert_eq!(
            get(&p, "/chosen", "bootargs"),
            Some(&b"console=ttyS0\0"[..])
        );
        assert_eq!(
            u64s(get(&p, "/memory@0", "reg").unwrap()),
            vec![0, 3 << 30, 4 << 30, 2 << 30]
        );
        assert_eq!(u32s(get(&p, "/cpus/cpu@1", "reg").unwrap()), vec![1]);
        assert!(get(&p, "/cpus/cpu@2", "reg").is_none());
        assert_eq!(u64s(get(&p, "/serial@3f8", "reg").unwrap()), vec![0x3f8, 8]);
        assert_eq!(u32s(get(&p, "/serial@3f8", "interrupts").unwrap()), vec![4]);
        assert_eq!(
            get(&p, "/exit@f4", "compatible"),
            Some(&b"kiln,exit-port\0"[..])
        );
        // The /pci node exists even with nothing assigned.
        assert!(get(&p, "/pci", "compatible").is_some());
        assert!(!p.iter().any(|(n, _, _)| n.starts_with("/pci/")));
    }

    #[test]
    fn lists_assigned_pci_devices() {
        let edu = PciDeviceInfo {
            bdf: "0000:00:04.0".parse().unwrap(),
            vendor: 0x1234,
            device: 0x11e8,
        };
        let other = PciDeviceInfo {
            bdf: "0001:02:1f.7".parse().unwrap(),
            vendor: 0x8086,
            device: 0x10d3,
        };
        let blob = build(64 << 20, 1, "", &[edu, other]).unwrap();
        let p = properties(&blob);
        assert_eq!(get(&p, "/pci", "device_type"), Some(&b"pci\0"[..]));
        assert_eq!(u32s(get(&p, "/pci", "#address-cells").unwrap()), vec![3]);
        let edu_node = "/pci/device@4,0";
        assert_eq!(
            u32s(get(&p, edu_node, "reg").unwrap()),
            vec![0x2000, 0, 0, 0, 0]
        );
        assert_eq!(
            get(&p, edu_node, "compatible"),
            Some(&b"pci1234,11e8\0"[..])
        );
        assert_eq!(u32s(get(&p, edu_node, "vendor-id").unwrap()), vec![0x1234]);
        assert_eq!(u32s(get(&p, edu_node, "device-id").unwrap()), vec![0x11e8]);
        let node = "/pci/device@1f,7";
        let reg = (2 << 16) | (0x1f << 11) | (7 << 8);
        assert_eq!(u32s(get(&p, node, "reg").unwrap())[0], reg);
        assert_eq!(u32s(get(&p, node, "kiln,domain").unwrap()), vec![1]);
        assert_eq!(u32s(get(&p, node, "vendor-id").unwrap()), vec![0x8086]);
    }
}
