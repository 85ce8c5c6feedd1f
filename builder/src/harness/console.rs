//! The console as `kiln test` reads it: a byte stream cut into lines, each
//! line cleaned of terminal escapes and control characters.
//!
//! Serial consoles end lines with `\r\n`, progress output overwrites with a
//! bare `\r`, and a guest may print colours or garbage. The cleaning here is
//! a small ECMA-48 scanner written for this purpose: it must also drop every
//! character XML 1.0 forbids, line by line, which the ANSI-stripping crates
//! leave to the caller.

use std::collections::VecDeque;

/// Longest line kept whole: a guest that never prints a newline cannot make
/// kiln buffer without bound; a longer line is cut into pieces.
pub const MAX_LINE: usize = 16 * 1024;

/// Cuts a byte stream into lines at `\n`, `\r\n` and a bare `\r`.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    after_cr: bool,
}

impl LineSplitter {
    /// Feeds `bytes`; returns the lines they complete, without terminators.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match b {
                // The `\n` of a `\r\n` pair: the `\r` already ended the line.
                b'\n' if after_cr => {}
                b'\n' => lines.push(std::mem::take(&mut self.buf)),
                b'\r' => {
                    lines.push(std::mem::take(&mut self.buf));
                    self.after_cr = true;
                }
                _ => {
                    self.buf.push(b);
                    if self.buf.len() >= MAX_LINE {
                        lines.push(std::mem::take(&mut self.buf));
                    }
                }
            }
        }
        lines
    }

    /// The unterminated last line, if any (at the end of the stream).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.after_cr = false;
        (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf))
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
        let mut s = LineSplitter::default();
        let mut out: Vec<String> = Vec::new();
        for c in chunks {
            out.extend(s.push(c).iter().map(|l| clean(l)));
        }
        out.extend(s.finish().map(|l| clean(&l)));
        out
    }

    #[test]
    fn splits_on_every_line_ending_across_chunks() {
        assert_eq!(
            split(&[b"one\r", b"\ntwo\nthr", b"ee\r\n\r\nfour"]),
            ["one", "two", "three", "", "four"]
        );
        // A bare CR (progress output) ends a line too.
        assert_eq!(split(&[b"10%\r20%\rdone\n"]), ["10%", "20%", "done"]);
    }

    #[test]
    fn a_line_without_end_is_cut_at_the_limit() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let lines = split(&[&long]);
        assert_eq!(
            lines.iter().map(String::len).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 5]
        );
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
