//! A lab file (`labs/NAME.toml`): the commands `kiln test` drives a lab
//! machine with, parsed and checked.
#![no_main]

use kiln::harness::targets::command::LabConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|src: &[u8]| {
    let file = kiln_fuzz::scratch_file("lab.toml", src);
    if let Err(e) = LabConfig::load(&file) {
        let _ = kiln_abi::error::Chain::new(&e).to_string();
    }
});
