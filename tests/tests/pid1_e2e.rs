//! The runtime as PID 1 on the emulated target: several VMs side by side,
//! restart policies, a broken appliance config, a device in an IOMMU group
//! that cannot be assigned, a module the kernel refuses and the /dev/kvm
//! that then never appears. Each boot is one appliance that powers off by
//! itself; the console is judged line by line.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::images;
use kiln_tests::{lines, require_qemu, root, run_kiln, Finished};
use std::time::{Duration, Instant};

/// A boot of these small appliances takes about 10 s on TCG.
const BOOT: Duration = Duration::from_secs(180);

fn report(what: &str, started: Instant) {
    eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
}

/// The image header every test image shares: the Debian cloud kernel.
fn image(name: &str, cmdline: &str, rest: &str) -> String {
    format!(
        "name = \"{name}\"\n[kernel]\nsource = \"debian:linux-image-cloud-amd64\"\n\
         cmdline = \"console=ttyS0 panic=-1 quiet{cmdline}\"\n{rest}"
    )
}

/// An inline hello VM exiting with `code`, plus `extra` keys after [vm.boot].
fn hello_vm(name: &str, code: u8, extra: &str) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\nmemory = \"32M\"\n[vm.boot]\nkernel = \"cargo:kiln-hello\"\n\
         cmdline = \"hello.exit={code}\"\n{extra}"
    )
}

/// Checks that the appliance powered off by itself (QEMU exited, no
/// timeout) without a kernel panic.
fn powered_off(run: &Finished) {
    assert!(
        !run.timed_out,
        "the appliance did not power off:\n{}",
        run.output
    );
    assert!(
        run.output.contains("reboot: Power down"),
        "no power-off:\n{}",
        run.output
    );
    assert!(!run.output.contains("Kernel panic"), "{}", run.output);
}

/// The status lines of VM `vm`, in order, without `kiln: vm=<vm> `.
fn states<'a>(console: &'a str, vm: &str) -> Vec<&'a str> {
    let prefix = format!("kiln: vm={vm} ");
    lines(console)
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

#[test]
fn two_vms_reach_their_markers_and_the_appliance_powers_off() {
    require_qemu();
    let started = Instant::now();
    let dir = images::scratch("pid1/two-vms");
    let out = dir.join("two-vms");
    let m = images::build(&root().join("images/two-vms.toml"), &out);
    assert_eq!(m["vms"][0]["name"], "hello", "{m}");
    assert_eq!(m["vms"][1]["name"], "linux", "{m}");
    let run = images::run(&out, Duration::from_secs(400));
    powered_off(&run);
    for line in [
        "[hello] hello: exit 0",
        "kiln: vm=hello state=exited code=0",
        "[linux] guest-init: cpus online 2",
        "kiln: vm=linux state=exited code=0",
        "kiln: appliance done ok=2 failed=0",
    ] {
        assert!(run.has_line(line), "no `{line}`:\n{}", run.output);
    }
    assert!(
        run.lines()
            .any(|l| l.starts_with("[linux] guest-init: hello from Linux ")),
        "{}",
        run.output
    );
    // Side by side: linux started before hello ended.
    let at = |line: &str| {
        run.lines()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("no `{line}`:\n{}", run.output))
    };
    assert!(
        at("kiln: vm=linux state=starting") < at("kiln: vm=hello state=exited code=0"),
        "the VMs ran one after the other:\n{}",
        run.output
    );
    // And `kiln test` passes both on that console, each by its own
    // [test] expectations.
    let log = images::write(&dir, "console.log", &run.output);
    let replay = format!("--target=replay:{}", log.display());
    let t = images::test(&out, &[&replay], Duration::from_secs(60));
    assert_eq!(t.code(), Some(0), "{}", t.run.output);
    assert!(
        t.run.output.contains("2 passed, 0 failed, 0 errors"),
        "{}",
        t.run.output
    );
    report("two VMs (build + boot)", started);
}

