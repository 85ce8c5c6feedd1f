//! A bzImage as the runtime boots it (setup header, protected-mode kernel,
//! zero page, command line, initrd, device tree) into guest memory, and as
//! `kiln build` reads its release string.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = kiln_fuzz::scratch_file("bzImage", data);
    kiln_fuzz::boot(&path);
    let _ = kiln::kernel::bzimage_release(&path);
});
