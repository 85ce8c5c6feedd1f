//! The VMM's sandbox on the emulated target: every thread of every VMM
//! runs under its seccomp filter (a hello VM, a Linux VM and a VM with a
//! device assigned through VFIO, as PID 1's sandbox report shows), and a
//! VMM that makes a forbidden system call is ended and reported with
//! `reason=seccomp` and the call's number while its sibling passes.
//! docs/runtime.md, "Security model".

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_abi::sandbox;
use kiln_tests::engines::testcases;
use kiln_tests::{images, lines, require_qemu, root};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// `kiln test`'s bound for these images (a Linux guest boots in 1-3 min on TCG).
const TEST_TIMEOUT: Duration = Duration::from_secs(900);

/// The sandbox report PID 1 printed for `vm` (the first one).
fn report<'a>(console: &'a str, vm: &str) -> &'a str {
    lines(console)
        .find(|l| sandbox::report_vm(l) == Some(vm))
        .unwrap_or_else(|| panic!("no sandbox report for {vm}:\n{console}"))
}

#[test]
fn every_thread_of_every_vmm_is_seccomp_filtered() {
    require_qemu();
    let started = Instant::now();
    let dir = images::scratch("sandbox/filtered");
    let out = dir.join("sandbox");
    images::build(&root().join("images/sandbox.toml"), &out);
    let t = images::test(&out, &[], TEST_TIMEOUT);
    assert_eq!(t.code(), Some(0), "{}\n{}", t.run.output, t.console);
    // vCPUs + the main thread, every one in seccomp mode 2 (filter).
    for (vm, threads) in [("hello", "2"), ("linux", "3"), ("edu", "2")] {
        let line = report(&t.console, vm);
        assert_eq!(sandbox::field(line, "seccomp"), Some("2"), "{line}");
        assert_eq!(sandbox::field(line, "threads"), Some(threads), "{line}");
    }
    assert!(!t.console.contains("seccomp: "), "{}", t.console);
    eprintln!(
        "hello, Linux and edu VMs filtered (build + boot): {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The runtime built with its `dev-hooks` feature (the guest-triggered
/// forbidden call), in its own profile folder.
fn dev_runtime() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .current_dir(root())
        .args(["build", "--quiet", "--profile", "runtime-dev"])
        .args(["-p", "kiln-runtime", "--features", "dev-hooks"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the dev-hooks runtime failed");
    let path = root().join("target/x86_64-unknown-linux-gnu/runtime-dev/kiln-runtime");
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

#[test]
fn a_forbidden_system_call_ends_its_vmm_alone_and_is_named() {
    require_qemu();
    let started = Instant::now();
    let runtime = dev_runtime();
    let dir = images::scratch("sandbox/trigger");
    let vm = |name: &str, cmdline: &str, expect: &str| {
        format!(
            "[[vm]]\nname = \"{name}\"\nmemory = \"32M\"\n[vm.boot]\nkernel = \"cargo:kiln-hello\"\n\
             cmdline = \"{cmdline}\"\n[vm.test]\nexpect = [\"{expect}\"]\ntimeout = \"120s\"\n"
        )
    };
    let image = images::write(
        &dir,
        "trigger.toml",
        &format!(
            "name = \"trigger\"\n[kernel]\nsource = \"debian:linux-image-cloud-amd64\"\n\
             cmdline = \"console=ttyS0 panic=-1 quiet\"\n[runtime]\nbinary = {:?}\n{}{}",
            runtime.display().to_string(),
            vm("victim", "hostile=seccomp", "hostile: mode Seccomp"),
            vm("sibling", "hello.exit=0", "hello: exit 0"),
        ),
    );
    let out = dir.join("trigger");
    images::build(&image, &out);
    let t = images::test(&out, &[], TEST_TIMEOUT);
    let all = format!("{}\n{}", t.run.output, t.console);
    assert_eq!(t.code(), Some(1), "{all}");
    let cases = testcases(&t.junit);
    let outcome = |name: &str| {
        cases
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no verdict for {name}:\n{}", t.junit))
            .outcome
            .clone()
    };
    assert_eq!(outcome("sibling"), "pass", "{all}");
    // socket(2) is system call 41 on x86-64.
    let reason =
        "seccomp: the VMM's vCPU 0 thread made system call 41, which its seccomp filter forbids";
    let victim = outcome("victim");
    assert!(
        victim.starts_with("failure vm-failed: ") && victim.contains(reason),
        "{victim}\n{all}"
    );
    assert!(
        t.console
            .lines()
            .any(|l| l.trim_end()
                == format!("kiln: vm=victim state=failed code=199 reason={reason}")),
        "{all}"
    );
    assert!(!t.console.contains("hostile: the VMM survived"), "{all}");
    eprintln!(
        "forbidden call ended its VMM (build + boot): {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
