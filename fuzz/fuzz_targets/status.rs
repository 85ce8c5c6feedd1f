//! The status-line grammar (kiln-abi): any console line parses or not
//! without panicking, and what it parses to prints as a line that parses
//! back to the same fields and prints the same again (control characters
//! in a reason print as spaces). Guest lines (`[vm] text`) likewise.
#![no_main]

use kiln_abi::console::GuestLine;
use kiln_abi::status::{note_vm, StatusLine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    let _ = note_vm(line);
    if let Some(guest) = GuestLine::parse(line) {
        let printed = guest.to_string();
        let again = GuestLine::parse(&printed).expect("a printed guest line parses");
        assert_eq!((again.vm, again.text), (guest.vm, guest.text));
    }
    let Some(status) = StatusLine::parse(line) else {
        return;
    };
    let printed = status.to_string();
    let again = StatusLine::parse(&printed).expect("a printed status line parses");
    assert_eq!(again.to_string(), printed, "printing is not stable");
    match (status, again) {
        (
            StatusLine::Vm {
                name, state, code, ..
            },
            StatusLine::Vm {
                name: n,
                state: s,
                code: c,
                ..
            },
        ) => assert_eq!((name, state, code), (n, s, c)),
        (a @ StatusLine::Done { .. }, b) => assert_eq!(a, b),
        (a, b) => panic!("{a:?} printed as {printed:?} parses as {b:?}"),
    }
});
