//! The FAT volume lister behind `kiln inspect disk.img`: a volume of any
//! content is checked and listed or refused, never followed for ever and
//! never handed to fatfs in a shape that makes it panic.
#![no_main]

use kiln::output::fat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match fat::list(data.to_vec()) {
        Ok(listing) => {
            for f in &listing.files {
                assert!(!f.path.is_empty());
            }
        }
        Err(e) => {
            let _ = kiln_abi::error::Chain::new(&e).to_string();
        }
    }
});
