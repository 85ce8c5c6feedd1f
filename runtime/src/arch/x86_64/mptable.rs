//! The Intel MultiProcessor Specification 1.4 table: how a guest without
//! ACPI learns its CPUs, its IOAPIC and the ISA interrupt routing.
//!
//! Hand-written because no maintained crate builds it: the rust-vmm crates
//! leave it to each VMM. The table is a byte string assembled here and
//! checked by the tests below, then copied into the EBDA.

use super::layout::{APIC_ADDR, IOAPIC_ADDR, MPTABLE_START, RSDP_START};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6 in the CPU signature; the guest reads the real one from CPUID.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURE_FPU: u32 = 1 << 0;
const CPU_FEATURE_APIC: u32 = 1 << 9;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
/// The in-kernel IOAPIC has 24 pins, routed 1:1 from GSIs by KVM's default routing.
const IOAPIC_PINS: u8 = 24;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("The MP table for {0} vCPUs does not fit below the ACPI area; use fewer vCPUs")]
    TooLarge(u8),
    #[error("Cannot write the MP table into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The IOAPIC's id: the first one after the CPUs' APIC ids.
pub fn ioapic_id(cpus: u8) -> u8 {
    cpus
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer and configuration table for `cpus` CPUs, as
/// they are laid out when placed at guest address `at`.
pub fn build(cpus: u8, at: u32) -> Vec<u8> {
    let ioapic = ioapic_id(cpus);
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION]);
        let boot = if id == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.push(CPU_ENABLED | boot);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // Conforming polarity and trigger (flags 0), ISA bus 0, IRQ n on pin n.
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, 0, pin, ioapic, pin]);
        count += 1;
    }
    // LINT0 of the boot CPU takes the 8259's ExtINT; LINT1 of all is NMI.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    const FLOATING_LEN: u32 = 16;
    const HEADER_LEN: usize = 44;
    // At most 255 CPUs' entries fit easily; `write` rejects a table that
    // does not fit below the RSDP anyway.
    let table_len = u16::try_from(HEADER_LEN + entries.len()).unwrap_or(u16::MAX);
    let mut table = Vec::with_capacity(usize::from(table_len));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len.to_le_bytes());
    table.extend_from_slice(&[4, 0]); // revision 1.4, checksum below
    table.extend_from_slice(b"KILN    ");
    table.extend_from_slice(b"KILN VM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // no extended table
    table.extend_from_slice(&entries);
    let sum = checksum(&table);
    if let Some(b) = table.get_mut(7) {
        *b = sum;
    }

    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(at + FLOATING_LEN).to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes, rev 1.4, no default config
    let sum = checksum(&floating);
    if let Some(b) = floating.get_mut(10) {
        *b = sum;
    }
    floating.extend_from_slice(&table);
    floating
}

/// Writes the MP table into the EBDA of `mem`.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    // A constant below 1 MiB.
    #[allow(clippy::cast_possible_truncation)]
    let bytes = build(cpus, MPTABLE_START as u32);
    if MPTABLE_START + bytes.len() as u64 > RSDP_START {
        return Err(MptableError::TooLarge(cpus));
    }
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_pointer() {
        let t = build(2, 0x9fc00);
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 0x9fc10);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0, "configuration table checksum");
        assert_eq!(
            u32::from_le_bytes(table[36..40].try_into().unwrap()),
            0xfee0_0000
        );
    }

    #[test]
    fn lists_each_cpu_once_with_the_first_as_boot_processor() {
        for cpus in [1u8, 2, 7] {
            let t = build(cpus, 0x9fc00);
            let table = &t[16..];
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count, u16::from(cpus) + 1 + 1 + 24 + 2);
            let mut at = 44;
            let mut seen = Vec::new();
            let mut ioapics = Vec::new();
            let mut irqs = 0;
            while at < table.len() {
                let kind = table[at];
                let len = if kind == ENTRY_PROCESSOR { 20 } else { 8 };
                let e = &table[at..at + len];
                match kind {
                    ENTRY_PROCESSOR => seen.push((e[1], e[3])),
                    ENTRY_IOAPIC => {
                        ioapics.push((e[1], u32::from_le_bytes(e[4..8].try_into().unwrap())))
                    }
                    ENTRY_IO_INTERRUPT => {
                        assert_eq!(e[5], e[7], "IRQ n is routed to pin n");
                        assert_eq!(e[6], cpus, "to the IOAPIC");
                        irqs += 1;
                    }
                    _ => {}
                }
                at += len;
            }
            assert_eq!(at, table.len());
            let expected: Vec<(u8, u8)> =
                (0..cpus).map(|i| (i, if i == 0 { 3 } else { 1 })).collect();
            assert_eq!(seen, expected);
            assert_eq!(ioapics, vec![(cpus, 0xfec0_0000)]);
            assert_eq!(irqs, 24);
        }
    }

    #[test]
    fn fits_for_the_most_vcpus_a_config_can_ask() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap();
        write(&mem, 255).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
