//! Minimal ACPI for a hardware-reduced platform: RSDP → XSDT → FADT (with
//! the sleep control/status registers on ports the VMM traps) and MADT
//! (CPUs and the IOAPIC); the DSDT declares only \_S5_, so that Linux's
//! `poweroff` writes SLP_TYP 5 | SLP_EN to the sleep control port and the VM
//! ends as `poweroff`.
//!
//! Written by hand: the tables are a few hundred bytes of fixed layout, and
//! rust-vmm's acpi_tables is not published in a form kiln can depend on.

use super::layout::{
    ACPI_END, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, APIC_ADDR, IOAPIC_ADDR, RSDP_START,
};
use super::mptable::ioapic_id;
use crate::devices::acpi_pm::S5_SLP_TYP;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const OEM_ID: &[u8; 6] = b"KILN  ";
const OEM_TABLE_ID: &[u8; 8] = b"KILNVM  ";

const XSDT_START: u64 = RSDP_START + 0x40;
const FADT_START: u64 = RSDP_START + 0x100;
const DSDT_START: u64 = RSDP_START + 0x300;
const MADT_START: u64 = RSDP_START + 0x400;

const FADT_LEN: usize = 276;
const FADT_FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
/// IAPC_BOOT_ARCH: the platform has an 8042 (its reset line is how kiln
/// guests reboot).
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
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

fn fadt() -> Vec<u8> {
    let mut body = vec![0u8; FADT_LEN - 36];
    // Offsets below are from the start of the table, minus the header.
    let at = |off: usize| off - 36;
    put(&mut body, at(40), &(DSDT_START as u32).to_le_bytes());
    put(&mut body, at(46), &SCI_IRQ.to_le_bytes());
    put(&mut body, at(109), &IAPC_BOOT_ARCH_8042.to_le_bytes());
    put(&mut body, at(112), &FADT_FLAG_HW_REDUCED_ACPI.to_le_bytes());
    put(&mut body, at(131), &[0]); // FADT minor version
    put(&mut body, at(140), &DSDT_START.to_le_bytes()); // X_DSDT
    put(&mut body, at(244), &gas_io_byte(ACPI_SLEEP_CONTROL_PORT));
    put(&mut body, at(256), &gas_io_byte(ACPI_SLEEP_STATUS_PORT));
    put(&mut body, at(268), b"KILNKILN"); // hypervisor vendor identity
    sdt(b"FACP", 6, &body)
}

/// AML: `Name (_S5_, Package (4) { 5, 0, 0, 0 })`.
fn dsdt() -> Vec<u8> {
    let aml = [
        0x08, b'_', b'S', b'5', b'_', // NameOp "_S5_"
        0x12, 0x07, 0x04, // PackageOp, PkgLength 7, 4 elements
        0x0a, S5_SLP_TYP, // BytePrefix 5
        0x00, 0x00, 0x00, // ZeroOp x3
    ];
    sdt(b"DSDT", 2, &aml)
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
pub fn build(cpus: u8) -> Vec<(u64, Vec<u8>)> {
    vec![
        (RSDP_START, rsdp()),
        (XSDT_START, xsdt(&[FADT_START, MADT_START])),
        (FADT_START, fadt()),
        (DSDT_START, dsdt()),
        (MADT_START, madt(cpus)),
    ]
}

/// Writes the tables into guest memory and returns the RSDP's address.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<u64, AcpiError> {
    for (addr, table) in build(cpus) {
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
        let t = build(2);
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
        assert_eq!(sigs, vec![&b"FACP"[..], &b"APIC"[..]]);
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
        let d = dsdt();
        assert_eq!(&d[36..41], b"\x08_S5_");
        assert_eq!(d[45], S5_SLP_TYP);
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
        let t = build(255);
        let end = t.iter().map(|(a, b)| a + b.len() as u64).max().unwrap();
        assert!(end <= ACPI_END);
    }
}
