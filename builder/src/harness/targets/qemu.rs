//! The emulated target: the image booted under QEMU exactly as `kiln run`
//! boots it, with the serial console on a pipe instead of the terminal.

use super::{Console, Deployable, Target, TargetError};
use crate::children::{self, ProcessGroup, Role, Supervised};
use crate::emulator::{self, Accel, BootFiles};
use std::fs::File;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

#[derive(Debug)]
pub struct QemuTarget {
    qemu: PathBuf,
    accel: Accel,
    child: Option<Supervised>,
    /// QEMU's own messages (bad arguments, missing firmware), for errors.
    stderr: Option<File>,
}

impl QemuTarget {
    pub fn new(accel: Accel) -> Result<Self, TargetError> {
        Ok(QemuTarget {
            qemu: emulator::find()?,
            accel,
            child: None,
            stderr: None,
        })
    }
}

impl Target for QemuTarget {
    fn name(&self) -> &str {
        "qemu"
    }

    fn properties(&self) -> Vec<(String, String)> {
        vec![("accel".to_string(), self.accel.as_str().to_string())]
    }

    fn deploy(&mut self, image: &Deployable) -> Result<(), TargetError> {
        // Nothing to copy: QEMU boots the files where they are.
        BootFiles::from_dir(&image.dir)?;
        Ok(())
    }

    fn boot(&mut self, image: &Deployable) -> Result<Console, TargetError> {
        self.stop()?;
        let files = BootFiles::from_dir(&image.dir)?;
        let spawn_err = |source| TargetError::Spawn {
            what: format!("{}", self.qemu.display()),
            source,
        };
        let errfile = tempfile::tempfile().map_err(spawn_err)?;
        let mut cmd = emulator::command(&self.qemu, &files, &image.machine, self.accel);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(errfile.try_clone().map_err(spawn_err)?);
        // Its own process group: Ctrl-C on the terminal reaches kiln alone,
        // which then stops QEMU and still writes the report; and QEMU dies
        // with kiln whatever kills it.
        let mut child = children::spawn(cmd, ProcessGroup::New, Role::Work).map_err(spawn_err)?;
        let console = child.take_stdout().ok_or_else(|| TargetError::Spawn {
            what: "QEMU's console pipe".into(),
            source: std::io::Error::other("no stdout pipe"),
        })?;
        self.child = Some(child);
        self.stderr = Some(errfile);
        Ok(Box::new(console))
    }

    fn why_closed(&mut self) -> String {
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.wait_for(Duration::from_secs(2)));
        let said = self
            .stderr
            .as_mut()
            .map(|f| super::tail(&super::read_back(f), 5))
            .unwrap_or_default();
        let mut why = match status {
            Some(s) => format!("QEMU exited ({s})"),
            None => "QEMU closed its console".to_string(),
        };
        if !said.is_empty() {
            why.push_str(&format!(": {}", said.replace('\n', " | ")));
        }
        why
    }

    fn stop(&mut self) -> Result<(), TargetError> {
        if let Some(mut child) = self.child.take() {
            // Nothing inside is worth a clean shutdown: the run is judged.
            child.stop(Duration::from_millis(500));
        }
        Ok(())
    }
}

impl Drop for QemuTarget {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
