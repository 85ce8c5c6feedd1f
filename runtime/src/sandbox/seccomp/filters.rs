//! The allow lists, one per kind of VMM thread, as seccompiler rules.
//! docs/runtime.md ("seccomp filters") argues each entry; keep the two in
//! step.
//!
//! Only what a thread does *after* the VM is set up is here: opening the
//! hypervisor and VFIO nodes, creating the VM and its vCPUs, mapping guest
//! RAM for DMA and loading the kernel all happen before the filters are
//! installed, so `openat`, `socket`, `execve`, `clone`, `KVM_CREATE_*` and
//! `VFIO_IOMMU_MAP_DMA` are on no list.

use super::ThreadKind;
use kvm_bindings::{
    kvm_coalesced_mmio_zone, kvm_device_attr, kvm_irq_routing, kvm_irqfd,
    kvm_userspace_memory_region,
};
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use std::collections::BTreeMap;

const KVMIO: u32 = 0xAE;
/// VFIO's and iommufd's ioctl type (`;`).
const VFIO_TYPE: u32 = 0x3B;
const VFIO_BASE: u32 = 100;
const IOMMUFD_CMD_BASE: u32 = 0x80;

vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
vmm_sys_util::ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
vmm_sys_util::ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);
vmm_sys_util::ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);
vmm_sys_util::ioctl_iow_nr!(
    KVM_REGISTER_COALESCED_MMIO,
    KVMIO,
    0x67,
    kvm_coalesced_mmio_zone
);
vmm_sys_util::ioctl_iow_nr!(
    KVM_UNREGISTER_COALESCED_MMIO,
    KVMIO,
    0x68,
    kvm_coalesced_mmio_zone
);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_UNSET_CONTAINER, VFIO_TYPE, VFIO_BASE + 5);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE, VFIO_BASE + 10);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE, VFIO_BASE + 11);
vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE, VFIO_BASE + 14);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_DETACH_IOMMUFD_PT, VFIO_TYPE, VFIO_BASE + 20);
vmm_sys_util::ioctl_io_nr!(IOMMU_DESTROY, VFIO_TYPE, IOMMUFD_CMD_BASE);
vmm_sys_util::ioctl_io_nr!(IOMMU_IOAS_UNMAP, VFIO_TYPE, IOMMUFD_CMD_BASE + 6);

/// System calls every VMM thread makes: the allocator (glibc's malloc
/// grows and trims arenas with brk, mmap, mprotect, madvise, munmap,
/// mremap), locks, clocks and sleeps (vDSO where the clocksource allows,
/// the system call where it does not), console and log writes, closing
/// what it drops, signal masks and returns from the kick handler, Rust's
/// per-thread alternate signal stack (sigaltstack, unmapped at thread
/// exit), HashMap seeds (getrandom) and ending a thread or the process.
const EVERY_THREAD: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The main thread beyond [`EVERY_THREAD`]: it waits (poll on the stop
/// eventfd and the signalfd, reads them), with `KILN_VMM_STATS` reads its
/// pre-opened `/proc/self/status` (pread64) and asks which guest pages are
/// resident (mincore), and when it drops a device of a legacy VFIO
/// container, vfio-ioctls reads the device's `iommu_group` link in sysfs
/// to find its group (readlink: a link's text; nothing is opened).
const MAIN_THREAD: &[i64] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_pread64,
    libc::SYS_mincore,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
];

/// A vCPU thread beyond [`EVERY_THREAD`]: config space and the trapping
/// parts of BARs are read and written on the VFIO device fd (pread64,
/// pwrite64), and a guest that enables MSI or MSI-X vectors gets an
/// eventfd per vector (eventfd2).
const VCPU_THREAD: &[i64] = &[libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_eventfd2];

/// The ioctls the main thread makes after setup: tearing the VM down in
/// `Drop` order (BAR slots out of KVM, vectors and irqfds off, the device
/// reset, DMA unmapped, the group or cdev detached and the KVM-VFIO device
/// told).
fn main_ioctls() -> Vec<u64> {
    vec![
        KVM_SET_USER_MEMORY_REGION(),
        KVM_IRQFD(),
        KVM_SET_GSI_ROUTING(),
        KVM_SET_DEVICE_ATTR(),
        VFIO_DEVICE_SET_IRQS(),
        VFIO_DEVICE_RESET(),
        VFIO_IOMMU_UNMAP_DMA(),
        VFIO_GROUP_UNSET_CONTAINER(),
        VFIO_DEVICE_DETACH_IOMMUFD_PT(),
        IOMMU_IOAS_UNMAP(),
        IOMMU_DESTROY(),
    ]
}

