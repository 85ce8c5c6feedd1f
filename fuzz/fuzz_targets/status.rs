//! The status-line grammar: any console line parses or not without
//! panicking, and what it parses to prints as a line that parses back the
//! same (control characters in a reason print as spaces).
#![no_main]

use kiln_schema::status::{note_vm, StatusLine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    let _ = note_vm(line);
    let Some(status) = StatusLine::parse(line) else {
        return;
    };
    let printed = status.to_string();
    let again = StatusLine::parse(&printed);
    let expected = match status {
        StatusLine::Vm {
            name,
            state,
            code,
            reason,
        } => StatusLine::Vm {
            name,
            state,
            code,
            reason: reason.map(|r| {
                r.chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect()
            }),
        },
        done => done,
    };
    assert_eq!(again, Some(expected), "printed as {printed:?}");
});
