//! The console as `kiln test` reads it: a byte stream cut into lines, each
//! line cleaned of terminal escapes and control characters.
//!
//! Lines are cut exactly where the runtime cuts them (docs/testing.md,
//! "Console grammar"): at `\n` only, the `\r` of a `\r\n` dropped. A bare
//! `\r` inside a line stays in it (cleaning removes it): were it to end
//! the line here, what a guest printed after it would reach the judge as a
//! line of its own, without the runtime's `[vm] ` prefix. The cleaning is a
//! small ECMA-48 scanner written for this purpose: it must also drop every
//! character XML 1.0 forbids, line by line, which the ANSI-stripping crates
//! leave to the caller.

use std::collections::VecDeque;

/// Longest line kept whole: a console that never prints a newline cannot
/// make kiln buffer without bound; a longer line is cut into pieces, each
/// marked as continuing the line before it. Above the longest line the
/// runtime prints (a 4 KiB piece of guest output, each byte at most four
/// characters once escaped, and its prefix), so only a console that is
/// not the runtime's (firmware, an older runtime) has lines cut here.
pub const MAX_LINE: usize = 32 * 1024;

/// A line the splitter cut, or a piece of one longer than [`MAX_LINE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub bytes: Vec<u8>,
    /// It continues the piece before it (same line): it belongs to whoever
    /// that line belongs to, whatever it says.
    pub continues: bool,
}

/// Cuts a byte stream into lines at `\n`.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// The bytes in `buf` continue a line cut at the limit.
    continues: bool,
}

impl LineSplitter {
    /// Feeds `bytes`; returns the pieces they complete, without terminators.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Piece> {
        let mut pieces = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                if self.buf.last() == Some(&b'\r') {
                    self.buf.pop();
                }
                if self.buf.is_empty() && self.continues {
                    // The line ended right at a cut: nothing is left of it.
                    self.continues = false;
                } else {
                    pieces.push(self.take(false));
                }
            } else {
                self.buf.push(b);
                if self.buf.len() >= MAX_LINE {
                    pieces.push(self.take(true));
                }
            }
        }
        pieces
    }

    /// The unterminated last piece, if any (at the end of the stream).
    pub fn finish(&mut self) -> Option<Piece> {
        (!self.buf.is_empty()).then(|| self.take(false))
    }

    /// The buffered piece; `cut`: the line goes on after it.
    fn take(&mut self, cut: bool) -> Piece {
        let continues = std::mem::replace(&mut self.continues, cut);
        Piece {
            bytes: std::mem::take(&mut self.buf),
            continues,
        }
    }
}

