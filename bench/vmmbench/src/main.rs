//! kiln-vmmbench: `/bench/init` (rdinit) of bench/vmm.sh's benchmark
//! initramfs, which is a kiln appliance's initramfs with QEMU and this
//! harness added. It brings the box up as kiln's PID 1 would (mounts,
//! the appliance's modules, hugetlbfs), then boots the appliance's Linux
//! guest with kiln's VMM and with QEMU's `microvm` machine in interleaved
//! pairs, and prints every run and a Markdown table of medians and ratios
//! (docs/benchmarks.md). With `vmmbench.mode=prefault` it instead boots
//! kiln with and without prefaulted guest RAM. A boot past its deadline is
//! killed and recorded as failed; the run goes on. It powers the machine
//! off at the end, whatever happened.

mod measure;
mod peer;
mod report;
mod stats;

use kiln_runtime::init::{modules, mounts};
use kiln_runtime::vm::memory::PREFAULT_ENV;
use kiln_schema::config::{self, ApplianceConfig, VmConfig, APPLIANCE_PATH};
use measure::{Markers, Sample};
use report::{Phase, RatioRow, Results};
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
/// A boot's deadline (`vmmbench.deadline=` seconds overrides it): about six
/// times the slowest boot seen on the emulated target under heavy load
/// (QEMU's, 31 s). A boot past it is killed, recorded as failed and left
/// out of the ratios.
const DEADLINE_S: u64 = 180;

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

/// One boot of a pair: who boots, how, and what marks its phases.
struct Boot {
    setting: &'static str,
    vmm: &'static str,
    cmd: Command,
    markers: Markers,
}

fn run() -> Result<(), BenchError> {
    let (appliance, _): (ApplianceConfig, String) = config::load(Path::new(APPLIANCE_PATH))?;
    if let Err(e) = modules::load_all(&appliance) {
        println!("vmmbench: error: {}", kiln_abi::error::Chain::new(&e));
    }
    mount_hugetlbfs();
    let pairs = cmdline_number("vmmbench.pairs=").unwrap_or(3);
    let deadline = Duration::from_secs(
        cmdline_number("vmmbench.deadline=")
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(DEADLINE_S),
    );
    let prefault = cmdline_word("vmmbench.mode=prefault");
    let vm = |name: &'static str| {
        appliance
            .vms
            .iter()
            .find(|v| v.name.as_str() == name)
            .cloned()
            .ok_or(BenchError::NoVm(name))
    };
    let linux = vm("linux")?;
    let pvh = vm("linux-pvh")?;
    let plain = vm("linux-plain")?;
    let hello = vm("hello")?;
    std::fs::create_dir_all(RUN_DIR).map_err(|source| BenchError::Write {
        path: RUN_DIR.into(),
        source,
    })?;
    let before = Path::new(KILN_BEFORE).is_file();
    println!(
        "vmmbench: {pairs} pairs, {} s deadline per boot; guest cmdlines: default {:?}, plain {:?}",
        deadline.as_secs(),
        linux.boot.cmdline,
        plain.boot.cmdline
    );

    let mut results = Results::new();
    for pair in 0..pairs {
        let groups = if prefault {
            prefault_pair(&linux, &hello)?
        } else {
            peer_pair(&linux, &pvh, &plain, &hello, before)?
        };
        for mut group in groups {
            // Interleaved: the order turns every pair, so no VMM always
            // runs first after another's teardown.
            let turn = pair % group.len().max(1);
            group.rotate_left(turn);
            for b in group {
                let mut s = measure::run(b.cmd, b.markers, deadline)?;
                s.pair = pair;
                print_run(b.vmm, b.setting, &s);
                results
                    .entry((b.setting.to_string(), b.vmm.to_string()))
                    .or_default()
                    .push(s);
            }
        }
    }
    if prefault {
        report::print(&results, &prefault_ratios(), None);
    } else {
        report::print(&results, &peer_ratios(), Some(("default", "kiln")));
    }
    Ok(())
}

/// One pair of the side-by-side table. Settings: `default` is a `debian:`
/// guest as kiln boots it by default (the bzImage, kiln's fast-boot
/// command line) and `plain` the same with the command line as written,
/// each on kiln and on QEMU with the same kernel file; `pvh` is `default`
/// with `boot.pvh` (the vmlinux through PVH), on kiln alone (QEMU's
/// microvm does not boot the PVH vmlinux on this nested target,
/// docs/benchmarks.md); the earlier kiln boots `plain`, what kiln did
/// before. Then hello once.
fn peer_pair(
    linux: &VmConfig,
    pvh: &VmConfig,
    plain: &VmConfig,
    hello: &VmConfig,
    before: bool,
) -> Result<Vec<Vec<Boot>>, BenchError> {
    let kiln = |setting, cfg| -> Result<Boot, BenchError> {
        Ok(Boot {
            setting,
            vmm: "kiln",
            cmd: kiln_command(KILN, cfg)?,
            markers: LINUX,
        })
    };
    let qemu = |setting, cfg| Boot {
        setting,
        vmm: "qemu",
        cmd: peer::command(cfg),
        markers: Markers {
            setup: Some(peer::RUNNING),
            ..LINUX
        },
    };
    let mut groups = vec![
        vec![kiln("default", linux)?, qemu("default", linux)],
        vec![kiln("pvh", pvh)?],
    ];
    let mut group = vec![kiln("plain", plain)?, qemu("plain", plain)];
    if before {
        group.push(Boot {
            setting: "plain",
            vmm: "kiln-before",
            cmd: kiln_command(KILN_BEFORE, plain)?,
            markers: LINUX,
        });
    }
    groups.push(group);
    groups.push(vec![Boot {
        setting: "hello",
        vmm: "kiln",
        cmd: kiln_command(KILN, hello)?,
        markers: HELLO,
    }]);
    Ok(groups)
}

