//! kiln-guest-init: `/init` of a Linux guest's one-binary initramfs.
//!
//! It mounts the kernel's pseudo filesystems, reports what the guest sees
//! (kernel release, online CPUs, PCI devices, disks) on the console, and ends the
//! VM with the status code from `guest_init.exit=<n>` on the kernel command
//! line: through the kiln exit port, or by powering off when not under kiln.
//! It runs as PID 1, where a panic is a kernel panic: every error is printed
//! and the program still reaches the exit.

mod block;
mod cmdline;
mod console;
mod cpus;
mod mounts;
mod pci;
mod power;

use std::path::Path;

use cmdline::Options;

fn main() {
    for error in mounts::mount_all() {
        console::error(&error);
    }

    match nix::sys::utsname::uname() {
        Ok(uts) => say!("hello from Linux {}", uts.release().to_string_lossy()),
        Err(e) => say!("hello from Linux (unknown release: uname failed: {e})"),
    }

    match cpus::online(Path::new(cpus::ONLINE_PATH)) {
        Ok(n) => say!("cpus online {n}"),
        Err(e) => {
            console::error(&e);
        }
    }

    match pci::devices(Path::new(pci::SYSFS_DEVICES)) {
        Ok(devices) => {
            for device in devices {
                say!("{device}");
            }
        }
        Err(e) => {
            console::error(&e);
        }
    }

    match block::disks(Path::new(block::SYSFS_BLOCK), Path::new(block::DEV)) {
        Ok(disks) => {
            for disk in disks {
                say!("{disk}");
            }
        }
        Err(e) => {
            console::error(&e);
        }
    }

    let code = match cmdline::read(Path::new(cmdline::PROC_CMDLINE)) {
        Ok(Options { exit_code }) => exit_code.unwrap_or(0),
        Err(e) => {
            console::error(&e);
            cmdline::BAD_OPTIONS_CODE
        }
    };
    say!("exit {code}");
    power::exit(code)
}
