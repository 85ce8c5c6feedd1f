//! A kernel module's `.modinfo` section, read from its ELF image (a Debian
//! kernel package has no modules.dep: kiln reads every module's).
#![no_main]

use kiln::kernel::modinfo::parse_modinfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|elf: &[u8]| {
    if let Ok(info) = parse_modinfo(elf) {
        for d in &info.depends {
            assert!(!d.is_empty() && !d.contains(','));
        }
    }
});