fn peer_ratios() -> Vec<RatioRow> {
    let row = |what: &str, a, b, phase, goal| RatioRow {
        what: what.to_string(),
        a,
        b,
        phase,
        goal,
    };
    vec![
        row(
            "kiln / QEMU microvm, start→/init, default cmdline",
            ("default", "kiln"),
            ("default", "qemu"),
            Phase::Init,
            Some(0.7),
        ),
        row(
            "kiln / QEMU microvm, start→/init, plain cmdline",
            ("plain", "kiln"),
            ("plain", "qemu"),
            Phase::Init,
            Some(0.7),
        ),
        row(
            "kiln, default cmdline / kiln before, plain cmdline (today), start→/init",
            ("default", "kiln"),
            ("plain", "kiln-before"),
            Phase::Init,
            Some(0.7),
        ),
        row(
            "kiln / kiln before, plain (the VMM's changes alone), start→/init",
            ("plain", "kiln"),
            ("plain", "kiln-before"),
            Phase::Init,
            None,
        ),
        row(
            "kiln, PVH vmlinux / bzImage, default cmdline, start→/init",
            ("pvh", "kiln"),
            ("default", "kiln"),
            Phase::Init,
            None,
        ),
        row(
            "kiln, default cmdline / plain cmdline, start→/init",
            ("default", "kiln"),
            ("plain", "kiln"),
            Phase::Init,
            None,
        ),
        row(
            "hello unikernel / Linux guest (default cmdline), start→exit",
            ("hello", "kiln"),
            ("default", "kiln"),
            Phase::Exit,
            Some(0.05),
        ),
        row(
            "hello unikernel / Linux guest (PVH vmlinux, default cmdline), start→exit",
            ("hello", "kiln"),
            ("pvh", "kiln"),
            Phase::Exit,
            None,
        ),
    ]
}

/// One pair of the prefault measurement: kiln with and without
/// [`PREFAULT_ENV`], for the Linux guest and hello, each on ordinary
/// (transparent huge page) RAM and on hugetlbfs.
fn prefault_pair(linux: &VmConfig, hello: &VmConfig) -> Result<Vec<Vec<Boot>>, BenchError> {
    let mut groups = Vec::new();
    for (setting, cfg, hugepages, markers) in [
        ("linux-thp", linux, false, LINUX),
        ("linux-hp", linux, true, LINUX),
        ("hello-thp", hello, false, HELLO),
        ("hello-hp", hello, true, HELLO),
    ] {
        let mut cfg = cfg.clone();
        cfg.hugepages = hugepages;
        let mut group = Vec::new();
        for (vmm, on) in [("kiln", false), ("kiln-prefault", true)] {
            let mut cmd = kiln_command(KILN, &cfg)?;
            if on {
                cmd.env(PREFAULT_ENV, "1");
            }
            group.push(Boot {
                setting,
                vmm,
                cmd,
                markers,
            });
        }
        groups.push(group);
    }
    Ok(groups)
}

fn prefault_ratios() -> Vec<RatioRow> {
    let mut rows = Vec::new();
    for (setting, phase, what) in [
        ("linux-thp", Phase::Init, "start→/init"),
        ("linux-hp", Phase::Init, "start→/init"),
        ("hello-thp", Phase::Exit, "start→exit"),
        ("hello-hp", Phase::Exit, "start→exit"),
    ] {
        for (phase, what) in [(Phase::Setup, "setup"), (phase, what)] {
            rows.push(RatioRow {
                what: format!("prefault / none, {setting}, {what}"),
                a: (setting, "kiln-prefault"),
                b: (setting, "kiln"),
                phase,
                goal: None,
            });
        }
    }
    rows
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

fn print_run(vmm: &str, setting: &str, s: &Sample) {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    println!(
        "vmmbench: run setting={setting} vmm={vmm} pair={} ok={} code={} setup_ms={} init_ms={} exit_ms={:.0} teardown_ms={} peak_kib={} hwm_kib={} rusage_kib={} harness_kib={} exits={} pio={} mmio={} guest_kib={}",
        s.pair,
        if s.failure.is_none() { "yes" } else { "no" },
        s.code()
            .map_or_else(|| if s.status.is_some() { "signal".into() } else { "-".into() }, |c| c.to_string()),
        f(s.setup_ms.or_else(|| s.field("kiln-runtime: stats", "setup_ms"))),
        f(s.init_ms),
        s.exit_ms,
        f(s.teardown_ms()),
        f(report::own_peak_kib(s)),
        f(s.hwm_kib.map(|k| k as f64)),
        s.rusage_kib,
        s.harness_kib,
        f(s.field("kiln-runtime: stats", "exits")),
        f(s.field("kiln-runtime: stats", "pio")),
        f(s.field("kiln-runtime: stats", "mmio")),
        f(s.field("kiln-runtime: stats", "guest_resident_kib")),
    );
    if let Some(why) = s.failure {
        println!("vmmbench: that boot failed ({why}), left out of the ratios; its output:");
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

/// Whether the kernel command line has the word `word`.
fn cmdline_word(word: &str) -> bool {
    std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.split_whitespace().any(|w| w == word))
}

/// A `key=<n>` word of the kernel command line.
fn cmdline_number(key: &str) -> Option<usize> {
    std::fs::read_to_string("/proc/cmdline")
        .ok()?
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.parse().ok())
}
