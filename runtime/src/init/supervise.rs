//! One VMM process per VM (this binary, re-executed as `kiln-runtime run`),
//! so a crash in one VM cannot take down init or its siblings; restarts as
//! each VM's policy says. Each VMM runs in its own cgroup (see `cgroup`)
//! under PID 1's watchdog (see `watchdog`), and a VMM that ends without
//! saying how its VM ended (killed, out of memory, panicked) gets a
//! `state=failed` line from PID 1 that says it.

use super::cgroup::{Cgroups, VmCgroup, PIDS_BESIDE_VCPUS};
use super::watchdog::Watch;
use crate::sandbox::jail::{Jail, EMPTY_ROOT, JAIL_ENV};
use crate::sandbox::report::Sandbox;
use crate::sandbox::seccomp::{Violation, CODE_SECCOMP};
use crate::status::{Emit, StatusLine, VmState};
use crate::watchdog::HEARTBEAT_ENV;
use kiln_schema::config::{ApplianceConfig, ByteSize, RestartPolicy, VmConfig};
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long init waits for a device node a VM needs (module loading creates
/// them asynchronously through devtmpfs).
const NODE_WAIT: Duration = Duration::from_secs(5);

/// The exit code of a Rust program whose main thread panicked.
const CODE_RUST_PANIC: i32 = 101;

/// Waits, bounded, for each VM's hypervisor node.
pub fn wait_for_nodes(appliance: &ApplianceConfig) {
    let deadline = Instant::now() + NODE_WAIT;
    for vm in &appliance.vms {
        while !vm.hypervisor.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct Slot<'a> {
    vm: &'a VmConfig,
    config_path: PathBuf,
    pid: Option<Pid>,
    /// Copies this VM's output to the console; joined when the VMM exits so
    /// its last status line comes before anything init prints next. It
    /// says whether that last status line came.
    pump: Option<std::thread::JoinHandle<bool>>,
    restarts: u32,
    restart_at: Option<Instant>,
    outcome: Option<bool>,
    cgroup: Option<VmCgroup>,
    /// The cgroup's OOM kills before this VMM started.
    oom_kills: u64,
    watch: Option<Watch>,
    /// Why PID 1 killed this VMM, when it did.
    killed: Option<String>,
    /// The jail its VMM enters (its uid and gid), the same on every restart.
    jail: Option<Jail>,
}

/// Runs every VM to its end; returns (ok, failed).
pub fn run_all(vms: &[VmConfig]) -> (u32, u32) {
    let dir = Path::new(super::console::LOG_DIR).join("vms");
    let dir = dir.as_path();
    if let Err(e) = std::fs::create_dir_all(dir) {
        super::say(&format!("error: cannot create {}: {e}", dir.display()));
    }
    let cgroups = match Cgroups::setup() {
        Ok(c) => Some(c),
        Err(e) => {
            super::say(&format!(
                "note: VMs run without memory and process limits: {}",
                super::chain(&e)
            ));
            None
        }
    };
    // Where each VMM is rooted once jailed: empty, and root's alone.
    let empty = Path::new(EMPTY_ROOT);
    if let Err(e) = std::fs::create_dir_all(empty)
        .and_then(|()| std::fs::set_permissions(empty, std::fs::Permissions::from_mode(0o555)))
    {
        super::say(&format!("error: cannot create {}: {e}", empty.display()));
    }
    let mut slots: Vec<Slot> = vms
        .iter()
        .enumerate()
        .map(|(index, vm)| Slot {
            vm,
            config_path: dir.join(format!("{}.toml", vm.name)),
            pid: None,
            pump: None,
            restarts: 0,
            restart_at: Some(Instant::now()),
            outcome: None,
            cgroup: None,
            oom_kills: 0,
            watch: None,
            killed: None,
            jail: Jail::for_vm(index),
        })
        .collect();
    for slot in &slots {
        if let Err(e) = toml::to_string(slot.vm)
            .map_err(|e| e.to_string())
            .and_then(|t| std::fs::write(&slot.config_path, t).map_err(|e| e.to_string()))
        {
            super::say(&format!(
                "error: vm {}: cannot write its config: {e}",
                slot.vm.name
            ));
        }
    }
    let mut stopping = false;
    while slots.iter().any(|s| s.outcome.is_none()) {
        if super::power::stop_requested() && !stopping {
            stopping = true;
            for s in &mut slots {
                s.restart_at = None;
                if let Some(pid) = s.pid {
                    let _ = kill(pid, Signal::SIGTERM);
                } else if s.outcome.is_none() {
                    s.outcome = Some(false);
                }
            }
        }
        for s in &mut slots {
            if s.pid.is_none()
                && s.outcome.is_none()
                && s.restart_at.is_some_and(|t| Instant::now() >= t)
            {
                s.restart_at = None;
                spawn(s, cgroups.as_ref());
            }
        }
        watch_all(&mut slots);
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => finished(&mut slots, pid, code, None, stopping),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                finished(&mut slots, pid, 128 + sig as i32, Some(sig), stopping)
            }
            Ok(_) | Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let ok = slots.iter().filter(|s| s.outcome == Some(true)).count();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    (count(ok), count(slots.len() - ok))
}

/// Ends every VMM its watchdog finds unresponsive.
fn watch_all(slots: &mut [Slot]) {
    let now = Instant::now();
    for s in slots.iter_mut() {
        let (Some(pid), Some(watch)) = (s.pid, s.watch.as_mut()) else {
            continue;
        };
        watch.look(now);
        if watch.started() {
            report_sandbox(s.vm.name.as_str(), pid, watch.landlocked());
        }
        if let Some(reason) = watch.overdue() {
            let _ = kill(pid, Signal::SIGKILL);
            s.killed = Some(reason);
            s.watch = None;
        }
    }
}

/// Prints the sandbox report of VM `vm`'s VMM, process `pid`
/// (`kiln: vm <vm>: sandbox threads=<n> seccomp=<mode> uid=<n> ...`);
/// `landlocked`: the VMM said its landlock ruleset is enforced.
fn report_sandbox(vm: &str, pid: Pid, landlocked: bool) {
    let line = match Sandbox::of(Path::new("/proc"), pid.as_raw(), landlocked) {
        Ok(sandbox) => sandbox.line(vm),
        Err(e) => format!("kiln: vm {vm}: cannot read its VMM's sandbox in /proc: {e}"),
    };
    let _ = std::io::stdout()
        .lock()
        .write_all(format!("\n{line}\n").as_bytes());
}

/// Puts VM `s` in its cgroup, with its limits; `None` (and a note) where
/// that cannot be done.
fn cgroup_for(s: &Slot, cgroups: Option<&Cgroups>) -> Option<VmCgroup> {
    let vm = s.vm;
    let pids = u64::from(vm.vcpus).saturating_add(PIDS_BESIDE_VCPUS);
    match cgroups?.for_vm(vm.name.as_str(), vm.vmm_memory_limit().bytes(), pids) {
        Ok(c) => Some(c),
        Err(e) => {
            super::say(&format!(
                "vm {}: runs without memory and process limits: {}",
                vm.name,
                super::chain(&e)
            ));
            None
        }
    }
}

/// In the child, between fork and exec: joins the VM's cgroup (so that
/// everything the VMM allocates is charged there) and keeps the heartbeat
/// pipe open across exec. Only async-signal-safe calls.
fn enter_child(procs: Option<&CString>, heartbeat: Option<RawFd>) -> std::io::Result<()> {
    if let Some(procs) = procs {
        // SAFETY: `procs` is a NUL-terminated path that outlives the call;
        // open, write and close are async-signal-safe.
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
        }
    }
    if let Some(fd) = heartbeat {
        // SAFETY: `fd` is the write end of a pipe the parent holds open
        // until after the spawn; clearing FD_CLOEXEC is async-signal-safe.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn spawn(s: &mut Slot, cgroups: Option<&Cgroups>) {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
    s.cgroup = cgroup_for(s, cgroups);
    s.oom_kills = s.cgroup.as_ref().map_or(0, VmCgroup::oom_kills);
    s.killed = None;
    let beats = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).ok();
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg(&s.config_path)
        // Guest lines come tagged, so the pump can tell them from the VMM's.
        .env(crate::devices::serial::GUEST_TAG_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let beat_fd = beats.as_ref().map(|(_, w)| w.as_raw_fd());
    if let Some(fd) = beat_fd {
        cmd.env(HEARTBEAT_ENV, fd.to_string());
    }
    // No VMM runs unjailed: without a jail (more VMs than uids) it is not
    // started.
    match s.jail {
        Some(jail) => cmd.env(JAIL_ENV, jail.id.to_string()),
        None => {
            StatusLine::vm(s.vm.name.as_str(), VmState::Failed)
                .with_reason("no uid is left for its VMM's jail")
                .print();
            s.outcome = Some(false);
            return;
        }
    };
    let procs = s.cgroup.as_ref().and_then(VmCgroup::procs);
    // SAFETY: `enter_child` makes only async-signal-safe calls (open,
    // write, close, fcntl) on data prepared before the fork, and allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || enter_child(procs.as_ref(), beat_fd));
    }
    let spawned = cmd.spawn();
    // The child has its copy of the write end; PID 1 keeps the read end.
    let beats = beats.map(|(r, _w)| r);
    match spawned {
        Ok(mut child) => {
            // Linux PIDs fit an i32 (pid_max is at most 2^22).
            s.pid = i32::try_from(child.id()).ok().map(Pid::from_raw);
            s.watch = beats.map(|r| Watch::new(r, Instant::now()));
            if let Some(out) = child.stdout.take() {
                let (name, echo) = (s.vm.name.to_string(), s.vm.console.echo);
                s.pump = Some(std::thread::spawn(move || {
                    super::console::pump(name, out, echo)
                }));
            }
            // The Child handle is dropped without waiting: init reaps every
            // process itself with waitpid(-1).
        }
        Err(e) => {
            StatusLine::vm(s.vm.name.as_str(), VmState::Failed)
                .with_reason(format!("cannot start its VMM process: {e}"))
                .print();
            s.outcome = Some(false);
        }
    }
}

/// How a VMM process ended, as PID 1 saw it.
#[derive(Debug, Default)]
struct End {
    code: i32,
    signal: Option<Signal>,
    /// Its VM's last status line came through.
    reported: bool,
    /// PID 1's watchdog killed it, for this reason.
    killed: Option<String>,
    /// The kernel's OOM killer ended it at this `memory.max`.
    oom_at: Option<u64>,
    /// The forbidden system call its SIGSYS handler reported.
    violation: Option<Violation>,
}

impl End {
    /// The `reason=` of the `state=failed` line PID 1 prints, when the VMM
    /// did not report its VM's end itself (or PID 1 ended it).
    fn reason(&self) -> Option<String> {
        if let Some(why) = &self.killed {
            return Some(why.clone());
        }
        // Even after its VM's end was reported: a filter that stops the
        // teardown is a fault to see.
        if let Some(v) = self.violation {
            return Some(v.reason());
        }
        if self.signal == Some(Signal::SIGSYS) {
            return Some(
                "seccomp: the kernel killed the VMM (SIGSYS) for a system call its seccomp \
                 filter forbids; the call was not reported"
                    .to_string(),
            );
        }
        if self.signal.is_none() && self.code == CODE_SECCOMP {
            return Some(format!(
                "seccomp: the VMM made a system call its seccomp filter forbids (exit code \
                 {CODE_SECCOMP}); its number is in the VMM's message above"
            ));
        }
        if self.reported {
            return None;
        }
        if let Some(limit) = self.oom_at {
            return Some(format!(
                "out of memory: the VMM reached its memory limit of {} (cgroup memory.max) \
                 and the kernel's OOM killer ended it; give it more with `limits.memory`",
                ByteSize(limit)
            ));
        }
        Some(match self.signal {
            Some(sig) => format!("VMM process killed by {sig}"),
            None if self.code == CODE_RUST_PANIC => {
                "the VMM panicked (exit code 101); its message is above".to_string()
            }
            None => format!(
                "the VMM exited with code {} without reporting how its VM ended",
                self.code
            ),
        })
    }
}

/// Records a VMM process's end and decides on a restart.
fn finished(slots: &mut [Slot], pid: Pid, code: i32, signal: Option<Signal>, stopping: bool) {
    // Orphans reparented to init end up here too; they belong to no slot.
    let Some(s) = slots.iter_mut().find(|s| s.pid == Some(pid)) else {
        return;
    };
    s.pid = None;
    // The last look drains what the VMM wrote before it ended.
    let violation = s.watch.take().and_then(|mut w| {
        w.look(Instant::now());
        w.violation()
    });
    let reported = s
        .pump
        .take()
        .is_some_and(|pump| pump.join().unwrap_or(false));
    let end = End {
        code,
        signal,
        reported,
        killed: s.killed.take(),
        oom_at: s
            .cgroup
            .as_ref()
            .filter(|c| c.oom_kills() > s.oom_kills)
            .map(|c| c.memory_max),
        violation,
    };
    if let Some(reason) = end.reason() {
        StatusLine::vm(s.vm.name.as_str(), VmState::Failed)
            .with_code(code)
            .with_reason(reason)
            .print();
    }
    let ok = code == 0;
    let policy = s.vm.restart.policy;
    let wants = match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => !ok,
        RestartPolicy::Always => true,
    };
    if wants && !stopping && s.restarts < s.vm.restart.max {
        let delay = s.vm.restart.delay(s.restarts);
        s.restarts = s.restarts.saturating_add(1);
        StatusLine::vm(s.vm.name.as_str(), VmState::Restarting)
            .with_reason(format!(
                "attempt {} of {} in {}ms",
                s.restarts,
                s.vm.restart.max,
                delay.as_millis()
            ))
            .print();
        let now = Instant::now();
        s.restart_at = Some(now.checked_add(delay).unwrap_or(now));
    } else {
        s.outcome = Some(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vmm_that_reported_its_vm_s_end_gets_no_second_line() {
        for code in [0, 3, 143, 194, 197] {
            let end = End {
                code,
                reported: true,
                ..End::default()
            };
            assert_eq!(end.reason(), None, "{code}");
        }
    }

    #[test]
    fn a_vmm_that_died_without_a_word_is_reported_with_how() {
        let panic = End {
            code: 101,
            ..End::default()
        };
        assert_eq!(
            panic.reason().unwrap(),
            "the VMM panicked (exit code 101); its message is above"
        );
        let killed = End {
            code: 128 + 9,
            signal: Some(Signal::SIGKILL),
            ..End::default()
        };
        assert_eq!(killed.reason().unwrap(), "VMM process killed by SIGKILL");
        let segv = End {
            code: 128 + 11,
            signal: Some(Signal::SIGSEGV),
            ..End::default()
        };
        assert_eq!(segv.reason().unwrap(), "VMM process killed by SIGSEGV");
        let usage = End {
            code: 2,
            ..End::default()
        };
        assert_eq!(
            usage.reason().unwrap(),
            "the VMM exited with code 2 without reporting how its VM ended"
        );
    }

    #[test]
    fn an_oom_kill_names_the_memory_limit() {
        let oom = End {
            code: 137,
            signal: Some(Signal::SIGKILL),
            oom_at: Some(96 << 20),
            ..End::default()
        };
        let r = oom.reason().unwrap();
        assert!(
            r.starts_with(
                "out of memory: the VMM reached its memory limit of 96M (cgroup memory.max)"
            ),
            "{r}"
        );
        assert!(r.contains("limits.memory"), "{r}");
    }

    #[test]
    fn a_seccomp_end_names_the_call_when_it_was_reported() {
        use crate::sandbox::seccomp::ThreadKind;
        let trapped = End {
            code: CODE_SECCOMP,
            violation: Some(Violation {
                syscall: 41,
                kind: ThreadKind::Vcpu,
                index: 0,
            }),
            ..End::default()
        };
        assert_eq!(
            trapped.reason().unwrap(),
            "seccomp: the VMM's vCPU 0 thread made system call 41, which its seccomp filter forbids"
        );
        // Even when it came after the VM's own end.
        let late = End {
            reported: true,
            ..trapped
        };
        assert!(late.reason().unwrap().starts_with("seccomp: "));
        let killed = End {
            code: 128 + 31,
            signal: Some(Signal::SIGSYS),
            ..End::default()
        };
        assert!(killed
            .reason()
            .unwrap()
            .starts_with("seccomp: the kernel killed the VMM (SIGSYS)"));
        let unreported = End {
            code: CODE_SECCOMP,
            ..End::default()
        };
        assert!(unreported.reason().unwrap().starts_with(
            "seccomp: the VMM made a system call its seccomp filter forbids (exit code 199)"
        ));
    }

    #[test]
    fn a_watchdog_kill_says_so_even_after_the_vm_reported() {
        let end = End {
            code: 137,
            signal: Some(Signal::SIGKILL),
            killed: Some("watchdog: x".into()),
            reported: true,
            ..End::default()
        };
        assert_eq!(end.reason().unwrap(), "watchdog: x");
    }

    #[test]
    fn the_child_keeps_its_heartbeat_pipe_and_joins_its_cgroup() {
        // A real fork and exec: `sh` finds the pipe open at the fd number
        // it was given and writes to it; it has joined the "cgroup" (a plain
        // file here, which the child writes its "0" into).
        let dir = tempfile::tempdir().unwrap();
        let procs_path = dir.path().join("cgroup.procs");
        std::fs::write(&procs_path, "").unwrap();
        let procs = CString::new(procs_path.to_str().unwrap()).unwrap();
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let fd = w.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(format!("printf . >&{fd}"));
        // SAFETY: as in `spawn`.
        unsafe {
            cmd.pre_exec(move || enter_child(Some(&procs), Some(fd)));
        }
        let status = cmd.status().unwrap();
        assert!(status.success());
        drop(w);
        let mut buf = [0u8; 4];
        assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 1);
        assert_eq!(&buf[..1], b".");
        assert_eq!(std::fs::read_to_string(&procs_path).unwrap(), "0");
        // A cgroup that cannot be joined fails the spawn.
        let bad = CString::new("/nonexistent/cgroup.procs").unwrap();
        let mut cmd = Command::new("/bin/true");
        // SAFETY: as in `spawn`.
        unsafe {
            cmd.pre_exec(move || enter_child(Some(&bad), None));
        }
        assert!(cmd.status().is_err());
    }
}
