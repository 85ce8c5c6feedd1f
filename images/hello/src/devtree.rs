//! The device tree the kiln VMM passes as a PVH module.
//!
//! The VMM builds it with vm-fdt and lists guest RAM (`/memory@…`), the
//! console UART (`serial@…`) and the assigned PCI functions (children of a
//! `/pci` node, `reg` in the PCI binding's 3-cell address format). The module
//! is the one whose command line is `kiln,fdt`, or whose first bytes are the
//! FDT magic. Parsing is left to the `fdt` crate; the names are kiln-abi's
//! (`kiln_abi::fdt`), which the VMM writes.

use core::fmt;

use fdt::Fdt;
use kiln_abi::fdt::{self as names, base_name};

use crate::pci::Bdf;

/// Command line of the module that carries the device tree.
pub const MODULE_CMDLINE: &[u8] = kiln_abi::fdt::MODULE_CMDLINE.as_bytes();
/// The first four bytes of a flattened device tree (big-endian 0xd00dfeed).
pub const MAGIC: [u8; 4] = kiln_abi::fdt::MAGIC;

/// Why a device tree module cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("device tree module has no FDT magic; the VMM passed something else as kiln,fdt")]
    BadMagic,
    #[error("device tree is larger than its module; the VMM truncated it")]
    Truncated,
}

/// Whether a module with this command line and contents is the device tree.
pub fn is_device_tree(module_cmdline: &[u8], contents: &[u8]) -> bool {
    module_cmdline == MODULE_CMDLINE || contents.starts_with(&MAGIC)
}

/// Parses a device tree module.
pub fn parse(contents: &[u8]) -> Result<Fdt<'_>, Error> {
    Fdt::new(contents).map_err(|e| match e {
        fdt::FdtError::BadMagic | fdt::FdtError::BadPtr => Error::BadMagic,
        fdt::FdtError::BufferTooSmall => Error::Truncated,
    })
}

/// What a listed node describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Serial,
    /// A child of `/pci`, with the function address from its `reg`.
    Pci(Option<Bdf>),
}

/// One device found in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device<'a> {
    pub kind: Kind,
    pub name: &'a str,
    pub compatible: Option<&'a str>,
    /// First `reg` entry as (address, size) when it fits in 64 bits.
    pub reg: Option<(u64, u64)>,
}

impl fmt::Display for Device<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Memory => write!(f, "memory {}", self.name)?,
            Kind::Serial => write!(f, "serial {}", self.name)?,
            Kind::Pci(Some(bdf)) => write!(f, "pci {bdf} {}", self.name)?,
            Kind::Pci(None) => write!(f, "pci ?? {}", self.name)?,
        }
        if let Some(compatible) = self.compatible {
            write!(f, " compatible {compatible}")?;
        }
        if let (Some((addr, size)), false) = (self.reg, matches!(self.kind, Kind::Pci(_))) {
            write!(f, " reg {addr:#x}+{size:#x}")?;
        }
        Ok(())
    }
}

/// A big-endian number of 0 to 2 cells.
fn cells(bytes: &[u8]) -> Option<u64> {
    match bytes.len() {
        0 => Some(0),
        4 => Some(u64::from(u32::from_be_bytes(bytes.try_into().ok()?))),
        8 => Some(u64::from_be_bytes(bytes.try_into().ok()?)),
        _ => None,
    }
}

fn first_compatible<'a>(node: fdt::node::FdtNode<'_, 'a>) -> Option<&'a str> {
    node.compatible().and_then(|c| c.all().next())
}

fn first_reg(node: fdt::node::FdtNode<'_, '_>) -> Option<(u64, u64)> {
    let reg = node.raw_reg()?.next()?;
    Some((cells(reg.address)?, cells(reg.size)?))
}

fn string_property<'a>(node: fdt::node::FdtNode<'_, 'a>, name: &str) -> Option<&'a str> {
    node.property(name).and_then(|p| p.as_str())
}

fn is_serial(node: fdt::node::FdtNode<'_, '_>) -> bool {
    base_name(node.name) == names::node::SERIAL
        || node
            .compatible()
            .is_some_and(|c| c.all().any(|s| s.contains("16550") || s.contains("8250")))
}

