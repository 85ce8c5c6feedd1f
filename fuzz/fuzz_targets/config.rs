//! VM and appliance configs: parse, check, render the error, and for a
//! config that passes, the round trip `kiln build` relies on (the run form
//! it writes into the image parses back to the same VMs).
#![no_main]

use kiln_schema::config::{self, ApplianceConfig, KeyPath, VmConfig, VmSpec};
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};

/// A folder holding the files configs name: `kernel` and `initrd`.
fn base_dir() -> &'static Path {
    let dir = kiln_fuzz::scratch();
    for f in ["kernel", "initrd"] {
        if !dir.join(f).is_file() {
            kiln_fuzz::scratch_file(f, b"");
        }
    }
    dir
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(src) = std::str::from_utf8(rest) else {
        return;
    };
    let file = Path::new("fuzz.toml");
    let dir = base_dir();
    match kind % 3 {
        0 => match config::parse::<VmSpec>(file, src) {
            Ok(vm) => {
                if let Err(e) = vm.check(file, src, &KeyPath::root(), dir) {
                    let _ = kiln_abi::error::Chain::new(&e).to_string();
                }
                let back: VmSpec = reparse(&vm);
                assert_eq!(back, vm, "a VM config changes through TOML");
                let run = vm
                    .resolve(|input| Ok::<_, ()>(PathBuf::from(input.key())))
                    .expect("resolving to paths cannot fail");
                let back: VmConfig = reparse(&run);
                assert_eq!(back, run, "a run form changes through TOML");
            }
            Err(e) => {
                let _ = kiln_abi::error::Chain::new(&e).to_string();
            }
        },
        1 => match config::parse::<VmConfig>(file, src) {
            Ok(vm) => {
                if let Err(e) = vm.check(file, src, &KeyPath::root(), dir) {
                    let _ = kiln_abi::error::Chain::new(&e).to_string();
                }
                let back: VmConfig = reparse(&vm);
                assert_eq!(back, vm, "a run form changes through TOML");
            }
            Err(e) => {
                let _ = kiln_abi::error::Chain::new(&e).to_string();
            }
        },
        _ => match config::parse::<ApplianceConfig>(file, src) {
            Ok(a) => {
                if let Err(e) = a.check(file, src, dir) {
                    let _ = kiln_abi::error::Chain::new(&e).to_string();
                }
                let back: ApplianceConfig = reparse(&a);
                assert_eq!(back, a, "an appliance config changes through TOML");
            }
            Err(e) => {
                let _ = kiln_abi::error::Chain::new(&e).to_string();
            }
        },
    }
});

/// `value` written as TOML (as `kiln build` writes the appliance config) and
/// parsed again.
fn reparse<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    let text = toml::to_string(value).expect("a config serializes");
    config::parse(Path::new("back.toml"), &text).unwrap_or_else(|e| {
        panic!(
            "kiln's own TOML does not parse back: {}\n{text}",
            kiln_abi::error::Chain::new(&e)
        )
    })
}
