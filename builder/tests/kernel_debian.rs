//! End to end against Debian's cloud kernel: apt resolves the metapackage,
//! the .deb is downloaded and unpacked into kiln's cache, modules are read
//! from their `.modinfo`.
//!
//! Needs apt and access to the Debian archive. The first run downloads
//! about 27 MB into the user cache (`$KILN_CACHE_DIR`, else ~/.cache/kiln);
//! later runs reuse it and take well under a second.

// An integration test: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln::kernel::{module_index, resolve, Kernel, KernelOrigin, KernelSource};
use kiln_schema::kmod::{KmodError, ModuleEntry, ModuleIndex};
use std::sync::OnceLock;
use std::time::Instant;

fn cloud_kernel() -> &'static (Kernel, ModuleIndex) {
    static KERNEL: OnceLock<(Kernel, ModuleIndex)> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let source = KernelSource::parse("debian:linux-image-cloud-amd64", None, None).unwrap();
        let t = Instant::now();
        let kernel = resolve(&source).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("resolve: {:.2?}", t.elapsed());
        let t = Instant::now();
        let index = module_index(&kernel).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "module index: {:.2?} ({} modules)",
            t.elapsed(),
            index.len()
        );
        (kernel, index)
    })
}

/// Every module's hard dependencies come before it (per the depmod-form
/// line the index writes for it).
fn assert_load_order(index: &ModuleIndex, closure: &[ModuleEntry]) {
    let dep = index.to_modules_dep(closure);
    for (i, line) in dep.lines().enumerate() {
        let (path, deps) = line.split_once(':').unwrap();
        assert_eq!(path, closure[i].path);
        for d in deps.split_whitespace() {
            let at = closure.iter().position(|e| e.path == d);
            assert!(
                at.is_some_and(|at| at < i),
                "{path} needs {d}, which is not loaded before it: {closure:?}"
            );
        }
    }
}

fn names(closure: &[ModuleEntry]) -> Vec<&str> {
    closure.iter().map(|e| e.name.as_str()).collect()
}

