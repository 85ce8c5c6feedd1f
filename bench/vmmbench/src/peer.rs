//! The peer VMM: QEMU's `microvm` machine on KVM, given the same kernel
//! file, initrd, command line, memory and vCPUs as kiln's VMM.

use kiln_schema::config::VmConfig;
use std::process::Command;

/// QEMU in the benchmark initramfs, its libraries at the host's paths.
pub const QEMU: &str = "/bench/qemu-system-x86_64";
/// QEMU's firmware directory (`-L`): microvm's qboot BIOS.
pub const QEMU_DATA: &str = "/bench/qemu";
/// QEMU's trace line when the VM starts running: the end of its setup.
pub const RUNNING: &str = "vm_state_notify running 1";

/// The QEMU command line for `cfg`. Guest RAM comes from hugetlbfs, like
/// kiln's with `hugepages = true`; the exit device is at kiln's exit port,
/// so kiln-guest-init ends both VMs the same way.
pub fn command(cfg: &VmConfig) -> Command {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-L", QEMU_DATA, "-nodefaults", "-no-user-config"])
        .args(["-machine", "microvm,accel=kvm", "-cpu", "host"])
        .args(["-m", &format!("{}M", cfg.memory.bytes() >> 20)])
        .args(["-smp", &cfg.vcpus.to_string()])
        .args(["-mem-path", crate::HUGETLBFS])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args(["-no-reboot", "-trace", "vm_state_notify"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .arg("-kernel")
        .arg(&cfg.boot.kernel)
        .args(["-append", &cfg.boot.cmdline]);
    if let Some(initrd) = &cfg.boot.initrd {
        cmd.arg("-initrd").arg(initrd);
    }
    cmd
}
