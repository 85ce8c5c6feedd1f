//! apt's records as kiln reads them: the first stanza of `apt-cache show`
//! output, the Depends field a metapackage and a split kernel are followed
//! through, and one-line apt sources from `[kernel.apt]`.
#![no_main]

use kiln::kernel::apt::{check_source_line, parse_stanza};
use kiln::kernel::debian::{split_parts, versioned_image};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let stanza = parse_stanza(text);
    for (k, v) in &stanza {
        assert!(!k.contains('\n') && k.trim() == k);
        assert!(v.trim_end() == v);
    }
    if let Some(depends) = stanza.get("Depends") {
        let _ = versioned_image(depends);
        let release = stanza
            .get("Package")
            .and_then(|p| p.strip_prefix("linux-image-"))
            .unwrap_or("6.1.0-fuzz");
        let parts = split_parts(release, depends);
        let mut names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), parts.len(), "a part listed twice");
    }
    for line in text.lines() {
        let _ = check_source_line(line);
    }
});
