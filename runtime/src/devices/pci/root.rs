//! The guest's PCI bus 0: a host bridge at 00:00.0 and the functions at
//! 00:01.0, 00:02.0, ... in config order; config space through mechanism
//! #1 (0xCF8/0xCFC) and ECAM; BARs placed in the windows of
//! arch/x86_64/layout.rs, trapped accesses dispatched to their function.
//!
//! The root is a device on both buses of the VM ([`PciRoot::ranges`]): on
//! the port bus at the config ports and the I/O window, on the MMIO bus at
//! ECAM and the two memory windows. Within a window it decodes only what a
//! function's BAR claims.
//!
//! Config accesses reach a function whole (1 to 8 bytes, as the guest made
//! them) but never past its 4 KiB of config space, nor past the 4 data
//! ports of mechanism #1; the function virtualizes each register they
//! touch ([`super::for_each_dword`]).

use super::{for_each_dword, BarKind, PciFunction, CONFIG_SPACE_SIZE};
use crate::arch::x86_64::layout::{
    pci_mmio64_start, PCI_CONFIG_PORT, PCI_CONFIG_PORTS, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_IO_END,
    PCI_IO_START, PCI_MMIO32_END, PCI_MMIO32_START, PCI_MMIO64_SIZE,
};
use crate::devices::{BusDevice, StopRequest};

/// The host bridge's identity: Red Hat's generic PCIe host bridge, which
/// no OS has quirks for.
pub const HOST_BRIDGE_VENDOR: u16 = 0x1b36;
pub const HOST_BRIDGE_DEVICE: u16 = 0x0008;
/// Bus 0 has 32 device numbers; 0 is the host bridge.
pub const MAX_FUNCTIONS: usize = 31;

#[derive(Debug, thiserror::Error)]
pub enum PciRootError {
    #[error("The VM has {0} PCI devices; at most {MAX_FUNCTIONS} fit on its bus")]
    TooMany(usize),
    #[error("BAR {index} ({size:#x} bytes) of {what} does not fit in the guest's PCI windows; assign fewer or smaller devices")]
    NoSpace { what: String, index: u8, size: u64 },
    #[error("The expansion ROM ({size:#x} bytes) of {what} does not fit in the guest's 32-bit PCI window; assign fewer or smaller devices, or leave out `rom = true`")]
    NoRomSpace { what: String, size: u64 },
}

/// Hands out guest addresses for BARs, naturally aligned.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    mmio32: (u64, u64),
    mmio64: (u64, u64),
    io: (u64, u64),
}

fn bump(window: &mut (u64, u64), size: u64) -> Option<u64> {
    let start = window.0.checked_next_multiple_of(size)?;
    let end = start.checked_add(size)?;
    (end <= window.1).then(|| {
        window.0 = end;
        start
    })
}

impl BarAllocator {
    pub fn new(mem_size: u64) -> Self {
        let m64 = pci_mmio64_start(mem_size);
        BarAllocator {
            mmio32: (PCI_MMIO32_START, PCI_MMIO32_END),
            mmio64: (m64, m64.saturating_add(PCI_MMIO64_SIZE)),
            io: (u64::from(PCI_IO_START), u64::from(PCI_IO_END)),
        }
    }

    /// A place for a BAR. 64-bit BARs go below 4 GiB while they fit there
    /// (so guests with a 4 GiB identity map reach them) and above RAM
    /// otherwise.
    pub fn allocate(&mut self, kind: BarKind, size: u64) -> Option<u64> {
        match kind {
            BarKind::Io => bump(&mut self.io, size.max(4)),
            BarKind::Mem32 => bump(&mut self.mmio32, size.max(4096)),
            BarKind::Mem64 => bump(&mut self.mmio32, size.max(4096))
                .or_else(|| bump(&mut self.mmio64, size.max(4096))),
        }
    }

