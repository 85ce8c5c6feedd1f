//! A lab machine, driven by the commands of a lab file (`labs/NAME.toml`),
//! in the vocabulary of LAVA and labgrid: `deploy`, `power_on`, `reset`,
//! `power_off`, and `console` (a command whose stdout is the serial line).
//!
//! ```toml
//! name = "rack3-box1"            # default: the file's stem
//! boot_timeout = "3m"            # power-on to the first VM starting
//! env = { LG_PLACE = "rack3-box1" }
//!
//! [deploy]                       # optional
//! command = "scp \"$KILN_KERNEL\" \"$KILN_INITRD\" tftp:/srv/tftp/box1/"
//! timeout = "10m"
//! [power_on]                     # power_on or reset (or both)
//! command = "labgrid-client power on"
//! [reset]                        # when given, boots the machine instead of power_on
//! command = "labgrid-client power cycle"
//! [power_off]
//! command = "labgrid-client power off"
//! [console]
//! command = "labgrid-client console"
//! ```
//!
//! Each command runs as `sh -c COMMAND` in the lab file's folder, in its
//! own process group (Ctrl-C reaches kiln, which then powers off in order)
//! that never outlives kiln ([`crate::children`]), with its input open but silent (the console's until the end of the run),
//! with kiln's environment plus `env` plus `KILN_IMAGE`, `KILN_IMAGE_DIR`,
//! `KILN_KERNEL`, `KILN_INITRD` and `KILN_CMDLINE`. `deploy` defaults to a
//! 10 minute timeout, the others to 1 minute. The console starts before the
//! machine is powered on, so no output is lost; `power_off` always runs at
//! the end, after errors, timeouts and Ctrl-C too.

use super::{Console, Deployable, Target, TargetError};
use crate::children::{self, ProcessGroup, Role, Supervised};
use crate::emulator::BootFiles;
use kiln_schema::config::{self, ConfigError, Duration, KeyPath};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

const DEPLOY_TIMEOUT: Duration = Duration::secs(600);
const PHASE_TIMEOUT: Duration = Duration::secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "Lab {lab}: {phase} (`{command}`) failed ({status}){}",
        output_note(output)
    )]
    Failed {
        lab: String,
        phase: &'static str,
        command: String,
        status: ExitStatus,
        output: String,
    },
    #[error("Lab {lab}: {phase} (`{command}`) did not finish within {timeout}; it was killed (raise `{phase}.timeout` in the lab file if the machine is slow){}", output_note(output))]
    Timeout {
        lab: String,
        phase: &'static str,
        command: String,
        timeout: Duration,
        output: String,
    },
    #[error("Lab {lab}: {phase} was interrupted")]
    Interrupted { lab: String, phase: &'static str },
    #[error("Lab {lab}: cannot run {phase} (`{command}`)")]
    Spawn {
        lab: String,
        phase: &'static str,
        command: String,
        #[source]
        source: std::io::Error,
    },
}

fn output_note(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; it printed:\n{output}")
    }
}

/// A lab file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    /// Names the machine in reports; default: the file's stem.
    #[serde(default)]
    pub name: Option<String>,
    /// From power-on to the first VM's `state=starting`.
    #[serde(default)]
    pub boot_timeout: Option<Duration>,
    /// Extra environment for every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub deploy: Option<Phase>,
    #[serde(default)]
    pub power_on: Option<Phase>,
    /// A hard reset; when given, it boots the machine instead of `power_on`
    /// (LAVA's `hard_reset_command`), so a machine left running starts fresh.
    #[serde(default)]
    pub reset: Option<Phase>,
    pub power_off: Phase,
    pub console: ConsoleCommand,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub command: String,
    #[serde(default)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleCommand {
    /// Its stdout is the serial line: a serial reader, `telnet`, IPMI SOL,
    /// `labgrid-client console`. It runs for the whole run.
    pub command: String,
}

impl LabConfig {
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let (lab, src): (LabConfig, String) = config::load(file)?;
        if lab.power_on.is_none() && lab.reset.is_none() {
            return Err(ConfigError::at_key(
                file,
                &src,
                &KeyPath::root(),
                "the lab file has no way to boot the machine; expected a [power_on] or a [reset] table",
            ));
        }
        Ok(lab)
    }
}

