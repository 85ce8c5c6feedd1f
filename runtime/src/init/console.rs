//! The shared console: each VM's output goes to it line by line, prefixed
//! with the VM's name, and to a per-VM log under /run/kiln/. Status lines
//! pass through unprefixed so they stay at column 0 for `kiln test`, LAVA
//! and labgrid.
//!
//! What a VM sends is bounded here: lines longer than [`LINE_MAX`] are cut
//! into pieces, each its own prefixed console line; control characters that
//! could end or rewrite a console line are written as `\xHH` text; each log
//! is capped at [`LOG_MAX`] with one older generation beside it. PID 1 so
//! holds at most one piece per VM, whatever the guest prints.

use crate::devices::serial::GUEST_TAG;
use crate::status::{note_vm, StatusLine, VmState};
use kiln_abi::console::GuestLine;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;

/// Serialises whole lines from several VM threads onto one console.
static CONSOLE: Mutex<()> = Mutex::new(());

pub const LOG_DIR: &str = "/run/kiln";

/// The longest piece of a line PID 1 holds and prints as one console line
/// (prefix aside); longer lines are cut into pieces of this size.
pub const LINE_MAX: usize = 4096;

/// A VM's log (`/run/kiln/<vm>.log`) grows to this size, then becomes
/// `<vm>.log.1` (replacing the older one) and a new log starts.
pub const LOG_MAX: u64 = 1 << 20;

pub fn log_path(vm: &str) -> PathBuf {
    PathBuf::from(LOG_DIR).join(format!("{vm}.log"))
}

/// `bytes` as console text: characters that could end a line or move the
/// cursor (`\r`, C0 controls but tab, ESC and so every escape sequence,
/// DEL, C1 controls, U+2028/U+2029) and bytes that are not UTF-8 become
/// `\xHH` (or `\u{HHHH}`) text.
pub fn neutralize(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\t' => out.push(c),
                c if (c as u32) < 0x80 && c.is_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                    let _ = write!(out, "\\u{{{:04x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Formats one line (or piece of a cut line) of a VM's output for the
/// console; `None` for an empty one. This VM's status lines and the VMM's
/// notes about it (`kiln: vm <name>: ...`, like init's own) stay
/// unprefixed; anything about another VM or the appliance is this VM's
/// output (the guest's serial shares the VMM's stdout, and a guest must not
/// speak for its siblings). A piece that `continues` a cut line is always
/// prefixed: only the start of a line can be a status line.
pub fn console_line(vm: &str, piece: &[u8], continues: bool) -> Option<String> {
    let mut piece = piece.strip_suffix(b"\n").unwrap_or(piece);
    while let Some(p) = piece.strip_suffix(b"\r") {
        piece = p;
    }
    // The guest's own output, tagged by the VMM: never a status line.
    let (guest, body) = match piece.strip_prefix(&[GUEST_TAG]) {
        Some(rest) => (true, rest),
        None => (false, piece),
    };
    let line = neutralize(body);
    if line.is_empty() {
        // Status lines start with a newline that ends any partial guest
        // line; here lines are already whole, so empty ones only add
        // noise to the shared console (the log keeps them).
        return None;
    }
    let guest_line = |text: &str| format!("{}\n", GuestLine { vm, text });
    if guest || continues {
        return Some(guest_line(&line));
    }
    let note = note_vm(&line) == Some(vm);
    if note
        || StatusLine::parse(&line).is_some_and(|s| {
            line.trim_start().starts_with("kiln: ")
                && matches!(s, StatusLine::Vm { name, .. } if name == vm)
        })
    {
        Some(format!("{}\n", line.trim_start()))
    } else {
        Some(guest_line(&line))
    }
}

/// Whether a console line is VM `vm`'s last status line (exited or failed).
fn is_final_status(vm: &str, line: &str) -> bool {
    !line.starts_with('[')
        && matches!(
            StatusLine::parse(line.trim_end()),
            Some(StatusLine::Vm { name, state: VmState::Exited | VmState::Failed, .. })
                if name == vm
        )
}

/// Splits a byte stream into lines of at most [`LINE_MAX`] bytes.
struct Lines {
    cur: Vec<u8>,
    /// `cur` continues a line that was cut.
    continues: bool,
}

impl Lines {
    fn new() -> Self {
        Lines {
            cur: Vec::with_capacity(LINE_MAX),
            continues: false,
        }
    }

    /// Calls `emit(piece, continues, ends_line)` for each whole line or
    /// full piece in `bytes`; keeps the rest for the next call.
    fn feed(&mut self, bytes: &[u8], emit: &mut impl FnMut(&[u8], bool, bool)) {
        for &b in bytes {
            if b == b'\n' {
                emit(&self.cur, self.continues, true);
                self.cur.clear();
                self.continues = false;
            } else {
                self.cur.push(b);
                if self.cur.len() >= LINE_MAX {
                    emit(&self.cur, self.continues, false);
                    self.cur.clear();
                    self.continues = true;
                }
            }
        }
    }

    /// Emits what is left (output that ended without a newline).
    fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool, bool)) {
        if !self.cur.is_empty() {
            emit(&self.cur, self.continues, false);
            self.cur.clear();
        }
    }
}