#[test]
fn a_failing_guest_is_restarted_as_its_policy_says_and_counted() {
    require_qemu();
    let started = Instant::now();
    let dir = images::scratch("pid1/restart");
    let restart = "[vm.restart]\npolicy = \"on-failure\"\nmax = 2\nbackoff = \"100ms\"\n";
    let text = image(
        "restart",
        "",
        &format!(
            "{}{}",
            hello_vm("flaky", 3, restart),
            hello_vm("steady", 0, restart)
        ),
    );
    let out = dir.join("out");
    images::build(&images::write(&dir, "restart.toml", &text), &out);
    let run = images::run(&out, BOOT);
    powered_off(&run);
    assert_eq!(
        states(&run.output, "flaky"),
        [
            "state=starting",
            "state=running",
            "state=exited code=3",
            "state=restarting reason=attempt 1 of 2 in 100ms",
            "state=starting",
            "state=running",
            "state=exited code=3",
            "state=restarting reason=attempt 2 of 2 in 200ms",
            "state=starting",
            "state=running",
            "state=exited code=3",
        ],
        "{}",
        run.output
    );
    // on-failure: a VM that exits 0 is not restarted.
    assert_eq!(
        states(&run.output, "steady"),
        ["state=starting", "state=running", "state=exited code=0"],
        "{}",
        run.output
    );
    assert!(
        run.has_line("kiln: appliance done ok=1 failed=1"),
        "{}",
        run.output
    );
    report("restart policy (build + boot)", started);
}

/// Where `needle` starts in `text`, as a 1-based line:column.
fn line_col(text: &str, needle: &str) -> String {
    let at = text.find(needle).expect("needle in text");
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{line}:{col}")
}

#[test]
fn a_bad_appliance_config_is_reported_and_the_box_powers_off() {
    require_qemu();
    let started = Instant::now();
    let dir = images::scratch("pid1/bad-config");
    let text = image("bad-config", "", &hello_vm("hello", 0, ""));
    let good = dir.join("good");
    images::build(&images::write(&dir, "bad-config.toml", &text), &good);
    // The same image with a misspelt key in its appliance config.
    let bad = dir.join("bad");
    let mut at = String::new();
    images::patch_initramfs(&good, &bad, "etc/kiln/appliance.toml", |toml| {
        at = line_col(toml, "hugepages = false");
        toml.replacen("hugepages = false", "hugepage = false", 1)
    });
    let run = images::run(&bad, BOOT);
    powered_off(&run);
    let error = format!("kiln: error: /etc/kiln/appliance.toml:{at}: key `vm[0].hugepage`: ");
    assert!(
        run.lines()
            .any(|l| l.starts_with(&error) && l.contains("unknown key")),
        "no `{error}... unknown key` line:\n{}",
        run.output
    );
    assert!(
        run.has_line("kiln: error: the appliance config is unusable; powering off"),
        "{}",
        run.output
    );
    assert!(!run.output.contains("state=starting"), "{}", run.output);
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(1),
        "kiln run exits 1: the appliance powered off without its done line"
    );
    report("bad appliance config (build + boot)", started);
}

