//! `kiln test --target replay:LOG` end to end: a recorded console log of any
//! content judged against a built image directory (two VMs with
//! expectations), through the same run loop as a live target.
#![no_main]

use kiln::harness::targets::replay::ReplayTarget;
use kiln::harness::targets::{Target, TargetSpec};
use kiln::harness::{run_on, Options};
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const MANIFEST: &str = r#"{"name":"fuzz","kiln_version":"0","source_date_epoch":0,
"kernel":{"release":"6.1.0-fuzz","source":"fuzz"},"cmdline":"","compression":"zstd",
"artifacts":[{"file":"initramfs.cpio.zst","size":1,"sha256":"00"}],"modules":[],
"payloads":[],"inputs":[],
"vms":[{"name":"hello","test":{"expect":["hello: exit 0"],"fail":["ASSERT"],"timeout":"30s"}},
{"name":"edu","test":{"expect":["edu: .* ok$"]}}]}"#;

fn image_dir() -> PathBuf {
    let dir = kiln_fuzz::scratch().join("fuzz");
    if !dir.join("manifest.json").is_file() {
        std::fs::create_dir_all(&dir).expect("image dir");
        kiln_fuzz::scratch_file("fuzz/manifest.json", MANIFEST.as_bytes());
        kiln::progress::set_quiet(true);
    }
    dir
}

fuzz_target!(|log: &[u8]| {
    let dir = image_dir();
    let log = kiln_fuzz::scratch_file("console.log", log);
    let opts = Options {
        inputs: vec![dir],
        junit: None,
        repeat: 1,
        target: TargetSpec::Replay(log.clone()),
        timeout: None,
        boot_timeout: None,
        echo: false,
    };
    let target: Box<dyn Target> = Box::new(ReplayTarget::new(Path::new(&log)));
    let report =
        run_on(&opts, Ok(target), Arc::new(AtomicBool::new(false))).expect("the report is written");
    assert_eq!(report.runs.len(), 1);
    assert!(report.runs[0].vms.len() >= 2, "a VM lost its verdict");
    let _ = report.exit_code();
});
