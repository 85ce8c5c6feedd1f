//! Ctrl-C and SIGTERM for `kiln test` and `kiln run`:
//!
//! 1. the first sets the flag [`install`] returns: kiln stops the target in
//!    order (a lab's `power_off` included) and writes its report;
//! 2. the second kills every child at once but the cleanup
//!    ([`super::kill_work`]: a lab's `power_off` goes on, or runs next);
//!    kiln still writes the report and exits, and quits by itself if that
//!    takes longer than [`GRACE`];
//! 3. a third quits at once. kiln never quits with a child running: the
//!    children are killed first (and die with kiln anyway).

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long kiln may take, after the second Ctrl-C, to finish its report.
pub const GRACE: Duration = Duration::from_secs(10);

/// kiln's exit code after Ctrl-C (128 + SIGINT).
pub const EXIT_CODE: i32 = 130;

/// Installs the handling of SIGINT and SIGTERM; returns the flag the first
/// one sets.
pub fn install() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let set = flag.clone();
    std::thread::Builder::new()
        .name("kiln-signals".into())
        .spawn(move || {
            // Two signals that arrive before this thread runs count as one:
            // the slower, orderly stop.
            for (n, _) in signals.forever().enumerate() {
                set.store(true, Ordering::SeqCst);
                match n {
                    0 => {}
                    1 => {
                        super::kill_work();
                        crate::progress::note(
                            "interrupted again: killed the target's processes; powering off and writing the report (Ctrl-C again quits at once)",
                        );
                        std::thread::spawn(|| {
                            std::thread::sleep(GRACE);
                            quit("stopping took too long");
                        });
                    }
                    _ => quit("interrupted three times"),
                }
            }
        })?;
    Ok(flag)
}

/// Exits now, after killing every child.
fn quit(why: &str) -> ! {
    super::kill_all();
    crate::progress::note(format!(
        "{why}: quitting now; the report holds only the runs already finished"
    ));
    std::process::exit(EXIT_CODE)
}
