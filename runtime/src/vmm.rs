//! Running one VM to its end: open the hypervisor, build the VM, load the
//! kernel, start one thread per vCPU, and wait for the guest to leave (exit
//! port, poweroff, reboot), fail (triple fault, KVM internal error) or be
//! stopped (SIGTERM, SIGINT). Every vCPU thread is stopped and joined
//! before [`run`] returns.
//!
//! How a VM ends and its exit codes: [`crate::vm::exit`].

use crate::arch::x86_64::acpi::{self, AcpiError};
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::boot::{self, BootError, BootSpec};
use crate::devices::serial::{flush_partial_line, GUEST_TAG_ENV};
use crate::machine::{self, Machine, MachineError};
use crate::proc_status::field_kib;
use crate::sandbox::seccomp::{self, SeccompError, ThreadKind};
use crate::sandbox::{self, Jail, SandboxError};
use crate::vac::{Vac, VacError};
use crate::vfio::attach::{attach_all, AttachError, Attached};
use crate::vm::vcpu::{ExitCounts, RunControl, Vcpu, VcpuError};
use crate::vm::{Vm, VmError};
use crate::watchdog::{self, Heartbeat, StuckCheck, VcpuClocks};
use kiln_schema::config::{BootInput, Source, VmConfig, VmSpec};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::thread::JoinHandleExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, Once, PoisonError};
use std::time::{Duration, Instant};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

pub use crate::vm::exit::{
    VmExit, CODE_EXIT_PORT_MAX, CODE_INTERNAL_ERROR, CODE_REBOOT, CODE_SIGNAL_BASE,
    CODE_TRIPLE_FAULT, CODE_VCPU_PANIC, CODE_VCPU_STUCK, CODE_VMM_ERROR,
};

