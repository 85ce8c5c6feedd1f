//! COM1: vm-superio's 16550A at 0x3f8, its interrupt delivered on IRQ 4
//! through an irqfd, its output copied to the console and/or a log file.
//! Guest input is not wired (kiln guests are appliances, judged by output).
//! While its state allows, its transmit register is a coalesced zone
//! ([`super::tx_ring`]): writes there reach the output without a VM exit.

use super::bus::BusDevice;
use super::tx_ring::TxRing;
use super::StopRequest;
use crate::vm::notes::Stdout;
use crate::vm::Vm;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("Cannot open the console log {}", path.display())]
    OpenLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot create the serial port's interrupt eventfd")]
    EventFd(#[source] io::Error),
}

/// Raises the serial IRQ by signalling an eventfd registered as an irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// With this variable set (init sets it for every VMM it starts), the VMM
/// puts [`GUEST_TAG`] at the start of each line of guest output it echoes
/// to stdout. The VMM's own lines (status lines, notes) share that stdout;
/// the tag lets init tell them apart, and a guest cannot make a line that
/// starts without it, so it cannot pass off its output as the VMM's.
pub const GUEST_TAG_ENV: &str = "KILN_TAG_GUEST_LINES";
/// ASCII record separator: a byte no console text starts with.
pub const GUEST_TAG: u8 = 0x1e;

/// Where the guest's serial output goes.
#[derive(Debug)]
pub struct ConsoleSink {
    echo: bool,
    log: Option<File>,
    first_output: Arc<OnceLock<Instant>>,
    /// Tag each echoed line ([`GUEST_TAG_ENV`]).
    tag: bool,
    /// Whether the next byte on stdout starts a line, shared with the
    /// VMM's notes ([`crate::vm::notes`]).
    stdout: Stdout,
}

impl ConsoleSink {
    /// Echoes to stdout when `echo`, and appends to `log` when given.
    pub fn new(echo: bool, log: Option<&Path>) -> Result<Self, SerialError> {
        let log = match log {
            Some(p) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| SerialError::OpenLog {
                        path: p.to_path_buf(),
                        source,
                    })?,
            ),
            None => None,
        };
        Ok(ConsoleSink {
            echo,
            log,
            first_output: Arc::default(),
            tag: false,
            stdout: Stdout::default(),
        })
    }

    /// Tags each line echoed to stdout with [`GUEST_TAG`] when `tag`.
    pub fn tagging_lines(mut self, tag: bool) -> Self {
        self.tag = tag;
        self
    }

    /// Shares stdout's line state with the VM's notes, so a note never
    /// lands inside a guest line.
    pub fn sharing(mut self, stdout: Stdout) -> Self {
        self.stdout = stdout;
        self
    }

    /// `buf` as echoed, from the line state `at_start`: with a tag before
    /// every line it starts, when tagging.
    fn echoed_from(&self, buf: &[u8], at_start: &mut bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(buf.len().saturating_add(8));
        for &b in buf {
            if *at_start && self.tag {
                out.push(GUEST_TAG);
            }
            out.push(b);
            *at_start = b == b'\n';
        }
        out
    }

    #[cfg(test)]
    fn echoed(&mut self, buf: &[u8]) -> Vec<u8> {
        let stdout = self.stdout.clone();
        stdout.with(|at_start| self.echoed_from(buf, at_start))
    }

    /// When the guest wrote its first byte (shared with the VM's stats).
    pub fn first_output(&self) -> Arc<OnceLock<Instant>> {
        self.first_output.clone()
    }
}

impl Write for ConsoleSink {
    /// A console that cannot be written (closed stdout, full disk) must not
    /// stop the guest, so errors are dropped here.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.first_output.get_or_init(Instant::now);
        if self.echo {
            // The line state stays locked until the bytes are out, so a
            // note cannot slip in between.
            let stdout = self.stdout.clone();
            stdout.with(|at_start| {
                let echoed = self.echoed_from(buf, at_start);
                let _ = io::stdout().lock().write_all(&echoed);
            });
        }
        if let Some(f) = &mut self.log {
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }

    /// vm-superio flushes after every byte. Stdout is line-buffered, so
    /// complete lines go out as they end; flushing here too would cost a
    /// write(2) (and a wakeup of PID 1's reader) per byte, the larger part
    /// of what a console byte costs the VMM. The rest of a line goes out
    /// with [`flush_partial_line`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes out the part of a guest line that has no end yet (stdout is
/// line-buffered): the VMM calls it at each watchdog tick and when its VM
/// ends, so such text shows at most one tick late. No system call when
/// there is none.
pub fn flush_partial_line() {
    let _ = io::stdout().lock().flush();
}

/// The UART's output, shared with its [`TxRing`]: bytes the UART writes
/// and bytes drained from the ring reach one sink, in the order written.
#[derive(Clone)]
pub struct SharedSink(Arc<Mutex<Box<dyn Write + Send>>>);

// The sink is a trait object; where it writes is the console's business.
impl std::fmt::Debug for SharedSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSink").finish_non_exhaustive()
    }
}

impl SharedSink {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        SharedSink(Arc::new(Mutex::new(out)))
    }
}

impl Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush()
    }
}

