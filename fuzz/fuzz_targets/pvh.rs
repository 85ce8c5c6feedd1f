//! An ELF kernel as the runtime boots it through PVH (segments at their
//! physical addresses, the PVH entry note, hvm_start_info and its module
//! list) into guest memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = kiln_fuzz::scratch_file("vmlinux", data);
    kiln_fuzz::boot(&path);
});