/// How long the VMM waits for its vCPU threads to stop once told to.
const JOIN_LIMIT: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(5)
};

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Vac(#[from] VacError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("`{key}` is {source_text}, which `kiln build` resolves; `kiln-runtime run` boots files only: give a path")]
    NotAFile {
        key: &'static str,
        source_text: String,
    },
    #[error("Cannot set up signal handling for the VM")]
    Signals(#[source] nix::Error),
    #[error("Cannot create the VM's stop eventfd")]
    EventFd(#[source] std::io::Error),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// What the process running the VMM asks of it beyond the VM's config.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Tag guest lines echoed to stdout ([`GUEST_TAG_ENV`]).
    pub tag_guest_lines: bool,
    /// Print the stats lines on stderr at the end ([`STATS_ENV`]).
    pub stats: bool,
    /// Enter this jail before the guest runs ([`sandbox::jail::JAIL_ENV`]:
    /// PID 1 asks for one for every VMM), when `sandbox` is on.
    pub jail: Option<Jail>,
    /// Confine the VMM (the jail it was asked for, then every thread with
    /// its seccomp filter) once the VM is set up (`kiln-runtime run`
    /// always does, but for [`SANDBOX_ENV`] in a `dev-hooks` build;
    /// in-process callers such as unit tests do not).
    pub sandbox: bool,
}

/// Set (to anything) to get the stats lines (docs/runtime.md).
pub const STATS_ENV: &str = "KILN_VMM_STATS";

/// A vCPU thread's stack. Not the default 2 MiB: a stack mapping of exactly
/// 2 MiB lands 2 MiB-aligned below the aligned guest RAM, and on a host with
/// transparent huge pages its first touch faults in a whole huge page, 2 MiB
/// of the VMM's peak memory for a few KiB used (docs/benchmarks.md). The
/// exit handlers recurse nowhere and keep no large locals.
const VCPU_STACK: usize = 512 * 1024;

/// `KILN_VMM_SANDBOX=off` runs the VMM without its sandbox (jail, landlock,
/// seccomp filters), for
/// bench/vmm.sh's comparison only: a runtime built without the
/// `dev-hooks` feature (every shipped one) ignores it.
pub const SANDBOX_ENV: &str = "KILN_VMM_SANDBOX";

impl RunOptions {
    /// The options as this process's environment sets them.
    pub fn from_env() -> Self {
        let sandbox_off = cfg!(feature = "dev-hooks")
            && std::env::var_os(SANDBOX_ENV).is_some_and(|v| v == "off");
        RunOptions {
            tag_guest_lines: std::env::var_os(GUEST_TAG_ENV).is_some(),
            stats: std::env::var_os(STATS_ENV).is_some(),
            jail: Jail::from_env(),
            sandbox: !sandbox_off,
        }
    }
}

/// Runs the VM `cfg` describes to its end. Relative paths in `cfg` are
/// relative to `base_dir`.
pub fn run(cfg: &VmConfig, base_dir: &Path) -> Result<VmExit, VmmError> {
    run_observed(cfg, base_dir, &mut || {})
}

/// Like [`run`], calling `on_running` once the VM is built and its vCPUs are
/// about to start (when `state=running` is due).
pub fn run_observed(
    cfg: &VmConfig,
    base_dir: &Path,
    on_running: &mut dyn FnMut(),
) -> Result<VmExit, VmmError> {
    run_with(cfg, base_dir, RunOptions::default(), on_running)
}

/// Like [`run_observed`], with `options`.
pub fn run_with(
    cfg: &VmConfig,
    base_dir: &Path,
    options: RunOptions,
    on_running: &mut dyn FnMut(),
) -> Result<VmExit, VmmError> {
    run_counted(cfg, base_dir, options, on_running).map(|(exit, _)| exit)
}

/// Like [`run_with`], with the exits the vCPUs took.
fn run_counted(
    cfg: &VmConfig,
    base_dir: &Path,
    options: RunOptions,
    on_running: &mut dyn FnMut(),
) -> Result<(VmExit, ExitCounts), VmmError> {
    let started = Instant::now();
    let kernel = base_dir.join(&cfg.boot.kernel);
    let initrd = cfg.boot.initrd.as_ref().map(|p| base_dir.join(p));
    let mut vm_cfg = cfg.clone();
    vm_cfg.console.log = cfg.console.log.as_ref().map(|p| base_dir.join(p));
    let hypervisor = base_dir.join(&cfg.hypervisor);

    let vac = Vac::open(&hypervisor)?;
    let vm = Vm::new(vac, &vm_cfg)?;
    let mut attached = attach_all(&vm, cfg)?;
    // Devices drop before the VM: `machine` is declared after `vm`, and
    // it holds the VM anyway.
    let board = machine::Options {
        tag_guest_lines: options.tag_guest_lines,
    };
    let pci = std::mem::take(&mut attached.functions);
    let machine = Machine::new(vm.clone(), &vm_cfg, board, pci)?;
    let slots: Vec<u8> = attached.devices.iter().map(|d| d.bdf.device).collect();
    let rsdp = acpi::write(vm.memory(), cfg.vcpus, cfg.memory.bytes(), &slots)?;
    mptable::write(vm.memory(), cfg.vcpus)?;
    let spec = BootSpec {
        kernel: &kernel,
        initrd: initrd.as_deref(),
        cmdline: &cfg.boot.cmdline,
        mem_size: cfg.memory.bytes(),
        cpus: cfg.vcpus,
        pci: &attached.devices,
        rsdp: Some(rsdp),
    };
    let loaded = boot::load(vm.memory(), &spec)?;
    let mut vcpus = Vec::with_capacity(usize::from(cfg.vcpus));
    for i in 0..cfg.vcpus {
        let mut vcpu = Vcpu::new(&vm, i)?;
        if let Some(ring) = machine.tx_ring() {
            vcpu.drain_tx_ring(ring.clone())?;
        }
        vcpus.push(vcpu);
    }
    if let Some(boot_cpu) = vcpus.first() {
        boot_cpu.set_entry(loaded.entry)?;
    }

    let ctl = Arc::new(RunControl::new().map_err(VmmError::EventFd)?);
    let clocks = Arc::new(VcpuClocks::new(vcpus.len()));
    let mut heartbeat = Heartbeat::from_env();
    install_kick_handler()?;
    let signals = SignalGuard::block_stop_signals()?;
    // Opened now: the sandboxed main thread cannot open files.
    let proc_status = if options.stats {
        File::open("/proc/self/status").ok()
    } else {
        None
    };
    // The sandbox: everything the VM needs is open and no thread but this
    // one runs. The jail and landlock come first, here; then each thread
    // installs its seccomp filter (below), before any guest instruction.
    let jail = options.jail.filter(|_| options.sandbox);
    let sandboxed = match sandbox::enter(jail, cfg, &mut heartbeat) {
        Ok(s) => s,
        Err(e) => {
            sandbox::leave_to_exit((machine, attached, vm));
            return Err(e.into());
        }
    };
    if options.sandbox {
        if let Err(e) = seccomp::install_handler(heartbeat.raw_fd()) {
            sandboxed.release((machine, attached, vm));
            return Err(e.into());
        }
    }
    let setup = started.elapsed();
    on_running();

    // Each vCPU thread installs its filter and waits here; the main thread
    // installs its own, waits for every vCPU thread to arrive and lets them
    // go: no guest instruction runs, and no heartbeat tells PID 1 the VM
    // runs, before every thread is confined.
    let gate = Arc::new(Gate::default());
    let mut threads: Vec<std::thread::JoinHandle<ExitCounts>> = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        let thread_ctl = ctl.clone();
        let thread_clocks = clocks.clone();
        let thread_gate = gate.clone();
        let index = vcpu.index();
        let name = format!("vcpu{index}");
        let sandbox = options.sandbox;
        let spawned = std::thread::Builder::new()
            .name(name)
            .stack_size(VCPU_STACK)
            .spawn(move || {
                // The stop signals stay blocked (the waiting thread takes them),
                // the kick signal must get through.
                let mut kick = SigSet::empty();
                if let Ok(s) = Signal::try_from(kick_signal()) {
                    kick.add(s);
                }
                let _ = kick.thread_unblock();
                if sandbox {
                    if let Err(e) = seccomp::install(ThreadKind::Vcpu, index) {
                        thread_ctl.request_stop(VmExit::InternalError(
                            kiln_abi::error::Chain::new(&e).to_string(),
                        ));
                    }
                }
                thread_gate.arrive_and_wait();
                // A panicking vCPU thread ends the VM instead of leaving it
                // waiting for a stop that no one will request.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    vcpu.run(&thread_ctl, &thread_clocks)
                }));
                ran.unwrap_or_else(|payload| {
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    thread_ctl.request_stop(VmExit::VcpuPanic { index, message });
                    ExitCounts::default()
                })
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                ctl.request_stop(VmExit::InternalError(format!(
                    "cannot start a vCPU thread: {e}"
                )));
                break;
            }
        }
    }
    if options.sandbox {
        if let Err(e) = seccomp::install(ThreadKind::Main, 0) {
            ctl.request_stop(VmExit::InternalError(
                kiln_abi::error::Chain::new(&e).to_string(),
            ));
        }
    }
    gate.open_when_arrived(threads.len());

    // At each tick, a vCPU is kicked out of KVM_RUN to drain the console
    // ring, so a guest that queued bytes and then spins or halts shows them.
    let tx_ring = machine.tx_ring().cloned();
    let first_vcpu = threads.first().map(|t| t.as_pthread_t());
    let mut drain_tick = move || {
        if let (Some(ring), Some(thread)) = (&tx_ring, first_vcpu) {
            if ring.pending() {
                // SAFETY: the thread is not joined before `wait_for_stop`
                // returns (its handle is held), so its pthread_t is valid;
                // the signal's handler is a no-op.
                unsafe { libc::pthread_kill(thread, kick_signal()) };
            }
        }
    };
    wait_for_stop(&ctl, &signals, &clocks, &mut heartbeat, &mut drain_tick);
    // Its VM handle goes with the machine's, not after.
    drop(drain_tick);
    let counts = stop_and_join(threads, &mut heartbeat);
    flush_partial_line();
    heartbeat.stopping();
    drop(signals);
    let exit = ctl
        .exit()
        .unwrap_or_else(|| VmExit::InternalError("the VM stopped without a reason".into()));
    // The notes the guest provoked beyond their limit, in one line.
    vm.notes().finish();
    if options.stats {
        print_stats(
            cfg.name.as_str(),
            &machine,
            started,
            setup,
            counts,
            proc_status.as_ref(),
            loaded.format.entry(),
        );
        print_attach_stats(&vm, &attached);
    }
    sandboxed.release((machine, attached, vm));
    Ok((exit, counts))
}

