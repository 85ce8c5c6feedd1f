//! A host PCI function made of fuzz input, for the device-model targets:
//! the model reads the host's config space when it takes a device over
//! (capabilities, BAR types), so that space is input too.

use kiln_runtime::vfio::host_function::{HostArea, HostError, HostFunction, IrqKind};
use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

/// What the fuzzer decides about the host function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeHostSpec {
    /// The start of its config space (the rest of its 4 KiB is zero).
    pub config: [u8; 256],
    /// BAR 0-5 and ROM sizes as powers of two (0: absent).
    pub region_log2: [u8; 7],
    pub msix_vectors: u16,
    /// Whether enabling interrupts fails on the host.
    pub irqs_fail: bool,
}

/// A device-model input, in a fixed layout so seeds can be written by
/// hand (fuzz/make-seeds): 256 bytes of config space, 7 region sizes, the
/// MSI-X vector count (u16 LE), a flags byte (bit 0: the host refuses
/// interrupts; bit 1: show the ROM), then 12-byte guest accesses.
#[derive(Debug)]
pub struct DeviceInput {
    pub host: FakeHostSpec,
    pub rom: bool,
    pub accesses: Vec<GuestAccess>,
}

const HEAD: usize = 256 + 7 + 2 + 1;

impl DeviceInput {
    pub fn decode(data: &[u8]) -> Option<Self> {
        let head = data.get(..HEAD)?;
        let mut config = [0u8; 256];
        config.copy_from_slice(&head[..256]);
        let mut region_log2 = [0u8; 7];
        region_log2.copy_from_slice(&head[256..263]);
        let flags = head[265];
        let host = FakeHostSpec {
            config,
            region_log2,
            msix_vectors: u16::from_le_bytes([head[263], head[264]]),
            irqs_fail: flags & 1 != 0,
        };
        let accesses = data[HEAD..]
            .chunks_exact(12)
            .map(|r| GuestAccess {
                anchor: r[0],
                mmio: r[1] & 8 != 0,
                width: (r[1] >> 1) & 3,
                offset: u16::from_le_bytes([r[2], r[3]]),
                write: (r[1] & 1 != 0).then(|| {
                    u64::from_le_bytes([r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]])
                }),
            })
            .collect();
        Some(DeviceInput {
            host,
            rom: flags & 2 != 0,
            accesses,
        })
    }
}

/// The host function: config writes land in its space as a device's
/// registers would hold them; BARs read a pattern; nothing is mmapped
/// (every BAR access traps to the model).
#[derive(Debug)]
pub struct FakeHost {
    space: Mutex<Vec<u8>>,
    sizes: [u64; 7],
    msix_vectors: u32,
    irqs_fail: bool,
}

impl FakeHost {
    pub fn new(spec: &FakeHostSpec) -> Self {
        let mut space = vec![0u8; 4096];
        space[..256].copy_from_slice(&spec.config);
        FakeHost {
            space: Mutex::new(space),
            sizes: spec
                .region_log2
                .map(|b| if b == 0 { 0 } else { 1u64 << (b % 44) }),
            msix_vectors: u32::from(spec.msix_vectors % 2049),
            irqs_fail: spec.irqs_fail,
        }
    }
}

impl HostFunction for FakeHost {
    fn config_read(&self, offset: u16, data: &mut [u8]) {
        let space = self.space.lock().expect("fake host lock");
        let at = usize::from(offset);
        match space.get(at..at + data.len()) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0xff),
        }
    }

    fn config_write(&self, offset: u16, data: &[u8]) {
        let mut space = self.space.lock().expect("fake host lock");
        let at = usize::from(offset);
        if let Some(bytes) = space.get_mut(at..at + data.len()) {
            bytes.copy_from_slice(data);
        }
    }

    fn region_size(&self, index: u32) -> u64 {
        self.sizes.get(index as usize).copied().unwrap_or(0)
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        data.fill((index as u8).wrapping_add(offset as u8));
    }

    fn region_write(&self, _index: u32, _offset: u64, _data: &[u8]) {}

    fn region_mappings(&self, _index: u32) -> &[HostArea] {
        &[]
    }

    fn irq_count(&self, kind: IrqKind) -> u32 {
        match kind {
            IrqKind::Intx | IrqKind::Msi => 1,
            IrqKind::Msix => self.msix_vectors,
        }
    }

    fn enable_irqs(&self, _kind: IrqKind, _fds: &[&EventFd]) -> Result<(), HostError> {
        if self.irqs_fail {
            return Err("the fake host refuses interrupts".into());
        }
        Ok(())
    }

    fn disable_irqs(&self, _kind: IrqKind) -> Result<(), HostError> {
        Ok(())
    }

    fn intx_unmask_on(&self, _fd: &EventFd) -> Result<(), HostError> {
        Ok(())
    }

    fn reset(&self) {}
}

/// One guest access: where (an anchor of an address space and an offset
/// from it), how wide, and a read or a write of `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestAccess {
    pub anchor: u8,
    /// MMIO (ECAM, BAR windows), else port I/O.
    pub mmio: bool,
    /// 1, 2, 4 or 8 bytes, as 0-3.
    pub width: u8,
    pub offset: u16,
    pub write: Option<u64>,
}

impl GuestAccess {
    /// 1, 2, 4 or 8 bytes.
    pub fn len(&self) -> usize {
        [1, 2, 4, 8][usize::from(self.width % 4)]
    }
}
