//! `kiln inspect` on an initramfs file: uncompressed archives, then a
//! compressed one (gzip, zstd, xz, legacy lz4) to the end, listed as text
//! and as JSON.
#![no_main]

use kiln_fuzz::inspect_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    inspect_file("initramfs.cpio", data);
});