/// A VM's log, capped at `cap` bytes with one rotation. Writing is best
/// effort: a full /run must not stop the console.
struct VmLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    cap: u64,
}

impl VmLog {
    fn open(path: PathBuf, cap: u64) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        VmLog {
            path,
            file,
            size,
            cap,
        }
    }

    fn old_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".1");
        PathBuf::from(p)
    }

    fn write(&mut self, bytes: &[u8]) {
        let len = bytes.len() as u64;
        if self.size > 0 && self.size.saturating_add(len) > self.cap {
            self.file = None;
            let _ = std::fs::rename(&self.path, self.old_path());
            self.file = File::create(&self.path).ok();
            self.size = 0;
        }
        if let Some(f) = self.file.as_mut() {
            if f.write_all(bytes).is_ok() {
                self.size = self.size.saturating_add(len);
            }
        }
    }
}

/// Copies `from` (a VMM process's output) to the console and the VM's log
/// until it closes. Runs on its own thread per VM. Returns whether the
/// VM's last status line (`state=exited` or `state=failed`) came through.
pub fn pump(vm: String, from: impl Read, echo: bool) -> bool {
    let mut log = VmLog::open(log_path(&vm), LOG_MAX);
    pump_to(&vm, from, echo, &mut log, &mut |line| {
        let _guard = CONSOLE.lock().unwrap_or_else(|p| p.into_inner());
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    })
}

