//! Minimal ACPI for a hardware-reduced platform: RSDP → XSDT → FADT (with
//! the sleep control/status registers on ports the VMM traps) and MADT
//! (CPUs and the IOAPIC); the DSDT declares \_S5_, so that Linux's
//! `poweroff` writes SLP_TYP 5 | SLP_EN to the sleep control port and the VM
//! ends as `poweroff`, and COM1, so that its IRQ gets mapped.
//!
//! Written by hand, re-checked against rust-vmm's `acpi_tables` (0.2.1 on
//! crates.io, Cloud Hypervisor's tables, depending only on zerocopy). It
//! has builders for the FADT (with the hardware-reduced sleep control and
//! status registers), MCFG, XSDT, RSDP and every AML construct the DSDT
//! below uses, and those encoders (package lengths, resource descriptors)
//! are where hand-written tables go wrong: they are the part to take from
//! it. Its MADT does not fit as is: the flags are fixed at 0, where kiln
//! declares PCAT_COMPAT (Linux then masks the 8259s it finds, instead of
//! assuming there are none); the Local APIC NMI entry (LINT1) it has no
//! type for could be added as a custom structure, the flags could not. So
//! that table would stay kiln's. A switch changes the bytes every guest
//! boots on, so it waits for a Linux guest's boot to prove it (power-off
//! through `\_S5_`, COM1's IRQ, INTx through `_PRT`); the byte-level tests
//! below would not.

use super::layout::{
    pci_intx_gsi, ACPI_END, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, APIC_ADDR, COM1_IRQ,
    COM1_PORT, IOAPIC_ADDR, PCI_CONFIG_PORT, PCI_ECAM_START, PCI_IO_END, PCI_IO_START, RSDP_START,
};
use super::mptable::ioapic_id;
use crate::devices::acpi_pm::S5_SLP_TYP;
use crate::devices::pci::root::{BarAllocator, MAX_FUNCTIONS};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const OEM_ID: &[u8; 6] = b"KILN  ";
const OEM_TABLE_ID: &[u8; 8] = b"KILNVM  ";

const XSDT_START: u64 = RSDP_START + 0x40;
const FADT_START: u64 = RSDP_START + 0x100;
const MCFG_START: u64 = RSDP_START + 0x280;
const DSDT_START: u64 = RSDP_START + 0x300;
/// After the DSDT, which holds the PCI routing table (about 2 KiB).
const MADT_START: u64 = RSDP_START + 0x1000;

const FADT_LEN: usize = 276;
const FADT_FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
/// IAPC_BOOT_ARCH: no legacy devices, no 8042 for the OS to drive. The
/// 8042's reset line is still there (Linux's `reboot=k` writes it directly);
/// declaring the keyboard controller would make Linux probe it and wait
/// seconds for a keyboard that kiln does not model.
const IAPC_BOOT_ARCH: u16 = 0;
const GAS_SYSTEM_IO: u8 = 1;
const GAS_ACCESS_BYTE: u8 = 1;
/// The SCI an ACPI OS expects; no event ever arrives on it.
const SCI_IRQ: u16 = 9;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("The ACPI tables for {0} vCPUs do not fit below 1 MiB; use fewer vCPUs")]
    TooLarge(u8),
    #[error("Cannot write the ACPI tables into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// A system description table: the 36-byte header, then `body`, with
/// length and checksum filled in.
// kiln's tables are built from constants and are a few KiB at most.
#[allow(clippy::cast_possible_truncation)]
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = (36 + body.len()) as u32;
    let mut t = Vec::with_capacity(len as usize);
    t.extend_from_slice(signature);
    t.extend_from_slice(&len.to_le_bytes());
    t.push(revision);
    t.push(0); // checksum
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"KILN"); // creator id
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    let sum = checksum(&t);
    if let Some(c) = t.get_mut(9) {
        *c = sum;
    }
    t
}