#[derive(Debug)]
pub struct LabTarget {
    name: String,
    dir: PathBuf,
    lab: LabConfig,
    env: Vec<(String, String)>,
    console: Option<Supervised>,
    console_in: Option<ChildStdin>,
    console_err: Option<File>,
    interrupted: Arc<AtomicBool>,
    echo: bool,
}

impl LabTarget {
    pub fn load(file: &Path, interrupted: Arc<AtomicBool>, echo: bool) -> Result<Self, LabError> {
        let lab = LabConfig::load(file)?;
        let name = lab.name.clone().unwrap_or_else(|| {
            file.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "lab".to_string())
        });
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Ok(LabTarget {
            name,
            dir,
            lab,
            env: Vec::new(),
            console: None,
            console_in: None,
            console_err: None,
            interrupted,
            echo,
        })
    }

    fn command(&self, text: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(text)
            .current_dir(&self.dir)
            .envs(&self.lab.env)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Starts a command in its own process group: terminal signals stay
    /// with kiln, a timeout can kill everything the command started, and
    /// nothing of it outlives kiln. `power_off` is cleanup: a second
    /// Ctrl-C does not cut it short.
    fn spawn(&self, phase: &str, cmd: Command) -> std::io::Result<Supervised> {
        let role = if phase == "power_off" {
            Role::Cleanup
        } else {
            Role::Work
        };
        children::spawn(cmd, ProcessGroup::New, role)
    }

    /// Runs one phase to its end or its timeout. `power_off` is never cut
    /// short by Ctrl-C: it is what makes the machine safe.
    fn run_phase(&self, phase: &'static str, step: &Phase) -> Result<(), LabError> {
        let timeout = step.timeout.unwrap_or(if phase == "deploy" {
            DEPLOY_TIMEOUT
        } else {
            PHASE_TIMEOUT
        });
        let bounded = Bounded {
            lab: &self.name,
            phase,
            command: &step.command,
            timeout,
            role: if phase == "power_off" {
                Role::Cleanup
            } else {
                Role::Work
            },
            interrupted: &self.interrupted,
            echo: self.echo,
        };
        run_bounded(&bounded, self.command(&step.command))
    }
}

/// A lab command run to its end or its timeout.
pub(super) struct Bounded<'a> {
    /// The lab, for messages.
    pub lab: &'a str,
    pub phase: &'static str,
    /// The command as the user knows it, for messages.
    pub command: &'a str,
    pub timeout: Duration,
    /// `Cleanup` (a power-off) is never cut short by Ctrl-C.
    pub role: Role,
    pub interrupted: &'a AtomicBool,
    /// Show what it printed.
    pub echo: bool,
}

