//! The console reader of `kiln test`: bytes cut into lines (in chunks of
//! any size, which must not change the lines) and cleaned into text with no
//! control character but tab, then read for status lines.
#![no_main]

use kiln::harness::console::{clean, LineSplitter, MAX_LINE};
use kiln_schema::status::{note_vm, StatusLine};
use libfuzzer_sys::fuzz_target;

fn lines(bytes: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let mut s = LineSplitter::default();
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk) {
        out.extend(s.push(piece));
    }
    out.extend(s.finish());
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunked = lines(bytes, usize::from(chunk).max(1));
    assert_eq!(
        chunked,
        lines(bytes, bytes.len().max(1)),
        "chunking changed the lines"
    );
    for line in &chunked {
        assert!(line.len() <= MAX_LINE);
        assert!(!line.contains(&b'\n') && !line.contains(&b'\r'));
        let text = clean(line);
        assert!(
            text.chars()
                .all(|c| c == '\t' || !(c.is_control() || c == '\u{fffe}' || c == '\u{ffff}')),
            "{text:?}"
        );
        let _ = StatusLine::parse(&text);
        let _ = note_vm(&text);
    }
});