/// A console line as text: invalid UTF-8 replaced, ANSI/VT escape sequences
/// removed, and every other control character but tab dropped (which also
/// leaves only characters XML 1.0 allows).
pub fn clean(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => skip_escape(&mut chars),
            // C1 CSI: the 8-bit form of `ESC [`.
            '\u{9b}' => skip_csi(&mut chars),
            '\t' => out.push(c),
            c if c.is_control() => {}
            // Noncharacters XML forbids; lossy decoding never yields surrogates.
            '\u{fffe}' | '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// Skips what follows an ESC: a CSI, a string sequence (OSC, DCS, SOS, PM,
/// APC) up to its terminator, or a short `ESC [intermediates] final`.
fn skip_escape(chars: &mut Chars) {
    match chars.next() {
        Some('[') => skip_csi(chars),
        Some(']' | 'P' | 'X' | '^' | '_') => {
            // Ends at BEL or ST (`ESC \`), or at the end of the line.
            while let Some(c) = chars.next() {
                if c == '\u{7}' {
                    break;
                }
                if c == '\u{1b}' {
                    if chars.peek() == Some(&'\\') {
                        chars.next();
                    }
                    break;
                }
            }
        }
        Some(c) if ('\u{20}'..='\u{2f}').contains(&c) => {
            // Intermediates, then one final byte (e.g. `ESC ( B`).
            while let Some(&n) = chars.peek() {
                chars.next();
                if !('\u{20}'..='\u{2f}').contains(&n) {
                    break;
                }
            }
        }
        // A two-character sequence (`ESC 7`, `ESC c`, ...), or a lone ESC.
        _ => {}
    }
}

/// Skips a control sequence's parameters and intermediates up to its final byte.
fn skip_csi(chars: &mut Chars) {
    for c in chars.by_ref() {
        if ('\u{40}'..='\u{7e}').contains(&c) {
            break;
        }
        if !('\u{20}'..='\u{3f}').contains(&c) {
            // Not a well-formed sequence: stop skipping at the damage.
            break;
        }
    }
}

/// The last lines of a console, bounded in bytes, counting what it dropped.
#[derive(Debug, Clone)]
pub struct Excerpt {
    lines: VecDeque<String>,
    bytes: usize,
    limit: usize,
    dropped: usize,
}

impl Excerpt {
    pub fn new(limit: usize) -> Self {
        Excerpt {
            lines: VecDeque::new(),
            bytes: 0,
            limit,
            dropped: 0,
        }
    }

    pub fn push(&mut self, line: &str) {
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_string());
        while self.bytes > self.limit {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.len() + 1;
            self.dropped += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.dropped == 0
    }

    /// The kept lines as one text, with a note of how many came before them.
    pub fn text(&self) -> String {
        let mut s = String::new();
        if self.dropped > 0 {
            s.push_str(&format!(
                "[... {} earlier lines dropped ...]\n",
                self.dropped
            ));
        }
        for l in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// The last `n` kept lines.
    pub fn last(&self, n: usize) -> Vec<String> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        pieces(chunks)
            .into_iter()
            .map(|p| {
                assert!(!p.continues, "no piece of a short line continues another");
                clean(&p.bytes)
            })
            .collect()
    }

    fn pieces(chunks: &[&[u8]]) -> Vec<Piece> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn splits_at_newlines_across_chunks() {
        assert_eq!(
            split(&[b"one\r", b"\ntwo\nthr", b"ee\r\n\r\nfour"]),
            ["one", "two", "three", "", "four"]
        );
    }

    #[test]
    fn a_bare_cr_does_not_end_a_line() {
        // As the runtime reads a VM's output: what follows a `\r` is still
        // on the line the runtime prefixed, never a line of its own.
        assert_eq!(
            split(&[b"[a] 10%\r20%\rkiln: vm=b state=exited code=0\n"]),
            ["[a] 10%20%kiln: vm=b state=exited code=0"]
        );
        assert_eq!(
            pieces(&[b"[a] x\r", b"\r\n"]),
            [Piece {
                bytes: b"[a] x\r".to_vec(),
                continues: false
            }],
            "only the CR of CRLF is dropped"
        );
    }

    #[test]
    fn a_line_without_end_is_cut_into_pieces_that_continue_it() {
        let mut long = b"[a] ".to_vec();
        long.resize(MAX_LINE * 2 + 5, b'x');
        long.extend_from_slice(b"\nnext\n");
        let got = pieces(&[&long]);
        assert_eq!(
            got.iter()
                .map(|p| (p.bytes.len(), p.continues))
                .collect::<Vec<_>>(),
            [(MAX_LINE, false), (MAX_LINE, true), (5, true), (4, false)]
        );
        assert!(got[0].bytes.starts_with(b"[a] "));
        let lens = |bytes: Vec<u8>| {
            pieces(&[&bytes])
                .iter()
                .map(|p| (p.bytes.len(), p.continues))
                .collect::<Vec<_>>()
        };
        // A line that ends right at a cut leaves no empty piece behind; a
        // blank line after it is a line.
        let exact = [vec![b'x'; MAX_LINE], b"\n\n".to_vec()].concat();
        assert_eq!(lens(exact), [(MAX_LINE, false), (0, false)]);
        let crlf = [vec![b'x'; MAX_LINE - 1], b"\r\n".to_vec()].concat();
        assert_eq!(lens(crlf), [(MAX_LINE, false)]);
    }

    #[test]
    fn strips_escapes_and_controls() {
        assert_eq!(
            clean(b"\x1b[1;31mred\x1b[0m text\x1b[K"),
            "red text",
            "SGR and erase sequences"
        );
        assert_eq!(clean(b"\x1b]0;title\x07after"), "after", "OSC with BEL");
        assert_eq!(clean(b"\x1b]8;;http://x\x1b\\link"), "link", "OSC with ST");
        assert_eq!(clean(b"\x1b(Bplain\x1b7\x1b8"), "plain", "charset and save");
        assert_eq!(clean(b"a\x00b\x08c\x0cd\te\x7f"), "abcd\te", "C0 and DEL");
        assert_eq!(clean("x\u{9b}2Jy\u{85}z".as_bytes()), "xyz", "C1 controls");
        assert_eq!(clean(b"bad \xff utf8"), "bad \u{fffd} utf8");
        assert_eq!(clean("nc\u{fffe}\u{ffff}".as_bytes()), "nc");
        assert_eq!(clean(b"lone esc\x1b"), "lone esc");
    }

    #[test]
    fn excerpt_keeps_the_tail_within_its_budget() {
        let mut e = Excerpt::new(20);
        for i in 0..10 {
            e.push(&format!("line {i}"));
        }
        assert_eq!(
            e.text(),
            "[... 8 earlier lines dropped ...]\nline 8\nline 9\n"
        );
        assert_eq!(e.last(1), ["line 9"]);
        assert!(!e.is_empty());
        assert!(Excerpt::new(10).is_empty());
    }
}
