//! `kiln inspect` on a PE image (a UKI, an EFI application, a bzImage with
//! its EFI stub): its sections and a UKI's .osrel/.uname/.cmdline, as text
//! and as JSON.
#![no_main]

use kiln_fuzz::inspect_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    inspect_file("kiln.efi", data);
});