#[test]
fn a_device_in_a_group_that_cannot_be_assigned_is_refused_naming_the_group() {
    require_qemu();
    let started = Instant::now();
    let dir = images::scratch("pid1/group");
    // A PCI serial port at 00:1f.4 joins the ICH9 functions' IOMMU group,
    // and the host's 8250 driver takes it: 00:1f.2 (SATA) cannot go to a
    // VM without it.
    let text = image(
        "group",
        " intel_iommu=on",
        &format!(
            "[target]\ndevices = [\"pci-serial,bus=pcie.0,addr=1f.4\"]\n{}[[vm.pci]]\ndevice = \"00:1f.2\"\n{}",
            hello_vm("sata", 0, ""),
            hello_vm("plain", 0, "")
        ),
    );
    let out = dir.join("out");
    let m = images::build(&images::write(&dir, "group.toml", &text), &out);
    let modules = m["modules"].to_string();
    assert!(modules.contains("\"vfio_pci\""), "{modules}");
    let run = images::run(&out, BOOT);
    powered_off(&run);
    let refusal = run
        .lines()
        .find(|l| l.starts_with("kiln: vm=sata state=failed reason="))
        .unwrap_or_else(|| panic!("sata was not refused:\n{}", run.output));
    for part in [
        "reason=IOMMU group ",
        " of 0000:00:1f.2 cannot be assigned",
        "0000:00:1f.4 (serial) is still bound to a host driver",
        "Its members: 0000:00:1f.0 8086:2918 driver=none, 0000:00:1f.2 8086:2922",
        "0000:00:1f.4 1b36:0002 driver=serial",
        "bind_group = true",
    ] {
        assert!(refusal.contains(part), "`{part}` missing from:\n{refusal}");
    }
    assert_eq!(
        states(&run.output, "sata").len(),
        1,
        "a refused VM must not start:\n{}",
        run.output
    );
    assert!(
        run.has_line("kiln: vm=plain state=exited code=0"),
        "{}",
        run.output
    );
    assert!(
        run.has_line("kiln: appliance done ok=1 failed=1"),
        "{}",
        run.output
    );
    report("non-viable IOMMU group (build + boot)", started);
}

#[test]
fn a_module_the_kernel_refuses_and_the_missing_dev_kvm_are_named() {
    require_qemu();
    let started = Instant::now();
    let dir = images::scratch("pid1/no-kvm");
    // kvm_amd's `nested` is an int: the kernel refuses the module, so
    // /dev/kvm never appears.
    let text = image(
        "no-kvm",
        "",
        &format!(
            "[modules]\nload = [\"kvm-amd\", \"kvm-intel\"]\nparams = {{ kvm_amd = \"nested=maybe\" }}\n{}",
            hello_vm("hello", 0, "")
        ),
    );
    let out = dir.join("out");
    images::build(&images::write(&dir, "no-kvm.toml", &text), &out);
    let run = images::run(&out, BOOT);
    powered_off(&run);
    assert!(
        run.has_line(
            "kiln: error: module kvm_amd: the kernel refused to load it with parameters \
             \"nested=maybe\": EINVAL: Invalid argument; check modules.params"
        ),
        "{}",
        run.output
    );
    let failed = run
        .lines()
        .find(|l| l.starts_with("kiln: vm=hello state=failed"))
        .unwrap_or_else(|| panic!("hello did not fail:\n{}", run.output));
    assert!(
        failed.starts_with(
            "kiln: vm=hello state=failed code=196 reason=The hypervisor device /dev/kvm \
             does not exist; is the kvm module loaded?"
        ),
        "{failed}"
    );
    assert!(
        run.has_line("kiln: appliance done ok=0 failed=1"),
        "{}",
        run.output
    );
    report("refused module, no /dev/kvm (build + boot)", started);
}

