//! End to end on Ubuntu's kernel, taken through `[kernel.apt]`
//! (images/edu-ubuntu.toml): the split packages are recorded, the
//! zstd-compressed modules go into the initramfs decompressed, iommufd
//! is loaded for the passthrough, and two hello VMs drive an edu each, one
//! through VFIO's iommufd path (chosen at run time) and one through the
//! legacy container.
//!
//! Needs QEMU and archive.ubuntu.com (about 52 MB into the kiln cache the
//! first time).

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::{images, require_qemu, root};
use std::collections::BTreeMap;
use std::time::Duration;

#[test]
fn edu_passthrough_on_ubuntus_kernel() {
    require_qemu();
    let d = tempfile::tempdir().expect("tempdir");
    let out = d.path().join("edu-ubuntu");
    let manifest = images::build(&root().join("images/edu-ubuntu.toml"), &out);

    let kernel = &manifest["kernel"];
    let release = kernel["release"].as_str().expect("release");
    let packages: Vec<&str> = kernel["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| p["package"].as_str())
        .collect();
    assert_eq!(
        packages,
        [
            format!("linux-image-{release}"),
            format!("linux-modules-{release}")
        ],
        "{kernel}"
    );
    assert_eq!(
        kernel["apt_sources"][0],
        "deb http://archive.ubuntu.com/ubuntu noble-updates main"
    );
    let modules: Vec<&str> = manifest["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    for m in ["iommufd", "vfio", "vfio_pci", "kvm"] {
        assert!(modules.contains(&m), "{m} missing from {modules:?}");
    }

    // The initramfs holds plain modules under the names modules.dep gives.
    let file = std::fs::File::open(out.join("initramfs.cpio.zst")).expect("initramfs");
    let (_, reader) = kiln::compress::decoder(file).expect("zstd");
    let files: BTreeMap<String, Vec<u8>> = kiln::cpio::read_with_data(reader)
        .expect("a newc archive")
        .into_iter()
        .map(|(e, data)| (e.path, data))
        .collect();
    let base = format!("lib/modules/{release}");
    for m in [
        "kernel/drivers/vfio/vfio.ko",
        "kernel/drivers/iommu/iommufd/iommufd.ko",
    ] {
        let data = files
            .get(&format!("{base}/{m}"))
            .unwrap_or_else(|| panic!("{m} not in the initramfs"));
        assert!(data.starts_with(b"\x7fELF"), "{m} is stored uncompressed");
    }
    assert!(
        !files.keys().any(|p| p.ends_with(".ko.zst")),
        "no compressed module in the initramfs"
    );
    let dep = String::from_utf8_lossy(&files[&format!("{base}/modules.dep")]).into_owned();
    let vfio = dep
        .lines()
        .find(|l| l.starts_with("kernel/drivers/vfio/vfio.ko:"))
        .unwrap_or_else(|| panic!("no vfio line in\n{dep}"));
    assert!(
        vfio.contains("kernel/drivers/iommu/iommufd/iommufd.ko"),
        "{vfio}"
    );
    let appliance = String::from_utf8_lossy(&files["etc/kiln/appliance.toml"]).into_owned();
    assert!(appliance.contains("\"iommufd\""), "{appliance}");

    let tested = images::test(&out, &[], Duration::from_secs(900));
    assert_eq!(
        tested.code(),
        Some(0),
        "{}\n{}",
        tested.run.output,
        tested.console
    );
    // One host, both VFIO paths at once: "edu" (backend auto) takes
    // iommufd, which this kernel offers; "edu-legacy-b" is forced onto the
    // legacy container. Each drives its edu to the end.
    let lines: Vec<&str> = kiln_tests::lines(&tested.console).collect();
    let attached = |vm: &str, how: &str| {
        lines.iter().any(|l| {
            l.strip_prefix(&format!("kiln: vm {vm}: 0000:00:"))
                .and_then(|rest| rest.split_once(' '))
                .is_some_and(|(_, rest)| rest.starts_with(how))
        })
    };
    assert!(
        attached("edu", "attached through iommufd (/dev/vfio/devices/vfio"),
        "{}",
        tested.console
    );
    assert!(
        attached(
            "edu-legacy-b",
            "attached through the legacy VFIO container (/dev/vfio/"
        ),
        "{}",
        tested.console
    );
    for vm in ["edu", "edu-legacy-b"] {
        for check in [
            "dma round trip 4096 bytes ok",
            "msi vector 0x51 observed ok",
            "verdict pass",
        ] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("[{vm}] hello: edu ")) && l.ends_with(check)),
                "{vm}: missing {check:?}:\n{}",
                tested.console
            );
        }
    }
}