/// The ioctls a vCPU thread makes: running the guest, the console's
/// transmit register made a coalesced zone and back as the guest changes
/// the UART's state, and what a guest can ask of a passed-through device:
/// a BAR moved (its KVM slots), MSI or MSI-X vectors enabled, disabled or
/// retargeted (the device's eventfds, their irqfds and the GSI routes).
fn vcpu_ioctls() -> Vec<u64> {
    vec![
        KVM_RUN(),
        KVM_REGISTER_COALESCED_MMIO(),
        KVM_UNREGISTER_COALESCED_MMIO(),
        KVM_SET_USER_MEMORY_REGION(),
        KVM_IRQFD(),
        KVM_SET_GSI_ROUTING(),
        VFIO_DEVICE_SET_IRQS(),
    ]
}

/// The rules of `kind`: each allowed system call, `ioctl` for the listed
/// request numbers only and `tgkill` for this process's threads only
/// (`pid`). Anything else takes `mismatch`.
pub fn filter(
    kind: ThreadKind,
    pid: u32,
    mismatch: SeccompAction,
) -> Result<SeccompFilter, seccompiler::BackendError> {
    let (own, ioctls) = match kind {
        ThreadKind::Main => (MAIN_THREAD, main_ioctls()),
        ThreadKind::Vcpu => (VCPU_THREAD, vcpu_ioctls()),
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = EVERY_THREAD
        .iter()
        .chain(own)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    // The request is an `unsigned int` in the kernel: compare 32 bits.
    let ioctl_rules = ioctls
        .into_iter()
        .map(|request| {
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                request,
            )?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    // Rust checks an fd is still open before it closes it, in debug builds
    // (F_GETFD reads the close-on-exec flag and changes nothing).
    rules.insert(
        libc::SYS_fcntl,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            u64::from(libc::F_GETFD.unsigned_abs()),
        )?])?],
    );
    // pthread_kill: the main thread kicks its vCPUs out of KVM_RUN.
    rules.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            u64::from(pid),
        )?])?],
    );
    SeccompFilter::new(
        rules,
        mismatch,
        SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernel_s() {
        // From the kernel's headers (include/uapi/linux/kvm.h, vfio.h,
        // iommufd.h), as a C program prints them.
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_IRQFD(), 0x4020_ae76);
        assert_eq!(KVM_SET_GSI_ROUTING(), 0x4008_ae6a);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(KVM_SET_DEVICE_ATTR(), 0x4018_aee1);
        assert_eq!(KVM_REGISTER_COALESCED_MMIO(), 0x4010_ae67);
        assert_eq!(KVM_UNREGISTER_COALESCED_MMIO(), 0x4010_ae68);
        assert_eq!(VFIO_GROUP_UNSET_CONTAINER(), 0x3b69);
        assert_eq!(VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA(), 0x3b72);
        assert_eq!(VFIO_DEVICE_DETACH_IOMMUFD_PT(), 0x3b78);
        assert_eq!(IOMMU_DESTROY(), 0x3b80);
        assert_eq!(IOMMU_IOAS_UNMAP(), 0x3b86);
    }

    #[test]
    fn no_thread_may_open_files_spawn_or_create_vms() {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu] {
            let own = match kind {
                ThreadKind::Main => MAIN_THREAD,
                ThreadKind::Vcpu => VCPU_THREAD,
            };
            for nr in [
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_openat2,
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_fork,
                libc::SYS_socket,
                libc::SYS_ptrace,
                libc::SYS_rt_sigaction,
                libc::SYS_seccomp,
                libc::SYS_prctl,
            ] {
                assert!(
                    !EVERY_THREAD.contains(&nr) && !own.contains(&nr),
                    "{kind:?} allows {nr}"
                );
            }
        }
        assert!(!main_ioctls().contains(&KVM_RUN()));
    }
}
