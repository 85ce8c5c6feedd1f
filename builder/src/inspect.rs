//! TODO(skeleton): placeholder API; the archive branch replaces this file.
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("inspect")]
pub struct InspectError;

pub fn inspect(_: &Path, _: bool, _: &mut dyn Write) -> Result<(), InspectError> {
    Ok(())
}
