//! The runtime as PID 1: bring the box up, run every VM of the appliance in
//! its own process, and bring the box down when they are done.
//!
//! Init must never die (that is a kernel panic), so every step here reports
//! its error on the console and carries on to a controlled power-off.

mod console;
mod modules;
mod mounts;
mod power;
mod supervise;
mod vfio_binding;

use crate::status::{Emit, StatusLine};
use kiln_schema::config::{self, ApplianceConfig, APPLIANCE_PATH};
use std::path::Path;

/// Everything PID 1 does; never returns.
pub fn main() -> ! {
    mounts::mount_early();
    power::install_signal_handlers();
    // Nothing here should panic; should something still do, init reports
    // it and powers off instead of dying (an exiting init panics the
    // kernel). The runtime is built with unwinding for this.
    std::panic::set_hook(Box::new(|info| {
        say(&format!("error: internal error: {info}"))
    }));
    let on_done = std::panic::catch_unwind(run).unwrap_or_else(|_| {
        say("error: init stopped after an internal error; powering off");
        config::OnDone::Poweroff
    });
    power::finish(on_done)
}

/// Brings the appliance up, runs it and returns what to do at the end.
fn run() -> config::OnDone {
    let appliance = match load() {
        Ok(a) => a,
        Err(e) => {
            say(&format!("error: {e}"));
            say("error: the appliance config is unusable; powering off");
            return config::OnDone::Poweroff;
        }
    };
    if let Err(e) = modules::load_all(&appliance) {
        say(&format!("error: {e}"));
    }
    supervise::wait_for_nodes(&appliance);
    let (vms, refused, bound) = vfio_binding::bind(&appliance.vms);
    let (ok, failed) = supervise::run_all(&vms);
    vfio_binding::release(bound);
    StatusLine::done(ok, failed + refused).print();
    appliance.on_done
}

fn load() -> Result<ApplianceConfig, config::ConfigError> {
    let path = Path::new(APPLIANCE_PATH);
    let (appliance, src): (ApplianceConfig, String) = config::load(path)?;
    appliance.check(path, &src, Path::new("/"))?;
    Ok(appliance)
}

/// A line from init itself on the console, whole and at column 0.
pub(crate) fn say(msg: &str) {
    use std::io::Write;
    let _ = std::io::stdout()
        .lock()
        .write_all(format!("\nkiln: {msg}\n").as_bytes());
}
