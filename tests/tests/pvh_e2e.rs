//! `debian:` guest kernels boot through PVH on request: with `boot.pvh`
//! `kiln build` puts the bzImage's uncompressed vmlinux into the image and
//! the VMM enters it at its PVH note, so the guest kernel does not
//! decompress itself; by default the bzImage goes in. One appliance boots
//! both to kiln-guest-init, with `KILN_VMM_STATS=1` so each VMM says which
//! entry it took (docs/config.md#booting-the-vmlinux-through-pvh).

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::{images, lines, require_qemu, run_kiln};
use std::time::{Duration, Instant};

/// A Linux guest with kiln-guest-init; `extra` goes under its [vm.boot].
fn linux_vm(name: &str, memory: &str, extra: &str) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\nmemory = \"{memory}\"\n[vm.boot]\n\
         kernel = \"debian:linux-image-cloud-amd64\"\n\
         initrd = {{ init = \"cargo:kiln-guest-init\" }}\n\
         cmdline = \"console=ttyS0 reboot=k panic=-1 quiet loglevel=1\"\n{extra}"
    )
}

/// The `key=value` of the VM's `kiln-runtime: stats vm=<vm> ...` line.
fn stat<'a>(console: &'a str, vm: &str, key: &str) -> Option<&'a str> {
    let tag = format!("kiln-runtime: stats vm={vm} ");
    let line = lines(console).find_map(|l| l.find(&tag).map(|at| &l[at..]))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The manifest's record of the VM's guest kernel.
fn kernel_payload<'a>(manifest: &'a serde_json::Value, vm: &str) -> &'a serde_json::Value {
    manifest["payloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["vm"] == vm && p["path"] == format!("/guests/{vm}/kernel"))
        .unwrap_or_else(|| panic!("no kernel payload for {vm}: {manifest}"))
}

/// `kiln build` of `image` into `dir/out`, which must fail: its stderr.
fn build_fails(dir: &std::path::Path, image: &std::path::Path) -> String {
    let o = run_kiln(
        dir,
        &[
            "build",
            &image.to_string_lossy(),
            "-o",
            &dir.join("out").to_string_lossy(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{} built:\n{err}", image.display());
    err
}

#[test]
fn a_debian_guest_boots_its_vmlinux_through_pvh_when_asked_and_its_bzimage_by_default() {
    require_qemu();
    let started = Instant::now();
    let dir = images::scratch("pvh/boot");
    let text = format!(
        "name = \"pvh\"\n[kernel]\nsource = \"debian:linux-image-cloud-amd64\"\n\
         cmdline = \"console=ttyS0 panic=-1 quiet KILN_VMM_STATS=1\"\n{}{}",
        linux_vm("fast", "128M", "pvh = true\n"),
        linux_vm("plain", "128M", ""),
    );
    let image = images::write(&dir, "pvh.toml", &text);
    let out = dir.join("out");
    let manifest = images::build(&image, &out);

    // The build says which entry each kernel boots through...
    let fast = kernel_payload(&manifest, "fast");
    let plain = kernel_payload(&manifest, "plain");
    assert_eq!(fast["entry"], "pvh", "{fast}");
    assert_eq!(plain["entry"], "bzimage", "{plain}");
    assert!(fast.get("entry_note").is_none(), "{fast}");
    // ...the vmlinux is the uncompressed kernel, several times the bzImage.
    let (fast_size, plain_size) = (
        fast["size"].as_u64().unwrap(),
        plain["size"].as_u64().unwrap(),
    );
    assert!(fast_size > 2 * plain_size, "{fast_size} vs {plain_size}");
    // ...and `kiln inspect` shows it.
    let inspected = run_kiln(&dir, &["inspect", &out.to_string_lossy()]);
    let listing = String::from_utf8_lossy(&inspected.stdout);
    assert!(inspected.status.success(), "{listing}");
    assert_eq!(
        listing.matches("entry: pvh").count(),
        1,
        "kiln inspect shows the entry:\n{listing}"
    );
    assert_eq!(listing.matches("entry: bzimage").count(), 1, "{listing}");

    let run = images::run(&out, Duration::from_secs(400));
    assert!(
        run.has_line("kiln: appliance done ok=2 failed=0"),
        "both VMs must reach their /init and end well:\n{}",
        run.output
    );
    for vm in ["fast", "plain"] {
        assert!(
            run.lines()
                .any(|l| l.starts_with(&format!("[{vm}] guest-init: "))),
            "{vm} reached kiln-guest-init:\n{}",
            run.output
        );
    }
    assert_eq!(
        stat(&run.output, "fast", "entry"),
        Some("pvh"),
        "{}",
        run.output
    );
    assert_eq!(
        stat(&run.output, "plain", "entry"),
        Some("bzimage"),
        "{}",
        run.output
    );
    // VMM start to /init of each, for the log (one boot each proves no
    // speed-up on a shared machine: docs/benchmarks.md measures it).
    eprintln!(
        "pvh e2e: VMM start to /init: fast (pvh) {:?} ms, plain (bzimage) {:?} ms; build + boot {:.1} s",
        stat(&run.output, "fast", "first_output_ms"),
        stat(&run.output, "plain", "first_output_ms"),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_debian_guest_too_small_for_its_vmlinux_fails_the_build_at_memory() {
    let dir = images::scratch("pvh/small");
    let image = images::write(
        &dir,
        "small.toml",
        &format!(
            "name = \"small\"\n[kernel]\nsource = \"debian:linux-image-cloud-amd64\"\n{}",
            linux_vm("tiny", "48M", "pvh = true\n")
        ),
    );
    let err = build_fails(&dir, &image);
    assert!(
        err.contains("small.toml:")
            && err.contains("vm[0].memory")
            && err.contains("is 48 MiB, but the guest kernel loads up to"),
        "the error names the file and the key:\n{err}"
    );
}

#[test]
fn pvh_on_a_kernel_that_is_no_debian_bzimage_is_refused_at_its_key() {
    let dir = images::scratch("pvh/cargo");
    let image = images::write(
        &dir,
        "hello.toml",
        "name = \"hello\"\n[kernel]\nsource = \"debian:linux-image-cloud-amd64\"\n\
         [[vm]]\nname = \"hello\"\nmemory = \"64M\"\n[vm.boot]\n\
         kernel = \"cargo:kiln-hello\"\npvh = true\n",
    );
    let err = build_fails(&dir, &image);
    assert!(
        err.contains("hello.toml:9:")
            && err.contains("vm[0].boot.pvh")
            && err.contains("unpacks a `debian:` kernel's bzImage"),
        "the error names the file, the line and the key:\n{err}"
    );
}
