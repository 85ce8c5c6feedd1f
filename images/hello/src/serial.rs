//! COM1, a 16550 UART at I/O port 0x3f8, driven by polling.
//!
//! Interrupts stay off in the unikernel, so output waits on the line status
//! register. The wait is bounded: a VMM without a UART (reads of 0xff or 0)
//! must not hang the guest, it only loses the text.
//!
//! Under a VMM every register access is a VM exit, so the driver checks
//! the line status as seldom as the UART allows: a 16550A with its FIFOs
//! on takes [`FIFO_DEPTH`] bytes each time it reports its transmitter
//! empty, so [`Transmitter`] writes up to that many per check. It uses the
//! FIFO only when the UART says it has one (IIR bits 7:6 after FIFOs were
//! enabled); an older UART gets one byte per check.

use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};

use crate::port::{inb, outb};

/// First I/O port of COM1.
const COM1: u16 = 0x3f8;
const THR: u16 = COM1; // transmit holding register (DLAB = 0)
const DLL: u16 = COM1; // divisor latch low (DLAB = 1)
const IER: u16 = COM1 + 1; // interrupt enable (DLAB = 0)
const DLM: u16 = COM1 + 1; // divisor latch high (DLAB = 1)
const FCR: u16 = COM1 + 2; // FIFO control (write)
const IIR: u16 = COM1 + 2; // interrupt identification (read)
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;

const LCR_DLAB: u8 = 0x80;
const LCR_8N1: u8 = 0x03;
const FCR_ENABLE_CLEAR: u8 = 0x07;
const MCR_DTR_RTS: u8 = 0x03;
const LSR_THR_EMPTY: u8 = 0x20;
/// IIR bits 7:6: both set when the FIFOs are on (a 16550A); a 16450 has
/// none, a 16550 (broken FIFO) sets bit 7 only.
const IIR_FIFOS: u8 = 0xc0;

/// Bytes a 16550A's transmit FIFO holds: an empty transmitter takes this
/// many.
pub const FIFO_DEPTH: u8 = 16;

/// Polls of LSR before a byte is sent anyway (about a few ms on hardware).
pub const MAX_POLLS: u32 = 100_000;

/// The UART registers the transmitter uses.
pub trait UartPorts {
    /// Reads the line status register.
    fn line_status(&mut self) -> u8;
    /// Writes `byte` to the transmit holding register.
    fn transmit(&mut self, byte: u8);
}

/// Sends bytes, checking the line status once per burst: after the UART
/// reports its transmitter empty, `burst` bytes may follow without another
/// check (16 with a FIFO, 1 without).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmitter {
    burst: u8,
    /// Bytes that may still be written before the next check.
    room: u8,
}

impl Transmitter {
    /// A transmitter for a UART whose IIR read `iir` after its FIFOs were
    /// enabled: bursts of [`FIFO_DEPTH`] when it reports FIFOs, else 1.
    pub const fn for_iir(iir: u8) -> Self {
        let burst = if iir & IIR_FIFOS == IIR_FIFOS {
            FIFO_DEPTH
        } else {
            1
        };
        Transmitter { burst, room: 0 }
    }

    /// Bytes per line status check.
    pub const fn burst(&self) -> u8 {
        self.burst
    }

    /// Sends `byte`, first waiting (at most [`MAX_POLLS`] checks) for the
    /// transmitter to empty when this burst is used up. A UART that never
    /// reports it empty still gets the byte: the text may be lost, the
    /// guest goes on.
    pub fn put(&mut self, ports: &mut impl UartPorts, byte: u8) {
        if self.room == 0 {
            for _ in 0..MAX_POLLS {
                if ports.line_status() & LSR_THR_EMPTY != 0 {
                    break;
                }
                core::hint::spin_loop();
            }
            self.room = self.burst;
        }
        ports.transmit(byte);
        self.room = self.room.saturating_sub(1);
    }
}

/// COM1's registers through port I/O.
#[derive(Debug)]
struct Com1Ports;

impl UartPorts for Com1Ports {
    fn line_status(&mut self) -> u8 {
        // SAFETY: reading COM1's line status register has no side effect on memory.
        unsafe { inb(LSR) }
    }

    fn transmit(&mut self, byte: u8) {
        // SAFETY: writing COM1's transmit register only sends the byte.
        unsafe { outb(THR, byte) };
    }
}

/// The transmitter's state: its burst (set by [`init`]; 1 until then) and
/// the room left in the current burst. One CPU, interrupts off: nothing
/// runs between a load and its store.
static BURST: AtomicU8 = AtomicU8::new(1);
static ROOM: AtomicU8 = AtomicU8::new(0);

