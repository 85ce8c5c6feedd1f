//! The cpio newc reader `kiln inspect` lists initramfs archives with: one
//! archive or several back to back, each entry's data streamed past.
#![no_main]

use kiln::cpio;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut streamed = 0u64;
    let listed = cpio::read_with(data, |_, r| {
        let mut buf = [0u8; 512];
        // Read part of the data only: the reader skips the rest.
        let n = r.read(&mut buf)?;
        streamed += n as u64;
        Ok(())
    });
    match listed {
        Ok(entries) => {
            let total: u64 = entries.iter().map(|e| e.size).sum();
            assert!(streamed <= total);
            for e in &entries {
                let _ = (cpio::mode_string(e.mode), cpio::type_name(e.mode));
            }
            let again = cpio::read_with_data(data).expect("a second read of the same bytes");
            assert_eq!(again.len(), entries.len());
        }
        Err(e) => {
            let _ = kiln_abi::error::Chain::new(&e).to_string();
        }
    }
});
