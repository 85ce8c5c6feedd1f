//! CPUID as each vCPU sees it: the hypervisor's supported set, with the
//! per-CPU identity (APIC id), the topology (one socket, one thread per
//! core, `count` cores) and the hypervisor bit filled in.

use kvm_bindings::kvm_cpuid_entry2;

/// Where one vCPU sits: its index (also its APIC id) among `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub index: u8,
    pub count: u8,
}

const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units (64 bytes), as every x86-64 CPU reports.
const CLFLUSH_LINE_8B: u32 = 8;
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;

/// Topology level types of leaves 0xB and 0x1F.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits of the APIC id that number the cores: enough for `count` of them.
fn core_shift(count: u8) -> u32 {
    let n = u32::from(count.max(1));
    u32::BITS - (n - 1).leading_zeros()
}

const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Sets the TSC-deadline timer bit (leaf 1, ECX bit 24), for a hypervisor
/// with `KVM_CAP_TSC_DEADLINE_TIMER`: its LAPIC emulates the timer, and a
/// guest that sees the bit arms it by TSC value instead of calibrating the
/// LAPIC timer against the PIT at boot.
pub fn offer_tsc_deadline(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries.iter_mut().filter(|e| e.function == 0x1) {
        e.ecx |= LEAF1_ECX_TSC_DEADLINE;
    }
}

/// Rewrites `entries` (one vCPU's copy of the supported CPUID) in place.
pub fn patch(entries: &mut [kvm_cpuid_entry2], topo: Topology) {
    let apic = u32::from(topo.index);
    let count = u32::from(topo.count.max(1));
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ebx = (apic << 24) | (count << 16) | (CLFLUSH_LINE_8B << 8);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 => {
                // Cores per package in 31:26; threads sharing this cache in
                // 25:14: one per core below L3, every core at L3.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((count - 1) << 26) | (sharing << 14);
            }
            0xb | 0x1f => {
                let (shift, logical, level_type) = match e.index {
                    0 => (0, 1, LEVEL_SMT),
                    1 => (core_shift(topo.count), count, LEVEL_CORE),
                    _ => (0, 0, 0),
                };
                e.eax = shift;
                e.ebx = logical;
                e.ecx = (level_type << 8) | (e.index & 0xff);
                e.edx = apic;
            }
            0x8000_0001 => e.ecx &= !EXT1_ECX_CMP_LEGACY,
            0x8000_0008 => {
                e.ecx = (e.ecx & !0xf0ff) | (core_shift(topo.count) << 12) | (count - 1);
            }
            0x8000_001e => {
                e.eax = apic;
                e.ebx = apic & 0xff;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0x0000_0002,
            edx: 0x0000_0001,
            ..Default::default()
        }
    }

    fn find(e: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *e.iter().find(|x| x.function == f && x.index == i).unwrap()
    }

    #[test]
    fn apic_ids_count_and_hypervisor_bit() {
        let base = vec![leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)];
        for index in 0..4u8 {
            let mut e = base.clone();
            patch(&mut e, Topology { index, count: 4 });
            let l1 = find(&e, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(index));
            assert_eq!((l1.ebx >> 16) & 0xff, 4);
            assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
            assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
            assert_eq!(l1.edx & 1, 1, "other feature bits are kept");
            for sub in 0..3 {
                assert_eq!(find(&e, 0xb, sub).edx, u32::from(index));
            }
        }
    }

    #[test]
    fn topology_leaves_describe_one_socket_of_cores() {
        let mut e = vec![
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(0x8000_0008, 0),
            leaf(0x8000_001e, 0),
            leaf(1, 0),
            leaf(4, 0),
        ];
        e[6].eax = 3 << 5; // an L3 cache descriptor
        patch(&mut e, Topology { index: 2, count: 3 });
        let smt = find(&e, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, 0x100));
        let core = find(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx), (2, 3, 0x201));
        let end = find(&e, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx >> 8), (0, 0, 0));
        let amd = find(&e, 0x8000_0008, 0);
        assert_eq!(amd.ecx & 0xff, 2);
        assert_eq!((amd.ecx >> 12) & 0xf, 2);
        assert_eq!(find(&e, 0x8000_001e, 0).eax, 2);
        let l4 = find(&e, 4, 0);
        assert_eq!((l4.eax >> 26, (l4.eax >> 14) & 0xfff), (2, 2));
        assert_eq!(find(&e, 1, 0).edx & LEAF1_EDX_HTT, LEAF1_EDX_HTT);
    }

    #[test]
    fn tsc_deadline_is_offered_in_leaf_1_only() {
        let mut e = vec![leaf(0x1, 0), leaf(0x7, 0)];
        offer_tsc_deadline(&mut e);
        assert_eq!(find(&e, 0x1, 0).ecx & (1 << 24), 1 << 24);
        assert_eq!(find(&e, 0x7, 0).ecx, 2);
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut e = vec![leaf(1, 0)];
        e[0].edx |= LEAF1_EDX_HTT;
        patch(&mut e, Topology { index: 0, count: 1 });
        assert_eq!(e[0].edx & LEAF1_EDX_HTT, 0);
        assert_eq!(core_shift(1), 0);
        assert_eq!(core_shift(2), 1);
        assert_eq!(core_shift(5), 3);
    }
}
