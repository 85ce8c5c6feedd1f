//! Signals that ask init to stop, and the final power-off or reboot.

use kiln_schema::config::OnDone;
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// SIGTERM, SIGINT and SIGPWR ask for an orderly shutdown (the kernel sends
/// SIGINT to init on Ctrl-Alt-Del and SIGPWR on a power event).
pub fn install_signal_handlers() {
    let action = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGPWR] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe, and replaces no handler anything relies on.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            super::say(&format!("error: cannot handle {sig}: {e}"));
        }
    }
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Ends the appliance as configured. Never returns: if the kernel refuses,
/// init idles rather than exiting (an exiting init panics the kernel).
pub fn finish(on_done: OnDone) -> ! {
    nix::unistd::sync();
    let mode = match on_done {
        OnDone::Poweroff => Some(RebootMode::RB_POWER_OFF),
        OnDone::Reboot => Some(RebootMode::RB_AUTOBOOT),
        OnDone::Stay => None,
    };
    if let Some(mode) = mode {
        // reboot() only returns on failure.
        let Err(e) = reboot(mode);
        super::say(&format!("error: cannot {mode:?}: {e}; staying up"));
    }
    loop {
        // Keep reaping orphans while we stay up.
        let _ = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
