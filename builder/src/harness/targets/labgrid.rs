//! A machine driven by labgrid: `--target labgrid:ENV[:PLACE]`.
//!
//! ENV is a labgrid environment (the YAML `pytest --lg-env` takes): a local
//! target (e.g. labgrid's `QEMUDriver`, as `kiln labgrid-env` writes) or a
//! `RemotePlace` reached through a coordinator. kiln drives it through
//! labgrid's Python API with a small bridge script (`labgrid_bridge.py`),
//! run by the Python that runs `labgrid-client` (found on PATH):
//!
//! - deploy: with PLACE, `labgrid-client -p PLACE acquire` (released at
//!   stop) and `LG_PLACE=PLACE` for the environment's `!template`; then the
//!   environment's deploy hook, the shell command of its option
//!   `kiln-deploy`, run in its folder;
//! - boot: the bridge opens the console (`ConsoleProtocol`), power-cycles
//!   the target (`PowerProtocol`) and copies the console to kiln;
//! - stop: kiln closes the bridge's input; it powers off and exits (a
//!   bridge that does not is killed, and powered off by a bridge of its own).
//!
//! The image reaches the environment through the process environment:
//! `KILN_IMAGE`, `KILN_IMAGE_DIR`, `KILN_KERNEL`, `KILN_INITRD`,
//! `KILN_CMDLINE`, `KILN_IMAGE_DIGEST` (labgrid expands `$VAR` in `images`
//! and `paths`), and the same as `LG_KILN_*` for `!template`.

use super::command::{run_bounded, Bounded, LabError};
use super::{Console, Deployable, Target, TargetError};
use crate::children::{self, ProcessGroup, Role, Supervised};
use crate::emulator::BootFiles;
use kiln_schema::config::Duration;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The bridge kiln runs with labgrid's Python.
const BRIDGE: &str = include_str!("labgrid_bridge.py");
/// The line the bridge prints on stderr once the target is powered on.
const POWERED_ON: &str = "kiln-labgrid-bridge: powered on";
/// labgrid's command-line client, whose Python runs the bridge.
const CLIENT: &str = "labgrid-client";

const DEPLOY_TIMEOUT: Duration = Duration::secs(600);
const PHASE_TIMEOUT: Duration = Duration::secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LabgridError {
    #[error("labgrid is not installed: {CLIENT} is not on PATH; install it (e.g. `python3 -m venv lg && lg/bin/pip install labgrid`) and put its bin folder on PATH")]
    NotInstalled,
    #[error("Cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot write kiln's labgrid bridge script")]
    Bridge(#[source] std::io::Error),
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("labgrid ({}) did not power the target on{}", env.display(), said(output))]
    PowerOn { env: PathBuf, output: String },
    #[error("labgrid ({}) did not power the target on within {timeout}; it was stopped{}", env.display(), said(output))]
    PowerOnTimeout {
        env: PathBuf,
        timeout: Duration,
        output: String,
    },
    #[error("labgrid ({}): powering on was interrupted", env.display())]
    Interrupted { env: PathBuf },
}

fn said(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; it printed:\n{output}")
    }
}

/// `labgrid:ENV` or `labgrid:ENV:PLACE` (a PLACE follows an ENV ending in
/// `.yaml` or `.yml`).
pub fn parse_spec(text: &str) -> (PathBuf, Option<String>) {
    if let Some((env, place)) = text.rsplit_once(':') {
        if (env.ends_with(".yaml") || env.ends_with(".yml")) && !place.is_empty() {
            return (PathBuf::from(env), Some(place.to_string()));
        }
    }
    (PathBuf::from(text), None)
}

#[derive(Debug)]
pub struct LabgridTarget {
    name: String,
    /// Absolute.
    env_file: PathBuf,
    place: Option<String>,
    client: PathBuf,
    python: PathBuf,
    /// The bridge script, for the target's life.
    bridge: tempfile::NamedTempFile,
    /// The image, as the bridge's environment.
    image_env: Vec<(String, String)>,
    acquired: bool,
    run: Option<Supervised>,
    run_in: Option<ChildStdin>,
    run_err: Option<File>,
    interrupted: Arc<AtomicBool>,
    echo: bool,
}

impl LabgridTarget {
    pub fn open(
        env_file: &Path,
        place: Option<String>,
        interrupted: Arc<AtomicBool>,
        echo: bool,
    ) -> Result<Self, LabgridError> {
        let client = find_on_path(CLIENT).ok_or(LabgridError::NotInstalled)?;
        Self::with_client(env_file, place, client, interrupted, echo)
    }

