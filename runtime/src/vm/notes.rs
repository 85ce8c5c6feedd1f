//! The VMM's notes about its VM: one line each, `kiln: vm <vm>: <text>`,
//! the form PID 1 passes to the console unprefixed as the VMM's word
//! (docs/runtime.md), never the guest's.
//!
//! A guest can provoke some notes as often as it likes (a BAR moved onto
//! its RAM, a vector the device refuses), so they are rate-limited: each
//! kind is shown [`SHOWN_PER_KIND`] times and all kinds together
//! [`SHOWN_IN_ALL`] times; the rest are only counted, and
//! [`Notes::finish`] reports them in one line when the VM ends.
//!
//! Notes share the VMM's stdout with the guest's echoed console
//! ([`crate::devices::serial::ConsoleSink`]) through [`Stdout`]: a note
//! the guest interrupts mid-line starts on a line of its own, and the
//! guest's next byte starts a new (tagged) line.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

/// How many notes of one kind reach the console.
pub const SHOWN_PER_KIND: u32 = 3;
/// How many notes in all reach the console.
pub const SHOWN_IN_ALL: u32 = 10;
/// Longest note text shown, in bytes; the rest is cut.
const MAX_TEXT: usize = 400;

/// Where the VMM's stdout stands: whether the next byte starts a line.
/// Held while writing, so a note and the guest's echo never interleave.
#[derive(Clone, Debug)]
pub struct Stdout(Arc<Mutex<bool>>);

impl Default for Stdout {
    fn default() -> Self {
        Stdout(Arc::new(Mutex::new(true)))
    }
}

impl Stdout {
    /// Runs `f` with the lock held on whether output is at a line start;
    /// `f` leaves it as its writing left the line.
    pub fn with<R>(&self, f: impl FnOnce(&mut bool) -> R) -> R {
        let mut at_start = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut at_start)
    }
}

#[derive(Debug, Default)]
struct Counts {
    shown: u32,
    held: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Per kind (a fixed string of the code, so the map stays small).
    kinds: BTreeMap<&'static str, Counts>,
    shown: u32,
    held: u64,
}

/// The notes of one VM.
pub struct Notes {
    vm: String,
    stdout: Stdout,
    out: Mutex<Box<dyn Write + Send>>,
    state: Mutex<State>,
}

