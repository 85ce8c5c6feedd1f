//! The declarative configuration kiln reads: VM configs (`configs/*.toml`)
//! and the appliance config the runtime finds at `/etc/kiln/appliance.toml`.
//!
//! A VM comes in two forms. The authoring form ([`VmSpec`]) is what users
//! write: sources of every kind (`cargo:`, `debian:`, files, initrds to
//! build) and the `[test]` expectations. The run form ([`VmConfig`]) is what
//! a VMM boots: files only, no `[test]`. `kiln build` resolves the one into
//! the other ([`VmSpec::resolve`]) when it writes the appliance config,
//! which holds run forms only.
//!
//! Builder and runtime share this crate, so `kiln build` checks with the
//! very code that later boots the image: a config that builds also boots.
//! Every error names the file, the line and column, the key and what was
//! expected.

mod appliance;
mod error;
mod locate;
mod pci;
mod run;
mod source;
mod units;
mod vm;

pub use appliance::{ApplianceConfig, ModulesConfig, OnDone, APPLIANCE_PATH};
pub use error::{ConfigError, Located};
pub use locate::{locate, KeyPath};
pub use pci::{Bdf, PciSelector};
pub use run::{BootConfig, VmConfig};
pub use source::{InitrdBuild, InitrdSource, Source};
pub use units::{ByteSize, Duration, MAX_DURATION};
pub use vm::{
    BootInput, BootSpec, ConsoleConfig, LimitsConfig, PciAssignment, RestartConfig, RestartPolicy,
    TestExpectations, VfioBackend, VfioConfig, VmName, VmSpec, VMM_MEMORY_BUDGET,
};

use serde::de::DeserializeOwned;
use std::path::Path;

/// Parses `src` (the text of `file`) into `T`, rejecting unknown keys, with
/// errors located at the offending key.
pub fn parse<T: DeserializeOwned>(file: &Path, src: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(src);
    serde_path_to_error::deserialize(de).map_err(|e| error::from_toml(file, src, e))
}

/// Reads and parses a TOML file.
pub fn load<T: DeserializeOwned>(file: &Path) -> Result<(T, String), ConfigError> {
    let bytes = std::fs::read(file).map_err(|source| ConfigError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let src = text(file, bytes)?;
    let value = parse(file, &src)?;
    Ok((value, src))
}

/// The file's bytes as text; invalid UTF-8 is located at its first byte.
fn text(file: &Path, bytes: Vec<u8>) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let bad = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let valid = String::from_utf8_lossy(bytes.get(..bad).unwrap_or_default());
        ConfigError::Invalid {
            file: file.to_path_buf(),
            at: Located::from_offset(&valid, bad),
            key: String::new(),
            message: format!(
                "byte 0x{:02x} is not UTF-8; expected UTF-8 text, as TOML requires (convert the file, e.g. with iconv)",
                bytes.get(bad).copied().unwrap_or_default()
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_utf8_is_located() {
        let d = std::env::temp_dir().join(format!("kiln-schema-utf8-{}", std::process::id()));
        std::fs::write(&d, b"name = \"a\"\nmemory = \"64\xe9M\"\n").unwrap();
        let e = load::<VmSpec>(&d).unwrap_err().to_string();
        std::fs::remove_file(&d).unwrap();
        assert_eq!(
            e,
            format!(
                "{}:2:13: byte 0xe9 is not UTF-8; expected UTF-8 text, as TOML requires (convert the file, e.g. with iconv)",
                d.display()
            )
        );
    }
}