    /// [`LabgridTarget::open`] with labgrid's client at `client`.
    fn with_client(
        env_file: &Path,
        place: Option<String>,
        client: PathBuf,
        interrupted: Arc<AtomicBool>,
        echo: bool,
    ) -> Result<Self, LabgridError> {
        let env_file = std::fs::canonicalize(env_file).map_err(|source| LabgridError::Read {
            path: env_file.to_path_buf(),
            source,
        })?;
        let python = python_of(&client)?;
        let mut bridge = tempfile::Builder::new()
            .prefix("kiln-labgrid-bridge-")
            .suffix(".py")
            .tempfile()
            .map_err(LabgridError::Bridge)?;
        bridge
            .write_all(BRIDGE.as_bytes())
            .and_then(|()| bridge.flush())
            .map_err(LabgridError::Bridge)?;
        let name = match &place {
            Some(p) => p.clone(),
            None => env_file
                .file_stem()
                .map_or("labgrid".to_string(), |s| s.to_string_lossy().into_owned()),
        };
        Ok(LabgridTarget {
            name,
            env_file,
            place,
            client,
            python,
            bridge,
            image_env: Vec::new(),
            acquired: false,
            run: None,
            run_in: None,
            run_err: None,
            interrupted,
            echo,
        })
    }

    /// A command with the image and the place in its environment, run in
    /// the environment file's folder.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.env_file.parent().unwrap_or(Path::new("/")))
            .envs(self.image_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if let Some(p) = &self.place {
            cmd.env("LG_PLACE", p);
        }
        cmd
    }

    fn bridge(&self, mode: &str) -> Command {
        let mut cmd = self.command(&self.python);
        cmd.arg(self.bridge.path()).arg(mode).arg(&self.env_file);
        cmd
    }

    fn bounded(
        &self,
        phase: &'static str,
        what: &str,
        cmd: Command,
        timeout: Duration,
        role: Role,
    ) -> Result<(), LabError> {
        run_bounded(
            &Bounded {
                lab: &self.name,
                phase,
                command: what,
                timeout,
                role,
                interrupted: &self.interrupted,
                echo: self.echo,
            },
            cmd,
        )
    }

    fn client(&self, verb: &str) -> (String, Command) {
        let place = self.place.clone().unwrap_or_default();
        let mut cmd = self.command(&self.client);
        cmd.args(["-p", &place, verb]);
        (format!("{CLIENT} -p {place} {verb}"), cmd)
    }

    /// The bridge's stderr so far.
    fn bridge_said(&mut self) -> String {
        self.run_err
            .as_mut()
            .map(super::read_back)
            .unwrap_or_default()
    }

