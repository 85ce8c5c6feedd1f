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
    let src = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let value = parse(file, &src)?;
    Ok((value, src))
}
