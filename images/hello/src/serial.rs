//! COM1, a 16550 UART at I/O port 0x3f8, driven by polling.
//!
//! Interrupts stay off in the unikernel, so output waits on the line status
//! register. The wait is bounded: a VMM without a UART (reads of 0xff or 0)
//! must not hang the guest, it only loses the text.

use core::fmt;

use crate::port::{inb, outb};

/// First I/O port of COM1.
const COM1: u16 = 0x3f8;
const THR: u16 = COM1; // transmit holding register (DLAB = 0)
const DLL: u16 = COM1; // divisor latch low (DLAB = 1)
const IER: u16 = COM1 + 1; // interrupt enable (DLAB = 0)
const DLM: u16 = COM1 + 1; // divisor latch high (DLAB = 1)
const FCR: u16 = COM1 + 2;
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;

const LCR_DLAB: u8 = 0x80;
const LCR_8N1: u8 = 0x03;
const FCR_ENABLE_CLEAR: u8 = 0x07;
const MCR_DTR_RTS: u8 = 0x03;
const LSR_THR_EMPTY: u8 = 0x20;

/// Polls of LSR before a byte is sent anyway (about a few ms on hardware).
const MAX_POLLS: u32 = 100_000;

/// Programs COM1 for 115200 8N1 with FIFOs and no interrupts.
pub fn init() {
    // SAFETY: these ports belong to COM1; programming the UART has no effect
    // on memory.
    unsafe {
        outb(IER, 0);
        outb(LCR, LCR_DLAB);
        outb(DLL, 1); // 115200 baud = 115200 / 1
        outb(DLM, 0);
        outb(LCR, LCR_8N1);
        outb(FCR, FCR_ENABLE_CLEAR);
        outb(MCR, MCR_DTR_RTS);
    }
}

fn put_byte(byte: u8) {
    for _ in 0..MAX_POLLS {
        // SAFETY: reading COM1's line status register has no side effect on memory.
        if unsafe { inb(LSR) } & LSR_THR_EMPTY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    // SAFETY: writing COM1's transmit register only sends the byte.
    unsafe { outb(THR, byte) };
}

/// A handle on COM1 for `core::fmt`; it holds no state, so any number may exist.
#[derive(Debug)]
pub struct Com1;

impl fmt::Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            // A terminal on the other end expects CR LF.
            if byte == b'\n' {
                put_byte(b'\r');
            }
            put_byte(byte);
        }
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
