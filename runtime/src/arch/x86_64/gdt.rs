//! Segment descriptors: the GDT written into guest memory and the matching
//! hidden segment state handed to KVM, built from the same entries so that
//! they can never disagree.

use kvm_bindings::kvm_segment;

/// Builds a 64-bit GDT entry from flags (the 0xF0F0 part of bits 40..55),
/// a 32-bit base and a 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    // Masked to the descriptor's 20 limit bits.
    #[allow(clippy::cast_possible_truncation)]
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32;
    // With the granularity bit set, the limit counts 4 KiB pages.
    if (entry >> 55) & 1 == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The hidden segment state KVM expects for `entry` loaded with the selector
/// of GDT slot `index`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let present = bit(47);
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        padding: 0,
        unusable: if present == 1 { 0 } else { 1 },
    }
}

/// Flat 64-bit code, readable.
pub const CODE64: u16 = 0xa09b;
/// Flat 32-bit code, readable.
pub const CODE32: u16 = 0xc09b;
/// Flat 32-bit data, writable (also used in long mode).
pub const DATA: u16 = 0xc093;
/// A busy 32-bit TSS.
pub const TSS: u16 = 0x008b;

/// The GDT for the Linux 64-bit boot protocol, which wants `__BOOT_CS` = 0x10
/// and `__BOOT_DS` = 0x18.
pub const GDT_64: [u64; 5] = [
    0,
    0,
    gdt_entry(CODE64, 0, 0xfffff),
    gdt_entry(DATA, 0, 0xfffff),
    gdt_entry(TSS, 0, 0xfffff),
];
pub const GDT_64_CODE: u8 = 2;
pub const GDT_64_DATA: u8 = 3;
pub const GDT_64_TSS: u8 = 4;

/// The GDT for PVH entry in 32-bit protected mode with flat segments.
pub const GDT_32: [u64; 4] = [
    0,
    gdt_entry(CODE32, 0, 0xfffff),
    gdt_entry(DATA, 0, 0xfffff),
    gdt_entry(TSS, 0, 0x67),
];
pub const GDT_32_CODE: u8 = 1;
pub const GDT_32_DATA: u8 = 2;
pub const GDT_32_TSS: u8 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_kvm_segments() {
        let code = kvm_segment_from_gdt(GDT_64[2], 2);
        assert_eq!(code.selector, 0x10);
        assert_eq!((code.base, code.limit), (0, 0xffff_ffff));
        assert_eq!(
            (code.l, code.db, code.g, code.s, code.present),
            (1, 0, 1, 1, 1)
        );
        assert_eq!(code.type_, 0xb);

        let data = kvm_segment_from_gdt(GDT_32[2], 2);
        assert_eq!(
            (data.db, data.l, data.type_, data.selector),
            (1, 0, 3, 0x10)
        );

        let tss = kvm_segment_from_gdt(GDT_32[3], 3);
        assert_eq!((tss.s, tss.type_, tss.limit, tss.g), (0, 0xb, 0x67, 0));

        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn base_and_limit_split_across_the_descriptor() {
        let e = gdt_entry(DATA, 0x1234_5678, 0xabcde);
        assert_eq!(e, 0x12ca_9334_5678_bcde);
        let s = kvm_segment_from_gdt(e, 1);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcd_efff);
    }
}
