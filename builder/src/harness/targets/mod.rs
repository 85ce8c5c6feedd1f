//! Where `kiln test` boots an image: the emulated target (QEMU), a lab
//! machine driven by the user's commands, or a recorded console replayed.
//!
//! Every target follows the same life: `deploy` the image, `boot` it (which
//! opens the console before powering on, so no output is lost), and `stop`
//! it. The harness calls `stop` after every `deploy`, whatever happened.

pub mod command;
pub mod labgrid;
pub mod lava_log;
pub mod qemu;
pub mod replay;

use crate::image::TargetSection;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// The console: the target's serial output as a byte stream.
pub type Console = Box<dyn Read + Send>;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Qemu(#[from] crate::emulator::QemuError),
    #[error(transparent)]
    Lab(#[from] command::LabError),
    #[error("Cannot start {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot read the recorded console {}; expected a console log such as FILE.console.log from an earlier `kiln test`", path.display())]
    Replay {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot read the LAVA job log {}", path.display())]
    LavaLog {
        path: PathBuf,
        #[source]
        source: lava_log::LavaLogError,
    },
    #[error(transparent)]
    Labgrid(#[from] labgrid::LabgridError),
}

/// The image a target boots: a built output directory.
#[derive(Debug, Clone)]
pub struct Deployable {
    pub name: String,
    pub dir: PathBuf,
    /// The emulated machine's shape (memory, CPUs, devices) from the image.
    pub machine: TargetSection,
}

/// A machine `kiln test` can boot an image on.
pub trait Target {
    /// Names the target in reports (`qemu`, the lab machine's name, `replay`).
    fn name(&self) -> &str;

    /// Facts for the report, e.g. the accelerator.
    fn properties(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The boot timeout the target's own definition asks for.
    fn boot_timeout(&self) -> Option<Duration> {
        None
    }

    /// Puts the image where the machine boots it from.
    fn deploy(&mut self, image: &Deployable) -> Result<(), TargetError>;

    /// Opens the console, then powers the machine on.
    fn boot(&mut self, image: &Deployable) -> Result<Console, TargetError>;

    /// A recorded console that kept each line's time since power-on (a LAVA
    /// job log): its lines (without their `\n`), for the judge to read on
    /// that clock instead of `boot`'s stream. Asked after `boot`.
    fn timeline(&mut self) -> Option<Vec<(Duration, Vec<u8>)>> {
        None
    }

    /// Why the console ended, when it ended before the run did.
    fn why_closed(&mut self) -> String {
        "end of the console stream".to_string()
    }

    /// Powers off and closes the console; safe to call in any state.
    fn stop(&mut self) -> Result<(), TargetError>;
}

/// Which target the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    Qemu(crate::emulator::Accel),
    /// A lab file (TOML).
    Lab(PathBuf),
    /// A recorded console log (or a LAVA job log), judged again.
    Replay(PathBuf),
    /// A labgrid environment, and the place to acquire for the run.
    Labgrid {
        env: PathBuf,
        place: Option<String>,
    },
}

impl TargetSpec {
    /// `qemu`; `replay:LOG`; `labgrid:ENV[:PLACE]`; a path to a lab file; or
    /// NAME for `labs/NAME.toml`.
    pub fn parse(text: &str, accel: crate::emulator::Accel) -> TargetSpec {
        if text == "qemu" {
            return TargetSpec::Qemu(accel);
        }
        if let Some(log) = text.strip_prefix("replay:") {
            return TargetSpec::Replay(PathBuf::from(log));
        }
        if let Some(rest) = text.strip_prefix("labgrid:") {
            let (env, place) = labgrid::parse_spec(rest);
            return TargetSpec::Labgrid { env, place };
        }
        let path = Path::new(text);
        if path.extension().is_some_and(|e| e == "toml") || text.contains('/') {
            TargetSpec::Lab(path.to_path_buf())
        } else {
            TargetSpec::Lab(Path::new("labs").join(format!("{text}.toml")))
        }
    }
}

/// Opens the target `spec` names. `interrupted` lets long lab commands stop
/// early on Ctrl-C; `echo` shows what lab commands print.
pub fn open(
    spec: &TargetSpec,
    interrupted: Arc<AtomicBool>,
    echo: bool,
) -> Result<Box<dyn Target>, TargetError> {
    Ok(match spec {
        TargetSpec::Qemu(accel) => Box::new(qemu::QemuTarget::new(*accel)?),
        TargetSpec::Lab(file) => Box::new(command::LabTarget::load(file, interrupted, echo)?),
        TargetSpec::Replay(log) => Box::new(replay::ReplayTarget::new(log)),
        TargetSpec::Labgrid { env, place } => Box::new(labgrid::LabgridTarget::open(
            env,
            place.clone(),
            interrupted,
            echo,
        )?),
    })
}

/// The last `n` lines of a command's output, for error messages.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let skip = lines.len().saturating_sub(n);
    lines.into_iter().skip(skip).collect::<Vec<_>>().join("\n")
}

/// Reads what a child wrote into an anonymous temporary file.
pub(crate) fn read_back(file: &mut std::fs::File) -> String {
    use std::io::{Seek, SeekFrom};
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(0)).is_ok() {
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What the lab targets' tests share: an image to deploy and a stop flag.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::Deployable;
    use std::path::Path;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// A built image's files (their contents are never booted) under `dir`.
    pub(crate) fn image(dir: &Path) -> Deployable {
        let img = dir.join("img");
        std::fs::create_dir_all(&img).unwrap();
        std::fs::write(img.join("vmlinuz"), b"k").unwrap();
        std::fs::write(img.join("initramfs.cpio.zst"), b"i").unwrap();
        std::fs::write(img.join("cmdline"), b"console=ttyS0\n").unwrap();
        Deployable {
            name: "img".into(),
            dir: img,
            machine: Default::default(),
        }
    }

    /// A stop flag nobody raises.
    pub(crate) fn flag() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::Accel;

    #[test]
    fn target_names() {
        assert_eq!(
            TargetSpec::parse("qemu", Accel::Tcg),
            TargetSpec::Qemu(Accel::Tcg)
        );
        assert_eq!(
            TargetSpec::parse("rack3-box1", Accel::Tcg),
            TargetSpec::Lab("labs/rack3-box1.toml".into())
        );
        assert_eq!(
            TargetSpec::parse("tests/lab/fake-qemu-lab.toml", Accel::Tcg),
            TargetSpec::Lab("tests/lab/fake-qemu-lab.toml".into())
        );
        assert_eq!(
            TargetSpec::parse("replay:out/r.xml.console.log", Accel::Tcg),
            TargetSpec::Replay("out/r.xml.console.log".into())
        );
        assert_eq!(
            TargetSpec::parse("labgrid:lab/box.yaml:box1", Accel::Tcg),
            TargetSpec::Labgrid {
                env: "lab/box.yaml".into(),
                place: Some("box1".into())
            }
        );
    }

    #[test]
    fn tail_keeps_the_last_nonblank_lines() {
        assert_eq!(tail("a\n\nb\nc\n\n", 2), "b\nc");
        assert_eq!(tail("", 3), "");
    }
}