/// Register offsets and bits the zone depends on.
const THR: u8 = 0;
const IER: u8 = 1;
const LCR: u8 = 3;
const MCR: u8 = 4;
const IER_THRI: u8 = 0x02;
const LCR_DLAB: u8 = 0x80;
const MCR_LOOP: u8 = 0x10;

/// The UART on the port I/O bus.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, SharedSink>,
    tx: Option<Arc<TxRing>>,
    /// The guest enabled the transmitter-empty interrupt once: its driver
    /// is interrupt-driven (Linux's 8250 once the port is opened), and the
    /// zone stays off for good rather than come and go with each console
    /// message (two ioctls, each waiting for KVM's SRCU readers).
    interrupt_driven: bool,
}

// vm-superio's UART has no Debug; its state is the guest's business.
impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), SharedSink::new(out)),
            tx: None,
            interrupt_driven: false,
        }
    }

    /// Lets the transmit register at `port` on `vm` be a coalesced zone
    /// while the UART's state allows; the vCPUs drain the returned ring.
    pub fn coalescing(&mut self, vm: Arc<Vm>, port: u16) -> Arc<TxRing> {
        let ring = Arc::new(TxRing::new(vm, port, self.uart.writer().clone()));
        self.tx = Some(ring.clone());
        ring
    }

    /// Whether a transmit-register write has no effect a later read or
    /// interrupt could observe: 0 is the transmit register (DLAB clear;
    /// with it set, the divisor latch, readable), no transmitter-empty
    /// interrupt (a driver that waits for it would wait for good), no
    /// loopback (the byte would come back as input).
    fn transmit_only(&self) -> bool {
        let s = self.uart.state();
        s.line_control & LCR_DLAB == 0
            && s.interrupt_enable & IER_THRI == 0
            && s.modem_control & MCR_LOOP == 0
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) -> Option<StopRequest> {
        if let (Some(value), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // An output error is already dropped by the sink; an interrupt
            // that cannot be raised only delays the guest's TX path.
            let _ = self.uart.write(off, *value);
            if off == IER && self.uart.state().interrupt_enable & IER_THRI != 0 {
                self.interrupt_driven = true;
            }
            if let Some(tx) = &self.tx {
                match off {
                    // The zone comes with the first transmit write that
                    // may have it, and goes when the state stops allowing.
                    THR if !tx.registered()
                        && tx.usable()
                        && !self.interrupt_driven
                        && self.transmit_only() =>
                    {
                        tx.register()
                    }
                    IER | LCR | MCR if tx.registered() && !self.transmit_only() => tx.unregister(),
                    _ => {}
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_bytes_and_raises_the_irq_when_enabled() {
        let cap = Capture::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(cap.clone()));
        for b in b"ok\n" {
            dev.write(0, 0, &[*b]);
        }
        assert_eq!(&*cap.0.lock().unwrap(), b"ok\n");
        // No interrupt while IER is 0.
        assert!(irq.read().is_err());
        dev.write(0, 1, &[0x02]); // IER: THR empty
        dev.write(0, 0, b"!");
        assert!(irq.read().unwrap() >= 1);
        // LSR says the transmitter is empty.
        let mut lsr = [0u8];
        dev.read(0, 5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
    }

    #[test]
    fn log_file_receives_output() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let mut sink = ConsoleSink::new(false, Some(&p)).unwrap();
        sink.write_all(b"hello\n").unwrap();
        drop(sink);
        assert_eq!(std::fs::read(&p).unwrap(), b"hello\n");
        let e = ConsoleSink::new(false, Some(&dir.path().join("no/such/dir/log")))
            .err()
            .unwrap();
        assert!(e.to_string().contains("console log"), "{e}");
    }

    #[test]
    fn echoed_guest_lines_are_tagged_across_writes() {
        let mut sink = ConsoleSink::new(false, None).unwrap().tagging_lines(true);
        let mut out = sink.echoed(b"hello: a\r\nhello: ");
        out.extend(sink.echoed(b"b\n"));
        out.extend(sink.echoed(b"\nkiln: vm=x state=exited code=0\n"));
        assert_eq!(
            out,
            b"\x1ehello: a\r\n\x1ehello: b\n\x1e\n\x1ekiln: vm=x state=exited code=0\n"
        );
        // Untagged when init did not ask (kiln-runtime run by hand).
        let mut plain = ConsoleSink::new(false, None).unwrap();
        assert_eq!(plain.echoed(b"a\nb"), b"a\nb");
    }

    #[test]
    fn a_note_amid_a_guest_line_gets_a_line_of_its_own() {
        use crate::vm::notes::Notes;
        let cap = Capture::default();
        let notes = Notes::to("x", Box::new(cap.clone()));
        let mut sink = ConsoleSink::new(false, None)
            .unwrap()
            .tagging_lines(true)
            .sharing(notes.stdout().clone());
        let mut out = sink.echoed(b"half a li");
        notes.note("test", format_args!("a note"));
        out.extend(cap.0.lock().unwrap().drain(..));
        out.extend(sink.echoed(b"ne\n"));
        assert_eq!(out, b"\x1ehalf a li\nkiln: vm x: a note\n\x1ene\n");
        // At a line start, no empty line first.
        notes.note("test", format_args!("another"));
        assert_eq!(&*cap.0.lock().unwrap(), b"kiln: vm x: another\n");
    }
}
