//! The board: which devices a kiln VM has and where they sit, at the ports
//! and addresses arch/x86_64/layout.rs names.
//!
//! | device                          | where                                   |
//! |---------------------------------|-----------------------------------------|
//! | COM1 (16550A), IRQ 4            | ports `COM1_PORT` (8)                   |
//! | i8042 reset line                | ports `I8042_DATA_PORT`, `I8042_COMMAND_PORT` |
//! | exit port                       | ports `EXIT_PORT` (4)                   |
//! | CMOS RTC                        | ports `CMOS_PORT` (2)                   |
//! | ACPI sleep registers            | ports `ACPI_SLEEP_CONTROL_PORT` (2)     |
//! | PCI root: config mechanism #1   | ports `PCI_CONFIG_PORT` (8)             |
//! | PCI root: I/O BARs              | ports `PCI_IO_START` to the end         |
//! | PCI root: ECAM, memory BARs     | MMIO `PCI_ECAM_START`, the BAR windows  |
//!
//! The [`Machine`] owns the devices; the VM's buses hold them weakly, so
//! dropping the machine takes every device off the buses, and a device that
//! holds the VM (a passed-through PCI function) makes no cycle.

use crate::arch::x86_64::layout::{
    ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_PORTS, CMOS_PORT, CMOS_PORTS, COM1_IRQ, COM1_PORT,
    COM1_PORTS, EXIT_PORT, EXIT_PORTS, I8042_COMMAND_PORT, I8042_DATA_PORT,
};
use crate::devices::pci::{PciFunction, PciRoot, PciRootError};
use crate::devices::serial::{ConsoleSink, SerialDevice, SerialError};
use crate::devices::tx_ring::TxRing;
use crate::devices::{acpi_pm, cmos, exit_port, i8042, BusDevice, BusError};
use crate::vm::Vm;
use kiln_schema::config::VmConfig;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("KVM refused to register the serial port's irqfd")]
    SerialIrqfd(#[source] kvm_ioctls::Error),
    #[error(transparent)]
    Serial(#[from] SerialError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    PciRoot(#[from] PciRootError),
}

/// What the VMM's caller decides about the board, rather than the VM's
/// config.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Tag each line of guest output echoed to stdout
    /// ([`crate::devices::serial::GUEST_TAG`]), for init to tell it apart.
    pub tag_guest_lines: bool,
}

/// A VM with its devices placed. Dropping it unregisters the serial irqfd,
/// then drops the devices (a passed-through function takes its KVM slots
/// and routes back through its own VM handle), then its VM handle.
pub struct Machine {
    /// Strong references to what the VM's buses hold weakly.
    devices: Vec<Arc<Mutex<dyn BusDevice>>>,
    serial_irq: EventFd,
    first_output: Arc<OnceLock<Instant>>,
    /// COM1's coalesced transmit register, which the vCPUs drain.
    tx_ring: Option<Arc<TxRing>>,
    vm: Arc<Vm>,
}