/// Programs COM1 for 115200 8N1 with FIFOs and no interrupts, and sends
/// in bursts when the UART reports its FIFOs on.
pub fn init() {
    // SAFETY: these ports belong to COM1; programming the UART has no effect
    // on memory.
    let iir = unsafe {
        outb(IER, 0);
        outb(LCR, LCR_DLAB);
        outb(DLL, 1); // 115200 baud = 115200 / 1
        outb(DLM, 0);
        outb(LCR, LCR_8N1);
        outb(FCR, FCR_ENABLE_CLEAR);
        outb(MCR, MCR_DTR_RTS);
        inb(IIR)
    };
    BURST.store(Transmitter::for_iir(iir).burst(), Ordering::Relaxed);
    ROOM.store(0, Ordering::Relaxed);
}

fn put_bytes(bytes: impl Iterator<Item = u8>) {
    let mut tx = Transmitter {
        burst: BURST.load(Ordering::Relaxed),
        room: ROOM.load(Ordering::Relaxed),
    };
    for byte in bytes {
        tx.put(&mut Com1Ports, byte);
    }
    ROOM.store(tx.room, Ordering::Relaxed);
}

/// A handle on COM1 for `core::fmt`; it holds no state, so any number may exist.
#[derive(Debug)]
pub struct Com1;

impl fmt::Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // A terminal on the other end expects CR LF.
        put_bytes(s.bytes().flat_map(|b| {
            let cr = (b == b'\n').then_some(b'\r');
            cr.into_iter().chain(core::iter::once(b))
        }));
        Ok(())
    }
}

/// Writes one formatted line to COM1 (the target of [`println!`]).
pub fn print_line(args: fmt::Arguments) {
    use fmt::Write;
    // Com1 never reports an error; a failing Display impl only cuts the line short.
    let _ = Com1.write_fmt(args);
    let _ = Com1.write_str("\n");
}

/// Prints one line to COM1, like `std::println!`.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::serial::print_line(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UART whose transmitter empties `drain` bytes after each LSR
    /// read (0: never reports empty), holding at most `depth` bytes; it
    /// records every access.
    struct FakeUart {
        depth: usize,
        drain: bool,
        held: usize,
        overflowed: bool,
        lsr_reads: usize,
        sent: Vec<u8>,
    }

    impl FakeUart {
        fn new(depth: usize) -> Self {
            FakeUart {
                depth,
                drain: true,
                held: 0,
                overflowed: false,
                lsr_reads: 0,
                sent: Vec::new(),
            }
        }
    }

    impl UartPorts for FakeUart {
        fn line_status(&mut self) -> u8 {
            self.lsr_reads += 1;
            // Each check finds the FIFO drained (the UART sends while the
            // guest polls), unless it is stuck.
            if self.drain {
                self.held = 0;
            }
            if self.held == 0 {
                LSR_THR_EMPTY
            } else {
                0
            }
        }

        fn transmit(&mut self, byte: u8) {
            self.held += 1;
            self.overflowed |= self.held > self.depth;
            self.sent.push(byte);
        }
    }

    fn send(tx: &mut Transmitter, uart: &mut FakeUart, text: &[u8]) {
        for &b in text {
            tx.put(uart, b);
        }
    }

    #[test]
    fn a_uart_with_fifos_takes_sixteen_bytes_per_check() {
        // IIR after FCR = 7 on a 16550A: FIFOs on, no interrupt pending.
        let mut tx = Transmitter::for_iir(0xc1);
        assert_eq!(tx.burst(), FIFO_DEPTH);
        let mut uart = FakeUart::new(16);
        let text: Vec<u8> = (0..100u8).collect();
        send(&mut tx, &mut uart, &text[..40]);
        send(&mut tx, &mut uart, &text[40..]);
        assert_eq!(uart.sent, text);
        assert!(!uart.overflowed);
        // 100 bytes, 16 per check.
        assert_eq!(uart.lsr_reads, 7);
    }

    #[test]
    fn a_uart_without_fifos_gets_one_byte_per_check() {
        // A 16450 (no FIFO bits) and a 16550 with its broken FIFO (bit 7 only).
        for iir in [0x01, 0x81, 0x00] {
            let mut tx = Transmitter::for_iir(iir);
            assert_eq!(tx.burst(), 1, "{iir:#x}");
            let mut uart = FakeUart::new(1);
            send(&mut tx, &mut uart, b"hello\r\n");
            assert_eq!(uart.sent, b"hello\r\n");
            assert!(!uart.overflowed);
            assert_eq!(uart.lsr_reads, 7);
        }
    }

    #[test]
    fn a_uart_that_never_empties_still_gets_the_bytes_after_a_bounded_wait() {
        let mut tx = Transmitter::for_iir(0xc1);
        let mut uart = FakeUart::new(usize::MAX);
        uart.held = 1;
        uart.drain = false;
        send(&mut tx, &mut uart, &[b'x'; 17]);
        assert_eq!(uart.sent.len(), 17);
        // Two bursts, each after the whole bounded wait.
        assert_eq!(uart.lsr_reads, 2 * MAX_POLLS as usize);
    }
}