/// Runs `cmd` as `b` says, in its own process group (terminal signals stay
/// with kiln, a timeout kills everything it started, nothing of it outlives
/// kiln), its output kept for errors.
pub(super) fn run_bounded(b: &Bounded, mut cmd: Command) -> Result<(), LabError> {
    let spawn_err = |source| LabError::Spawn {
        lab: b.lab.to_string(),
        phase: b.phase,
        command: b.command.to_string(),
        source,
    };
    // Output goes to a file, not a pipe: a command that leaves a daemon
    // behind (QEMU -daemonize, a socat) must not keep kiln reading.
    let mut out = tempfile::tempfile().map_err(spawn_err)?;
    cmd.stdout(out.try_clone().map_err(spawn_err)?)
        .stderr(out.try_clone().map_err(spawn_err)?);
    let mut child = children::spawn(cmd, ProcessGroup::New, b.role).map_err(spawn_err)?;
    let deadline = Instant::now() + b.timeout.get();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) => {}
            Err(e) => break Err(spawn_err(e)),
        }
        if b.role == Role::Work && b.interrupted.load(Ordering::Relaxed) {
            child.stop(std::time::Duration::from_millis(200));
            return Err(LabError::Interrupted {
                lab: b.lab.to_string(),
                phase: b.phase,
            });
        }
        if Instant::now() >= deadline {
            child.stop(std::time::Duration::ZERO);
            return Err(LabError::Timeout {
                lab: b.lab.to_string(),
                phase: b.phase,
                command: b.command.to_string(),
                timeout: b.timeout,
                output: super::tail(&super::read_back(&mut out), 10),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }?;
    // What it left running on purpose (a daemon) is the lab's.
    child.release();
    let output = super::read_back(&mut out);
    if b.echo {
        for line in output.lines() {
            crate::progress::note(format!("{} {}: {line}", b.lab, b.phase));
        }
    }
    if status.success() {
        Ok(())
    } else {
        Err(LabError::Failed {
            lab: b.lab.to_string(),
            phase: b.phase,
            command: b.command.to_string(),
            status,
            output: super::tail(&output, 10),
        })
    }
}

impl Target for LabTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn boot_timeout(&self) -> Option<std::time::Duration> {
        self.lab.boot_timeout.map(Duration::get)
    }

    fn deploy(&mut self, image: &Deployable) -> Result<(), TargetError> {
        let files = BootFiles::from_dir(&image.dir)?;
        let abs = |p: &Path| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        };
        self.env = vec![
            ("KILN_IMAGE".into(), image.name.clone()),
            ("KILN_IMAGE_DIR".into(), abs(&image.dir)),
            ("KILN_KERNEL".into(), abs(&files.kernel)),
            ("KILN_INITRD".into(), abs(&files.initrd)),
            ("KILN_CMDLINE".into(), files.cmdline),
        ];
        if let Some(step) = &self.lab.deploy {
            self.run_phase("deploy", step)?;
        }
        Ok(())
    }

    fn boot(&mut self, _image: &Deployable) -> Result<Console, TargetError> {
        let spawn_err = |source| LabError::Spawn {
            lab: self.name.clone(),
            phase: "console",
            command: self.lab.console.command.clone(),
            source,
        };
        let err = tempfile::tempfile().map_err(spawn_err)?;
        let mut cmd = self.command(&self.lab.console.command);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err.try_clone().map_err(spawn_err)?);
        let mut child = self.spawn("console", cmd).map_err(spawn_err)?;
        let console = child.take_stdout();
        // Held open and silent until stop: interactive clients (telnet,
        // `ipmitool sol activate`, microcom) hang up when their input ends.
        self.console_in = child.take_stdin();
        self.console = Some(child);
        self.console_err = Some(err);
        let console = console.ok_or_else(|| LabError::Spawn {
            lab: self.name.clone(),
            phase: "console",
            command: self.lab.console.command.clone(),
            source: std::io::Error::other("no stdout pipe"),
        })?;
        match (&self.lab.reset, &self.lab.power_on) {
            (Some(reset), _) => self.run_phase("reset", reset)?,
            (None, Some(on)) => self.run_phase("power_on", on)?,
            // LabConfig::load refuses a lab file with neither.
            (None, None) => {}
        }
        Ok(Box::new(console))
    }

    fn why_closed(&mut self) -> String {
        let status = self
            .console
            .as_mut()
            .and_then(|c| c.wait_for(std::time::Duration::from_secs(1)));
        let said = self
            .console_err
            .as_mut()
            .map(|f| super::tail(&super::read_back(f), 5))
            .unwrap_or_default();
        let mut why = match status {
            Some(s) => format!("the console command exited ({s})"),
            None => "the console command closed its output".to_string(),
        };
        if !said.is_empty() {
            why.push_str(&format!(": {}", said.replace('\n', " | ")));
        }
        why
    }

    fn stop(&mut self) -> Result<(), TargetError> {
        let off = self.run_phase("power_off", &self.lab.power_off.clone());
        if let Some(mut console) = self.console.take() {
            console.stop(std::time::Duration::from_millis(500));
        }
        self.console_in = None;
        self.console_err = None;
        Ok(off?)
    }
}