fn pump_to(
    vm: &str,
    mut from: impl Read,
    echo: bool,
    log: &mut VmLog,
    console: &mut dyn FnMut(&str),
) -> bool {
    let mut lines = Lines::new();
    let mut buf = [0u8; 8192];
    let mut reported = false;
    let mut emit = |piece: &[u8], continues: bool, ends_line: bool| {
        log.write(piece.strip_prefix(&[GUEST_TAG]).unwrap_or(piece));
        if ends_line {
            log.write(b"\n");
        }
        let Some(line) = console_line(vm, piece, continues) else {
            return;
        };
        let unprefixed = !line.starts_with('[');
        reported |= is_final_status(vm, &line);
        if echo || unprefixed {
            console(&line);
        }
    };
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => lines.feed(&buf[..n], &mut emit),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    lines.finish(&mut emit);
    reported
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn test_log(dir: &Path, cap: u64) -> VmLog {
        VmLog::open(dir.join("t.log"), cap)
    }

    fn line(vm: &str, text: &str) -> String {
        console_line(vm, text.as_bytes(), false).unwrap()
    }

    #[test]
    fn guest_lines_are_prefixed_and_status_lines_are_not() {
        assert_eq!(
            line("hello", "hello: exit 0\r\n"),
            "[hello] hello: exit 0\n"
        );
        assert_eq!(
            line("hello", "kiln: vm=hello state=exited code=0\n"),
            "kiln: vm=hello state=exited code=0\n"
        );
        // A guest that prints something status-like mid-line stays attributed to it.
        assert_eq!(
            line("a", "x kiln: vm=b state=exited code=0"),
            "[a] x kiln: vm=b state=exited code=0\n"
        );
        // A whole status line about another VM is still this VM's output.
        assert_eq!(
            line("a", "kiln: vm=b state=exited code=0"),
            "[a] kiln: vm=b state=exited code=0\n"
        );
        // The VMM's note about its own VM, but not about another one.
        assert_eq!(
            line(
                "a",
                "kiln: vm a: 0000:00:02.0 attached through iommufd (x)\n"
            ),
            "kiln: vm a: 0000:00:02.0 attached through iommufd (x)\n"
        );
        assert_eq!(
            line("a", "kiln: vm ab: attached"),
            "[a] kiln: vm ab: attached\n"
        );
        // A guest line the VMM tagged is the guest's, whatever it says.
        assert_eq!(
            line("a", "\u{1e}kiln: vm=a state=exited code=0\r\n"),
            "[a] kiln: vm=a state=exited code=0\n"
        );
        assert_eq!(
            line(
                "a",
                "\u{1e}kiln: vm a: 0000:00:02.0 attached through iommufd (x)"
            ),
            "[a] kiln: vm a: 0000:00:02.0 attached through iommufd (x)\n"
        );
        // Only init may print the appliance's done line.
        assert_eq!(
            line("a", "kiln: appliance done ok=9 failed=0"),
            "[a] kiln: appliance done ok=9 failed=0\n"
        );
        // A piece that continues a cut line is never a status line.
        assert_eq!(
            console_line("a", b"kiln: vm=a state=exited code=0", true).unwrap(),
            "[a] kiln: vm=a state=exited code=0\n"
        );
        assert_eq!(console_line("a", b"\x1e\r\n", false), None);
    }

    #[test]
    fn a_bare_carriage_return_cannot_start_a_console_line() {
        // Once, the text after `\r` reached the judge as an unowned line.
        assert_eq!(
            line("a", "\u{1e}x\rkiln: vm=b state=exited code=0\r\n"),
            "[a] x\\x0dkiln: vm=b state=exited code=0\n"
        );
        assert_eq!(
            line("a", "\u{1e}\rKernel panic - not syncing: x"),
            "[a] \\x0dKernel panic - not syncing: x\n"
        );
    }

    #[test]
    fn escape_sequences_and_other_controls_are_written_as_text() {
        assert_eq!(
            line("a", "\u{1e}\x1b[2K\x1b[1Gkiln: vm=b state=exited code=0"),
            "[a] \\x1b[2K\\x1b[1Gkiln: vm=b state=exited code=0\n"
        );
        assert_eq!(
            neutralize(b"t\tab\x08\x7f\x00\x1e\x0b\x0c"),
            "t\tab\\x08\\x7f\\x00\\x1e\\x0b\\x0c"
        );
        // C1 CSI, NEL, line and paragraph separators; bytes that are not UTF-8.
        assert_eq!(
            neutralize("\u{9b}2J\u{85}\u{2028}\u{2029}é".as_bytes()),
            "\\u{009b}2J\\u{0085}\\u{2028}\\u{2029}é"
        );
        assert_eq!(neutralize(b"\xff\x9bz"), "\\xff\\x9bz");
        // Status lines from the VMM keep their shape.
        assert_eq!(
            line("a", "kiln: vm=a state=failed code=196 reason=x\ty"),
            "kiln: vm=a state=failed code=196 reason=x\ty\n"
        );
    }

    fn pumped(input: &[u8], echo: bool, log: &mut VmLog) -> (Vec<String>, bool) {
        let mut out = Vec::new();
        let reported = pump_to("a", input, echo, log, &mut |l| out.push(l.to_string()));
        (out, reported)
    }

    #[test]
    fn a_long_line_without_a_newline_is_cut_into_prefixed_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = test_log(dir.path(), LOG_MAX);
        let mut input = vec![GUEST_TAG];
        input.extend(std::iter::repeat_n(b'x', 3 * LINE_MAX + 10));
        // A forged status line where a naive splitter would start a new line.
        input.extend(b"kiln: vm=a state=exited code=0");
        let (out, reported) = pumped(&input, true, &mut log);
        assert_eq!(
            out.len(),
            4,
            "{:?}",
            out.iter().map(String::len).collect::<Vec<_>>()
        );
        for piece in &out {
            assert!(piece.starts_with("[a] "), "{piece:.40}");
            assert!(piece.len() <= LINE_MAX + "[a] \n".len());
        }
        assert!(out[3].ends_with("xkiln: vm=a state=exited code=0\n"));
        assert!(!reported, "guest text counted as the VM's status");
        // The log keeps the guest's bytes as they came.
        let logged = std::fs::read(dir.path().join("t.log")).unwrap();
        assert_eq!(logged, &input[1..]);
    }

    #[test]
    fn a_continued_piece_cannot_be_a_status_line_even_from_the_vmm() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = test_log(dir.path(), LOG_MAX);
        let mut input: Vec<u8> = std::iter::repeat_n(b'y', LINE_MAX).collect();
        input.extend(b"kiln: vm=a state=exited code=0\n");
        let (out, reported) = pumped(&input, false, &mut log);
        // Untagged output the pump cannot attribute is printed prefixed,
        // and only with echo; neither piece is a status line.
        assert!(out.is_empty(), "{out:?}");
        assert!(!reported);
    }

    #[test]
    fn the_vm_s_last_status_line_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = test_log(dir.path(), LOG_MAX);
        let input = b"\nkiln: vm=a state=starting\n\x1ehi\r\n\nkiln: vm=a state=failed code=194 reason=triple-fault\n";
        let (out, reported) = pumped(input, false, &mut log);
        assert_eq!(
            out,
            [
                "kiln: vm=a state=starting\n",
                "kiln: vm=a state=failed code=194 reason=triple-fault\n"
            ]
        );
        assert!(reported);
        let (_, reported) = pumped(b"kiln: vm=a state=running\n", true, &mut log);
        assert!(!reported);
    }

    #[test]
    fn a_flood_holds_one_piece_and_the_log_rotates_once() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 64 * 1024;
        let mut log = test_log(dir.path(), cap);
        // 4 MiB of lines and of newline-free text, read in small chunks.
        struct Flood(usize);
        impl Read for Flood {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Ok(0);
                }
                let n = buf.len().min(self.0).min(1000);
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    *b = if (self.0 - i) % 100_000 == 0 {
                        b'\n'
                    } else {
                        b'z'
                    };
                }
                self.0 -= n;
                Ok(n)
            }
        }
        let mut lines = Lines::new();
        let mut longest = 0;
        let mut buf = [0u8; 1000];
        let mut flood = Flood(4 << 20);
        while let Ok(n @ 1..) = flood.read(&mut buf) {
            lines.feed(&buf[..n], &mut |p, _, _| {
                longest = longest.max(p.len());
                log.write(p);
            });
            assert_eq!(lines.cur.capacity(), LINE_MAX);
        }
        assert_eq!(longest, LINE_MAX);
        let size = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().len();
        assert!(size("t.log") <= cap && size("t.log") > 0);
        assert!(size("t.log.1") <= cap && size("t.log.1") > cap - LINE_MAX as u64);
        assert!(!dir.path().join("t.log.1.1").exists());
    }

    #[test]
    fn a_reopened_log_counts_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.log"), [b'a'; 90]).unwrap();
        let mut log = test_log(dir.path(), 100);
        log.write(b"0123456789abc");
        assert_eq!(
            std::fs::read(dir.path().join("t.log")).unwrap(),
            b"0123456789abc"
        );
        assert_eq!(
            std::fs::read(dir.path().join("t.log.1")).unwrap(),
            [b'a'; 90]
        );
    }
}
