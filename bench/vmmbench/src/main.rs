//! kiln-vmmbench: `/bench/init` (rdinit) of bench/vmm.sh's benchmark
//! initramfs, which is a kiln appliance's initramfs with QEMU and this
//! harness added. It brings the box up as kiln's PID 1 would (mounts,
//! the appliance's modules, hugetlbfs), then boots the appliance's Linux
//! guest with kiln's VMM and with QEMU's `microvm` machine in interleaved
//! pairs, and prints every run and a Markdown table of medians and ratios
//! (docs/benchmarks.md). It powers the machine off at the end.

mod measure;
mod peer;
mod report;
mod stats;

use kiln_runtime::init::{modules, mounts};
use kiln_schema::config::{self, ApplianceConfig, VmConfig, APPLIANCE_PATH};
use measure::{Markers, Sample};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// kiln's VMM in the benchmark initramfs (the appliance's own /init).
const KILN: &str = "/init";
/// An earlier kiln VMM to compare with, when bench/vmm.sh put one in.
const KILN_BEFORE: &str = "/bench/kiln-runtime.before";
/// Where guest RAM of both VMMs comes from, so RSS is the VMM's own.
const HUGETLBFS: &str = "/dev/hugepages";
/// The VM configs this writes for kiln's VMM.
const RUN_DIR: &str = "/run/vmmbench";
/// No single boot takes this long, even on the emulated target.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// The Linux guests' markers: kiln-guest-init's first and last lines.
const LINUX: Markers = Markers {
    setup: None,
    init: "hello from Linux",
    last: Some("exit 0"),
};

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("the appliance config is unusable")]
    Config(#[from] config::ConfigError),
    #[error("the appliance has no VM named {0:?}; bench/vmm.sh builds one")]
    NoVm(&'static str),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write a VM config")]
    Toml(#[from] toml::ser::Error),
    #[error(transparent)]
    Measure(#[from] measure::MeasureError),
}

fn main() {
    mounts::mount_early();
    if let Err(e) = run() {
        println!("vmmbench: error: {}", kiln_abi::error::Chain::new(&e));
    }
    println!("vmmbench: done");
    nix::unistd::sync();
    // Leaving PID 1 would panic the kernel; power off instead.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn run() -> Result<(), BenchError> {
    let (appliance, _): (ApplianceConfig, String) = config::load(Path::new(APPLIANCE_PATH))?;
    if let Err(e) = modules::load_all(&appliance) {
        println!("vmmbench: error: {}", kiln_abi::error::Chain::new(&e));
    }
    mount_hugetlbfs();
    let pairs = cmdline_number("vmmbench.pairs=").unwrap_or(3);
    let vm = |name: &'static str| {
        appliance
            .vms
            .iter()
            .find(|v| v.name.as_str() == name)
            .cloned()
            .ok_or(BenchError::NoVm(name))
    };
    let settings = [("default", vm("linux")?), ("plain", vm("linux-plain")?)];
    let hello = vm("hello")?;
    std::fs::create_dir_all(RUN_DIR).map_err(|source| BenchError::Write {
        path: RUN_DIR.into(),
        source,
    })?;
    let mut kilns = vec![("kiln", KILN)];
    if Path::new(KILN_BEFORE).is_file() {
        kilns.push(("kiln-before", KILN_BEFORE));
    }
    println!(
        "vmmbench: {pairs} pairs; guest cmdlines: default {:?}, plain {:?}",
        settings[0].1.boot.cmdline, settings[1].1.boot.cmdline
    );

    let mut results: BTreeMap<(String, String), Vec<Sample>> = BTreeMap::new();
    for pair in 0..pairs {
        for (setting, cfg) in &settings {
            let mut order: Vec<(&str, Command, Markers)> = Vec::new();
            for (name, exe) in &kilns {
                order.push((name, kiln_command(exe, cfg)?, LINUX));
            }
            let qemu = Markers {
                setup: Some(peer::RUNNING),
                ..LINUX
            };
            // QEMU gets the bzImage (linux-plain's kernel) in both settings:
            // its microvm does not boot the PVH vmlinux kiln's `linux` has
            // on this nested target (docs/benchmarks.md).
            let mut peer_cfg = cfg.clone();
            peer_cfg.boot.kernel = settings[1].1.boot.kernel.clone();
            order.push(("qemu", peer::command(&peer_cfg), qemu));
            // Interleaved: the order turns every pair, so neither VMM
            // always runs first after the other's teardown.
            let turn = pair % order.len();
            order.rotate_left(turn);
            for (name, cmd, markers) in order {
                let s = measure::run(cmd, markers, RUN_LIMIT)?;
                print_run(name, setting, pair, &s);
                results
                    .entry((setting.to_string(), name.to_string()))
                    .or_default()
                    .push(s);
            }
        }
        let s = measure::run(kiln_command(KILN, &hello)?, HELLO, RUN_LIMIT)?;
        print_run("kiln", "hello", pair, &s);
        results
            .entry(("hello".into(), "kiln".into()))
            .or_default()
            .push(s);
    }
    report::print(&results);
    Ok(())
}

/// The hello unikernel's markers (images/hello): its first line.
const HELLO: Markers = Markers {
    setup: None,
    init: "hello: kiln hello unikernel",
    last: None,
};

fn kiln_command(exe: &str, cfg: &VmConfig) -> Result<Command, BenchError> {
    let path = Path::new(RUN_DIR).join(format!("{}.toml", cfg.name.as_str()));
    let text = toml::to_string(cfg)?;
    std::fs::write(&path, text).map_err(|source| BenchError::Write {
        path: path.clone(),
        source,
    })?;
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg(path).env("KILN_VMM_STATS", "1");
    Ok(cmd)
}

fn print_run(vmm: &str, setting: &str, pair: usize, s: &Sample) {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    println!(
        "vmmbench: run setting={setting} vmm={vmm} pair={pair} code={} setup_ms={} init_ms={} exit_ms={:.0} teardown_ms={} peak_kib={} own_peak_kib={} exits={}",
        s.code().map_or("killed".into(), |c| c.to_string()),
        f(s.setup_ms.or_else(|| s.field("kiln-runtime: stats", "setup_ms"))),
        f(s.init_ms),
        s.exit_ms,
        f(s.teardown_ms()),
        s.peak_kib,
        f(s.field("kiln-runtime: stats", "vmm_peak_kib")),
        f(s.field("kiln-runtime: stats", "exits")),
    );
    if s.init_ms.is_none() {
        println!("vmmbench: that run did not boot; its output:");
        println!("{}", String::from_utf8_lossy(&s.output));
    }
}

fn mount_hugetlbfs() {
    let _ = std::fs::create_dir_all(HUGETLBFS);
    if let Err(e) = nix::mount::mount(
        Some("hugetlbfs"),
        HUGETLBFS,
        Some("hugetlbfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    ) {
        println!("vmmbench: error: cannot mount hugetlbfs on {HUGETLBFS}: {e}");
    }
}

/// A `key=<n>` word of the kernel command line.
fn cmdline_number(key: &str) -> Option<usize> {
    std::fs::read_to_string("/proc/cmdline")
        .ok()?
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.parse().ok())
}