impl Drop for LabTarget {
    fn drop(&mut self) {
        if let Some(mut console) = self.console.take() {
            console.stop(std::time::Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{flag, image};
    use super::*;

    fn lab(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("box.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_lab_file_needs_a_way_to_boot() {
        let d = tempfile::tempdir().unwrap();
        let f = lab(
            d.path(),
            "[power_off]\ncommand = \"true\"\n[console]\ncommand = \"cat\"\n",
        );
        let e = LabTarget::load(&f, flag(), false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("expected a [power_on] or a [reset] table"),
            "{e}"
        );
        let f = lab(
            d.path(),
            "[power_on]\ncommand = \"true\"\ntimeout = 5\n[power_off]\ncommand = \"true\"\n[console]\ncommand = \"cat\"\n",
        );
        let e = LabTarget::load(&f, flag(), false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("key `power_on.timeout`: the number 5 has no unit"),
            "{e}"
        );
    }

    #[test]
    fn phases_see_the_image_and_the_console_sees_the_boot() {
        let d = tempfile::tempdir().unwrap();
        let f = lab(
            d.path(),
            r#"
name = "bench"
env = { GREETING = "hi" }
[deploy]
command = "echo \"$GREETING $KILN_IMAGE $KILN_CMDLINE\" > deployed; test -f \"$KILN_KERNEL\""
[power_on]
command = "echo powered > serial"
[power_off]
command = "echo off >> events"
[console]
command = "while [ ! -s serial ]; do sleep 0.05; done; cat deployed serial"
"#,
        );
        let mut t = LabTarget::load(&f, flag(), false).unwrap();
        assert_eq!(t.name(), "bench");
        let img = image(d.path());
        t.deploy(&img).unwrap();
        let mut console = t.boot(&img).unwrap();
        let mut out = String::new();
        console.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hi img console=ttyS0\npowered\n");
        assert!(t
            .why_closed()
            .starts_with("the console command exited (exit status: 0)"));
        t.stop().unwrap();
        t.stop().unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("events")).unwrap(),
            "off\noff\n",
            "power_off runs on every stop"
        );
    }

    #[test]
    fn a_failing_or_slow_phase_is_reported_with_its_output() {
        let d = tempfile::tempdir().unwrap();
        let f = lab(
            d.path(),
            r#"
[deploy]
command = "echo no tftp server >&2; exit 3"
[reset]
command = "sleep 5"
timeout = "300ms"
[power_off]
command = "true"
[console]
command = "sleep 10"
"#,
        );
        let mut t = LabTarget::load(&f, flag(), false).unwrap();
        let img = image(d.path());
        let e = t.deploy(&img).unwrap_err().to_string();
        assert!(e.starts_with("Lab box: deploy (`echo no tftp"), "{e}");
        assert!(
            e.contains("failed (exit status: 3); it printed:\nno tftp server"),
            "{e}"
        );
        let started = Instant::now();
        let e = t.boot(&img).err().unwrap().to_string();
        assert!(
            e.contains("reset (`sleep 5`) did not finish within 300ms"),
            "{e}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        t.stop().unwrap();
        assert!(t.console.is_none(), "the console is closed on stop");
    }

    #[test]
    fn the_console_input_stays_open_for_the_run() {
        let d = tempfile::tempdir().unwrap();
        let f = lab(
            d.path(),
            "[power_on]\ncommand = \"true\"\n[power_off]\ncommand = \"true\"\n[console]\ncommand = \"cat >/dev/null; echo hung up > ended\"\n",
        );
        let mut t = LabTarget::load(&f, flag(), false).unwrap();
        let img = image(d.path());
        t.deploy(&img).unwrap();
        let _console = t.boot(&img).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            !d.path().join("ended").exists(),
            "a client reading its input (telnet, ipmitool sol) would have hung up"
        );
        t.stop().unwrap();
    }

    #[test]
    fn ctrl_c_cuts_a_phase_short_but_not_power_off() {
        let d = tempfile::tempdir().unwrap();
        let f = lab(
            d.path(),
            "[deploy]\ncommand = \"sleep 5\"\n[power_on]\ncommand = \"true\"\n[power_off]\ncommand = \"sleep 0.2; echo off > off\"\n[console]\ncommand = \"true\"\n",
        );
        let stop = flag();
        let mut t = LabTarget::load(&f, stop.clone(), false).unwrap();
        stop.store(true, Ordering::Relaxed);
        let e = t.deploy(&image(d.path())).unwrap_err().to_string();
        assert_eq!(e, "Lab box: deploy was interrupted");
        t.stop().unwrap();
        assert!(d.path().join("off").is_file());
    }
}