/// `kiln build` refuses a module name the kernel does not have, pointing
/// at it in the image and suggesting the near ones (no boot).
#[test]
fn kiln_build_refuses_an_unknown_module_with_suggestions() {
    let dir = images::scratch("pid1/unknown-module");
    let text = image(
        "unknown-module",
        "",
        &format!(
            "[modules]\nload = [\"kvm\", \"kvm-amdd\"]\n{}",
            hello_vm("hello", 0, "")
        ),
    );
    let file = images::write(&dir, "unknown-module.toml", &text);
    let o = run_kiln(&dir, &["build", "unknown-module.toml", "-o", "out"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    let at = line_col(&text, "\"kvm-amdd\"");
    assert!(
        stderr.contains(&format!(
            "unknown-module.toml:{at}: key `modules.load[1]`: Module \"kvm-amdd\" does not exist in this kernel; did you mean kvm_amd"
        )),
        "{stderr}"
    );
    assert!(
        !dir.join("out").exists(),
        "a refused build wrote {}",
        file.display()
    );
}

/// A Linux guest whose VMM may use less memory than the guest has RAM: the
/// guest touches more than that while its kernel unpacks (and `memtest=1`
/// writes all of it), so the kernel's OOM killer ends the VMM inside its
/// cgroup. `extra` goes after [vm.boot].
fn hog_vm(name: &str, extra: &str) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\nmemory = \"256M\"\n[vm.boot]\nkernel = \"debian:linux-image-cloud-amd64\"\n\
         initrd = {{ init = \"cargo:kiln-guest-init\" }}\ncmdline = \"console=ttyS0 reboot=k panic=-1 quiet memtest=1\"\n{extra}"
    )
}

#[test]
fn a_vmm_over_its_memory_limit_is_oom_killed_and_restarted_and_backoff_is_capped() {
    require_qemu();
    let started = Instant::now();
    let dir = images::scratch("pid1/limits");
    let text = image(
        "limits",
        "",
        &format!(
            "{}{}{}",
            hog_vm(
                "hog",
                "[vm.limits]\nmemory = \"40M\"\n[vm.restart]\npolicy = \"on-failure\"\nmax = 1\nbackoff = \"100ms\"\n"
            ),
            hello_vm(
                "flaky",
                3,
                "[vm.restart]\npolicy = \"on-failure\"\nmax = 3\nbackoff = \"100ms\"\nmax_backoff = \"250ms\"\n"
            ),
            hello_vm("steady", 0, "")
        ),
    );
    let out = dir.join("out");
    images::build(&images::write(&dir, "limits.toml", &text), &out);
    let run = images::run(&out, Duration::from_secs(400));
    powered_off(&run);
    // PID 1 confined the VMM, and the kernel's OOM killer ended it there.
    assert!(
        !run.output.contains("run without memory and process limits"),
        "{}",
        run.output
    );
    let oom = "state=failed code=137 reason=out of memory: the VMM reached its memory limit \
               of 40M (cgroup memory.max) and the kernel's OOM killer ended it; \
               give it more with `limits.memory`";
    assert_eq!(
        states(&run.output, "hog"),
        [
            "state=starting",
            "state=running",
            oom,
            "state=restarting reason=attempt 1 of 1 in 100ms",
            "state=starting",
            "state=running",
            oom,
        ],
        "{}",
        run.output
    );
    // The delay doubles up to max_backoff.
    let restarts: Vec<&str> = states(&run.output, "flaky")
        .into_iter()
        .filter(|s| s.starts_with("state=restarting"))
        .collect();
    assert_eq!(
        restarts,
        [
            "state=restarting reason=attempt 1 of 3 in 100ms",
            "state=restarting reason=attempt 2 of 3 in 200ms",
            "state=restarting reason=attempt 3 of 3 in 250ms",
        ],
        "{}",
        run.output
    );
    // The sibling ran to its end, and PID 1 kept going to the done line,
    // with its own peak memory just before it.
    assert!(
        run.has_line("kiln: vm=steady state=exited code=0"),
        "{}",
        run.output
    );
    let lines: Vec<&str> = run.lines().collect();
    let done = lines
        .iter()
        .position(|l| *l == "kiln: appliance done ok=1 failed=2")
        .unwrap_or_else(|| panic!("no done line:\n{}", run.output));
    let peak = lines[..done]
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("kiln: init memory peak_kib="))
        .unwrap_or_else(|| panic!("no peak memory line before done:\n{}", run.output));
    let kib: u64 = peak.parse().unwrap();
    assert!(kib > 0 && kib < 64 * 1024, "PID 1 peaked at {kib} KiB");
    report("OOM kill in a cgroup, backoff cap (build + boot)", started);
}