    /// The 32-bit and 64-bit memory windows `(start, end)`, for ACPI.
    pub fn windows(mem_size: u64) -> [(u64, u64); 2] {
        let m64 = pci_mmio64_start(mem_size);
        [
            (PCI_MMIO32_START, PCI_MMIO32_END),
            (m64, m64.saturating_add(PCI_MMIO64_SIZE)),
        ]
    }
}

/// The host bridge's config space: identity and class, nothing writable.
fn host_bridge_dword(reg: u16) -> u32 {
    match reg {
        0x00 => u32::from(HOST_BRIDGE_VENDOR) | u32::from(HOST_BRIDGE_DEVICE) << 16,
        0x08 => 0x0600_0000, // class 06 (bridge), subclass 00 (host)
        _ => 0,
    }
}

pub struct PciRoot {
    /// CONFIG_ADDRESS as last written to 0xCF8.
    address: u32,
    /// Device number 1 + i holds `functions[i]`.
    functions: Vec<Box<dyn PciFunction>>,
}

/// Where the root sits: `(base, len)` ranges on the port bus and on the
/// MMIO bus.
#[derive(Debug)]
pub struct RootRanges {
    pub pio: [(u64, u64); 2],
    pub mmio: [(u64, u64); 3],
}

// The functions are trait objects: their count is what there is to show.
impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciRoot")
            .field("address", &self.address)
            .field("functions", &self.functions.len())
            .finish()
    }
}

impl PciRoot {
    pub fn new(functions: Vec<Box<dyn PciFunction>>) -> Result<Self, PciRootError> {
        if functions.len() > MAX_FUNCTIONS {
            return Err(PciRootError::TooMany(functions.len()));
        }
        Ok(PciRoot {
            address: 0,
            functions,
        })
    }

    /// The ranges the root takes on the buses of a guest with `mem_size`
    /// bytes of RAM.
    pub fn ranges(mem_size: u64) -> RootRanges {
        let [(m32, m32_end), (m64, m64_end)] = BarAllocator::windows(mem_size);
        RootRanges {
            pio: [
                (u64::from(PCI_CONFIG_PORT), u64::from(PCI_CONFIG_PORTS)),
                (
                    u64::from(PCI_IO_START),
                    u64::from(PCI_IO_END).saturating_sub(u64::from(PCI_IO_START)),
                ),
            ],
            mmio: [
                (PCI_ECAM_START, PCI_ECAM_SIZE),
                (m32, m32_end.saturating_sub(m32)),
                (m64, m64_end.saturating_sub(m64)),
            ],
        }
    }

    /// The device number of the function at index `i` (in config order).
    /// Saturates past the bus's 31 devices: such a number matches no
    /// function (callers hold at most [`MAX_FUNCTIONS`]).
    pub fn device_number(i: usize) -> u8 {
        u8::try_from(i.saturating_add(1)).unwrap_or(u8::MAX)
    }

    fn function(&self, device: u8) -> Option<&dyn PciFunction> {
        self.functions
            .get(usize::from(device).checked_sub(1)?)
            .map(|f| f.as_ref())
    }

    fn function_mut(&mut self, device: u8) -> Option<&mut Box<dyn PciFunction>> {
        self.functions.get_mut(usize::from(device).checked_sub(1)?)
    }

    /// `data` cut to what fits in config space from `reg`.
    fn within_function(reg: u16, len: usize) -> usize {
        len.min(usize::from(CONFIG_SPACE_SIZE.saturating_sub(reg)))
    }

    fn config_read(&self, device: u8, function: u8, reg: u16, data: &mut [u8]) {
        data.fill(0xff);
        let len = Self::within_function(reg, data.len());
        let Some(data) = data.get_mut(..len).filter(|_| function == 0) else {
            return;
        };
        if device == 0 {
            for_each_dword(reg, len, |at, range| {
                let v = host_bridge_dword(at & !3).to_le_bytes();
                let start = usize::from(at & 3);
                if let Some(piece) = data.get_mut(range) {
                    for (i, b) in piece.iter_mut().enumerate() {
                        *b = start
                            .checked_add(i)
                            .and_then(|k| v.get(k))
                            .copied()
                            .unwrap_or(0xff);
                    }
                }
            });
            return;
        }
        if let Some(f) = self.function(device) {
            f.config_read(reg, data);
        }
    }