#[test]
fn resolves_the_current_cloud_kernel() {
    let (kernel, _) = cloud_kernel();
    assert!(
        kernel.release.ends_with("-cloud-amd64")
            && kernel.release.starts_with(|c: char| c.is_ascii_digit()),
        "{}",
        kernel.release
    );
    let head = std::fs::read(&kernel.vmlinuz).unwrap();
    assert_eq!(&head[0x202..0x206], b"HdrS", "vmlinuz is a bzImage");
    let config = kernel
        .config
        .as_ref()
        .expect("the package ships its config");
    assert!(config.is_module("KVM") && config.is_module("KVM_AMD") && config.is_module("VFIO_PCI"));
    assert!(config.is_builtin("KVM_VFIO"));
    let modules = kernel
        .modules_dir
        .as_ref()
        .expect("the package ships modules");
    assert!(modules.ends_with(&kernel.release));
    match &kernel.origin {
        KernelOrigin::Debian {
            requested,
            package,
            version,
            deb_sha256,
            packages,
            apt_sources,
        } => {
            assert_eq!(requested, "linux-image-cloud-amd64");
            // Debian 12's kernel is one package, from the host's sources.
            assert_eq!(packages.len(), 1);
            assert_eq!(&packages[0].package, package);
            assert_eq!(&packages[0].sha256, deb_sha256);
            assert!(apt_sources.is_empty());
            assert_eq!(package, &format!("linux-image-{}", kernel.release));
            assert!(!version.is_empty());
            assert!(deb_sha256.len() == 64 && deb_sha256.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(kernel
                .vmlinuz
                .to_string_lossy()
                .contains(deb_sha256.as_str()));
        }
        other => panic!("unexpected origin {other:?}"),
    }

    // Warm: everything is cached, nothing is downloaded or unpacked again.
    let t = Instant::now();
    let again = resolve(&KernelSource::Debian("linux-image-cloud-amd64".into())).unwrap();
    eprintln!("warm resolve: {:.2?}", t.elapsed());
    assert_eq!(again.vmlinuz, kernel.vmlinuz);
    assert_eq!(again.origin, kernel.origin);
    let cache = again.index_cache.as_ref().unwrap();
    assert!(
        cache.join("modules.dep").is_file(),
        "module index is cached"
    );
    let t = Instant::now();
    let warm_index = module_index(&again).unwrap();
    eprintln!("warm module index: {:.2?}", t.elapsed());
    assert_eq!(
        warm_index.closure(&["vfio-pci", "kvm-amd"]).unwrap(),
        cloud_kernel().1.closure(&["vfio-pci", "kvm-amd"]).unwrap()
    );
}

#[test]
fn kvm_amd_closure() {
    let (_, index) = cloud_kernel();
    let closure = index.closure(&["kvm-amd"]).unwrap();
    assert_load_order(index, &closure);
    let n = names(&closure);
    for m in ["irqbypass", "kvm", "kvm_amd"] {
        assert!(n.contains(&m), "{m} missing from {n:?}");
    }
    let at = |m: &str| n.iter().position(|x| *x == m).unwrap();
    assert!(at("irqbypass") < at("kvm") && at("kvm") < at("kvm_amd"));
    assert_eq!(
        closure.iter().find(|e| e.name == "kvm_amd").unwrap().path,
        "kernel/arch/x86/kvm/kvm-amd.ko"
    );
}

#[test]
fn vfio_pci_closure() {
    let (_, index) = cloud_kernel();
    let closure = index.closure(&["vfio-pci"]).unwrap();
    assert_load_order(index, &closure);
    let n = names(&closure);
    for m in [
        "vfio",
        "vfio_iommu_type1",
        "vfio_virqfd",
        "vfio_pci_core",
        "irqbypass",
        "vfio_pci",
    ] {
        assert!(n.contains(&m), "{m} missing from {n:?}");
    }
    // vfio asks for its IOMMU backend right after itself (softdep post:).
    let at = |m: &str| n.iter().position(|x| *x == m).unwrap();
    assert!(at("vfio") < at("vfio_iommu_type1"));
    assert!(at("vfio_pci_core") < at("vfio_pci"));
}

#[test]
fn misspelled_modules_get_suggestions() {
    let (_, index) = cloud_kernel();
    for (wrong, right) in [
        ("kvm_amdd", "kvm_amd"),
        ("vfio-pcii", "vfio_pci"),
        ("irqbypas", "irqbypass"),
    ] {
        match index.closure(&[wrong]) {
            Err(KmodError::Unknown { name, suggestions }) => {
                assert_eq!(name, wrong);
                assert_eq!(
                    suggestions.first().map(String::as_str),
                    Some(right),
                    "{suggestions:?}"
                );
                assert!(suggestions.len() <= 3);
            }
            other => panic!("{wrong}: unexpected {other:?}"),
        }
    }
    let msg = index.closure(&["kvm_amdd"]).unwrap_err().to_string();
    assert!(
        msg.starts_with("Module \"kvm_amdd\" does not exist in this kernel; did you mean kvm_amd"),
        "{msg}"
    );
}

#[test]
fn image_modules_dep_matches_its_subset() {
    let (_, index) = cloud_kernel();
    let closure = index.closure(&["kvm-amd", "vfio-pci"]).unwrap();
    let dep = index.to_modules_dep(&closure);
    let soft = index.to_modules_softdep(&closure);
    assert_eq!(dep.lines().count(), closure.len());
    // The image's files alone give the runtime the same order.
    let image = ModuleIndex::from_modules_dep(&dep, Some(&soft), None).unwrap();
    assert_eq!(image.len(), closure.len());
    assert_eq!(image.closure(&["kvm-amd", "vfio-pci"]).unwrap(), closure);
}

#[test]
fn unknown_package_is_reported() {
    let source =
        KernelSource::parse("debian:linux-image-kiln-no-such-flavour", None, None).unwrap();
    let err = resolve(&source).unwrap_err();
    assert!(
        matches!(&err, kiln::kernel::KernelError::PackageNotFound { package } if package == "linux-image-kiln-no-such-flavour"),
        "{err}"
    );
    assert!(err.to_string().contains("apt knows no Debian package"));
}
