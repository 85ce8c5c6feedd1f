//! Minimal ACPI for a hardware-reduced platform: RSDP → XSDT → FADT (with
//! the sleep control/status registers on ports the VMM traps) and MADT
//! (CPUs and the IOAPIC); the DSDT declares \_S5_, so that Linux's
//! `poweroff` writes SLP_TYP 5 | SLP_EN to the sleep control port and the VM
//! ends as `poweroff`, and COM1, so that its IRQ gets mapped.
//!
//! The FADT, MCFG, XSDT, RSDP and the DSDT's AML come from rust-vmm's
//! `acpi_tables` (Cloud Hypervisor's tables): its encoders (package
//! lengths, resource descriptors, checksums) are tested upstream, where
//! hand-written ones go wrong. The MADT stays kiln's own: the crate's fixes
//! its flags at 0, where kiln declares PCAT_COMPAT (Linux then masks the
//! 8259s it finds instead of assuming there are none). The crate panics
//! only on a malformed name or EISA id; every one here is a constant, and
//! the tests below build every table.

use super::layout::{
    pci_intx_gsi, ACPI_END, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, APIC_ADDR, COM1_IRQ,
    COM1_PORT, IOAPIC_ADDR, PCI_CONFIG_PORT, PCI_ECAM_START, PCI_IO_END, PCI_IO_START, RSDP_START,
};
use super::mptable::ioapic_id;
use crate::devices::acpi_pm::S5_SLP_TYP;
use crate::devices::pci::root::{BarAllocator, MAX_FUNCTIONS};
use acpi_tables::aml::{self, AddressSpaceCacheable};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const OEM_ID: &[u8; 6] = b"KILN  ";
const OEM_TABLE_ID: &[u8; 8] = b"KILNVM  ";
const OEM_REVISION: u32 = 1;

const XSDT_START: u64 = RSDP_START + 0x40;
const FADT_START: u64 = RSDP_START + 0x100;
const MCFG_START: u64 = RSDP_START + 0x280;
const DSDT_START: u64 = RSDP_START + 0x300;
/// After the DSDT, which holds the PCI routing table (about 2 KiB).
const MADT_START: u64 = RSDP_START + 0x1000;

#[cfg(test)]
const FADT_LEN: usize = 276;
#[cfg(test)]
const FADT_FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
/// IAPC_BOOT_ARCH: no legacy devices, no 8042 for the OS to drive. The
/// 8042's reset line is still there (Linux's `reboot=k` writes it directly);
/// declaring the keyboard controller would make Linux probe it and wait
/// seconds for a keyboard that kiln does not model.
const IAPC_BOOT_ARCH: u16 = 0;
#[cfg(test)]
const GAS_SYSTEM_IO: u8 = 1;
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

/// The bytes of a table or AML object.
fn bytes(object: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    object.to_aml_bytes(&mut v);
    v
}

/// A Generic Address Structure for a byte-wide I/O port.
fn gas_io_byte(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt() -> Vec<u8> {
    let mut f = FADTBuilder::new(*OEM_ID, *OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(DSDT_START)
        .flag(Flags::HwReducedAcpi);
    f.sci_int = SCI_IRQ.into();
    f.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    f.sleep_control_reg = gas_io_byte(ACPI_SLEEP_CONTROL_PORT);
    f.sleep_status_reg = gas_io_byte(ACPI_SLEEP_STATUS_PORT);
    f.hypervisor_vendor_identity = u64::from_le_bytes(*b"KILNKILN").into();
    bytes(&f.finalize())
}

/// AML already encoded, as a child of a scope.
struct Encoded(Vec<u8>);

impl Aml for Encoded {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// The DSDT: `\_S5_` for poweroff, COM1 and the PCI host bridge.
fn dsdt(mem_size: u64, slots: &[u8]) -> Vec<u8> {
    let s5_values = aml::Package::new(vec![&S5_SLP_TYP, &0u8, &0u8, &0u8]);
    let s5 = aml::Name::new("_S5_".into(), &s5_values);
    let (com1, pci0) = (Encoded(com1()), Encoded(pci0(mem_size, slots)));
    let sb = aml::Scope::new("_SB_".into(), vec![&com1, &pci0]);
    let mut body = bytes(&s5);
    body.extend(bytes(&sb));
    sdt(b"DSDT", 2, &body)
}

/// COM1 as a PNP0501 device with its ports and IRQ 4. A hardware-reduced
/// platform has no legacy PIC, so Linux maps a legacy IRQ only for a device
/// ACPI describes; without this the serial port would have no interrupt and
/// user-space output would stall.
fn com1() -> Vec<u8> {
    let io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    // Edge-triggered, active high: an ISA IRQ.
    let irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let names = [
        aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
        aml::Name::new("_UID".into(), &0u8),
        aml::Name::new("_CRS".into(), &crs),
    ];
    bytes(&aml::Device::new(
        "COM1".into(),
        names.iter().map(|n| n as &dyn Aml).collect(),
    ))
}

/// The PCI host bridge (PNP0A08, compatible PNP0A03) for bus 0: its
/// resources (bus 0, the config ports, the I/O and memory windows the VMM
/// places BARs in) and a _PRT routing INTA-INTD of each slot in `slots`
/// (the device numbers that hold a function) to the IOAPIC pins the VMM
/// wires INTx to. Only those: nothing is hot-plugged, and routes for all 31
/// slots were 1.6 KiB of AML that every guest's ACPI interpreter loads.
// In range by construction: the I/O window ends below 64 KiB, the 32-bit
// window below 4 GiB, at most 31 slots x 4 pins = 124 routes.
#[allow(clippy::cast_possible_truncation)]
fn pci0(mem_size: u64, slots: &[u8]) -> Vec<u8> {
    let [w32, w64] = BarAllocator::windows(mem_size);
    let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let config = aml::IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, 8);
    let io = aml::AddressSpace::new_io(PCI_IO_START, (PCI_IO_END - 1) as u16, None);
    let mem32 = aml::AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        w32.0 as u32,
        (w32.1 - 1) as u32,
        None,
    );
    let mem64 = aml::AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        w64.0,
        w64.1 - 1,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &config, &io, &mem32, &mem64]);
    let mut devices: Vec<u8> = slots
        .iter()
        .copied()
        .filter(|d| (1..=MAX_FUNCTIONS as u8).contains(d))
        .collect();
    devices.sort_unstable();
    devices.dedup();
    let mut routes: Vec<(u32, u8, u32)> = Vec::new();
    for device in devices {
        for pin in 0..4u8 {
            routes.push((
                u32::from(device) << 16 | 0xffff,
                pin,
                pci_intx_gsi(device, pin + 1),
            ));
        }
    }
    let entries: Vec<aml::Package<'_>> = routes
        .iter()
        .map(|(address, pin, gsi)| aml::Package::new(vec![address, pin, &0u8, gsi]))
        .collect();
    let prt = aml::Package::new(entries.iter().map(|e| e as &dyn Aml).collect());
    let names = [
        aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
        aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
        aml::Name::new("_ADR".into(), &0u8),
        aml::Name::new("_SEG".into(), &0u8),
        aml::Name::new("_BBN".into(), &0u8),
        aml::Name::new("_UID".into(), &0u8),
        aml::Name::new("_CRS".into(), &crs),
        aml::Name::new("_PRT".into(), &prt),
    ];
    bytes(&aml::Device::new(
        "PCI0".into(),
        names.iter().map(|n| n as &dyn Aml).collect(),
    ))
}

