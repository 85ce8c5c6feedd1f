//! A LAVA job log (`output.yaml` records, plain or xz, or lava-run's
//! output) read back as a console with its clock, as `--target replay:`
//! reads one.
#![no_main]

use kiln::harness::targets::lava_log;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lava_log::is_lava_log(data);
    match lava_log::parse(data.to_vec()) {
        Ok(log) => {
            let mut console = Vec::new();
            for (_, line) in &log.timeline {
                console.extend_from_slice(line);
                console.push(b'\n');
            }
            assert!(console == log.console, "the console is not its timeline");
            let _ = log.job_result();
        }
        Err(e) => {
            let _ = kiln_abi::error::Chain::new(&e).to_string();
        }
    }
});