    fn config_write(&mut self, device: u8, function: u8, reg: u16, data: &[u8]) {
        if function != 0 || device == 0 {
            return;
        }
        let len = Self::within_function(reg, data.len());
        if let (Some(f), Some(data)) = (self.function_mut(device), data.get(..len)) {
            f.config_write(reg, data);
        }
    }

    /// The bytes of a data-port access at 0xCFC + `byte` that are config
    /// data: up to 0xCFF. A string access (`rep ins`/`outs`, which KVM
    /// hands over as one run of more than 4 bytes) repeats one port, which
    /// a run of bytes cannot say: it gets none.
    fn data_port_len(byte: u16, len: usize) -> usize {
        if len > 4 {
            return 0;
        }
        len.min(usize::from(4u16.saturating_sub(byte)))
    }

    /// The (device, function, register) mechanism #1 selects for a data
    /// access at 0xCFC + `byte`, if enabled and on bus 0.
    fn selected(&self, byte: u16) -> Option<(u8, u8, u16)> {
        let a = self.address;
        let enabled = a & 0x8000_0000 != 0;
        let bus = (a >> 16) & 0xff;
        (enabled && bus == 0).then_some((
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 7) as u8,
            // A dword-aligned register and a byte below 4.
            (a & 0xfc) as u16 | byte,
        ))
    }

    /// Handles an `in`; false when the port is not the bus's.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        match port {
            PCI_CONFIG_PORT if data.len() == 4 => {
                data.copy_from_slice(&self.address.to_le_bytes());
                true
            }
            p if (PCI_CONFIG_PORT + 4..PCI_CONFIG_PORT + 8).contains(&p) => {
                let byte = p.saturating_sub(PCI_CONFIG_PORT + 4);
                data.fill(0xff);
                let len = Self::data_port_len(byte, data.len());
                if let (Some((d, f, r)), Some(data)) = (self.selected(byte), data.get_mut(..len)) {
                    if len > 0 {
                        self.config_read(d, f, r, data);
                    }
                }
                true
            }
            p if p >= PCI_IO_START => self.bar_read(true, u64::from(p), data),
            _ => false,
        }
    }

    /// Handles an `out`; false when the port is not the bus's.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
        match port {
            // Only dword writes reach CONFIG_ADDRESS (byte writes to 0xCF9
            // are a chipset reset register elsewhere).
            PCI_CONFIG_PORT if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b) & 0x80ff_fffc;
                true
            }
            p if (PCI_CONFIG_PORT + 4..PCI_CONFIG_PORT + 8).contains(&p) => {
                let byte = p.saturating_sub(PCI_CONFIG_PORT + 4);
                let len = Self::data_port_len(byte, data.len());
                if let (Some((d, f, r)), Some(data)) = (self.selected(byte), data.get(..len)) {
                    if len > 0 {
                        self.config_write(d, f, r, data);
                    }
                }
                true
            }
            p if p >= PCI_IO_START => self.bar_write(true, u64::from(p), data),
            _ => false,
        }
    }

    fn ecam(addr: u64) -> Option<(u8, u8, u16)> {
        let off = addr.checked_sub(PCI_ECAM_START)?;
        (off < PCI_ECAM_SIZE).then_some((
            ((off >> 15) & 0x1f) as u8,
            ((off >> 12) & 7) as u8,
            (off & 0xfff) as u16,
        ))
    }

    /// Whether `addr` is in the ECAM window (config space, not a BAR).
    pub fn is_ecam(addr: u64) -> bool {
        Self::ecam(addr).is_some()
    }

    /// Handles an MMIO read; false when no device claims `addr`.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        if let Some((d, f, r)) = Self::ecam(addr) {
            self.config_read(d, f, r, data);
            return true;
        }
        self.bar_read(false, addr, data)
    }

    /// Handles an MMIO write; false when no device claims `addr`.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        if let Some((d, f, r)) = Self::ecam(addr) {
            self.config_write(d, f, r, data);
            return true;
        }
        self.bar_write(false, addr, data)
    }

    fn bar_read(&self, io: bool, addr: u64, data: &mut [u8]) -> bool {
        self.functions.iter().any(|f| f.bar_read(io, addr, data))
    }

    fn bar_write(&mut self, io: bool, addr: u64, data: &[u8]) -> bool {
        self.functions
            .iter_mut()
            .any(|f| f.bar_write(io, addr, data))
    }

    /// Whether a range at `base` is one of the root's port ranges (the
    /// others are on the MMIO bus).
    fn is_pio(base: u64) -> bool {
        base == u64::from(PCI_CONFIG_PORT) || base == u64::from(PCI_IO_START)
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let handled = match base.checked_add(offset) {
            Some(addr) if Self::is_pio(base) => {
                u16::try_from(addr).is_ok_and(|port| self.pio_read(port, data))
            }
            Some(addr) => self.mmio_read(addr, data),
            None => false,
        };
        if !handled {
            data.fill(0xff);
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> Option<StopRequest> {
        match base.checked_add(offset) {
            Some(addr) if Self::is_pio(base) => {
                if let Ok(port) = u16::try_from(addr) {
                    self.pio_write(port, data);
                }
            }
            Some(addr) => {
                self.mmio_write(addr, data);
            }
            None => {}
        }
        None
    }

    /// The config ports (CONFIG_ADDRESS only for dword accesses, as
    /// [`Self::pio_write`] has it) and ECAM always; in the windows, what a
    /// BAR claims.
    fn decodes(&self, base: u64, offset: u64, len: usize) -> bool {
        let Some(addr) = base.checked_add(offset) else {
            return false;
        };
        if base == u64::from(PCI_CONFIG_PORT) {
            offset >= 4 || (offset == 0 && len == 4)
        } else if base == PCI_ECAM_START {
            true
        } else {
            let io = Self::is_pio(base);
            self.functions.iter().any(|f| f.claims(io, addr))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_one_latches_and_reads_the_host_bridge() {
        let mut root = PciRoot::new(Vec::new()).unwrap();
        assert!(root.pio_write(0xcf8, &0x8000_0000u32.to_le_bytes()));
        let mut d = [0u8; 4];
        assert!(root.pio_read(0xcf8, &mut d));
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
        root.pio_read(0xcfc, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
        let mut w = [0u8; 2];
        root.pio_write(0xcf8, &0x8000_0008u32.to_le_bytes());
        root.pio_read(0xcfe, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0600);
        // An empty slot and another bus read all-ones.
        root.pio_write(0xcf8, &0x8000_1800u32.to_le_bytes());
        root.pio_read(0xcfc, &mut d);
        assert_eq!(d, [0xff; 4]);
        root.pio_write(0xcf8, &0x8001_0000u32.to_le_bytes());
        root.pio_read(0xcfc, &mut d);
        assert_eq!(d, [0xff; 4]);
        // Byte access to 0xCF8 is not the address register.
        assert!(!root.pio_write(0xcf9, &[6]));
        assert!(!root.pio_read(0x80, &mut [0]));
    }

    #[test]
    fn ecam_reaches_the_same_config_space() {
        let root = PciRoot::new(Vec::new()).unwrap();
        let mut d = [0u8; 4];
        assert!(root.mmio_read(PCI_ECAM_START, &mut d));
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
        assert!(root.mmio_read(PCI_ECAM_START + (3 << 15), &mut d));
        assert_eq!(d, [0xff; 4]);
        assert!(!root.mmio_read(PCI_ECAM_START + PCI_ECAM_SIZE, &mut d));
    }

    #[test]
    fn bars_are_aligned_and_stay_in_their_windows() {
        let mut a = BarAllocator::new(64 << 20);
        assert_eq!(a.allocate(BarKind::Mem32, 1 << 20), Some(PCI_MMIO32_START));
        assert_eq!(
            a.allocate(BarKind::Mem32, 0x100),
            Some(PCI_MMIO32_START + (1 << 20))
        );
        assert_eq!(
            a.allocate(BarKind::Mem64, 1 << 24),
            Some(PCI_MMIO32_START + (1 << 24))
        );
        // Too big for the 32-bit window: above RAM, aligned.
        let big = a.allocate(BarKind::Mem64, 1 << 30).unwrap();
        assert_eq!(big, 1 << 32);
        assert_eq!(a.allocate(BarKind::Mem32, 1 << 30), None);
        assert_eq!(a.allocate(BarKind::Io, 0x20), Some(0xc000));
        assert_eq!(a.allocate(BarKind::Io, 0x100), Some(0xc100));
        // A big guest's 64-bit window starts above its RAM.
        let [_, w64] = BarAllocator::windows(5 << 30);
        assert_eq!(w64.0, 6 << 30);
    }

    /// The config writes a [`Recorder`] got: offset and bytes.
    type Writes = std::sync::Arc<std::sync::Mutex<Vec<(u16, Vec<u8>)>>>;

    /// A function that records the config writes it gets and reads as
    /// its offset's low byte.
    #[derive(Default)]
    struct Recorder(Writes);

    impl PciFunction for Recorder {
        fn config_read(&self, offset: u16, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (usize::from(offset) + i).to_le_bytes()[0];
            }
        }
        fn config_write(&mut self, offset: u16, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
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
    fn config_accesses_stay_in_the_function_and_the_data_ports() {
        let rec = Recorder::default();
        let seen = rec.0.clone();
        let mut root = PciRoot::new(vec![Box::new(rec)]).unwrap();
        let dev1 = PCI_ECAM_START + (1 << 15);
        // An 8-byte ECAM store reaches the function whole, to split per
        // register; one at the end of its config space stops there.
        assert!(root.mmio_write(dev1 + 0x0c, &[1; 8]));
        assert!(root.mmio_write(dev1 + 0xffc, &[2; 8]));
        let mut q = [0u8; 8];
        assert!(root.mmio_read(dev1 + 0xffc, &mut q));
        assert_eq!(q, [0xfc, 0xfd, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);
        // Mechanism #1: a dword at 0xCFE is config data up to 0xCFF only;
        // a string access (more than 4 bytes) is dropped.
        root.pio_write(0xcf8, &0x8000_0810u32.to_le_bytes());
        root.pio_write(0xcfe, &[3; 4]);
        root.pio_write(0xcfc, &[4; 8]);
        let mut d = [0u8; 4];
        root.pio_read(0xcfe, &mut d);
        assert_eq!(d, [0x12, 0x13, 0xff, 0xff]);
        let mut s = [0u8; 8];
        root.pio_read(0xcfc, &mut s);
        assert_eq!(s, [0xff; 8]);
        assert_eq!(
            *seen.lock().unwrap(),
            [(0x0c, vec![1; 8]), (0xffc, vec![2; 4]), (0x12, vec![3; 2]),]
        );
    }

    #[test]
    fn the_host_bridge_answers_wide_reads_per_register() {
        let root = PciRoot::new(Vec::new()).unwrap();
        let mut q = [0u8; 8];
        assert!(root.mmio_read(PCI_ECAM_START + 4, &mut q));
        assert_eq!(q, [0, 0, 0, 0, 0, 0, 0, 6]);
        assert!(root.mmio_read(PCI_ECAM_START + 2, &mut q));
        assert_eq!(q, [0x08, 0x00, 0, 0, 0, 0, 0, 0]);
    }
}
