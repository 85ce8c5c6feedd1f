use super::locate::{locate, KeyPath};
use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a config file, 1-based like editors and compilers show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    pub line: usize,
    pub column: usize,
}

impl Located {
    /// Turns a byte offset in `src` into a line and column.
    pub fn from_offset(src: &str, offset: usize) -> Self {
        let offset = offset.min(src.len());
        let before = &src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Located { line, column }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{at}: {}{message}", file.display(), key_prefix(key))]
    Invalid {
        file: PathBuf,
        at: Located,
        /// The dotted key path, e.g. `vm[1].boot.kernel`; empty for the whole document.
        key: String,
        message: String,
    },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("key `{key}`: ")
    }
}

impl ConfigError {
    /// An error about the value at `key` in `src`, located by looking the key up.
    pub fn at_key(file: &Path, src: &str, key: &KeyPath, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            at: locate(src, key),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// serde's "invalid value: integer `300`, expected u8" in words: the range,
/// and what is counted where the key says it.
fn integer_range(message: &str, key: Option<&str>) -> Option<String> {
    let rest = message.strip_prefix("invalid value: integer `")?;
    let (value, ty) = rest.split_once("`, expected ")?;
    let (min, max): (i128, i128) = match ty.trim() {
        "u8" => (0, u8::MAX.into()),
        "u16" => (0, u16::MAX.into()),
        "u32" => (0, u32::MAX.into()),
        "u64" | "usize" => (0, u64::MAX.into()),
        "i8" => (i8::MIN.into(), i8::MAX.into()),
        "i16" => (i16::MIN.into(), i16::MAX.into()),
        "i32" => (i32::MIN.into(), i32::MAX.into()),
        "i64" | "isize" => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    };
    let expected = match key {
        Some("vcpus") => format!("{} to {max} vCPUs", min.max(1)),
        Some("smp") => format!("{} to {max} CPUs", min.max(1)),
        Some("max") => format!("{min} to {max} restarts"),
        _ => format!("a whole number from {min} to {max}"),
    };
    Some(format!("{value} is out of range; expected {expected}"))
}

pub(super) fn from_toml(
    file: &Path,
    src: &str,
    err: serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let mut key = KeyPath::from_serde(err.path());
    let inner = err.inner();
    let mut message = inner.message().trim().to_string();
    // serde reports an unknown key against the table that holds it; name the key itself.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            key.push_key_once(field);
            let expected = expected.trim_start_matches(',').trim();
            message = if expected.is_empty() {
                "unknown key; this table takes no keys".to_string()
            } else {
                format!("unknown key; {expected}")
            };
        }
    } else if let Some(words) = integer_range(&message, key.last_key()) {
        message = words;
    } else if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some((field, _)) = rest.split_once('`') {
            key.push_key_once(field);
            message = "this required key is missing".to_string();
        }
    }
    let at = match inner.span() {
        Some(span) => Located::from_offset(src, span.start),
        None => locate(src, &key),
    };
    ConfigError::Invalid {
        file: file.to_path_buf(),
        at,
        key: key.to_string(),
        message,
    }
}
