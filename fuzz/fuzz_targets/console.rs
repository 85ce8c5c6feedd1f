//! The console reader of `kiln test`: bytes cut into lines (in chunks of
//! any size, which must not change the lines), cleaned into text with no
//! control character but tab, and classified by the console grammar.
#![no_main]

use kiln::harness::console::{clean, LineSplitter, Piece, MAX_LINE};
use kiln::harness::grammar::classify;
use libfuzzer_sys::fuzz_target;

fn pieces(bytes: &[u8], chunk: usize) -> Vec<Piece> {
    let mut s = LineSplitter::default();
    let mut out = Vec::new();
    for part in bytes.chunks(chunk) {
        out.extend(s.push(part));
    }
    out.extend(s.finish());
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunked = pieces(bytes, usize::from(chunk).max(1));
    assert_eq!(
        chunked,
        pieces(bytes, bytes.len().max(1)),
        "chunking changed the lines"
    );
    for piece in &chunked {
        assert!(piece.bytes.len() <= MAX_LINE);
        assert!(!piece.bytes.contains(&b'\n'));
        let text = clean(&piece.bytes);
        assert!(
            text.chars()
                .all(|c| c == '\t' || !(c.is_control() || c == '\u{fffe}' || c == '\u{ffff}')),
            "{text:?}"
        );
        let _ = classify(&text);
    }
});
