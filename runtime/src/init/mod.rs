//! The runtime as PID 1: bring the box up, run every VM of the appliance in
//! its own process, and bring the box down when they are done.
//!
//! Init must never die (that is a kernel panic), so every step here reports
//! its error on the console and carries on to a controlled power-off.

pub(crate) mod cgroup;
mod console;
mod firmware;
pub mod modules;
pub mod mounts;
mod power;
mod supervise;
mod vfio_binding;
mod watchdog;

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
    firmware::report();
    supervise::wait_for_nodes(&appliance);
    let (vms, refused, bound) = vfio_binding::bind(&appliance.vms);
    let (ok, failed) = supervise::run_all(&vms);
    vfio_binding::release(bound);
    // Before the done line, which may end a `kiln test` run.
    if let Some(kib) = crate::proc_status::read_field_kib(Path::new("/proc/self/status"), "VmHWM:")
    {
        say(&format!("init memory peak_kib={kib}"));
    }
    StatusLine::done(ok, failed + refused).print();
    appliance.on_done
}

fn load() -> Result<ApplianceConfig, config::ConfigError> {
    let path = Path::new(APPLIANCE_PATH);
    let (appliance, src): (ApplianceConfig, String) = config::load(path)?;
    appliance.check(path, &src, Path::new("/"))?;
    Ok(appliance)
}

/// An error and its causes, outermost first, on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

/// A line from init itself on the console, whole and at column 0.
pub(crate) fn say(msg: &str) {
    use std::io::Write;
    let _ = std::io::stdout()
        .lock()
        .write_all(format!("\nkiln: {msg}\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_name_every_cause() {
        let e = cgroup::CgroupError::Create {
            path: "/sys/fs/cgroup/kiln".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(
            chain(&e),
            "Cannot create /sys/fs/cgroup/kiln: Permission denied (os error 13)"
        );
    }
}