/// The run form of a VM config that names files only, as `kiln-runtime
/// run` takes it; any other source is refused.
pub fn run_form(spec: &VmSpec) -> Result<VmConfig, VmmError> {
    spec.resolve(|input| match input {
        BootInput::Kernel(Source::Path(p)) | BootInput::Initrd(Source::Path(p)) => Ok(p.clone()),
        BootInput::Kernel(other) | BootInput::Initrd(other) => Err(VmmError::NotAFile {
            key: boot_key(input),
            source_text: format!("\"{other}\""),
        }),
        BootInput::BuiltInitrd(b) => Err(VmmError::NotAFile {
            key: boot_key(input),
            source_text: format!("an initrd built around {}", b.init),
        }),
    })
}

fn boot_key(input: BootInput<'_>) -> &'static str {
    match input {
        BootInput::Kernel(_) => "boot.kernel",
        BootInput::Initrd(_) | BootInput::BuiltInitrd(_) => "boot.initrd",
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread (the vCPU threads
/// inherit that) and reads them from a signalfd instead; restores the
/// previous mask when dropped.
struct SignalGuard {
    fd: SignalFd,
    previous: SigSet,
}

impl SignalGuard {
    fn block_stop_signals() -> Result<Self, VmmError> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        let previous = set
            .thread_swap_mask(SigmaskHow::SIG_BLOCK)
            .map_err(VmmError::Signals)?;
        match SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
            Ok(fd) => Ok(SignalGuard { fd, previous }),
            Err(e) => {
                let _ = previous.thread_set_mask();
                Err(VmmError::Signals(e))
            }
        }
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        let _ = self.previous.thread_set_mask();
    }
}

/// Sleeps until the VM stops or a stop signal arrives (which stops it),
/// waking every [`watchdog::CHECK_EVERY`] to end the VM if a vCPU thread
/// is stuck, and otherwise to send PID 1 a heartbeat and call `tick`.
fn wait_for_stop(
    ctl: &RunControl,
    signals: &SignalGuard,
    clocks: &VcpuClocks,
    heartbeat: &mut Heartbeat,
    tick: &mut dyn FnMut(),
) {
    let check_ms =
        libc::c_int::try_from(watchdog::CHECK_EVERY.as_millis()).unwrap_or(libc::c_int::MAX);
    let mut stuck = StuckCheck::new(clocks, Instant::now());
    while !ctl.stopping() {
        if let Some((index, out)) = stuck.check(clocks, Instant::now()) {
            ctl.request_stop(VmExit::VcpuStuck {
                index: u8::try_from(index).unwrap_or(u8::MAX),
                secs: out.as_secs(),
            });
            break;
        }
        heartbeat.beat();
        let mut fds = [
            libc::pollfd {
                fd: ctl.wake_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of
        // the call, and both descriptors stay open (owned by `ctl` and
        // `signals`, which outlive it).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, check_ms) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            ctl.request_stop(VmExit::InternalError(format!(
                "cannot wait for the VM: {err}"
            )));
            break;
        }
        // Guest text without its line end yet shows at most a tick late
        // (queued text: the kicked vCPU writes it out).
        tick();
        flush_partial_line();
        if let Ok(Some(info)) = signals.fd.read_signal() {
            // Signal numbers are at most 64.
            let signo = i32::try_from(info.ssi_signo).unwrap_or(i32::MAX);
            ctl.request_stop(VmExit::Signal(signo));
        }
    }
}

fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal's only purpose is to make KVM_RUN return.
}

fn install_kick_handler() -> Result<(), VmmError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| VmmError::Signals(nix::Error::from_raw(e.errno())));
    });
    result
}

/// Kicks every vCPU thread out of KVM_RUN until it notices the stop flag,
/// then joins them all. Kicks repeat because one can land just before a
/// thread enters KVM_RUN. A thread still running after [`JOIN_LIMIT`] is
/// stuck outside KVM_RUN: it is left behind (the process exit ends it)
/// rather than waited for forever.
fn stop_and_join(
    threads: Vec<std::thread::JoinHandle<ExitCounts>>,
    heartbeat: &mut Heartbeat,
) -> ExitCounts {
    let deadline = Instant::now() + JOIN_LIMIT;
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        heartbeat.beat();
        for t in threads.iter().filter(|t| !t.is_finished()) {
            // SAFETY: the thread has not been joined (we hold its handle),
            // so its pthread_t is valid; the signal's handler is a no-op.
            unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut total = ExitCounts::default();
    for t in threads.into_iter().filter(|t| t.is_finished()) {
        if let Ok(c) = t.join() {
            total += c;
        }
    }
    total
}

/// One line on stderr with timings (from `started`, the start of the run),
/// exit counts, the VMM's own memory (resident set minus the guest RAM
/// pages that are resident) and the entry the guest booted through.
fn print_stats(
    name: &str,
    machine: &Machine,
    started: Instant,
    setup: Duration,
    counts: ExitCounts,
    proc_status: Option<&File>,
    entry: &str,
) {
    let vm = machine.vm();
    let total = started.elapsed();
    let status = proc_status.and_then(read_whole).unwrap_or_default();
    let rss_kib = field_kib(&status, "VmRSS:").unwrap_or(0);
    let hwm_kib = field_kib(&status, "VmHWM:").unwrap_or(0);
    let (guest_kib, guest_in_rss_kib) = resident_guest_kib(vm);
    let first = machine
        .first_output()
        .map(|t| format!("{}", t.saturating_duration_since(started).as_millis()))
        .unwrap_or_else(|| "-".into());
    let unclaimed = vm.pio_bus().unclaimed_total();
    // One write, so the line stays whole on a console shared with other VMs.
    let line = format!(
        "kiln-runtime: stats vm={name} setup_ms={} first_output_ms={first} total_ms={} exits={} pio={} pio_coalesced={} mmio={} mmio_bar={} intr={} unclaimed_pio={unclaimed} rss_kib={rss_kib} guest_resident_kib={guest_kib} vmm_kib={} vmm_peak_kib={} notes_held={} entry={entry}\n",
        setup.as_millis(),
        total.as_millis(),
        counts.total,
        counts.pio,
        counts.coalesced,
        counts.mmio,
        counts.mmio_bar,
        counts.interrupted,
        rss_kib.saturating_sub(guest_in_rss_kib),
        // Guest RAM only grows, so what is resident now is the most it held.
        hwm_kib.saturating_sub(guest_in_rss_kib),
        vm.notes().held(),
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
}

/// The whole text of a `/proc` file opened earlier, read from its start
/// (pread: no seek, no new open).
fn read_whole(file: &File) -> Option<String> {
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let at = u64::try_from(text.len()).ok()?;
        match file.read_at(&mut buf, at) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(buf.get(..n)?),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    String::from_utf8(text).ok()
}

/// Holds the vCPU threads until every one has arrived (its filter
/// installed) and the main thread opens it.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    arrived: usize,
    open: bool,
}

impl Gate {
    /// Waits until `n` threads have arrived, then lets them all go.
    fn open_when_arrived(&self, n: usize) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while st.arrived < n {
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        st.open = true;
        self.changed.notify_all();
    }

    fn arrive_and_wait(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.arrived = st.arrived.saturating_add(1);
        self.changed.notify_all();
        while !st.open {
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A `Key:  <n> kB` line of /proc/self/status, in KiB (0 when absent).
/// One line on stderr with what attaching devices cost.
fn print_attach_stats(vm: &Vm, attached: &Attached) {
    if let Some(s) = attached.stats {
        let mem: u64 = vm.memory().iter().map(|r| r.len()).sum();
        // One write, like the other stats line.
        let line = format!(
            "kiln-runtime: stats vfio devices={} guest_mib={} attach_ms={:.1} open_ms={:.1} dma_map_ms={:.1} dma_mib={} backend={} gsi_routing_commits={}\n",
            attached.devices.len(),
            mem >> 20,
            attached.elapsed.as_secs_f64() * 1e3,
            s.open.as_secs_f64() * 1e3,
            s.dma_map.as_secs_f64() * 1e3,
            s.dma_bytes >> 20,
            attached.kind.map_or("-", |k| k.name()),
            vm.routing_commits(),
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    }
}

/// Resident guest RAM, in total and in the part VmRSS counts (huge pages
/// are not counted there).
fn resident_guest_kib(vm: &Vm) -> (u64, u64) {
    let page = 4096usize;
    let (mut pages, mut in_rss) = (0u64, 0u64);
    for region in vm.memory().iter() {
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let Ok(len) = usize::try_from(region.len()) else {
            continue;
        };
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `host..host+len` is a live mapping owned by the VM's guest
        // memory, and `vec` has one byte per page of it.
        let r = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if r == 0 {
            let n = vec.iter().filter(|b| *b & 1 == 1).count() as u64;
            pages += n;
            if region.is_hugetlbfs() != Some(true) {
                in_rss += n;
            }
        }
    }
    (pages * 4, in_rss * 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::pvh::tests::fake_elf;
    use kiln_schema::config::parse;
    use std::sync::mpsc;

    /// A VM config around a tiny PVH guest of raw 32-bit code at 1 MiB,
    /// written to a temporary directory, with the console in a log file.
    /// Runs on any KVM node, including this build machine's software one.
    fn tiny_guest(code: &[u8], vcpus: u8) -> (tempfile::TempDir, VmConfig) {
        crate::vac::tests::kvm_path();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("g.elf"),
            fake_elf(0x10_0000, code, Some(0x10_0000)),
        )
        .unwrap();
        let src = format!(
            "name = \"tiny\"\nvcpus = {vcpus}\nmemory = \"16M\"\n[boot]\nkernel = \"g.elf\"\n[console]\necho = false\nlog = \"console.log\"\n"
        );
        let cfg = parse(Path::new("t.toml"), &src).unwrap();
        (dir, cfg)
    }

    /// mov dx, 0x3f8; mov al, c; out dx, al (for each byte).
    fn print(text: &[u8]) -> Vec<u8> {
        let mut code = vec![0x66, 0xba, 0xf8, 0x03];
        for c in text {
            code.extend_from_slice(&[0xb0, *c, 0xee]);
        }
        code
    }

    #[test]
    fn guest_output_and_exit_port_value() {
        let mut code = print(b"ok\n");
        code.extend_from_slice(&[0xb0, 42, 0xe6, 0xf4, 0xf4]); // mov al, 42; out 0xf4, al; hlt
        let (dir, cfg) = tiny_guest(&code, 2);
        let exit = run(&cfg, dir.path()).unwrap();
        assert_eq!(exit, VmExit::Exited(42));
        assert_eq!(exit.exit_code(), 42);
        assert_eq!(
            std::fs::read(dir.path().join("console.log")).unwrap(),
            b"ok\n"
        );
    }

    /// mov dx, port; mov al, value; out dx, al
    fn out(port: u16, value: u8) -> Vec<u8> {
        let p = port.to_le_bytes();
        vec![0x66, 0xba, p[0], p[1], 0xb0, value, 0xee]
    }

    /// mov al, 0; out 0xf4, al; hlt
    const EXIT_0: [u8; 5] = [0xb0, 0, 0xe6, 0xf4, 0xf4];

    fn coalesced_pio_offered() {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        assert!(
            kvm.check_extension(kvm_ioctls::Cap::CoalescedPio),
            "this host's KVM has no KVM_CAP_COALESCED_PIO: the console tests need it"
        );
    }

    fn console(dir: &tempfile::TempDir) -> Vec<u8> {
        std::fs::read(dir.path().join("console.log")).unwrap()
    }

    #[test]
    fn console_writes_are_queued_without_exits_and_all_arrive_in_order() {
        coalesced_pio_offered();
        let text: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut code = print(&text);
        code.extend_from_slice(&EXIT_0);
        let (dir, cfg) = tiny_guest(&code, 2);
        let (exit, counts) =
            run_counted(&cfg, dir.path(), RunOptions::default(), &mut || {}).unwrap();
        assert_eq!(exit, VmExit::Exited(0));
        assert_eq!(console(&dir), text);
        // The first byte registers the zone (an exit), the exit port is
        // another; the rest is queued, but for a write that finds the ring
        // full (it holds 169 entries in its 4 KiB page) and exits.
        assert!(counts.total < 10, "{counts:?}");
        assert!(counts.coalesced >= 290, "{counts:?}");
        assert_eq!(counts.coalesced + counts.pio - 1, 300, "{counts:?}");
    }

    #[test]
    fn divisor_latch_and_loopback_writes_are_not_console_text() {
        coalesced_pio_offered();
        let mut code = print(b"a");
        code.extend(out(0x3fb, 0x80)); // LCR: DLAB
        code.extend(out(0x3f8, b'X')); // divisor low
        code.extend(out(0x3f9, 0)); // divisor high
        code.extend(out(0x3fb, 0x03)); // LCR: 8N1, DLAB clear
        code.extend(print(b"b"));
        code.extend(out(0x3fc, 0x10)); // MCR: loopback
        code.extend(out(0x3f8, b'Y')); // comes back as input
        code.extend(out(0x3fc, 0)); // MCR: loopback off
        code.extend(print(b"c\n"));
        code.extend_from_slice(&EXIT_0);
        let (dir, cfg) = tiny_guest(&code, 1);
        let (exit, counts) =
            run_counted(&cfg, dir.path(), RunOptions::default(), &mut || {}).unwrap();
        assert_eq!(exit, VmExit::Exited(0));
        assert_eq!(console(&dir), b"abc\n");
        // The zone came back after each: "c\n" was queued in part.
        assert!(counts.coalesced >= 1, "{counts:?}");
    }

    #[test]
    fn a_guest_that_wants_the_transmitter_empty_interrupt_gets_an_exit_per_byte() {
        coalesced_pio_offered();
        let text = b"interrupt-driven output\n";
        let mut code = out(0x3f9, 0x02); // IER: THR empty
        code.extend(print(text));
        // Off again (Linux's console writes do so around each message):
        // the zone does not come back to a guest whose driver uses it.
        code.extend(out(0x3f9, 0));
        code.extend(print(text));
        code.extend_from_slice(&EXIT_0);
        let (dir, cfg) = tiny_guest(&code, 1);
        let (exit, counts) =
            run_counted(&cfg, dir.path(), RunOptions::default(), &mut || {}).unwrap();
        assert_eq!(exit, VmExit::Exited(0));
        assert_eq!(console(&dir), [&text[..], &text[..]].concat());
        assert_eq!(counts.coalesced, 0, "{counts:?}");
        assert!(counts.pio > 2 * text.len() as u64, "{counts:?}");
    }

    #[test]
    fn queued_text_of_a_spinning_guest_shows_within_a_tick() {
        coalesced_pio_offered();
        let mut code = print(b"queued, then spinning");
        code.extend_from_slice(&[0xeb, 0xfe]); // jmp $
        let (dir, cfg) = tiny_guest(&code, 2);
        let (tx, rx) = mpsc::channel();
        let base = dir.path().to_path_buf();
        let runner = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            run_counted(&cfg, &base, RunOptions::default(), &mut || {
                tx.send(me).unwrap()
            })
        });
        let thread = rx.recv().unwrap();
        let since = Instant::now();
        // A tick is 20 ms in tests; the rest is room for a loaded machine.
        while console(&dir) != b"queued, then spinning" && since.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let shown = console(&dir);
        // SAFETY: the runner thread is alive until the VM stops.
        unsafe { libc::pthread_kill(thread, libc::SIGTERM) };
        let (exit, counts) = runner.join().unwrap().unwrap();
        assert_eq!(exit, VmExit::Signal(libc::SIGTERM));
        assert_eq!(
            shown,
            b"queued, then spinning",
            "after {:?}",
            since.elapsed()
        );
        assert_eq!(counts.coalesced, 20, "{counts:?}");
    }

    #[test]
    fn wide_exit_port_write() {
        // mov eax, 0x12345; out 0xf4, eax
        let code = [0xb8, 0x45, 0x23, 0x01, 0x00, 0xe7, 0xf4];
        let (dir, cfg) = tiny_guest(&code, 1);
        let exit = run(&cfg, dir.path()).unwrap();
        assert_eq!(exit, VmExit::Exited(0x12345));
        assert_eq!(exit.exit_code(), 127);
    }

    #[test]
    fn triple_fault_ends_the_vm() {
        // ud2 with an empty IDT: #UD → #GP → #DF → shutdown.
        let (dir, cfg) = tiny_guest(&[0x0f, 0x0b], 1);
        assert_eq!(run(&cfg, dir.path()).unwrap(), VmExit::TripleFault);
    }

    #[test]
    fn keyboard_controller_reset_is_a_reboot() {
        // mov al, 0xfe; out 0x64, al; jmp $
        let (dir, cfg) = tiny_guest(&[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe], 1);
        assert_eq!(run(&cfg, dir.path()).unwrap(), VmExit::Reboot);
    }

    #[test]
    fn acpi_sleep_s5_is_a_poweroff() {
        // mov dx, 0x600; mov al, 0x34; out dx, al; jmp $
        let code = [0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xeb, 0xfe];
        let (dir, cfg) = tiny_guest(&code, 1);
        assert_eq!(run(&cfg, dir.path()).unwrap(), VmExit::Poweroff);
    }

    #[test]
    fn sigterm_stops_a_spinning_guest_and_joins_every_vcpu() {
        let (dir, cfg) = tiny_guest(&[0xeb, 0xfe], 2); // jmp $
        let (tx, rx) = mpsc::channel();
        let base = dir.path().to_path_buf();
        let runner = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            run_observed(&cfg, &base, &mut || tx.send(me).unwrap())
        });
        let thread = rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // Signals are blocked in the runner from before `on_running`, so
        // this SIGTERM is taken by its signalfd, not by the process.
        // SAFETY: the runner thread is alive (it has not returned: it only
        // returns once the VM stops, which this signal causes).
        unsafe { libc::pthread_kill(thread, libc::SIGTERM) };
        let exit = runner.join().unwrap().unwrap();
        assert_eq!(exit, VmExit::Signal(libc::SIGTERM));
        assert_eq!(exit.exit_code(), 143);
    }

    #[test]
    fn a_panicking_vcpu_thread_ends_its_vm() {
        use crate::vm::vcpu::test_triggers::PANIC_PORT;
        // out PANIC_PORT, al; jmp $ (vCPU 1 waits for a SIPI that never comes)
        let (dir, cfg) = tiny_guest(&[0xe6, PANIC_PORT.to_le_bytes()[0], 0xeb, 0xfe], 2);
        let exit = run(&cfg, dir.path()).unwrap();
        assert_eq!(
            exit,
            VmExit::VcpuPanic {
                index: 0,
                message: "test-only vCPU panic".into()
            }
        );
        assert_eq!(exit.exit_code(), CODE_VCPU_PANIC);
        assert_eq!(
            exit.status_line("t").to_string(),
            "kiln: vm=t state=failed code=197 reason=vcpu-panic: vCPU 0 panicked: test-only vCPU panic"
        );
    }

    #[test]
    fn a_vcpu_stuck_outside_kvm_run_ends_its_vm_without_waiting_for_it() {
        use crate::vm::vcpu::test_triggers::STALL_PORT;
        // A guest spinning in KVM_RUN is not stuck: vCPU 1 never leaves it.
        let (dir, cfg) = tiny_guest(&[0xe6, STALL_PORT.to_le_bytes()[0], 0xeb, 0xfe], 2);
        let started = Instant::now();
        let exit = run(&cfg, dir.path()).unwrap();
        assert!(
            matches!(exit, VmExit::VcpuStuck { index: 0, .. }),
            "{exit:?}"
        );
        assert_eq!(exit.exit_code(), CODE_VCPU_STUCK);
        assert!(exit
            .to_string()
            .starts_with("vcpu-stuck: vCPU 0 stayed outside KVM_RUN for "));
        // The stalled thread sleeps for a minute; the VMM does not wait.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    /// Names the guest code a re-executed test process runs sandboxed.
    const SANDBOXED_CHILD: &str = "KILN_TEST_SANDBOXED_GUEST";

    /// In the child (the test binary re-executed for this test alone):
    /// runs the tiny guest with the sandbox on, from setup to teardown,
    /// and exits with the VM's exit code.
    fn sandboxed_child() {
        let Some(code) = std::env::var_os(SANDBOXED_CHILD) else {
            return;
        };
        let code: Vec<u8> = code
            .to_str()
            .unwrap()
            .split(',')
            .map(|b| b.parse().unwrap())
            .collect();
        let (dir, cfg) = tiny_guest(&code, 2);
        let options = RunOptions {
            sandbox: true,
            ..RunOptions::default()
        };
        let exit = run_with(&cfg, dir.path(), options, &mut || {}).unwrap();
        std::process::exit(exit.exit_code());
    }

    /// Runs `code` as a tiny guest in a sandboxed child process.
    fn run_sandboxed(code: &[u8]) -> std::process::Output {
        let list: Vec<String> = code.iter().map(u8::to_string).collect();
        // The child cannot remove its temporary files (its filter forbids
        // it); they go in this one, which the parent removes.
        let tmp = tempfile::tempdir().unwrap();
        std::process::Command::new(std::env::current_exe().unwrap())
            .env("TMPDIR", tmp.path())
            .args([
                "--exact",
                "vmm::tests::a_sandboxed_vmm_runs_its_vm_to_the_end_and_no_further",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(SANDBOXED_CHILD, list.join(","))
            .output()
            .unwrap()
    }

    #[test]
    fn a_sandboxed_vmm_runs_its_vm_to_the_end_and_no_further() {
        sandboxed_child();
        // Setup, two vCPUs, console output (the transmit register made a
        // coalesced zone, then not: the transmitter-empty interrupt on),
        // the exit port, teardown: all within the filters.
        let mut code = print(b"ok");
        code.extend(out(0x3f9, 0x02));
        code.extend(print(b"\n"));
        code.extend_from_slice(&[0xb0, 42, 0xe6, 0xf4, 0xf4]);
        let out = run_sandboxed(&code);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(42), "{stderr}");
        // A guest that asks for a forbidden call (the test trigger port)
        // ends the VMM with the seccomp code, the call named.
        let port = crate::vm::vcpu::test_triggers::SECCOMP_PORT.to_le_bytes();
        // mov dx, port; out dx, al; jmp $
        let out = run_sandboxed(&[0x66, 0xba, port[0], port[1], 0xee, 0xeb, 0xfe]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(seccomp::CODE_SECCOMP), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "kiln-runtime: seccomp: forbidden system call {}; the VMM ends",
                libc::SYS_socket
            )),
            "{stderr}"
        );
    }

    /// Names the text an echoing child's guest prints before it spins.
    const ECHO_CHILD: &str = "KILN_TEST_ECHOING_GUEST";

    /// In the child: a guest that prints the text in [`ECHO_CHILD`] (no
    /// line end) to an echoed console and spins; the parent kills it.
    fn echoing_child() {
        let Some(text) = std::env::var_os(ECHO_CHILD) else {
            return;
        };
        let mut code = print(text.to_str().unwrap().as_bytes());
        code.extend_from_slice(&[0xeb, 0xfe]); // jmp $
        let (dir, mut cfg) = tiny_guest(&code, 1);
        cfg.console.echo = true;
        let _ = run(&cfg, dir.path());
        std::process::exit(1);
    }

    #[test]
    fn a_line_without_its_end_is_echoed_while_the_guest_runs() {
        echoing_child();
        use std::io::Read;
        // The console is line-buffered and vm-superio's per-byte flush does
        // nothing: the watchdog tick writes the rest of a line out.
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "vmm::tests::a_line_without_its_end_is_echoed_while_the_guest_runs",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(ECHO_CHILD, "no line end yet")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 256];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(15).any(|w| w == b"no line end yet") {
                    let _ = tx.send(());
                }
            }
        });
        // The guest spins for good: the text can only come from the tick.
        let shown = rx.recv_timeout(Duration::from_secs(10));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        assert!(
            shown.is_ok(),
            "the guest's unended line never reached stdout"
        );
    }

    #[test]
    fn a_spinning_guest_is_not_stuck() {
        let (dir, cfg) = tiny_guest(&[0xeb, 0xfe], 1); // jmp $
        let (tx, rx) = mpsc::channel();
        let base = dir.path().to_path_buf();
        let runner = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            run_observed(&cfg, &base, &mut || tx.send(me).unwrap())
        });
        let thread = rx.recv().unwrap();
        // Well past STUCK_AFTER (300 ms in tests).
        std::thread::sleep(Duration::from_millis(1000));
        // SAFETY: the runner thread is alive until the VM stops.
        unsafe { libc::pthread_kill(thread, libc::SIGTERM) };
        assert_eq!(
            runner.join().unwrap().unwrap(),
            VmExit::Signal(libc::SIGTERM)
        );
    }

    #[test]
    fn config_sources_that_are_not_files_are_refused() {
        let src = "name = \"x\"\nmemory = \"16M\"\n[boot]\nkernel = \"cargo:kiln-hello\"\n";
        let cfg: VmSpec = parse(Path::new("t.toml"), src).unwrap();
        let e = run_form(&cfg).unwrap_err();
        assert!(
            e.to_string()
                .contains("`boot.kernel` is \"cargo:kiln-hello\""),
            "{e}"
        );
    }
}
