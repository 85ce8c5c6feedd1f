//! Kernels from an image's own apt sources (`[kernel.apt]`): Ubuntu 24.04's
//! `linux-image-virtual` through a private apt state, checked with the
//! Ubuntu archive key kiln ships. Its kernel is split (image + modules
//! packages) and its modules are zstd-compressed.
//!
//! Needs access to archive.ubuntu.com. The first run updates the private
//! lists (about 2 MB) and downloads about 52 MB (14 MB image, 38 MB
//! modules) into the user cache (`$KILN_CACHE_DIR`, else ~/.cache/kiln);
//! later runs reuse them.

// An integration test: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln::kernel::{
    module_tree, resolve_with, AptRepo, Kernel, KernelError, KernelOrigin, KernelSource, ModuleTree,
};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

fn ubuntu() -> AptRepo {
    AptRepo {
        sources: vec!["deb http://archive.ubuntu.com/ubuntu noble-updates main".into()],
        keyring: Some(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/keys/ubuntu-archive-keyring.gpg"),
        ),
    }
}

fn ubuntu_kernel() -> &'static (Kernel, ModuleTree) {
    static KERNEL: OnceLock<(Kernel, ModuleTree)> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let source = KernelSource::parse("debian:linux-image-virtual", None, None).unwrap();
        let t = Instant::now();
        let kernel = resolve_with(&source, Some(&ubuntu())).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("resolve: {:.2?}", t.elapsed());
        let t = Instant::now();
        let tree = module_tree(&kernel).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "module index: {:.2?} ({} modules)",
            t.elapsed(),
            tree.index.len()
        );
        (kernel, tree)
    })
}

#[test]
fn resolves_ubuntus_split_kernel() {
    let (kernel, _) = ubuntu_kernel();
    assert!(kernel.release.ends_with("-generic"), "{}", kernel.release);
    let head = std::fs::read(&kernel.vmlinuz).unwrap();
    assert_eq!(&head[0x202..0x206], b"HdrS", "vmlinuz is a bzImage");
    assert!(kernel
        .vmlinuz
        .ends_with(format!("boot/vmlinuz-{}", kernel.release)));
    let config = kernel
        .config
        .as_ref()
        .expect("the modules package ships the config");
    assert!(config.is_module("IOMMUFD") && config.is_builtin("VFIO_DEVICE_CDEV"));
    assert!(config.is_module("VFIO") && config.is_module("KVM"));
    let modules = kernel.modules_dir.as_ref().expect("modules");
    assert!(modules.ends_with(format!("lib/modules/{}", kernel.release)));
    match &kernel.origin {
        KernelOrigin::Debian {
            requested,
            package,
            version,
            deb_sha256,
            packages,
            apt_sources,
        } => {
            assert_eq!(requested, "linux-image-virtual");
            assert_eq!(package, &format!("linux-image-{}", kernel.release));
            let names: Vec<&str> = packages.iter().map(|p| p.package.as_str()).collect();
            assert_eq!(
                names,
                [package.clone(), format!("linux-modules-{}", kernel.release)]
            );
            assert!(packages
                .iter()
                .all(|p| &p.version == version && p.sha256.len() == 64));
            assert_eq!(&packages[0].sha256, deb_sha256);
            assert_eq!(apt_sources, &ubuntu().sources);
        }
        other => panic!("unexpected origin {other:?}"),
    }

    // Warm: from the private state's lists and the cached tree.
    let t = Instant::now();
    let again = resolve_with(
        &KernelSource::Debian("linux-image-virtual".into()),
        Some(&ubuntu()),
    )
    .unwrap();
    eprintln!("warm resolve: {:.2?}", t.elapsed());
    assert_eq!(again.vmlinuz, kernel.vmlinuz);
    assert_eq!(again.origin, kernel.origin);
    assert!(again
        .index_cache
        .as_ref()
        .unwrap()
        .join("modules.dep")
        .is_file());
}