// The writer is a trait object: the VM and the counts describe the notes.
impl std::fmt::Debug for Notes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notes")
            .field("vm", &self.vm)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Notes {
    /// Notes about VM `vm` on this process's stdout.
    pub fn new(vm: &str) -> Self {
        Self::to(vm, Box::new(std::io::stdout()))
    }

    /// Notes about VM `vm` written to `out`.
    pub fn to(vm: &str, out: Box<dyn Write + Send>) -> Self {
        Notes {
            vm: vm.to_string(),
            stdout: Stdout::default(),
            out: Mutex::new(out),
            state: Mutex::new(State::default()),
        }
    }

    /// The line state notes share with the guest's echoed console.
    pub fn stdout(&self) -> &Stdout {
        &self.stdout
    }

    /// Notes `text`, of kind `kind`, unless that kind or all notes are
    /// over their limit; the last one shown says so.
    pub fn note(&self, kind: &'static str, text: fmt::Arguments<'_>) {
        let last = {
            let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let s = &mut *guard;
            let k = s.kinds.entry(kind).or_default();
            if k.shown >= SHOWN_PER_KIND || s.shown >= SHOWN_IN_ALL {
                k.held = k.held.saturating_add(1);
                s.held = s.held.saturating_add(1);
                return;
            }
            k.shown += 1;
            let kind_done = k.shown == SHOWN_PER_KIND;
            s.shown += 1;
            if s.shown == SHOWN_IN_ALL {
                Some(" (further notes about this VM are counted, not shown)")
            } else if kind_done {
                Some(" (further ones like it are counted, not shown)")
            } else {
                None
            }
        };
        self.write_line(&text.to_string(), last.unwrap_or(""));
    }

    /// How many notes were held back.
    pub fn held(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held
    }

    /// Reports the notes held back, if any, in one line.
    pub fn finish(&self) {
        let summary = {
            let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if s.held == 0 {
                return;
            }
            let kinds: Vec<String> = s
                .kinds
                .iter()
                .filter(|(_, c)| c.held > 0)
                .map(|(kind, c)| format!("{kind} ({})", c.held))
                .collect();
            format!("{} more notes not shown: {}", s.held, kinds.join(", "))
        };
        self.write_line(&summary, "");
    }

    /// Writes `kiln: vm <vm>: <text><suffix>` as one line of its own, in
    /// one write; control characters in `text` become spaces, so a note is
    /// always exactly one line.
    fn write_line(&self, text: &str, suffix: &str) {
        let mut line = format!("kiln: vm {}: ", self.vm);
        let mut cut = text.len().min(MAX_TEXT);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        line.extend(text.get(..cut).unwrap_or_default().chars().map(|c| {
            if c.is_control() {
                ' '
            } else {
                c
            }
        }));
        line.push_str(suffix);
        line.push('\n');
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        self.stdout.with(|at_start| {
            if !*at_start {
                line.insert(0, '\n');
            }
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
            *at_start = true;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(cap: &Capture) -> Vec<String> {
        String::from_utf8(cap.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_note_provoked_forever_is_shown_three_times_then_summed_up() {
        let cap = Capture::default();
        let notes = Notes::to("fuzz", Box::new(cap.clone()));
        for i in 0..1000 {
            notes.note("map a BAR", format_args!("cannot map BAR 0 at {i:#x}"));
        }
        assert_eq!(
            lines(&cap),
            [
                "kiln: vm fuzz: cannot map BAR 0 at 0x0",
                "kiln: vm fuzz: cannot map BAR 0 at 0x1",
                "kiln: vm fuzz: cannot map BAR 0 at 0x2 (further ones like it are counted, not shown)",
            ]
        );
        assert_eq!(notes.held(), 997);
        notes.finish();
        assert_eq!(
            lines(&cap).last().unwrap(),
            "kiln: vm fuzz: 997 more notes not shown: map a BAR (997)"
        );
        assert_eq!(notes.held(), 997);
    }

    #[test]
    fn all_kinds_together_are_capped_too() {
        let cap = Capture::default();
        let notes = Notes::to("fuzz", Box::new(cap.clone()));
        const KINDS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
        for _ in 0..100 {
            for kind in KINDS {
                notes.note(kind, format_args!("{kind}"));
            }
        }
        let shown = lines(&cap);
        assert_eq!(shown.len(), SHOWN_IN_ALL as usize);
        assert!(
            shown
                .last()
                .unwrap()
                .ends_with("(further notes about this VM are counted, not shown)"),
            "{shown:?}"
        );
        notes.finish();
        assert_eq!(
            lines(&cap).last().unwrap(),
            "kiln: vm fuzz: 590 more notes not shown: a (98), b (98), c (98), d (98), e (99), f (99)"
        );
        // Nothing held back: no summary.
        let quiet = Notes::to("q", Box::new(cap.clone()));
        quiet.note("a", format_args!("one"));
        let before = lines(&cap).len();
        quiet.finish();
        assert_eq!(lines(&cap).len(), before);
    }

    #[test]
    fn a_note_is_one_line_whatever_its_text() {
        let cap = Capture::default();
        let notes = Notes::to("x", Box::new(cap.clone()));
        notes.note("a", format_args!("two\nlines\r and \x1b[2J an escape"));
        notes.note("b", format_args!("{}", "é".repeat(1000)));
        let shown = lines(&cap);
        assert_eq!(shown[0], "kiln: vm x: two lines  and  [2J an escape");
        assert_eq!(shown.len(), 2);
        assert!(shown[1].len() <= "kiln: vm x: ".len() + MAX_TEXT);
        assert!(shown[1].ends_with('é'));
    }
}
