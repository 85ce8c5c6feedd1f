//! A recorded console judged again: `--target replay:LOG` reads a console
//! log (e.g. the `FILE.console.log` of an earlier run, or a lab's serial
//! capture) instead of booting anything. It re-checks changed expectations
//! without a machine, and lets kiln's own tests drive the whole command.

use super::{Console, Deployable, Target, TargetError};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct ReplayTarget {
    log: PathBuf,
}

impl ReplayTarget {
    pub fn new(log: &Path) -> Self {
        ReplayTarget {
            log: log.to_path_buf(),
        }
    }
}

impl Target for ReplayTarget {
    fn name(&self) -> &str {
        "replay"
    }

    fn properties(&self) -> Vec<(String, String)> {
        vec![("replay".to_string(), self.log.display().to_string())]
    }

    fn deploy(&mut self, _image: &Deployable) -> Result<(), TargetError> {
        Ok(())
    }

    fn boot(&mut self, _image: &Deployable) -> Result<Console, TargetError> {
        let file = std::fs::File::open(&self.log).map_err(|source| TargetError::Replay {
            path: self.log.clone(),
            source,
        })?;
        Ok(Box::new(file))
    }

    fn why_closed(&mut self) -> String {
        format!("end of the recorded console {}", self.log.display())
    }

    fn stop(&mut self) -> Result<(), TargetError> {
        Ok(())
    }
}
