//! TODO(skeleton): placeholder API; the archive branch replaces this file.
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("cpio")]
pub struct CpioError;

#[derive(Default)]
pub struct Archive;

impl Archive {
    pub fn new() -> Self {
        Archive
    }
    pub fn add_dir(&mut self, _: &str, _: u32) {}
    pub fn add_file(&mut self, _: &str, _: &Path, _: u32) {}
    pub fn add_bytes(&mut self, _: &str, _: Vec<u8>, _: u32) {}
    pub fn add_char_device(&mut self, _: &str, _: u32, _: u32, _: u32) {}
    pub fn write<W: Write>(&self, _: W, _: u32) -> Result<u64, CpioError> {
        Ok(0)
    }
}
