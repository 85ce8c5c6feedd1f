//! The module index shared by the builder and PID 1: `modules.dep`,
//! `modules.softdep`, `modules.builtin` and `modules.alias` texts (NUL
//! separated in the input), the load-order closure of each module, and the
//! depmod-form texts kiln writes, which must parse back.
#![no_main]

use kiln_schema::kmod::ModuleIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let texts = kiln_fuzz::texts(data, 4);
    let text = |i: usize| texts.get(i).map(String::as_str);
    let Ok(index) = ModuleIndex::from_modules_dep(text(0).unwrap_or(""), text(1), text(2)) else {
        return;
    };
    let Ok(index) = index.with_aliases(text(3).unwrap_or("")) else {
        return;
    };
    let all = index.modules();
    for m in all.iter().take(16) {
        if let Ok(closure) = index.closure(&[m.name.as_str()]) {
            assert!(closure.iter().any(|e| e.name == m.name) || index.is_builtin(&m.name));
        }
    }
    let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
    let _ = index.closure(&names);
    let _ = index.closure(&["crc32c", "kvm-amd", "vfio_pci"]);
    let dep = index.to_modules_dep(&all);
    let softdep = index.to_modules_softdep(&all);
    let again = ModuleIndex::from_modules_dep(&dep, Some(&softdep), text(2));
    assert!(
        again.is_ok(),
        "kiln's own modules.dep does not parse back: {:?}\n{dep}\n{softdep}",
        again.err()
    );
});
