//! The guard against the VMM doing more work per boot (issue #17): one
//! appliance boots the hello unikernel and the Debian cloud kernel side by
//! side with `KILN_VMM_STATS=1`, and the VMM's own numbers must stay within
//! generous bounds: the VM exits each guest causes, the Linux guest's VMM
//! setup relative to hello's in the same run (both set up at once, under the
//! same load, so the ratio holds on a busy machine where absolute times do
//! not), and the VMM's peak memory beyond guest RAM. The numbers this run
//! measured are printed; docs/benchmarks.md says where the bounds come from.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::{images, lines, require_qemu};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The fields of the `kiln-runtime: stats vm=<name> ...` line of each VM.
fn stats(console: &str) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut all = BTreeMap::new();
    for line in lines(console) {
        let Some(at) = line.find("kiln-runtime: stats vm=") else {
            continue;
        };
        let mut fields = BTreeMap::new();
        let mut name = String::new();
        for word in line[at..].split_whitespace() {
            let Some((k, v)) = word.split_once('=') else {
                continue;
            };
            if k == "vm" {
                name = v.to_string();
            } else if let Ok(n) = v.parse() {
                fields.insert(k.to_string(), n);
            }
        }
        all.insert(name, fields);
    }
    all
}

/// Bounds, about twice what this target measured when the guard was
/// written (docs/benchmarks.md, "Regression guard"); the peak memory bound
/// is issue #17's goal, 3 MiB (2.1 MiB measured; 4.1 MiB with 2 MiB vCPU
/// stacks on huge pages). hello's is about 1.5 times its 137 exits (its
/// console bytes queued in KVM's coalesced ring, 329 of 330): losing the
/// coalesced zone (an exit per console byte again, 466 exits) or its FIFO
/// bursts (a line status read per byte, about 460) fails it.
const LINUX_EXITS_MAX: f64 = 1000.0;
const HELLO_EXITS_MAX: f64 = 200.0;
const LINUX_UNCLAIMED_PIO_MAX: f64 = 200.0;
const SETUP_RATIO_MAX: f64 = 5.0;
const VMM_PEAK_KIB_MAX: f64 = 3072.0;

#[test]
fn the_vmm_does_no_more_work_per_boot_than_it_did() {
    require_qemu();
    let started = Instant::now();
    let dir = images::scratch("vmm/guard");
    let image = images::write(
        &dir,
        "guard.toml",
        r#"name = "guard"
[kernel]
source = "debian:linux-image-cloud-amd64"
cmdline = "console=ttyS0 panic=-1 quiet KILN_VMM_STATS=1"
[[vm]]
name = "hello"
memory = "64M"
[vm.boot]
kernel = "cargo:kiln-hello"
cmdline = "hello.exit=0"
[[vm]]
name = "linux"
memory = "128M"
[vm.boot]
kernel = "debian:linux-image-cloud-amd64"
initrd = { init = "cargo:kiln-guest-init" }
cmdline = "console=ttyS0 reboot=k panic=-1 quiet loglevel=1"
"#,
    );
    let out = dir.join("out");
    images::build(&image, &out);
    let run = images::run(&out, Duration::from_secs(400));
    assert!(
        run.has_line("kiln: appliance done ok=2 failed=0"),
        "both VMs must end well:\n{}",
        run.output
    );
    let all = stats(&run.output);
    let (Some(hello), Some(linux)) = (all.get("hello"), all.get("linux")) else {
        panic!("a VM printed no stats line:\n{}", run.output);
    };
    let f = |m: &BTreeMap<String, f64>, k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("no {k} in the stats line:\n{}", run.output))
    };
    eprintln!("vmm guard: hello {hello:?}");
    eprintln!("vmm guard: linux {linux:?}");
    let checks = [
        ("linux exits", f(linux, "exits"), LINUX_EXITS_MAX),
        ("hello exits", f(hello, "exits"), HELLO_EXITS_MAX),
        (
            "linux unclaimed port accesses",
            f(linux, "unclaimed_pio"),
            LINUX_UNCLAIMED_PIO_MAX,
        ),
        (
            "linux setup / hello setup",
            f(linux, "setup_ms") / f(hello, "setup_ms").max(1.0),
            SETUP_RATIO_MAX,
        ),
        (
            "linux VMM peak KiB",
            f(linux, "vmm_peak_kib"),
            VMM_PEAK_KIB_MAX,
        ),
        (
            "hello VMM peak KiB",
            f(hello, "vmm_peak_kib"),
            VMM_PEAK_KIB_MAX,
        ),
    ];
    for (what, value, max) in checks {
        assert!(
            value <= max,
            "{what} = {value:.2}, over its bound {max}: the VMM does more work per boot than it did\n{}",
            run.output
        );
    }
    eprintln!(
        "vmm guard (build + boot): {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn stats_lines_are_read_per_vm() {
    let console = "kiln: vm=a state=running\r\nkiln-runtime: stats vm=a setup_ms=12 exits=7 vmm_peak_kib=900 notes_held=0\r\n[b] x\r\nkiln-runtime: stats vm=b setup_ms=30 exits=70\r\n";
    let s = stats(console);
    assert_eq!(s["a"]["setup_ms"], 12.0);
    assert_eq!(s["a"]["vmm_peak_kib"], 900.0);
    assert_eq!(s["b"]["exits"], 70.0);
    assert_eq!(s.len(), 2);
}
