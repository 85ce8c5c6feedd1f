//! The guest-facing device models on their buses, driven by any sequence
//! of port, MMIO and ECAM accesses: COM1, the i8042 reset line, the exit
//! port, CMOS, the ACPI sleep registers, and the PCI root with one
//! passed-through function over a fake host function (config space, BAR
//! placement and moves, MSI and MSI-X tables, INTx). The model routes MSIs
//! through a real KVM VM (made once per process, /dev/kvm needed).
#![no_main]

use kiln_fuzz::fake_host::{DeviceInput, FakeHost};
use kiln_runtime::arch::x86_64::layout::{
    ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_PORTS, CMOS_PORT, CMOS_PORTS, COM1_PORT, COM1_PORTS,
    EXIT_PORT, EXIT_PORTS, I8042_COMMAND_PORT, I8042_DATA_PORT, PCI_CONFIG_PORT, PCI_ECAM_START,
    PCI_IO_START,
};
use kiln_runtime::devices::pci::root::BarAllocator;
use kiln_runtime::devices::pci::{PciFunction, PciRoot};
use kiln_runtime::devices::serial::SerialDevice;
use kiln_runtime::devices::{acpi_pm, cmos, exit_port, i8042, Bus, BusDevice};
use kiln_runtime::vac::Vac;
use kiln_runtime::vfio::passthrough::PassthroughFunction;
use kiln_runtime::vm::Vm;
use kiln_schema::config::VmConfig;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use vmm_sys_util::eventfd::EventFd;

const MEMORY: u64 = 16 << 20;

/// The VM the passed-through function routes its interrupts through.
fn vm() -> Arc<Vm> {
    static VM: OnceLock<Arc<Vm>> = OnceLock::new();
    VM.get_or_init(|| {
        let cfg: VmConfig = kiln_schema::config::parse(
            Path::new("fuzz.toml"),
            "name = \"fuzz\"\nmemory = \"16M\"\n[boot]\nkernel = \"k\"\n",
        )
        .expect("the VM config parses");
        let vac = Vac::open(Path::new("/dev/kvm")).expect("KVM at /dev/kvm");
        Vm::new(vac, &cfg).expect("a KVM VM")
    })
    .clone()
}

type Shared = Arc<Mutex<dyn BusDevice>>;

fn place(bus: &Bus, keep: &mut Vec<Shared>, base: u64, len: u64, device: Shared) {
    bus.insert(base, len, Arc::downgrade(&device))
        .expect("the board's ranges do not overlap");
    keep.push(device);
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = DeviceInput::decode(data) else {
        return;
    };
    let vm = vm();
    let mut bars = BarAllocator::new(MEMORY);
    let host = Box::new(FakeHost::new(&input.host));
    let function = match PassthroughFunction::new(vm, host, 1, input.rom, &mut bars, "fuzz") {
        Ok(f) => f,
        Err(e) => {
            let _ = kiln_abi::error::Chain::new(&e).to_string();
            return;
        }
    };
    // Where the function's BARs went, as anchors for accesses.
    let placed: Vec<u64> = function.placed().iter().map(|p| p.gpa).collect();
    let functions: Vec<Box<dyn PciFunction>> = vec![Box::new(function)];
    let root: Shared = Arc::new(Mutex::new(PciRoot::new(functions).expect("one function")));

    let (pio, mmio) = (Bus::new(), Bus::new());
    let mut keep = Vec::new();
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd");
    let serial = SerialDevice::new(irq, Box::new(std::io::sink()));
    place(
        &pio,
        &mut keep,
        u64::from(COM1_PORT),
        u64::from(COM1_PORTS),
        Arc::new(Mutex::new(serial)),
    );
    let (kbd_data, kbd_cmd) = i8042::ports();
    place(
        &pio,
        &mut keep,
        u64::from(I8042_DATA_PORT),
        1,
        Arc::new(Mutex::new(kbd_data)),
    );
    place(
        &pio,
        &mut keep,
        u64::from(I8042_COMMAND_PORT),
        1,
        Arc::new(Mutex::new(kbd_cmd)),
    );
    place(
        &pio,
        &mut keep,
        u64::from(EXIT_PORT),
        u64::from(EXIT_PORTS),
        Arc::new(Mutex::new(exit_port::ExitPort)),
    );
    place(
        &pio,
        &mut keep,
        u64::from(CMOS_PORT),
        u64::from(CMOS_PORTS),
        Arc::new(Mutex::new(cmos::Cmos::default())),
    );
    place(
        &pio,
        &mut keep,
        u64::from(ACPI_SLEEP_CONTROL_PORT),
        u64::from(ACPI_SLEEP_PORTS),
        Arc::new(Mutex::new(acpi_pm::AcpiPm)),
    );
    let ranges = PciRoot::ranges(MEMORY);
    for (base, len) in ranges.pio {
        pio.insert(base, len, Arc::downgrade(&root))
            .expect("PCI ports");
    }
    for (base, len) in ranges.mmio {
        mmio.insert(base, len, Arc::downgrade(&root))
            .expect("PCI windows");
    }

    let ports = [
        COM1_PORT,
        I8042_DATA_PORT,
        EXIT_PORT,
        CMOS_PORT,
        ACPI_SLEEP_CONTROL_PORT,
        PCI_CONFIG_PORT,
        PCI_IO_START,
    ];
    let mut memory = vec![PCI_ECAM_START, ranges.mmio[1].0, ranges.mmio[2].0];
    memory.extend(placed);
    for a in input.accesses.iter().take(256) {
        let len = a.len();
        let (bus, addr) = if a.mmio {
            let base = memory[usize::from(a.anchor) % memory.len()];
            (&mmio, base.saturating_add(u64::from(a.offset)))
        } else {
            let base = ports[usize::from(a.anchor) % ports.len()];
            (&pio, u64::from(base.wrapping_add(a.offset % 0x100)))
        };
        match a.write {
            Some(v) => {
                let _ = bus.write(addr, &v.to_le_bytes()[..len]);
            }
            None => {
                let mut data = [0u8; 8];
                let _ = bus.read(addr, &mut data[..len]);
            }
        }
    }
    drop(keep);
    drop(root);
});
