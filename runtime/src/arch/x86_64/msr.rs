//! MSR values every vCPU starts with.

use kvm_bindings::kvm_msr_entry;

pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// MISC_ENABLE: fast string operations on, as BIOSes leave it.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled (bit 11), default memory type write-back (6).
/// Without it a guest that honours MTRRs maps all RAM uncached.
pub const MTRR_DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 6;

/// The MSRs kiln sets on each vCPU before it runs (the TSC is left to KVM,
/// which starts all vCPUs of a VM synchronized), filtered to those the
/// hypervisor reports it can save and restore (`supported`); MTRRdefType is
/// always included because KVM emulates it even where it does not list it.
pub fn boot_msrs(supported: &[u32]) -> Vec<kvm_msr_entry> {
    let wanted = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ];
    wanted
        .into_iter()
        .filter(|(index, _)| supported.contains(index))
        .chain([(MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_WB_ENABLED)])
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_unsupported_but_keeps_mtrr_write_back() {
        let msrs = boot_msrs(&[MSR_LSTAR, MSR_IA32_MISC_ENABLE]);
        let got: Vec<(u32, u64)> = msrs.iter().map(|m| (m.index, m.data)).collect();
        assert_eq!(
            got,
            vec![
                (MSR_LSTAR, 0),
                (MSR_IA32_MISC_ENABLE, 1),
                (MSR_MTRR_DEF_TYPE, 0x806)
            ]
        );
    }
}
