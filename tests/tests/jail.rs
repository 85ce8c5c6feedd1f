//! Every VMM runs jailed on the emulated target: one appliance with the
//! hello unikernel, a Linux guest and hello driving QEMU's edu device
//! through VFIO (restarted once, so its VMM opens the VFIO group again as
//! a new process). PID 1's sandbox note for each run, read from the VMM's
//! /proc status once its guest runs, shows its own uid and gid, no
//! supplementary group, no capability in any set, no_new_privs and
//! landlock enforced (the Debian 6.1 kernel has landlock in its default
//! LSM list); and every guest still does its whole job.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_abi::sandbox;
use kiln_tests::{images, require_qemu, root};
use std::time::{Duration, Instant};

#[test]
fn hello_linux_and_an_assigned_device_run_jailed_each_as_its_own_uid() {
    require_qemu();
    let started = Instant::now();
    let dir = images::scratch("jail/three");
    let config = |name: &str| format!("{:?}", root().join("configs").join(name));
    let text = format!(
        "name = \"jail\"\n\
         vms = [{}, {}]\n\
         [kernel]\n\
         source = \"debian:linux-image-cloud-amd64\"\n\
         cmdline = \"console=ttyS0 panic=-1 quiet intel_iommu=on iommu=pt\"\n\
         [target]\n\
         memory = \"2G\"\n\
         devices = [\"edu,dma_mask=0xffffffffffffffff\"]\n\
         [[vm]]\n\
         name = \"edu\"\n\
         memory = \"64M\"\n\
         [vm.boot]\n\
         kernel = \"cargo:kiln-hello\"\n\
         cmdline = \"hello.exit=0 hello.edu=required\"\n\
         [[vm.pci]]\n\
         device = \"1234:11e8\"\n\
         [vm.restart]\n\
         policy = \"always\"\n\
         max = 1\n\
         backoff = \"100ms\"\n",
        config("hello.toml"),
        config("linux-guest.toml"),
    );
    let out = dir.join("out");
    images::build(&images::write(&dir, "jail.toml", &text), &out);
    let run = images::run(&out, Duration::from_secs(600));
    assert!(!run.timed_out, "no power-off:\n{}", run.output);
    for line in [
        "[hello] hello: exit 0",
        "kiln: vm=hello state=exited code=0",
        "[linux] guest-init: cpus online 2",
        "kiln: vm=linux state=exited code=0",
        "[edu] hello: edu 00:01.0 dma round trip 4096 bytes ok",
        "[edu] hello: edu 00:01.0 msi vector 0x51 observed ok",
        "[edu] hello: edu verdict pass",
        "kiln: vm=edu state=exited code=0",
        "kiln: appliance done ok=3 failed=0",
    ] {
        assert!(run.has_line(line), "no `{line}`:\n{}", run.output);
    }
    // VM number i of the appliance is uid and gid 100000 + i, on every run.
    for (vm, id, runs) in [
        ("hello", 100_000, 1),
        ("linux", 100_001, 1),
        ("edu", 100_002, 2),
    ] {
        let reports: Vec<&str> = run
            .lines()
            .filter(|l| sandbox::report_vm(l) == Some(vm))
            .collect();
        assert_eq!(reports.len(), runs, "{vm}: {reports:?}\n{}", run.output);
        let id = id.to_string();
        for line in reports {
            for (key, want) in [
                ("uid", id.as_str()),
                ("gid", id.as_str()),
                ("groups", "0"),
                ("caps", "0"),
                ("no_new_privs", "1"),
                ("landlock", "enforced"),
            ] {
                assert_eq!(sandbox::field(line, key), Some(want), "{vm}: {line}");
            }
        }
    }
    // The edu VM ran twice, each run passing (its VFIO group reopened).
    let passes = run
        .lines()
        .filter(|l| *l == "[edu] hello: edu verdict pass")
        .count();
    assert_eq!(passes, 2, "{}", run.output);
    eprintln!(
        "three jailed VMs (build + boot): {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
