//! PCI config space virtualization: a host function of any config space
//! (capability lists, BAR types, MSI and MSI-X) taken over by the model,
//! then any sequence of guest config reads and writes (1 to 8 bytes, any
//! offset of its 4 KiB), as the PCI root hands them over.
#![no_main]

use kiln_fuzz::fake_host::{DeviceInput, FakeHost};
use kiln_runtime::vfio::config_space::VirtualConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(input) = DeviceInput::decode(data) else {
        return;
    };
    let host = FakeHost::new(&input.host);
    let mut config = VirtualConfig::new(&host, input.rom);
    for a in input.accesses.iter().take(256) {
        let len = a.len();
        // The root never passes an access beyond the 4 KiB config space.
        let offset = a.offset % 4096;
        let Some(len) = (usize::from(offset) + len <= 4096).then_some(len) else {
            continue;
        };
        match a.write {
            Some(v) => {
                let _ = config.write(&host, offset, &v.to_le_bytes()[..len]);
            }
            None => {
                let mut data = [0u8; 8];
                config.read(&host, offset, &mut data[..len]);
            }
        }
        for bar in config.bars() {
            assert!(bar.size == 0 || bar.size.is_power_of_two(), "{bar:?}");
        }
    }
});
