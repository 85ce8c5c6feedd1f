//! COM1's transmit register without VM exits: KVM's coalesced PIO. While
//! the UART is in a state where a write to its transmit register has no
//! effect but the byte's output (DLAB clear, transmitter-empty interrupt
//! off, no loopback: [`super::serial::SerialDevice`] decides), the register
//! is a coalesced zone: KVM queues the guest's one-byte writes there in the
//! VM's ring page instead of exiting. The vCPUs drain the ring, one at a
//! time under [`TxRing`]'s lock so no entry is handled twice or out of
//! order, before handling any exit, when they stop, and when the main
//! thread kicks one at its watchdog tick (docs/runtime.md, "console").

use super::serial::SharedSink;
use crate::vm::Vm;
use kvm_bindings::kvm_coalesced_mmio;
use kvm_ioctls::{Cap, IoEventAddress};
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The zone is not registered and the ring holds none of its writes.
const OFF: u8 = 0;
/// The zone is registered: the ring may gain entries at any time.
const ON: u8 = 1;
/// The zone was unregistered; the ring may still hold its writes.
const STALE: u8 = 2;

/// The transmit register's zone and the ring it fills, shared by the
/// UART (which registers and unregisters the zone) and the vCPUs (which
/// drain the ring).
pub struct TxRing {
    vm: Arc<Vm>,
    port: u16,
    /// `KVM_CAP_COALESCED_PIO`; cleared when KVM refuses the zone.
    usable: std::sync::atomic::AtomicBool,
    zone: AtomicU8,
    /// Held while draining, and while the drained bytes are written out.
    drain: Mutex<()>,
    sink: SharedSink,
}

impl std::fmt::Debug for TxRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxRing")
            .field("port", &self.port)
            .field("zone", &self.zone)
            .finish_non_exhaustive()
    }
}

impl TxRing {
    /// The ring for the transmit register at `port`, whose bytes go to
    /// `sink`. Unusable (never registered) without `KVM_CAP_COALESCED_PIO`.
    pub fn new(vm: Arc<Vm>, port: u16, sink: SharedSink) -> Self {
        let usable = vm.fd().check_extension(Cap::CoalescedPio);
        TxRing {
            vm,
            port,
            usable: usable.into(),
            zone: AtomicU8::new(OFF),
            drain: Mutex::new(()),
            sink,
        }
    }

    /// Whether KVM offers coalesced PIO (the vCPUs then map the ring).
    pub fn usable(&self) -> bool {
        self.usable.load(Ordering::SeqCst)
    }

    /// Whether the zone is registered now.
    pub fn registered(&self) -> bool {
        self.zone.load(Ordering::SeqCst) == ON
    }

    /// Whether the ring may hold bytes to drain.
    pub fn pending(&self) -> bool {
        self.zone.load(Ordering::SeqCst) != OFF
    }

    fn address(&self) -> IoEventAddress {
        IoEventAddress::Pio(u64::from(self.port))
    }

    /// Registers the zone (the UART's state allows it). A refusal leaves
    /// the register exiting as before, for the rest of the run.
    pub fn register(&self) {
        if !self.usable() || self.registered() {
            return;
        }
        match self.vm.fd().register_coalesced_mmio(self.address(), 1) {
            Ok(()) => self.zone.store(ON, Ordering::SeqCst),
            Err(e) => {
                self.usable.store(false, Ordering::SeqCst);
                self.vm.notes().note(
                    "console",
                    format_args!("KVM refused to queue console writes, each is a VM exit: {e}"),
                );
            }
        }
    }

    /// Unregisters the zone (the UART's state no longer allows it). What
    /// the ring holds is drained as usual.
    pub fn unregister(&self) {
        if !self.registered() {
            return;
        }
        match self.vm.fd().unregister_coalesced_mmio(self.address(), 1) {
            Ok(()) => self.zone.store(STALE, Ordering::SeqCst),
            // The zone stays, and its bytes still reach the console.
            Err(e) => self.vm.notes().note(
                "console",
                format_args!("KVM refused to stop queueing console writes: {e}"),
            ),
        }
    }

    /// Takes every entry `next` reads from the ring (a vCPU's mapping of
    /// it) and writes the zone's bytes out, in ring order; returns how many
    /// bytes there were. No work, and no lock, while the ring cannot hold
    /// any.
    pub fn drain(&self, mut next: impl FnMut() -> Option<kvm_coalesced_mmio>) -> u64 {
        if !self.pending() {
            return 0;
        }
        let _held = self.drain.lock().unwrap_or_else(PoisonError::into_inner);
        // Read before the ring: once STALE, KVM adds nothing more to it.
        let was = self.zone.load(Ordering::SeqCst);
        let mut bytes = [0u8; 64];
        let mut held = 0usize;
        let mut total = 0u64;
        while let Some(entry) = next() {
            // SAFETY: `pio` is a u32 in every variant of the union, so any
            // bit pattern KVM wrote is a valid value.
            let pio = unsafe { entry.__bindgen_anon_1.pio };
            // One-byte writes to the zone are all it can hold; anything
            // else is not the UART's.
            if pio != 1 || entry.phys_addr != u64::from(self.port) || entry.len != 1 {
                continue;
            }
            if held == bytes.len() {
                self.write_out(&bytes);
                held = 0;
            }
            if let (Some(slot), Some(byte)) = (bytes.get_mut(held), entry.data.first()) {
                *slot = *byte;
                held = held.saturating_add(1);
            }
            total = total.saturating_add(1);
        }
        if let Some(rest) = bytes.get(..held) {
            self.write_out(rest);
        }
        if was == STALE {
            // Emptied after the zone went: nothing left to drain until it
            // comes back (which sets ON, and this leaves it).
            let _ = self
                .zone
                .compare_exchange(STALE, OFF, Ordering::SeqCst, Ordering::SeqCst);
        }
        total
    }

    /// The effect of a transmit-register write in the zone's state: the
    /// byte goes out, nothing else changes (no interrupt, no loopback).
    fn write_out(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut sink = self.sink.clone();
        // As the UART does: a console that cannot be written does not stop
        // the guest.
        let _ = sink.write_all(bytes);
        let _ = sink.flush();
    }
}
