//! A kernel `.config` as kiln reads it to check what an image needs.
#![no_main]

use kiln::kernel::KernelConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let config = KernelConfig::parse(text);
    for line in text.lines().take(64) {
        if let Some((key, _)) = line.trim().split_once('=') {
            let _ = (
                config.get(key),
                config.is_enabled(key),
                config.is_module(key),
            );
        }
    }
    for sym in ["CONFIG_KVM", "KVM_AMD", "CONFIG_RD_ZSTD", "CONFIG_"] {
        let _ = (config.is_builtin(sym), config.is_enabled(sym));
    }
});
