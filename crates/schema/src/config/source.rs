//! Where a guest's kernel or initrd comes from, as a VM config names it.
//! The runtime only ever boots files (the run form has paths only); the
//! other kinds are resolved by `kiln build`, which puts them in the image
//! and names their paths there.

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A file, relative to the config that names it.
    Path(PathBuf),
    /// `cargo:<package>`: a binary built from the workspace holding the config.
    Cargo(String),
    /// `debian:<package>`: the kernel of a Debian kernel package.
    Debian(String),
}

impl Source {
    pub fn parse(text: &str) -> Result<Self, String> {
        let nonempty = |kind: &str, v: &str| {
            if v.trim().is_empty() {
                Err(format!(
                    "\"{text}\" names no {kind} package after the colon"
                ))
            } else {
                Ok(v.trim().to_string())
            }
        };
        if let Some(p) = text.strip_prefix("cargo:") {
            return nonempty("cargo", p).map(Source::Cargo);
        }
        if let Some(p) = text.strip_prefix("debian:") {
            return nonempty("Debian", p).map(Source::Debian);
        }
        if text.trim().is_empty() {
            return Err("expected a file path, \"cargo:<package>\" or \"debian:<package>\", found an empty string".into());
        }
        Ok(Source::Path(PathBuf::from(text)))
    }

    pub fn as_path(&self) -> Option<&std::path::Path> {
        match self {
            Source::Path(p) => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Path(p) => write!(f, "{}", p.display()),
            Source::Cargo(p) => write!(f, "cargo:{p}"),
            Source::Debian(p) => write!(f, "debian:{p}"),
        }
    }
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Source;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a file path, \"cargo:<package>\" or \"debian:<package>\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Source, E> {
                Source::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A guest initrd: a ready file, or one kiln builds around a single binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitrdSource {
    File(Source),
    Build(InitrdBuild),
}

/// `initrd = { init = "cargo:kiln-guest-init" }`: an initramfs whose only
/// content is `init` as `/init`, written by kiln's own cpio writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitrdBuild {
    pub init: Source,
    /// Compression of the built archive (`none`, `gzip`, `zstd`, `xz`, `lz4`).
    #[serde(default = "default_guest_compression")]
    pub compression: String,
}

fn default_guest_compression() -> String {
    "gzip".to_string()
}

impl Serialize for InitrdSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            InitrdSource::File(src) => src.serialize(s),
            InitrdSource::Build(b) => b.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for InitrdSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InitrdSource;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a file path, or a table such as { init = \"cargo:kiln-guest-init\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<InitrdSource, E> {
                Source::parse(v).map(InitrdSource::File).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<InitrdSource, A::Error> {
                InitrdBuild::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(InitrdSource::Build)
            }
        }
        d.deserialize_any(V)
    }
}