/// A Generic Address Structure for a byte-wide I/O port.
fn gas_io_byte(port: u16) -> [u8; 12] {
    // Constant indices into a fixed-size array: checked at compile time.
    let mut g = [0u8; 12];
    g[0] = GAS_SYSTEM_IO;
    g[1] = 8; // bit width
    g[3] = GAS_ACCESS_BYTE;
    g[4..6].copy_from_slice(&port.to_le_bytes());
    g
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

// DSDT_START is a constant below 1 MiB.
#[allow(clippy::cast_possible_truncation)]
fn fadt() -> Vec<u8> {
    let mut body = vec![0u8; FADT_LEN - 36];
    // Offsets below are from the start of the table, minus the header.
    let at = |off: usize| off - 36;
    put(&mut body, at(40), &(DSDT_START as u32).to_le_bytes());
    put(&mut body, at(46), &SCI_IRQ.to_le_bytes());
    put(&mut body, at(109), &IAPC_BOOT_ARCH.to_le_bytes());
    put(&mut body, at(112), &FADT_FLAG_HW_REDUCED_ACPI.to_le_bytes());
    put(&mut body, at(131), &[0]); // FADT minor version
    put(&mut body, at(140), &DSDT_START.to_le_bytes()); // X_DSDT
    put(&mut body, at(244), &gas_io_byte(ACPI_SLEEP_CONTROL_PORT));
    put(&mut body, at(256), &gas_io_byte(ACPI_SLEEP_STATUS_PORT));
    put(&mut body, at(268), b"KILNKILN"); // hypervisor vendor identity
    sdt(b"FACP", 6, &body)
}

/// AML encoders for the few constructs the DSDT uses (ACPI 6, chapter 20).
mod aml {
    /// PkgLength for `len` bytes that follow it: kiln's AML stays below
    /// 4 KiB, the two-byte form's limit, so each cast keeps every bit.
    #[allow(clippy::cast_possible_truncation)]
    pub fn pkg_length(len: usize) -> Vec<u8> {
        if len + 1 < 0x40 {
            vec![(len + 1) as u8]
        } else {
            let total = len + 2;
            vec![0x40 | (total & 0xf) as u8, (total >> 4) as u8]
        }
    }

    pub fn name(seg: &[u8; 4], value: &[u8]) -> Vec<u8> {
        let mut v = vec![0x08];
        v.extend_from_slice(seg);
        v.extend_from_slice(value);
        v
    }

    pub fn scope(seg: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = vec![0x10];
        v.extend(pkg_length(4 + body.len()));
        v.extend_from_slice(seg);
        v.extend_from_slice(body);
        v
    }

    pub fn device(seg: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = vec![0x5b, 0x82];
        v.extend(pkg_length(4 + body.len()));
        v.extend_from_slice(seg);
        v.extend_from_slice(body);
        v
    }

    /// A buffer of fewer than 256 bytes.
    #[allow(clippy::cast_possible_truncation)] // the length, below 256
    pub fn buffer(bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![0x11];
        v.extend(pkg_length(2 + bytes.len()));
        v.extend_from_slice(&[0x0a, bytes.len() as u8]);
        v.extend_from_slice(bytes);
        v
    }

    /// A package of byte constants (fewer than 256).
    #[allow(clippy::cast_possible_truncation)] // the count, below 256
    pub fn byte_package(items: &[u8]) -> Vec<u8> {
        let mut body = vec![items.len() as u8];
        for i in items {
            match i {
                0 => body.push(0x00),
                1 => body.push(0x01),
                n => body.extend_from_slice(&[0x0a, *n]),
            }
        }
        let mut v = vec![0x12];
        v.extend(pkg_length(body.len()));
        v.extend(body);
        v
    }

    /// An integer constant in its shortest form.
    pub fn integer(n: u32) -> Vec<u8> {
        match n {
            0 => vec![0x00],
            1 => vec![0x01],
            2..=0xff => vec![0x0a, n.to_le_bytes()[0]],
            0x100..=0xffff => {
                let [a, b, ..] = n.to_le_bytes();
                vec![0x0b, a, b]
            }
            _ => {
                let mut v = vec![0x0c];
                v.extend_from_slice(&n.to_le_bytes());
                v
            }
        }
    }

    /// A package of already-encoded elements (fewer than 256).
    #[allow(clippy::cast_possible_truncation)] // the count, below 256
    pub fn package(items: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![items.len() as u8];
        for i in items {
            body.extend_from_slice(i);
        }
        let mut v = vec![0x12];
        v.extend(pkg_length(body.len()));
        v.extend(body);
        v
    }

    /// EisaId("PNPxxxx") as a DWordConst: three 5-bit letters, four hex digits.
    pub fn eisa_id(id: &[u8; 7]) -> Vec<u8> {
        // `id` is a fixed-size array; its constant indices are checked at
        // compile time.
        let letter = |c: u8| u16::from(c.wrapping_sub(b'@') & 0x1f);
        let hex = |c: u8| {
            let digit = char::from(c).to_digit(16).unwrap_or(0);
            u8::try_from(digit).unwrap_or(0)
        };
        let vendor = (letter(id[0]) << 10) | (letter(id[1]) << 5) | letter(id[2]);
        let [v0, v1] = vendor.to_be_bytes();
        vec![
            0x0c,
            v0,
            v1,
            (hex(id[3]) << 4) | hex(id[4]),
            (hex(id[5]) << 4) | hex(id[6]),
        ]
    }
}

/// The DSDT: `\_S5_` for poweroff, and COM1 as a PNP0501 device with its
/// ports and IRQ 4. A hardware-reduced platform has no legacy PIC, so
/// Linux maps a legacy IRQ only for a device ACPI describes; without this
/// the serial port would have no interrupt and user-space output would stall.
fn dsdt(mem_size: u64) -> Vec<u8> {
    let mut aml = aml::name(b"_S5_", &aml::byte_package(&[S5_SLP_TYP, 0, 0, 0]));
    let [lo, hi] = COM1_PORT.to_le_bytes();
    let [irq_lo, irq_hi] = (1u16 << COM1_IRQ).to_le_bytes();
    let resources = [
        0x47, 0x01, lo, hi, lo, hi, 0x01, 0x08, // IO (Decode16, port, port, 1, 8)
        0x22, irq_lo, irq_hi, // IRQNoFlags {4}
        0x79, 0x00, // EndTag
    ];
    let mut com1 = aml::name(b"_HID", &aml::eisa_id(b"PNP0501"));
    com1.extend(aml::name(b"_UID", &[0x00]));
    com1.extend(aml::name(b"_CRS", &aml::buffer(&resources)));
    let mut sb = aml::device(b"COM1", &com1);
    sb.extend(pci0(mem_size));
    aml.extend(aml::scope(b"_SB_", &sb));
    sdt(b"DSDT", 2, &aml)
}

/// Word/DWord/QWord address space descriptors for a producer range
/// `min..=max` with fixed ends (ACPI 6, 6.4.3.5).
fn word_space(kind: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
    let mut d = vec![0x88, 0x0d, 0x00, kind, 0x0c, type_flags];
    for v in [0, min, max, 0, max - min + 1] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    d
}

fn dword_memory(min: u32, max: u32) -> Vec<u8> {
    let mut d = vec![0x87, 0x17, 0x00, 0, 0x0c, 0x01];
    for v in [0, min, max, 0, max - min + 1] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    d
}

fn qword_memory(min: u64, max: u64) -> Vec<u8> {
    let mut d = vec![0x8a, 0x2b, 0x00, 0, 0x0c, 0x01];
    for v in [0, min, max, 0, max - min + 1] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    d
}

/// The PCI host bridge (PNP0A08, compatible PNP0A03) for bus 0: its
/// resources (bus 0, the config ports, the I/O and memory windows the VMM
/// places BARs in) and a _PRT routing each slot's INTA-INTD to the IOAPIC
/// pins the VMM wires INTx to.
// In range by construction: the I/O window ends below 64 KiB, the 32-bit
// window below 4 GiB, 31 slots x 4 pins = 124 routes.
#[allow(clippy::cast_possible_truncation)]
fn pci0(mem_size: u64) -> Vec<u8> {
    let [w32, w64] = BarAllocator::windows(mem_size);
    let [plo, phi] = PCI_CONFIG_PORT.to_le_bytes();
    let mut crs = word_space(2, 0, 0, 0); // bus numbers 0..=0
    crs.extend_from_slice(&[0x47, 0x01, plo, phi, plo, phi, 0x01, 0x08]);
    crs.extend(word_space(1, 0x03, PCI_IO_START, (PCI_IO_END - 1) as u16));
    crs.extend(dword_memory(w32.0 as u32, (w32.1 - 1) as u32));
    crs.extend(qword_memory(w64.0, w64.1 - 1));
    crs.extend_from_slice(&[0x79, 0x00]);
    let mut prt = Vec::new();
    for device in 1..=MAX_FUNCTIONS as u8 {
        for pin in 0..4u8 {
            prt.push(aml::package(&[
                aml::integer(u32::from(device) << 16 | 0xffff),
                aml::integer(u32::from(pin)),
                aml::integer(0),
                aml::integer(pci_intx_gsi(device, pin + 1)),
            ]));
        }
    }
    let mut body = aml::name(b"_HID", &aml::eisa_id(b"PNP0A08"));
    body.extend(aml::name(b"_CID", &aml::eisa_id(b"PNP0A03")));
    body.extend(aml::name(b"_ADR", &aml::integer(0)));
    body.extend(aml::name(b"_SEG", &aml::integer(0)));
    body.extend(aml::name(b"_BBN", &aml::integer(0)));
    body.extend(aml::name(b"_UID", &aml::integer(0)));
    body.extend(aml::name(b"_CRS", &aml::buffer(&crs)));
    // A package of up to 255 elements: 31 slots x 4 pins = 124.
    let mut pkg = vec![prt.len() as u8];
    for p in &prt {
        pkg.extend_from_slice(p);
    }
    let mut prt_pkg = vec![0x12];
    prt_pkg.extend(aml::pkg_length(pkg.len()));
    prt_pkg.extend(pkg);
    body.extend(aml::name(b"_PRT", &prt_pkg));
    aml::device(b"PCI0", &body)
}

/// MCFG: ECAM for segment 0, bus 0.
fn mcfg() -> Vec<u8> {
    let mut body = vec![0u8; 8];
    body.extend_from_slice(&PCI_ECAM_START.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes()); // segment
    body.extend_from_slice(&[0, 0]); // buses 0..=0
    body.extend_from_slice(&[0; 4]);
    sdt(b"MCFG", 1, &body)
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&APIC_ADDR.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: 8259s present
    for id in 0..cpus {
        // Processor Local APIC: uid, APIC id, enabled.
        body.extend_from_slice(&[0, 8, id, id]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: id, reserved, address, GSI base 0.
    body.extend_from_slice(&[1, 12, ioapic_id(cpus), 0]);
    body.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    // Local APIC NMI on LINT1 of every processor.
    body.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    sdt(b"APIC", 5, &body)
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    sdt(b"XSDT", 1, &body)
}

fn rsdp() -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&XSDT_START.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    let sum = checksum(r.get(..20).unwrap_or_default());
    if let Some(c) = r.get_mut(8) {
        *c = sum;
    }
    let sum = checksum(&r);
    if let Some(c) = r.get_mut(32) {
        *c = sum;
    }
    r
}

/// Every table with its guest address.
pub fn build(cpus: u8, mem_size: u64) -> Vec<(u64, Vec<u8>)> {
    vec![
        (RSDP_START, rsdp()),
        (XSDT_START, xsdt(&[FADT_START, MADT_START, MCFG_START])),
        (FADT_START, fadt()),
        (MCFG_START, mcfg()),
        (DSDT_START, dsdt(mem_size)),
        (MADT_START, madt(cpus)),
    ]
}

/// Writes the tables into guest memory and returns the RSDP's address.
pub fn write(mem: &GuestMemoryMmap, cpus: u8, mem_size: u64) -> Result<u64, AcpiError> {
    for (addr, table) in build(cpus, mem_size) {
        if addr + table.len() as u64 > ACPI_END {
            return Err(AcpiError::TooLarge(cpus));
        }
        mem.write_slice(&table, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn table(tables: &[(u64, Vec<u8>)], addr: u64) -> &[u8] {
        &tables.iter().find(|(a, _)| *a == addr).unwrap().1
    }

    #[test]
    fn tables_chain_and_checksum() {
        let t = build(2, 64 << 20);
        let r = table(&t, RSDP_START);
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(r), 0);
        let xsdt_at = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let x = table(&t, xsdt_at);
        assert_eq!(&x[..4], b"XSDT");
        let entries: Vec<u64> = x[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let sigs: Vec<&[u8]> = entries.iter().map(|a| &table(&t, *a)[..4]).collect();
        assert_eq!(sigs, vec![&b"FACP"[..], &b"APIC"[..], &b"MCFG"[..]]);
        for (_, tb) in t.iter().skip(1) {
            let len = u32::from_le_bytes(tb[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, tb.len());
            assert_eq!(sum(tb), 0, "{}", String::from_utf8_lossy(&tb[..4]));
        }
        // Nothing overlaps.
        let mut spans: Vec<(u64, u64)> = t.iter().map(|(a, b)| (*a, *a + b.len() as u64)).collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
    }

    #[test]
    fn fadt_is_hardware_reduced_with_trapped_sleep_registers() {
        let f = fadt();
        assert_eq!(f.len(), FADT_LEN);
        assert_eq!(f[8], 6);
        let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
        assert_ne!(flags & FADT_FLAG_HW_REDUCED_ACPI, 0);
        assert_eq!(
            u64::from_le_bytes(f[140..148].try_into().unwrap()),
            DSDT_START
        );
        assert_eq!(f[244], GAS_SYSTEM_IO);
        assert_eq!(u64::from_le_bytes(f[248..256].try_into().unwrap()), 0x600);
        assert_eq!(u64::from_le_bytes(f[260..268].try_into().unwrap()), 0x601);
        let d = dsdt(64 << 20);
        // Name (_S5_, Package (4) { 5, 0, 0, 0 })
        assert_eq!(&d[36..49], b"\x08_S5_\x12\x07\x04\x0a\x05\x00\x00\x00");
    }

    /// Decodes a PkgLength at `b`: (length, bytes it took).
    fn pkg_len(b: &[u8]) -> (usize, usize) {
        match b[0] >> 6 {
            0 => (b[0] as usize, 1),
            1 => ((b[0] & 0xf) as usize | (b[1] as usize) << 4, 2),
            n => panic!("{n}-byte PkgLength"),
        }
    }

    #[test]
    fn dsdt_describes_com1() {
        let d = dsdt(64 << 20);
        let body = &d[49..];
        // Scope (_SB_) { Device (COM1) { ... } Device (PCI0) { ... } }.
        assert_eq!(body[0], 0x10);
        let (len, n) = pkg_len(&body[1..]);
        assert_eq!(len, body.len() - 1);
        assert_eq!(&body[1 + n..5 + n], b"_SB_");
        let dev = &body[5 + n..];
        assert_eq!(&dev[..2], &[0x5b, 0x82]);
        let (len, n) = pkg_len(&dev[2..]);
        assert_eq!(&dev[2 + n..6 + n], b"COM1");
        let com1 = &dev[..2 + len];
        // EisaId ("PNP0501") is 0x0105d041.
        assert_eq!(&com1[6 + n..16 + n], b"\x08_HID\x0c\x41\xd0\x05\x01");
        let crs = com1.windows(4).position(|w| w == b"_CRS").unwrap();
        let res = &com1[crs + 8..];
        assert_eq!(&res[..8], &[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]);
        assert_eq!(&res[8..11], &[0x22, 0x10, 0x00]);
        assert_eq!(&res[11..], &[0x79, 0x00]);
        // PCI0 follows, filling the scope exactly.
        let pci = &dev[2 + len..];
        assert_eq!(&pci[..2], &[0x5b, 0x82]);
        let (plen, pn) = pkg_len(&pci[2..]);
        assert_eq!(2 + plen, pci.len());
        assert_eq!(&pci[2 + pn..6 + pn], b"PCI0");
    }

    #[test]
    fn pci0_has_windows_and_routes_every_slot() {
        let p = pci0(64 << 20);
        // EisaId ("PNP0A08") = 0x080ad041, ("PNP0A03") = 0x030ad041.
        assert!(p.windows(10).any(|w| w == b"\x08_HID\x0c\x41\xd0\x0a\x08"));
        assert!(p.windows(10).any(|w| w == b"\x08_CID\x0c\x41\xd0\x0a\x03"));
        // The 32-bit window 0xc0000000..=0xdfffffff as a DWordMemory.
        let mut dw = vec![0x87, 0x17, 0x00, 0, 0x0c, 0x01, 0, 0, 0, 0];
        dw.extend_from_slice(&0xc000_0000u32.to_le_bytes());
        dw.extend_from_slice(&0xdfff_ffffu32.to_le_bytes());
        assert!(p.windows(dw.len()).any(|w| w == dw.as_slice()));
        // Slot 1 INTA -> GSI 17: Package (4) { 0x0001ffff, 0, 0, 17 }.
        let entry = [
            0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0x0a, 17,
        ];
        assert!(p.windows(entry.len()).any(|w| w == entry));
        let prt = p.windows(4).position(|w| w == b"_PRT").unwrap();
        assert_eq!(p[prt + 4], 0x12);
        let (_, n) = pkg_len(&p[prt + 5..]);
        assert_eq!(p[prt + 5 + n] as usize, MAX_FUNCTIONS * 4);
    }

    #[test]
    fn mcfg_points_at_ecam_for_bus_zero() {
        let m = mcfg();
        assert_eq!(m.len(), 60);
        assert_eq!(
            u64::from_le_bytes(m[44..52].try_into().unwrap()),
            PCI_ECAM_START
        );
        assert_eq!(&m[52..56], &[0, 0, 0, 0]);
    }

    #[test]
    fn pkg_length_forms() {
        assert_eq!(aml::pkg_length(5), vec![6]);
        assert_eq!(aml::pkg_length(62), vec![63]);
        // 63 bytes follow: total 65 = 0x41 in the two-byte form.
        assert_eq!(aml::pkg_length(63), vec![0x41, 0x04]);
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        let m = madt(3);
        let mut at = 44;
        let mut cpus = Vec::new();
        let mut ioapic = None;
        while at < m.len() {
            let (kind, len) = (m[at], m[at + 1] as usize);
            match kind {
                0 => cpus.push((m[at + 3], m[at + 4])),
                1 => {
                    ioapic = Some((
                        m[at + 2],
                        u32::from_le_bytes(m[at + 4..at + 8].try_into().unwrap()),
                    ))
                }
                _ => {}
            }
            at += len;
        }
        assert_eq!(at, m.len());
        assert_eq!(cpus, vec![(0, 1), (1, 1), (2, 1)]);
        assert_eq!(ioapic, Some((3, IOAPIC_ADDR)));
    }

    #[test]
    fn fits_for_the_most_vcpus() {
        let t = build(255, 64 << 20);
        let end = t.iter().map(|(a, b)| a + b.len() as u64).max().unwrap();
        assert!(end <= ACPI_END);
    }
}