#[test]
fn vfio_needs_iommufd() {
    let (_, tree) = ubuntu_kernel();
    let closure = tree.index.closure(&["vfio-pci"]).unwrap();
    let at = |m: &str| {
        closure
            .iter()
            .position(|e| e.name == m)
            .unwrap_or_else(|| panic!("{m} missing: {closure:?}"))
    };
    assert!(at("iommufd") < at("vfio") && at("vfio") < at("vfio_pci"));
    assert!(
        closure.iter().all(|e| e.path.ends_with(".ko.zst")),
        "{closure:?}"
    );
    let vfio = tree.index.to_modules_dep(&closure);
    let line = vfio
        .lines()
        .find(|l| l.starts_with("kernel/drivers/vfio/vfio.ko.zst:"))
        .unwrap();
    assert!(line.contains("iommufd.ko.zst"), "{line}");
    tree.check(&["vfio-pci"], &closure).unwrap();
}

#[test]
fn modules_needing_the_extras_package_fail_only_when_loaded() {
    let (_, tree) = ubuntu_kernel();
    // linux-modules-extra is not fetched: some modules lack dependencies.
    assert!(!tree.missing.is_empty());
    let (module, _) = tree.missing.iter().next().unwrap();
    let closure = tree.index.closure(&[module]).unwrap();
    let err = tree.check(&[module], &closure).unwrap_err();
    assert!(
        matches!(&err, KernelError::MissingDependency { chain, .. } if chain[0] == *module),
        "{err}"
    );
    assert!(err.to_string().contains("linux-modules-extra"), "{err}");
}

#[test]
fn a_package_not_in_the_sources_is_reported_after_an_update() {
    let (_, _) = ubuntu_kernel(); // the state has lists: this update is the retry
    let source =
        KernelSource::parse("debian:linux-image-kiln-no-such-flavour", None, None).unwrap();
    let t = Instant::now();
    let err = resolve_with(&source, Some(&ubuntu())).unwrap_err();
    eprintln!("not found, with one update: {:.2?}", t.elapsed());
    assert!(
        matches!(&err, KernelError::NotInSources { package, .. } if package == "linux-image-kiln-no-such-flavour"),
        "{err}"
    );
    assert!(err.to_string().contains("noble-updates main"), "{err}");
}

/// Debian 7.x kernels are split too, and keep everything under
/// usr/lib/modules/<release>: trixie-backports' cloud kernel, checked with
/// the host's Debian archive keyring. About 30 MB on the first run.
#[test]
fn resolves_a_debian_7_split_kernel() {
    // debian-archive-keyring: on every Debian host, and tests/setup
    // installs it where missing.
    let keyring = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
    assert!(keyring.is_file(), "{} is missing", keyring.display());
    let repo = AptRepo {
        sources: vec!["deb http://deb.debian.org/debian trixie-backports main".into()],
        keyring: Some(keyring.to_path_buf()),
    };
    let source = KernelSource::parse("debian:linux-image-cloud-amd64", None, None).unwrap();
    let t = Instant::now();
    let kernel = resolve_with(&source, Some(&repo)).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("resolve: {:.2?}", t.elapsed());
    let KernelOrigin::Debian {
        package, packages, ..
    } = &kernel.origin
    else {
        panic!("unexpected origin {:?}", kernel.origin)
    };
    assert_eq!(package, &format!("linux-image-{}", kernel.release));
    let names: Vec<&str> = packages.iter().map(|p| p.package.as_str()).collect();
    for part in ["base", "binary", "modules"] {
        let name = format!("linux-{part}-{}", kernel.release);
        assert!(
            names.contains(&name.as_str()),
            "{name} missing from {names:?}"
        );
    }
    let under = format!("usr/lib/modules/{}", kernel.release);
    assert!(
        kernel.vmlinuz.ends_with(format!("{under}/vmlinuz")),
        "{}",
        kernel.vmlinuz.display()
    );
    assert!(kernel.modules_dir.as_ref().unwrap().ends_with(&under));
    let config = kernel.config.as_ref().expect("linux-base ships the config");
    assert!(config.is_module("KVM"));
    let head = std::fs::read(&kernel.vmlinuz).unwrap();
    assert_eq!(&head[0x202..0x206], b"HdrS", "vmlinuz is a bzImage");
    let tree = module_tree(&kernel).unwrap_or_else(|e| panic!("{e}"));
    let closure = tree.index.closure(&["kvm-amd", "vfio-pci"]).unwrap();
    assert!(
        closure
            .iter()
            .any(|e| e.name == "kvm" && e.path.ends_with(".ko.xz")),
        "{closure:?}"
    );
    tree.check(&["kvm-amd", "vfio-pci"], &closure).unwrap();
}
