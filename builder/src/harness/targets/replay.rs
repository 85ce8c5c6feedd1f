//! A recorded console judged again: `--target replay:LOG` reads a console
//! log (e.g. the `FILE.console.log` of an earlier run, or a lab's serial
//! capture) instead of booting anything. It re-checks changed expectations
//! without a machine, and lets kiln's own tests drive the whole command.
//!
//! A LAVA job log (`output.yaml`, plain or xz, or what `lava-run` printed)
//! is recognised by its records and read as the device's console
//! ([`super::lava_log`]), on the clock of its records' times, so a VM's
//! timeout and the boot and run timeouts fall as they did in the job; the
//! run is reported on the target `lava`, with LAVA's own results as facts
//! beside kiln's verdicts.

use super::lava_log::{self, LavaLog};
use super::{Console, Deployable, Target, TargetError};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct ReplayTarget {
    log: PathBuf,
    /// The file is a LAVA job log.
    lava: bool,
    /// What the LAVA log said, once read.
    lava_log: Option<LavaLog>,
}

impl ReplayTarget {
    pub fn new(log: &Path) -> Self {
        let mut head = Vec::new();
        // A file that cannot be read is reported by `boot`.
        if let Ok(f) = std::fs::File::open(log) {
            let _ = f.take(4096).read_to_end(&mut head);
        }
        ReplayTarget {
            log: log.to_path_buf(),
            lava: lava_log::is_lava_log(&head),
            lava_log: None,
        }
    }

    fn read_error(&self, source: std::io::Error) -> TargetError {
        TargetError::Replay {
            path: self.log.clone(),
            source,
        }
    }
}

impl Target for ReplayTarget {
    fn name(&self) -> &str {
        if self.lava {
            "lava"
        } else {
            "replay"
        }
    }

    fn properties(&self) -> Vec<(String, String)> {
        let mut props = vec![("replay".to_string(), self.log.display().to_string())];
        if let Some(log) = &self.lava_log {
            props.push((
                "lava.job".to_string(),
                log.job_result().unwrap_or("incomplete").to_string(),
            ));
            // The monitors' opinion, for the record: kiln's verdicts rule.
            for (definition, case, result) in &log.results {
                if definition != "lava" {
                    props.push((format!("lava.{definition}.{case}"), result.clone()));
                }
            }
        }
        props
    }

    fn deploy(&mut self, _image: &Deployable) -> Result<(), TargetError> {
        Ok(())
    }

    fn boot(&mut self, _image: &Deployable) -> Result<Console, TargetError> {
        if !self.lava {
            let file = std::fs::File::open(&self.log).map_err(|e| self.read_error(e))?;
            return Ok(Box::new(file));
        }
        let bytes = std::fs::read(&self.log).map_err(|e| self.read_error(e))?;
        let log = lava_log::parse(bytes).map_err(|source| TargetError::LavaLog {
            path: self.log.clone(),
            source,
        })?;
        let console = std::io::Cursor::new(log.console.clone());
        self.lava_log = Some(log);
        Ok(Box::new(console))
    }

    fn timeline(&mut self) -> Option<Vec<(std::time::Duration, Vec<u8>)>> {
        self.lava_log.as_ref().map(|log| log.timeline.clone())
    }

    fn why_closed(&mut self) -> String {
        if self.lava {
            format!("end of the LAVA job's log {}", self.log.display())
        } else {
            format!("end of the recorded console {}", self.log.display())
        }
    }

    fn stop(&mut self) -> Result<(), TargetError> {
        Ok(())
    }
}