// The devices are trait objects: the VM and their count describe it.
impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("vm", &self.vm)
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// Places the legacy devices on `vm`'s port bus (the console as `cfg`
    /// says), and the PCI root with `pci` (device 1, 2, ... in order) on
    /// both buses.
    pub fn new(
        vm: Arc<Vm>,
        cfg: &VmConfig,
        options: Options,
        pci: Vec<Box<dyn PciFunction>>,
    ) -> Result<Machine, MachineError> {
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        vm.fd()
            .register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(MachineError::SerialIrqfd)?;
        // From here on `Drop` unregisters the irqfd, whatever fails next.
        let mut m = Machine {
            devices: Vec::new(),
            serial_irq,
            first_output: Arc::default(),
            tx_ring: None,
            vm,
        };
        let sink = ConsoleSink::new(cfg.console.echo, cfg.console.log.as_deref())?
            .tagging_lines(options.tag_guest_lines)
            .sharing(m.vm.notes().stdout().clone());
        m.first_output = sink.first_output();
        let sink: Box<dyn Write + Send> = Box::new(sink);
        let irq = m.serial_irq.try_clone().map_err(SerialError::EventFd)?;
        let mut serial = SerialDevice::new(irq, sink);
        m.tx_ring = Some(serial.coalescing(m.vm.clone(), COM1_PORT));
        m.place_ports(COM1_PORT, COM1_PORTS, serial)?;
        let (kbd_data, kbd_cmd) = i8042::ports();
        m.place_ports(I8042_DATA_PORT, 1, kbd_data)?;
        m.place_ports(I8042_COMMAND_PORT, 1, kbd_cmd)?;
        m.place_ports(EXIT_PORT, EXIT_PORTS, exit_port::ExitPort)?;
        m.place_ports(CMOS_PORT, CMOS_PORTS, cmos::Cmos::default())?;
        m.place_ports(ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_PORTS, acpi_pm::AcpiPm)?;

        let root: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(PciRoot::new(pci)?));
        let ranges = PciRoot::ranges(cfg.memory.bytes());
        for (base, len) in ranges.pio {
            m.vm.pio_bus().insert(base, len, Arc::downgrade(&root))?;
        }
        for (base, len) in ranges.mmio {
            m.vm.mmio_bus().insert(base, len, Arc::downgrade(&root))?;
        }
        m.devices.push(root);
        Ok(m)
    }

    fn place_ports(
        &mut self,
        port: u16,
        count: u16,
        device: impl BusDevice + 'static,
    ) -> Result<(), BusError> {
        let device: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(device));
        self.vm
            .pio_bus()
            .insert(u64::from(port), u64::from(count), Arc::downgrade(&device))?;
        self.devices.push(device);
        Ok(())
    }

    /// COM1's transmit ring, when KVM offers coalesced PIO.
    pub fn tx_ring(&self) -> Option<&Arc<TxRing>> {
        self.tx_ring.as_ref().filter(|r| r.usable())
    }

    /// The VM the devices are on.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    /// When the guest first wrote to its console, if it has.
    pub fn first_output(&self) -> Option<Instant> {
        self.first_output.get().copied()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Best effort: closing the VM fd later drops the irqfd too.
        let _ = self.vm.fd().unregister_irqfd(&self.serial_irq, COM1_IRQ);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{PCI_CONFIG_PORT, PCI_ECAM_START};
    use crate::devices::{Access, StopRequest};
    use crate::vac::tests::kvm_path;
    use crate::vac::Vac;
    use crate::vm::tests::config;
    use std::sync::Weak;

    fn machine(pci: Vec<Box<dyn PciFunction>>) -> Machine {
        let cfg = config(1, "16M");
        let vm = Vm::new(Vac::open(kvm_path()).unwrap(), &cfg).unwrap();
        Machine::new(vm, &cfg, Options::default(), pci).unwrap()
    }

    fn inl(vm: &Vm, port: u16) -> u32 {
        let mut d = [0u8; 4];
        vm.pio_bus().read(u64::from(port), &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn devices_sit_where_the_layout_says() {
        let m = machine(Vec::new());
        let vm = m.vm();
        let pio = vm.pio_bus();
        // COM1's line status register: transmitter empty.
        let mut lsr = [0u8];
        assert!(pio.read(u64::from(COM1_PORT) + 5, &mut lsr));
        assert_eq!(lsr[0] & 0x60, 0x60);
        // CMOS: a scratch register written through index and data ports.
        pio.write(u64::from(CMOS_PORT), &[0x40]);
        pio.write(u64::from(CMOS_PORT) + 1, &[0x5a]);
        let mut d = [0u8];
        pio.read(u64::from(CMOS_PORT) + 1, &mut d);
        assert_eq!(d, [0x5a]);
        assert_eq!(
            pio.write(u64::from(EXIT_PORT), &[7]),
            Access::Stop(StopRequest::Exit(7))
        );
        assert_eq!(
            pio.write(u64::from(I8042_COMMAND_PORT), &[0xfe]),
            Access::Stop(StopRequest::Reboot)
        );
        assert_eq!(
            pio.write(u64::from(ACPI_SLEEP_CONTROL_PORT), &[(5 << 2) | 0x20]),
            Access::Stop(StopRequest::Poweroff)
        );
        // The PCI root, through mechanism #1 and through ECAM.
        pio.write(u64::from(PCI_CONFIG_PORT), &0x8000_0000u32.to_le_bytes());
        assert_eq!(inl(vm, PCI_CONFIG_PORT + 4), 0x0008_1b36);
        let mut id = [0u8; 4];
        assert!(vm.mmio_bus().read(PCI_ECAM_START, &mut id));
        assert_eq!(u32::from_le_bytes(id), 0x0008_1b36);
        // A byte at 0xCF9 is not CONFIG_ADDRESS; port 0x61 stays KVM's.
        assert_eq!(
            pio.write(u64::from(PCI_CONFIG_PORT) + 1, &[6]),
            Access::Unclaimed
        );
        assert_eq!(pio.write(0x61, &[0]), Access::Unclaimed);
        // An empty BAR window decodes nothing.
        assert!(!vm.mmio_bus().read(0xc000_0000, &mut id));
        assert_eq!(inl(vm, 0xc000), u32::MAX);
        assert_eq!(pio.unclaimed().get(&0xc000), Some(&1));
    }

    #[test]
    fn dropping_the_machine_takes_its_devices_off_the_buses() {
        let m = machine(Vec::new());
        let vm = m.vm().clone();
        drop(m);
        assert_eq!(
            vm.pio_bus().write(u64::from(EXIT_PORT), &[1]),
            Access::Unclaimed
        );
        let mut d = [0u8; 4];
        assert!(!vm.mmio_bus().read(PCI_ECAM_START, &mut d));
        assert_eq!(d, [0xff; 4]);
    }

    /// A function that holds the VM, as a passed-through one does.
    struct HoldsVm(#[allow(dead_code)] Arc<Vm>);

    impl PciFunction for HoldsVm {
        fn config_read(&self, _: u16, data: &mut [u8]) {
            data.fill(0x11);
        }
        fn config_write(&mut self, _: u16, _: &[u8]) {}
        fn claims(&self, _: bool, _: u64) -> bool {
            false
        }
        fn bar_read(&self, _: bool, _: u64, _: &mut [u8]) -> bool {
            false
        }
        fn bar_write(&mut self, _: bool, _: u64, _: &[u8]) -> bool {
            false
        }
    }

    #[test]
    fn a_pci_function_holding_the_vm_makes_no_cycle() {
        let cfg = config(1, "16M");
        let vm = Vm::new(Vac::open(kvm_path()).unwrap(), &cfg).unwrap();
        let weak_vm: Weak<Vm> = Arc::downgrade(&vm);
        let f: Box<dyn PciFunction> = Box::new(HoldsVm(vm.clone()));
        let m = Machine::new(vm, &cfg, Options::default(), vec![f]).unwrap();
        // Device 1 answers config reads through the bus.
        let mut d = [0u8; 4];
        assert!(m.vm().mmio_bus().read(PCI_ECAM_START + (1 << 15), &mut d));
        assert_eq!(d, [0x11; 4]);
        drop(m);
        assert!(weak_vm.upgrade().is_none(), "the VM went with the machine");
    }
}
