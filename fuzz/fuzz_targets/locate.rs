//! The locator that turns a key path into a line and column of the source:
//! a first line naming the key path (`vm[1].boot.kernel`), then the TOML.
#![no_main]

use kiln_schema::config::{locate, ConfigError, KeyPath};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|text: &str| {
    let (path, src) = text.split_once('\n').unwrap_or((text, ""));
    let key = KeyPath::parse(path);
    let at = locate(src, &key);
    let lines = src.split('\n').count();
    assert!(
        at.line >= 1 && at.line <= lines,
        "line {} of {lines}",
        at.line
    );
    assert!(at.column >= 1);
    let e = ConfigError::at_key(Path::new("fuzz.toml"), src, &key, "fuzzed");
    let _ = e.to_string();
});
