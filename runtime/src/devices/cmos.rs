//! A CMOS RTC at ports 0x70 (index) and 0x71 (data): the wall clock in BCD,
//! 24-hour mode, never "update in progress", plus 128 bytes of scratch RAM.
//! Linux reads its boot time here; without it, the UIP bit of an absent
//! chip (reads of 0xff) stalls the clock code. vm-superio's RTC is the PL031
//! (MMIO, Arm), so this small model is written here.

use super::bus::BusDevice;
use super::StopRequest;
use chrono::{Datelike, Timelike};

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// 32.768 kHz time base, 1024 Hz rate, UIP clear.
const REG_A_VALUE: u8 = 0x26;
/// 24-hour mode, BCD, no interrupts.
const REG_B_VALUE: u8 = 0x02;
/// Valid RAM and time.
const REG_D_VALUE: u8 = 0x80;

/// Broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub weekday: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl Clock {
    /// The host's current UTC time.
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self::from_unix(secs)
    }

    /// Converts seconds since 1970 (UTC) to a date; a time past what
    /// chrono represents (year 262142) reads as its last second.
    // chrono keeps every field in range (month <= 12, day <= 31, weekday
    // <= 7, hour < 24); a year past u32 cannot occur in chrono's range.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn from_unix(secs: u64) -> Self {
        let t = i64::try_from(secs)
            .ok()
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        Clock {
            year: t.year() as u32,
            month: t.month() as u8,
            day: t.day() as u8,
            // CMOS counts Sunday as 1.
            weekday: t.weekday().number_from_sunday() as u8,
            hour: t.hour() as u8,
            minute: t.minute() as u8,
            second: t.second() as u8,
        }
    }
}

fn bcd(v: u32) -> u8 {
    let v = (v % 100) as u8;
    (v / 10) << 4 | (v % 10)
}

#[derive(Debug)]
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    clock: fn() -> Clock,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::with_clock(Clock::now)
    }
}

impl Cmos {
    pub fn with_clock(clock: fn() -> Clock) -> Self {
        Cmos {
            index: 0,
            ram: [0; 128],
            clock,
        }
    }

    fn register(&self, index: u8) -> u8 {
        let t = (self.clock)();
        match index {
            REG_SECONDS => bcd(u32::from(t.second)),
            REG_MINUTES => bcd(u32::from(t.minute)),
            REG_HOURS => bcd(u32::from(t.hour)),
            REG_WEEKDAY => bcd(u32::from(t.weekday)),
            REG_DAY => bcd(u32::from(t.day)),
            REG_MONTH => bcd(u32::from(t.month)),
            REG_YEAR => bcd(t.year),
            REG_CENTURY => bcd(t.year / 100),
            REG_A => REG_A_VALUE,
            REG_B => REG_B_VALUE,
            REG_C => 0,
            REG_D => REG_D_VALUE,
            i => self.ram.get(usize::from(i)).copied().unwrap_or(0xff),
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => self.index,
            _ => self.register(self.index),
        };
        data.fill(v);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) -> Option<StopRequest> {
        let v = *data.first()?;
        match offset {
            // Bit 7 of the index port masks NMIs; it is not part of the index.
            0 => self.index = v & 0x7f,
            _ => match self.index {
                REG_SECONDS..=REG_D | REG_CENTURY => {}
                i => {
                    if let Some(cell) = self.ram.get_mut(usize::from(i)) {
                        *cell = v;
                    }
                }
            },
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_unix_time() {
        // 2024-02-29 13:45:07 UTC, a Thursday.
        let c = Clock::from_unix(1_709_214_307);
        assert_eq!(
            c,
            Clock {
                year: 2024,
                month: 2,
                day: 29,
                weekday: 5,
                hour: 13,
                minute: 45,
                second: 7
            }
        );
        assert_eq!(Clock::from_unix(0).weekday, 5);
        assert_eq!(
            (
                Clock::from_unix(951_782_400).month,
                Clock::from_unix(951_782_400).day
            ),
            (2, 29)
        );
        let last = Clock::from_unix(u64::MAX);
        assert_eq!((last.year, last.month, last.day), (262_142, 12, 31));
    }

    fn fixed() -> Clock {
        Clock::from_unix(1_709_214_307)
    }

    fn read(c: &mut Cmos, index: u8) -> u8 {
        c.write(0, 0, &[index | 0x80]);
        let mut d = [0u8];
        c.read(0, 1, &mut d);
        d[0]
    }

    #[test]
    fn reads_time_in_bcd_and_status_registers() {
        let mut c = Cmos::with_clock(fixed);
        assert_eq!(read(&mut c, REG_SECONDS), 0x07);
        assert_eq!(read(&mut c, REG_MINUTES), 0x45);
        assert_eq!(read(&mut c, REG_HOURS), 0x13);
        assert_eq!(read(&mut c, REG_DAY), 0x29);
        assert_eq!(read(&mut c, REG_MONTH), 0x02);
        assert_eq!(read(&mut c, REG_YEAR), 0x24);
        assert_eq!(read(&mut c, REG_CENTURY), 0x20);
        assert_eq!(read(&mut c, REG_A) & 0x80, 0, "never update-in-progress");
        assert_eq!(read(&mut c, REG_B), 0x02);
        assert_eq!(read(&mut c, REG_D), 0x80);
    }

    #[test]
    fn scratch_ram_keeps_writes_but_clock_ignores_them() {
        let mut c = Cmos::with_clock(fixed);
        c.write(0, 0, &[0x40]);
        c.write(0, 1, &[0x5a]);
        assert_eq!(read(&mut c, 0x40), 0x5a);
        c.write(0, 0, &[REG_SECONDS]);
        c.write(0, 1, &[0x59]);
        assert_eq!(read(&mut c, REG_SECONDS), 0x07);
    }
}
