//! TODO(skeleton): placeholder API; the archive branch replaces this file.
use serde::{Deserialize, Serialize};
use std::io::{self, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
    Lz4,
}

impl Compression {
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => "gz",
            Compression::Zstd => "zst",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(format!("unknown compression {s}")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unsupported")]
pub struct CompressError;

pub fn check_kernel_support(_: Compression, _: impl Fn(&str) -> bool) -> Result<(), CompressError> {
    Ok(())
}

pub struct Encoder<W: Write>(W);

impl<W: Write> Encoder<W> {
    pub fn new(_: Compression, _: Option<i32>, out: W) -> io::Result<Self> {
        Ok(Encoder(out))
    }
    pub fn finish(self) -> io::Result<W> {
        Ok(self.0)
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