/// The function address in a PCI child's `reg` (phys.hi: bus 23:16,
/// device 15:11, function 10:8).
fn pci_bdf(node: fdt::node::FdtNode<'_, '_>) -> Option<Bdf> {
    let hi = node.property(names::prop::REG)?.value.get(0..4)?;
    let hi = u32::from_be_bytes(hi.try_into().ok()?);
    Bdf::new(
        (hi >> 16) as u8,
        ((hi >> 11) & 0x1f) as u8,
        ((hi >> 8) & 0x7) as u8,
    )
}

/// Calls `visit` for each memory node, each serial port and each child of
/// the PCI host node, in tree order within each group.
pub fn devices<'a>(tree: &Fdt<'a>, mut visit: impl FnMut(Device<'a>)) {
    let Some(root) = tree.find_node("/") else {
        return;
    };
    for node in root.children() {
        let is_memory = base_name(node.name) == names::node::MEMORY
            || string_property(node, names::prop::DEVICE_TYPE) == Some(names::device_type::MEMORY);
        if is_memory {
            visit(Device {
                kind: Kind::Memory,
                name: node.name,
                compatible: None,
                reg: first_reg(node),
            });
        }
    }
    for node in tree.all_nodes().filter(|n| is_serial(*n)) {
        visit(Device {
            kind: Kind::Serial,
            name: node.name,
            compatible: first_compatible(node),
            reg: first_reg(node),
        });
    }
    let is_pci_host = |n: &fdt::node::FdtNode<'_, '_>| {
        base_name(n.name) == names::node::PCI
            || string_property(*n, names::prop::DEVICE_TYPE) == Some(names::device_type::PCI)
    };
    for host in root.children().filter(is_pci_host) {
        for node in host.children() {
            visit(Device {
                kind: Kind::Pci(pci_bdf(node)),
                name: node.name,
                compatible: first_compatible(node),
                reg: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_fdt::FdtWriter;

    /// A tree shaped like the one the kiln VMM builds.
    fn kiln_like_tree() -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_string("compatible", "kiln,vm").unwrap();

        let mem = w.begin_node("memory@0").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_array_u64("reg", &[0, 64 << 20]).unwrap();
        w.end_node(mem).unwrap();

        let serial = w.begin_node("serial@3f8").unwrap();
        w.property_string_list("compatible", vec!["ns16550a".into(), "ns16550".into()])
            .unwrap();
        w.property_array_u64("reg", &[0x3f8, 8]).unwrap();
        w.end_node(serial).unwrap();

        let pci = w.begin_node("pci").unwrap();
        w.property_string("device_type", "pci").unwrap();
        w.property_u32("#address-cells", 3).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let edu = w.begin_node("edu@3,0").unwrap();
        w.property_string("compatible", "pci1234,11e8").unwrap();
        w.property_array_u32("reg", &[3 << 11, 0, 0, 0, 0]).unwrap();
        w.end_node(edu).unwrap();
        let nic = w.begin_node("ethernet@1f,2").unwrap();
        w.property_array_u32("reg", &[1 << 16 | 0x1f << 11 | 2 << 8, 0, 0, 0, 0])
            .unwrap();
        w.end_node(nic).unwrap();
        w.end_node(pci).unwrap();

        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn lists_memory_serial_and_pci_nodes() {
        let blob = kiln_like_tree();
        assert!(is_device_tree(b"", &blob));
        let tree = parse(&blob).unwrap();
        let mut lines = Vec::new();
        devices(&tree, |d| lines.push(d.to_string()));
        assert_eq!(
            lines,
            [
                "memory memory@0 reg 0x0+0x4000000",
                "serial serial@3f8 compatible ns16550a reg 0x3f8+0x8",
                "pci 00:03.0 edu@3,0 compatible pci1234,11e8",
                "pci 01:1f.2 ethernet@1f,2",
            ]
        );
    }

    #[test]
    fn recognises_the_module_by_name_or_magic_only() {
        assert!(is_device_tree(b"kiln,fdt", b"garbage"));
        assert!(!is_device_tree(b"initrd", b"\x1f\x8b\x08\x00"));
        assert!(!is_device_tree(b"", &MAGIC[..3]));
    }

    #[test]
    fn reports_bad_and_truncated_trees() {
        let blob = kiln_like_tree();
        assert_eq!(
            parse(b"not a device tree, though long enough to hold an FDT header").err(),
            Some(Error::BadMagic)
        );
        assert_eq!(parse(&blob[..blob.len() - 1]).err(), Some(Error::Truncated));
    }
}
