//! Init's device step: bind every VM's PCI devices to vfio-pci before the
//! VMs start, and give them back to their drivers once all VMs are done.

use crate::host::pci::Sysfs;
use crate::host::{self, Bound};
use crate::status::{Emit, StatusLine, VmState};
use kiln_abi::error::Chain;
use kiln_schema::config::VmConfig;
use std::path::Path;

/// Binds the devices of `vms` and returns the VMs to start (each with its
/// devices pinned to their bus addresses), how many VMs failed here, and
/// the bindings to give back at the end. A VM whose devices cannot be bound
/// gets a `state=failed` line and is left out; the others still run.
pub fn bind(vms: &[VmConfig]) -> (Vec<VmConfig>, u32, Bound) {
    let binding = host::bind_all(&Sysfs::host(), Path::new(host::DEV_VFIO), vms);
    let mut runnable = Vec::with_capacity(vms.len());
    let mut failed = 0;
    for (vm, result) in vms.iter().zip(binding.vms) {
        match result {
            Ok(devices) => {
                for d in &devices {
                    let cdev = d
                        .cdev
                        .as_ref()
                        .map(|c| format!(", {}", c.display()))
                        .unwrap_or_default();
                    super::say(&format!(
                        "vm {}: {:04x}:{:04x} at {} bound to vfio-pci ({}{cdev})",
                        vm.name,
                        d.vendor,
                        d.device,
                        d.bdf,
                        d.dev_vfio.display()
                    ));
                }
                runnable.push(host::pin_addresses(vm, &devices));
            }
            Err(e) => {
                StatusLine::vm(vm.name.as_str(), VmState::Failed)
                    .with_reason(Chain::new(&e))
                    .print();
                failed += 1;
            }
        }
    }
    (runnable, failed, binding.bound)
}

/// Gives the devices back; call once no VMM process holds them.
pub fn release(bound: Bound) {
    if let Err(failures) = bound.restore() {
        for e in failures {
            super::say(&format!("error: {}", Chain::new(&e)));
        }
    }
}
