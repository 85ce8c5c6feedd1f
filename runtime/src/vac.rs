//! `Vac`: one open hypervisor device node (`/dev/kvm`, or `/dev/kvm-<id>`
//! where a kernel offers several KVM instances) and what is system-wide
//! about it: the API version, the capabilities kiln relies on, and the CPUID
//! and MSR lists it supports. VMs are created from it and hold it through an
//! `Arc`, so a node stays open while any VM made from it lives; several
//! `Vac`s may be open side by side and share nothing.

use crate::arch::x86_64::cpuid;
use kvm_bindings::{CpuId, KVM_API_VERSION, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Capabilities every kiln VM needs, with the name users see in errors.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::MpState, "KVM_CAP_MP_STATE"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

#[derive(Debug, thiserror::Error)]
pub enum VacError {
    #[error("The hypervisor device {} does not exist; is the kvm module loaded? It appears once kvm and the vendor module that matches the CPU (kvm-intel or kvm-amd) load: list both in the image's modules.load and look for a `module` error earlier on the console", path.display())]
    Missing { path: PathBuf },
    #[error("Cannot open the hypervisor device {}; check that it is a KVM device node this process may read and write", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("The hypervisor device path {} contains a NUL byte", path.display())]
    BadPath { path: PathBuf },
    #[error("{} speaks KVM API version {found}; kiln needs version {KVM_API_VERSION}", path.display())]
    ApiVersion { path: PathBuf, found: i32 },
    #[error("{} lacks the capability {name}; kiln needs a KVM with it (a newer kernel, or real VT-x/AMD-V)", path.display())]
    MissingCapability { path: PathBuf, name: &'static str },
    #[error("Cannot read the supported CPUID of {}", path.display())]
    Cpuid {
        path: PathBuf,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Cannot read the MSR list of {}", path.display())]
    MsrList {
        path: PathBuf,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Cannot create a VM on {}", path.display())]
    CreateVm {
        path: PathBuf,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// One hypervisor device node, opened and checked.
#[derive(Debug)]
pub struct Vac {
    path: PathBuf,
    kvm: Kvm,
    cpuid: CpuId,
    msrs: Vec<u32>,
    max_vcpus: usize,
}

impl Vac {
    /// Opens `path`, checks the API version and every capability kiln
    /// needs, and caches the supported CPUID and MSR lists.
    pub fn open(path: &Path) -> Result<Arc<Vac>, VacError> {
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| VacError::BadPath {
            path: path.to_path_buf(),
        })?;
        let kvm = Kvm::new_with_path(&c_path).map_err(|source| {
            // Without KVM loaded the node is simply absent: say that, not
            // just ENOENT.
            if source.errno() == libc::ENOENT {
                VacError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                VacError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let found = kvm.get_api_version();
        if i64::from(found) != i64::from(KVM_API_VERSION) {
            return Err(VacError::ApiVersion {
                path: path.to_path_buf(),
                found,
            });
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(VacError::MissingCapability {
                    path: path.to_path_buf(),
                    name,
                });
            }
        }
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| VacError::Cpuid {
                path: path.to_path_buf(),
                source,
            })?;
        // KVM emulates the TSC-deadline timer in its LAPIC but leaves the
        // bit out of the supported set: offer it when the capability says
        // so, and Linux guests skip calibrating the LAPIC timer.
        if kvm.check_extension(Cap::TscDeadlineTimer) {
            cpuid::offer_tsc_deadline(cpuid.as_mut_slice());
        }
        let msrs = kvm
            .get_msr_index_list()
            .map_err(|source| VacError::MsrList {
                path: path.to_path_buf(),
                source,
            })?
            .as_slice()
            .to_vec();
        let max_vcpus = kvm.get_max_vcpus();
        Ok(Arc::new(Vac {
            path: path.to_path_buf(),
            kvm,
            cpuid,
            msrs,
            max_vcpus,
        }))
    }

    /// The device node this `Vac` opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The CPUID entries this hypervisor can expose, before per-vCPU patching.
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// The MSRs this hypervisor saves and restores.
    pub fn msr_index_list(&self) -> &[u32] {
        &self.msrs
    }

    /// The most vCPUs one VM may have here.
    pub fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }

    pub(crate) fn create_vm(&self) -> Result<VmFd, VacError> {
        self.kvm.create_vm().map_err(|source| VacError::CreateVm {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The node the ownership tests run against. These tests need a KVM
    /// device (this build machine's software `kvm_pvm` is enough); without
    /// one they fail, rather than pass without checking anything.
    pub fn kvm_path() -> &'static Path {
        let p = Path::new("/dev/kvm");
        assert!(
            p.exists(),
            "/dev/kvm is missing: the vac/vm ownership tests need a KVM device node"
        );
        p
    }

    #[test]
    fn opens_and_caches_capabilities() {
        let vac = Vac::open(kvm_path()).unwrap();
        assert_eq!(vac.path(), Path::new("/dev/kvm"));
        assert!(vac.max_vcpus() >= 1);
        assert!(vac
            .supported_cpuid()
            .as_slice()
            .iter()
            .any(|e| e.function == 0));
    }

    #[test]
    fn several_can_be_open_side_by_side() {
        let a = Vac::open(kvm_path()).unwrap();
        let b = Vac::open(kvm_path()).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        drop(a);
        // `b` still works after `a` is gone.
        b.create_vm().unwrap();
    }

    #[test]
    fn missing_node_names_the_path_and_the_fix() {
        let e = Vac::open(Path::new("/dev/kvm-does-not-exist")).unwrap_err();
        assert!(matches!(e, VacError::Missing { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("The hypervisor device /dev/kvm-does-not-exist does not exist; is the kvm module loaded?"),
            "{msg}"
        );
        assert!(msg.contains("modules.load"), "{msg}");
    }

    #[test]
    fn a_node_that_is_not_kvm_is_refused() {
        // /dev/null opens but answers no KVM ioctl.
        let e = Vac::open(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(e, VacError::ApiVersion { .. }), "{e}");
    }
}