    /// Waits for the bridge to say the target is on.
    fn await_power_on(&mut self) -> Result<(), LabgridError> {
        let deadline = Instant::now() + PHASE_TIMEOUT.get();
        loop {
            let said = self.bridge_said();
            if said.lines().any(|l| l == POWERED_ON) {
                return Ok(());
            }
            let exited = match self.run.as_mut() {
                Some(run) => !matches!(run.try_wait(), Ok(None)),
                None => true,
            };
            if exited {
                return Err(LabgridError::PowerOn {
                    env: self.env_file.clone(),
                    output: super::tail(&said, 10),
                });
            }
            if self.interrupted.load(Ordering::Relaxed) {
                return Err(LabgridError::Interrupted {
                    env: self.env_file.clone(),
                });
            }
            if Instant::now() >= deadline {
                return Err(LabgridError::PowerOnTimeout {
                    env: self.env_file.clone(),
                    timeout: PHASE_TIMEOUT,
                    output: super::tail(&said, 10),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Ends the bridge: its input closed, it powers off and exits; one that
    /// does not is killed and the target powered off by another.
    fn stop_bridge(&mut self) -> Result<(), LabError> {
        self.run_in = None;
        let Some(mut run) = self.run.take() else {
            return Ok(());
        };
        let status = run.wait_for(PHASE_TIMEOUT.get());
        run.stop(std::time::Duration::from_millis(500));
        // A bridge that exited by itself powered off on its way out (or
        // never powered on); one killed by a signal or stopped here did not.
        if status.is_some_and(|s| s.code().is_some()) {
            return Ok(());
        }
        let what = format!(
            "kiln's labgrid bridge: power off {}",
            self.env_file.display()
        );
        self.bounded(
            "power_off",
            &what,
            self.bridge("off"),
            PHASE_TIMEOUT,
            Role::Cleanup,
        )
    }
}

impl Target for LabgridTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn properties(&self) -> Vec<(String, String)> {
        let mut p = vec![(
            "labgrid.env".to_string(),
            self.env_file.display().to_string(),
        )];
        if let Some(place) = &self.place {
            p.push(("labgrid.place".to_string(), place.clone()));
        }
        p
    }

    fn deploy(&mut self, image: &Deployable) -> Result<(), TargetError> {
        let files = BootFiles::from_dir(&image.dir)?;
        let abs = |p: &Path| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        };
        let digest = std::fs::read(image.dir.join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<crate::manifest::Manifest>(&b).ok())
            .and_then(|m| {
                let initrd = files.initrd.file_name()?.to_string_lossy().into_owned();
                let a = m.artifacts.into_iter().find(|a| a.file == initrd)?;
                Some(format!("sha256:{}", a.sha256))
            })
            .unwrap_or_default();
        let vars = [
            ("IMAGE", image.name.clone()),
            ("IMAGE_DIR", abs(&image.dir)),
            ("KERNEL", abs(&files.kernel)),
            ("INITRD", abs(&files.initrd)),
            ("CMDLINE", files.cmdline.clone()),
            ("IMAGE_DIGEST", digest),
        ];
        self.image_env = vars
            .iter()
            .flat_map(|(k, v)| {
                [
                    (format!("KILN_{k}"), v.clone()),
                    (format!("LG_KILN_{k}"), v.clone()),
                ]
            })
            .collect();
        if self.place.is_some() && !self.acquired {
            let (what, cmd) = self.client("acquire");
            self.bounded("acquire", &what, cmd, PHASE_TIMEOUT, Role::Work)?;
            self.acquired = true;
        }
        let what = format!("kiln's labgrid bridge: deploy {}", self.env_file.display());
        self.bounded(
            "deploy",
            &what,
            self.bridge("deploy"),
            DEPLOY_TIMEOUT,
            Role::Work,
        )?;
        Ok(())
    }

    fn boot(&mut self, _image: &Deployable) -> Result<Console, TargetError> {
        let spawn_err = |source| TargetError::Spawn {
            what: format!("kiln's labgrid bridge ({})", self.python.display()),
            source,
        };
        let err = tempfile::tempfile().map_err(spawn_err)?;
        let mut cmd = self.bridge("run");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err.try_clone().map_err(spawn_err)?);
        let mut child = children::spawn(cmd, ProcessGroup::New, Role::Work).map_err(spawn_err)?;
        let console = child.take_stdout();
        // Closed at stop: the bridge's cue to power off.
        self.run_in = child.take_stdin();
        self.run = Some(child);
        self.run_err = Some(err);
        let console = console.ok_or_else(|| TargetError::Spawn {
            what: "kiln's labgrid bridge's console pipe".into(),
            source: std::io::Error::other("no stdout pipe"),
        })?;
        self.await_power_on()?;
        Ok(Box::new(console))
    }

    fn why_closed(&mut self) -> String {
        let status = self
            .run
            .as_mut()
            .and_then(|c| c.wait_for(std::time::Duration::from_secs(1)));
        let said = super::tail(&self.bridge_said(), 5);
        let mut why = match status {
            Some(s) => format!("kiln's labgrid bridge exited ({s})"),
            None => "kiln's labgrid bridge closed the console".to_string(),
        };
        if !said.is_empty() {
            why.push_str(&format!(": {}", said.replace('\n', " | ")));
        }
        why
    }

    fn stop(&mut self) -> Result<(), TargetError> {
        let off = self.stop_bridge();
        self.run_err = None;
        let released = if self.acquired {
            self.acquired = false;
            let (what, cmd) = self.client("release");
            self.bounded("release", &what, cmd, PHASE_TIMEOUT, Role::Cleanup)
        } else {
            Ok(())
        };
        off.and(released)
            .map_err(|e| TargetError::Labgrid(e.into()))
    }
}

impl Drop for LabgridTarget {
    fn drop(&mut self) {
        if let Some(mut run) = self.run.take() {
            run.stop(std::time::Duration::ZERO);
        }
    }
}

/// `program` in a folder of PATH.
fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The Python that runs `client`: its `#!` line's interpreter (through
/// `env` when it names one), else the `python3` beside it.
fn python_of(client: &Path) -> Result<PathBuf, LabgridError> {
    let text = std::fs::read(client).map_err(|source| LabgridError::Read {
        path: client.to_path_buf(),
        source,
    })?;
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    if let Some(line) = first.strip_prefix("#!") {
        let mut words = line.split_whitespace();
        if let Some(interp) = words.next() {
            let interp = if Path::new(interp).file_name().is_some_and(|n| n == "env") {
                words.find(|w| !w.starts_with('-')).unwrap_or("python3")
            } else {
                interp
            };
            let p = PathBuf::from(interp);
            if p.is_absolute() {
                return Ok(p);
            }
            return Ok(find_on_path(interp).unwrap_or(p));
        }
    }
    Ok(client.with_file_name("python3"))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{flag, image};
    use super::*;

    #[test]
    fn a_place_follows_a_yaml_environment() {
        assert_eq!(
            parse_spec("lab/env.yaml:rack3-box1"),
            ("lab/env.yaml".into(), Some("rack3-box1".into()))
        );
        assert_eq!(
            parse_spec("env.yml:p"),
            ("env.yml".into(), Some("p".into()))
        );
        assert_eq!(parse_spec("lab/env.yaml"), ("lab/env.yaml".into(), None));
        assert_eq!(parse_spec("c:/env"), ("c:/env".into(), None));
    }

    #[test]
    fn the_python_of_a_client_is_its_interpreter() {
        let d = tempfile::tempdir().unwrap();
        let venv = d.path().join("bin/labgrid-client");
        std::fs::create_dir_all(venv.parent().unwrap()).unwrap();
        std::fs::write(&venv, "#!/opt/lg/bin/python3\nimport sys\n").unwrap();
        assert_eq!(
            python_of(&venv).unwrap(),
            PathBuf::from("/opt/lg/bin/python3")
        );
        std::fs::write(&venv, "#!/usr/bin/env -S python3 -u\n").unwrap();
        let p = python_of(&venv).unwrap();
        assert!(p.ends_with("python3"), "{}", p.display());
        std::fs::write(&venv, "ELF").unwrap();
        assert_eq!(python_of(&venv).unwrap(), d.path().join("bin/python3"));
    }

    /// A labgrid installation made of shell scripts: its "Python" (the
    /// interpreter `labgrid-client` names) plays the bridge as `script`
    /// says, and runs the client itself (`$2` is then not a mode).
    fn fake_labgrid(dir: &Path, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let exe = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let python = exe("python3", &format!("#!/bin/sh\n{script}"));
        exe("labgrid-client", &format!("#!{}\n", python.display()))
    }

    #[test]
    fn the_console_flows_until_kiln_closes_the_bridges_input() {
        use std::io::Read;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let env = dir.join("box.yaml");
        std::fs::write(&env, "targets: {}\n").unwrap();
        let client = fake_labgrid(
            dir,
            &format!(
                r#"cd {dir}
case "$2" in
deploy) echo "$KILN_IMAGE $LG_KILN_CMDLINE $LG_PLACE $(basename "$3")" > deployed ;;
run) echo "kiln-labgrid-bridge: powered on" >&2; printf 'kiln: vm=a state=starting
'; cat >/dev/null; echo off > off ;;
*) shift; echo "$@" >> client.log ;;
esac
"#,
                dir = dir.display()
            ),
        );
        let mut t =
            LabgridTarget::with_client(&env, Some("box1".into()), client, flag(), false).unwrap();
        assert_eq!(t.name(), "box1");
        let img = image(dir);
        t.deploy(&img).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("deployed")).unwrap(),
            "img console=ttyS0 box1 box.yaml\n"
        );
        let mut console = t.boot(&img).unwrap();
        let mut line = [0u8; 26];
        console.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"kiln: vm=a state=starting\n");
        assert!(!dir.join("off").exists(), "the bridge waits for kiln");
        t.stop().unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("off")).unwrap(), "off\n");
        assert_eq!(
            std::fs::read_to_string(dir.join("client.log")).unwrap(),
            "-p box1 acquire\n-p box1 release\n",
            "the place is acquired for the run and released after"
        );
    }

    #[test]
    fn a_bridge_that_cannot_power_on_is_a_target_error() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let env = dir.join("box.yaml");
        std::fs::write(&env, "targets: {}\n").unwrap();
        let client = fake_labgrid(
            dir,
            r#"case "$2" in
run) echo "kiln-labgrid-bridge: box.yaml has no target 'main'" >&2; exit 2 ;;
esac
"#,
        );
        let mut t = LabgridTarget::with_client(&env, None, client, flag(), false).unwrap();
        assert_eq!(t.name(), "box");
        let img = image(dir);
        t.deploy(&img).unwrap();
        let e = t.boot(&img).err().unwrap().to_string();
        assert!(e.contains("did not power the target on"), "{e}");
        assert!(e.contains("has no target 'main'"), "{e}");
        t.stop().unwrap();
    }

    #[test]
    fn the_bridge_knows_its_marker() {
        assert!(BRIDGE.contains("POWERED_ON = \"powered on\""));
        assert!(POWERED_ON.ends_with("powered on"));
        assert!(BRIDGE.contains("def say(msg):\n    print(f\"kiln-labgrid-bridge: {msg}\""));
    }
}
