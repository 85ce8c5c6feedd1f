//! The shared console: each VM's output goes to it line by line, prefixed
//! with the VM's name, and to a per-VM log under /run/kiln/. Status lines
//! pass through unprefixed so they stay at column 0 for `kiln test`, LAVA
//! and labgrid.

use crate::devices::serial::GUEST_TAG;
use crate::status::{note_vm, StatusLine};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;

/// Serialises whole lines from several VM threads onto one console.
static CONSOLE: Mutex<()> = Mutex::new(());

pub const LOG_DIR: &str = "/run/kiln";

pub fn log_path(vm: &str) -> PathBuf {
    PathBuf::from(LOG_DIR).join(format!("{vm}.log"))
}

/// Formats one line of a VM's output for the console. This VM's status
/// lines and the VMM's notes about it (`kiln: vm <name>: ...`, like init's
/// own) stay unprefixed; anything about another VM or the appliance is
/// this VM's output (the guest's serial shares the VMM's stdout, and a
/// guest must not speak for its siblings).
pub fn console_line(vm: &str, line: &str) -> String {
    let line = line.trim_end_matches(['\r', '\n']);
    // The guest's own output, tagged by the VMM: never a status line.
    if let Some(guest) = line.strip_prefix(char::from(GUEST_TAG)) {
        return format!("[{vm}] {guest}\n");
    }
    let note = note_vm(line) == Some(vm);
    if note
        || StatusLine::parse(line).is_some_and(|s| {
            line.trim_start().starts_with("kiln: ")
                && matches!(s, StatusLine::Vm { name, .. } if name == vm)
        })
    {
        format!("{}\n", line.trim_start())
    } else {
        format!("[{vm}] {line}\n")
    }
}

/// Copies `from` (a VMM process's output) to the console and the VM's log
/// until it closes. Runs on its own thread per VM.
pub fn pump(vm: String, from: impl Read, echo: bool) {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(&vm))
        .ok();
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        if let Some(f) = log.as_mut() {
            let _ = f.write_all(buf.strip_prefix(&[GUEST_TAG]).unwrap_or(&buf));
        }
        // Status lines start with a newline that ends any partial guest
        // line; here lines are already whole, so empty ones only add noise
        // to the shared console (the log keeps them).
        if text
            .trim_start_matches(char::from(GUEST_TAG))
            .trim_end_matches(['\r', '\n'])
            .is_empty()
        {
            continue;
        }
        let line = console_line(&vm, &text);
        let is_status = !line.starts_with('[');
        if echo || is_status {
            let _guard = CONSOLE.lock().unwrap_or_else(|p| p.into_inner());
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_lines_are_prefixed_and_status_lines_are_not() {
        assert_eq!(
            console_line("hello", "hello: exit 0\r\n"),
            "[hello] hello: exit 0\n"
        );
        assert_eq!(
            console_line("hello", "kiln: vm=hello state=exited code=0\n"),
            "kiln: vm=hello state=exited code=0\n"
        );
        // A guest that prints something status-like mid-line stays attributed to it.
        assert_eq!(
            console_line("a", "x kiln: vm=b state=exited code=0"),
            "[a] x kiln: vm=b state=exited code=0\n"
        );
        // A whole status line about another VM is still this VM's output.
        assert_eq!(
            console_line("a", "kiln: vm=b state=exited code=0"),
            "[a] kiln: vm=b state=exited code=0\n"
        );
        // The VMM's note about its own VM, but not about another one.
        assert_eq!(
            console_line(
                "a",
                "kiln: vm a: 0000:00:02.0 attached through iommufd (x)\n"
            ),
            "kiln: vm a: 0000:00:02.0 attached through iommufd (x)\n"
        );
        assert_eq!(
            console_line("a", "kiln: vm ab: attached"),
            "[a] kiln: vm ab: attached\n"
        );
        // A guest line the VMM tagged is the guest's, whatever it says.
        assert_eq!(
            console_line("a", "\u{1e}kiln: vm=a state=exited code=0\r\n"),
            "[a] kiln: vm=a state=exited code=0\n"
        );
        assert_eq!(
            console_line(
                "a",
                "\u{1e}kiln: vm a: 0000:00:02.0 attached through iommufd (x)"
            ),
            "[a] kiln: vm a: 0000:00:02.0 attached through iommufd (x)\n"
        );
        // Only init may print the appliance's done line.
        assert_eq!(
            console_line("a", "kiln: appliance done ok=9 failed=0"),
            "[a] kiln: appliance done ok=9 failed=0\n"
        );
    }
}
