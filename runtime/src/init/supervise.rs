//! One VMM process per VM (this binary, re-executed as `kiln-runtime run`),
//! so a crash in one VM cannot take down init or its siblings; restarts as
//! each VM's policy says.

use crate::status::{Emit, StatusLine, VmState};
use kiln_schema::config::{ApplianceConfig, RestartPolicy, VmConfig};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long init waits for a device node a VM needs (module loading creates
/// them asynchronously through devtmpfs).
const NODE_WAIT: Duration = Duration::from_secs(5);

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
    /// its last status line comes before anything init prints next.
    pump: Option<std::thread::JoinHandle<()>>,
    restarts: u32,
    restart_at: Option<Instant>,
    outcome: Option<bool>,
}

/// Runs every VM to its end; returns (ok, failed).
pub fn run_all(vms: &[VmConfig]) -> (u32, u32) {
    let dir = Path::new(super::console::LOG_DIR).join("vms");
    let dir = dir.as_path();
    if let Err(e) = std::fs::create_dir_all(dir) {
        super::say(&format!("error: cannot create {}: {e}", dir.display()));
    }
    let mut slots: Vec<Slot> = vms
        .iter()
        .map(|vm| Slot {
            vm,
            config_path: dir.join(format!("{}.toml", vm.name)),
            pid: None,
            pump: None,
            restarts: 0,
            restart_at: Some(Instant::now()),
            outcome: None,
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
                spawn(s);
            }
        }
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => finished(&mut slots, pid, code, None, stopping),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                finished(&mut slots, pid, 128 + sig as i32, Some(sig), stopping)
            }
            Ok(_) | Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let ok = slots.iter().filter(|s| s.outcome == Some(true)).count() as u32;
    (ok, slots.len() as u32 - ok)
}

fn spawn(s: &mut Slot) {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
    let spawned = Command::new(exe)
        .arg("run")
        .arg(&s.config_path)
        // Guest lines come tagged, so the pump can tell them from the VMM's.
        .env(crate::devices::serial::GUEST_TAG_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    match spawned {
        Ok(mut child) => {
            s.pid = Some(Pid::from_raw(child.id() as i32));
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

/// Records a VMM process's end and decides on a restart.
fn finished(slots: &mut [Slot], pid: Pid, code: i32, signal: Option<Signal>, stopping: bool) {
    // Orphans reparented to init end up here too; they belong to no slot.
    let Some(s) = slots.iter_mut().find(|s| s.pid == Some(pid)) else {
        return;
    };
    s.pid = None;
    if let Some(pump) = s.pump.take() {
        let _ = pump.join();
    }
    let ok = code == 0;
    if let Some(sig) = signal {
        // The VMM died without its own status line: say what happened.
        StatusLine::vm(s.vm.name.as_str(), VmState::Failed)
            .with_code(code)
            .with_reason(format!("VMM process killed by {sig}"))
            .print();
    }
    let policy = s.vm.restart.policy;
    let wants = match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => !ok,
        RestartPolicy::Always => true,
    };
    if wants && !stopping && s.restarts < s.vm.restart.max {
        let delay =
            s.vm.restart
                .backoff
                .get()
                .saturating_mul(1 << s.restarts.min(16));
        s.restarts += 1;
        StatusLine::vm(s.vm.name.as_str(), VmState::Restarting)
            .with_reason(format!(
                "attempt {} of {} in {}ms",
                s.restarts,
                s.vm.restart.max,
                delay.as_millis()
            ))
            .print();
        s.restart_at = Some(Instant::now() + delay);
    } else {
        s.outcome = Some(ok);
    }
}
