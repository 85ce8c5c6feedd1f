//! The VMM end to end on the emulated target (QEMU TCG q35 with AMD-V),
//! through images: exit codes of the hello unikernel reach the status
//! lines, and the Debian cloud kernel boots as a guest to kiln-guest-init on
//! two vCPUs. (images/hello.toml itself is booted by image.rs and harness.rs.)

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::images::{self, Tested};
use kiln_tests::{lines, require_qemu, root};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The slice of a JUnit report for the testcase of VM `name`.
fn testcase<'a>(junit: &'a str, name: &str) -> &'a str {
    let start = junit
        .find(&format!(" name=\"{name}\""))
        .unwrap_or_else(|| panic!("no testcase for {name}:\n{junit}"));
    let rest = &junit[start..];
    &rest[..rest.find("</testcase>").unwrap_or(rest.len())]
}

fn report(what: &str, started: Instant) {
    eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn a_guest_exit_code_reaches_its_status_line_and_the_verdict() {
    require_qemu();
    let started = Instant::now();
    let dir = images::scratch("vmm/exit-codes");
    // Two hello VMs from this workspace's kiln-hello: one exits 0, one 7.
    let image = images::write(
        &dir,
        "exit-codes.toml",
        r#"name = "exit-codes"
[kernel]
source = "debian:linux-image-cloud-amd64"
cmdline = "console=ttyS0 panic=-1 quiet"
[[vm]]
name = "zero"
memory = "32M"
[vm.boot]
kernel = "cargo:kiln-hello"
cmdline = "hello.exit=0"
[vm.test]
expect = ["hello: exit 0"]
timeout = "60s"
[[vm]]
name = "seven"
memory = "32M"
[vm.boot]
kernel = "cargo:kiln-hello"
cmdline = "hello.exit=7"
[vm.test]
timeout = "60s"
"#,
    );
    let out = dir.join("out");
    images::build(&image, &out);
    let t = images::test(&out, &[], Duration::from_secs(240));
    let console: Vec<&str> = lines(&t.console).collect();
    assert_eq!(
        t.code(),
        Some(1),
        "a failing VM makes kiln test fail:\n{}",
        t.run.output
    );
    for line in [
        "[seven] hello: exit 7",
        "kiln: vm=seven state=exited code=7",
        "kiln: vm=zero state=exited code=0",
        "kiln: appliance done ok=1 failed=1",
    ] {
        assert!(
            console.contains(&line),
            "no `{line}` on the console:\n{}",
            t.console
        );
    }
    let seven = testcase(&t.junit, "seven");
    assert!(
        seven.contains(r#"<failure message="it exited with code 7" type="exit-code">"#),
        "{seven}"
    );
    let zero = testcase(&t.junit, "zero");
    assert!(
        !zero.contains("<failure") && !zero.contains("<error"),
        "{zero}"
    );
    report("exit codes (build + boot)", started);
}

/// images/linux-guest.toml, built once for the tests of this file.
fn linux_guest() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = images::scratch("vmm/linux-guest");
        let out = dir.join("linux-guest");
        let m = images::build(&root().join("images/linux-guest.toml"), &out);
        assert_eq!(m["vms"][0]["name"], "linux", "{m}");
        out
    })
}

#[test]
fn the_linux_guest_boots_to_its_init_on_two_vcpus() {
    require_qemu();
    let started = Instant::now();
    let out = linux_guest();
    let t: Tested = images::test(out, &[], Duration::from_secs(400));
    assert_eq!(t.code(), Some(0), "{}", t.run.output);
    assert!(
        t.run.output.contains("1 passed, 0 failed, 0 errors"),
        "{}",
        t.run.output
    );
    let console: Vec<&str> = lines(&t.console).collect();
    assert!(
        console
            .iter()
            .any(|l| l.starts_with("[linux] guest-init: hello from Linux 6.")),
        "kiln-guest-init never ran:\n{}",
        t.console
    );
    // configs/linux-guest.toml asks for 2 vCPUs; both came up in the guest.
    for line in [
        "[linux] guest-init: cpus online 2",
        "[linux] guest-init: exit 0",
        "kiln: vm=linux state=exited code=0",
        "kiln: appliance done ok=1 failed=0",
    ] {
        assert!(
            console.contains(&line),
            "no `{line}` on the console:\n{}",
            t.console
        );
    }
    assert!(!t.console.contains("Kernel panic"), "{}", t.console);
    report("linux guest, 2 vCPUs (boot)", started);
}

/// What the nested Debian kernel prints early on this emulated target
/// without `quiet` (recorded from a boot): a WARN with a backtrace, harmless.
const XSAVE_WARNING: &str = "\
[    2.323897] ------------[ cut here ]------------
[    2.323897] XSAVE consistency problem: size 2696 != kernel_size 576
[    2.323897] WARNING: CPU: 0 PID: 0 at arch/x86/kernel/fpu/xstate.c:606 fpu__init_system_xstate+0x85a/0xb19
[    2.323897] Modules linked in:
[    2.323897] CPU: 0 PID: 0 Comm: swapper/0 Not tainted 6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[    2.323897] RIP: 0010:fpu__init_system_xstate+0x85a/0xb19
[    2.323897] Call Trace:
[    2.323897]  <TASK>
[    2.323897]  fpu__init_system+0x15c/0x18b
[    2.323897]  start_kernel+0x665/0x6fc
[    2.323897]  </TASK>
[    2.323897] ---[ end trace 0000000000000000 ]---";

/// The console of a good linux-guest run with `extra` guest lines in it.
fn recorded_console(extra: &str) -> String {
    let guest: String = extra
        .lines()
        .chain([
            "guest-init: hello from Linux 6.1.0-56-cloud-amd64",
            "guest-init: cpus online 2",
            "guest-init: exit 0",
        ])
        .map(|l| format!("[linux] {l}\r\n"))
        .collect();
    format!(
        "kiln: vm=linux state=starting\r\nkiln: vm=linux state=running\r\n{guest}\
         kiln: vm=linux state=exited code=0\r\n\r\nkiln: appliance done ok=1 failed=0\r\n"
    )
}

/// configs/linux-guest.toml's `fail` patterns catch a guest crash but not
/// the XSAVE warning; judged from recorded consoles (no boot).
#[test]
fn the_linux_guest_fail_patterns_ignore_the_xsave_warning() {
    let out = linux_guest();
    let dir = images::scratch("vmm/replay");
    // `kiln test` reads the VMs and their [test] tables from the manifest
    // of the built image, then judges the recorded console.
    let replay = |name: &str, console: String| {
        let image = dir.join(name);
        std::fs::create_dir_all(&image).expect("mkdir");
        std::fs::copy(out.join("manifest.json"), image.join("manifest.json"))
            .expect("copy the manifest");
        let log = images::write(&dir, &format!("{name}.log"), &console);
        let target = format!("--target=replay:{}", log.display());
        images::test(&image, &[&target], Duration::from_secs(60))
            .run
            .output
    };
    let warned = replay("warned", recorded_console(XSAVE_WARNING));
    assert!(
        warned.contains("1 passed, 0 failed, 0 errors"),
        "the XSAVE warning failed the guest:\n{warned}"
    );
    let crashed = replay(
        "crashed",
        recorded_console(
            "[    3.100000] BUG: kernel NULL pointer dereference, address: 0000000000000008",
        ),
    );
    assert!(
        crashed.contains("0 passed, 1 failed, 0 errors") && crashed.contains("BUG:"),
        "a guest BUG passed:\n{crashed}"
    );
}