/// MCFG: ECAM for segment 0, bus 0.
fn mcfg() -> Vec<u8> {
    let mut m = MCFG::new(*OEM_ID, *OEM_TABLE_ID, OEM_REVISION);
    m.add_ecam(PCI_ECAM_START, 0, 0, 0);
    bytes(&m)
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
    let mut x = XSDT::new(*OEM_ID, *OEM_TABLE_ID, OEM_REVISION);
    for e in entries {
        x.add_entry(*e);
    }
    bytes(&x)
}

fn rsdp() -> Vec<u8> {
    bytes(&Rsdp::new(*OEM_ID, XSDT_START))
}

/// Every table with its guest address. `slots`: the device numbers on PCI
/// bus 0 that hold a function.
pub fn build(cpus: u8, mem_size: u64, slots: &[u8]) -> Vec<(u64, Vec<u8>)> {
    vec![
        (RSDP_START, rsdp()),
        (XSDT_START, xsdt(&[FADT_START, MADT_START, MCFG_START])),
        (FADT_START, fadt()),
        (MCFG_START, mcfg()),
        (DSDT_START, dsdt(mem_size, slots)),
        (MADT_START, madt(cpus)),
    ]
}

/// Writes the tables into guest memory and returns the RSDP's address.
pub fn write(
    mem: &GuestMemoryMmap,
    cpus: u8,
    mem_size: u64,
    slots: &[u8],
) -> Result<u64, AcpiError> {
    for (addr, table) in build(cpus, mem_size, slots) {
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
        let t = build(2, 64 << 20, &[1]);
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
        let d = dsdt(64 << 20, &[]);
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
        let d = dsdt(64 << 20, &[2]);
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
        // Extended Interrupt: consumer, edge, active high, exclusive, GSI 4.
        assert_eq!(&res[8..17], &[0x89, 0x06, 0x00, 0x03, 0x01, 4, 0, 0, 0]);
        assert_eq!(&res[17..], &[0x79, 0x00]);
        // PCI0 follows, filling the scope exactly.
        let pci = &dev[2 + len..];
        assert_eq!(&pci[..2], &[0x5b, 0x82]);
        let (plen, pn) = pkg_len(&pci[2..]);
        assert_eq!(2 + plen, pci.len());
        assert_eq!(&pci[2 + pn..6 + pn], b"PCI0");
    }

    #[test]
    fn pci0_has_windows_and_routes_the_slots_in_use() {
        let p = pci0(64 << 20, &[3, 1, 3, 0, 40]);
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
        // Slots 1 and 3 (once each; 0 is the host bridge, 40 no slot).
        assert_eq!(p[prt + 5 + n] as usize, 2 * 4);
        let slot3 = [0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x03, 0x00];
        assert!(p.windows(slot3.len()).any(|w| w == slot3));
        let slot2 = [0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x02, 0x00];
        assert!(!p.windows(slot2.len()).any(|w| w == slot2));
    }

    #[test]
    fn tables_of_a_vm_without_devices_stay_small() {
        // What a guest loads: about 1 KiB with an empty _PRT (it was 2.9
        // KiB with routes for every slot; docs/benchmarks.md).
        let total: usize = build(1, 128 << 20, &[]).iter().map(|(_, t)| t.len()).sum();
        assert!(total < 1024, "{total}");
        let all: Vec<u8> = (1..=u8::try_from(MAX_FUNCTIONS).unwrap()).collect();
        let full: usize = build(1, 128 << 20, &all).iter().map(|(_, t)| t.len()).sum();
        assert!(full > total + 1500, "{full} {total}");
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
        let all: Vec<u8> = (1..=u8::try_from(MAX_FUNCTIONS).unwrap()).collect();
        let t = build(255, 64 << 20, &all);
        let end = t.iter().map(|(a, b)| a + b.len() as u64).max().unwrap();
        assert!(end <= ACPI_END);
    }
}
