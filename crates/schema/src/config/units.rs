//! Sizes and durations written with units, so `memory = 512` (bytes? MiB?)
//! can never be misread.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A byte count written with a binary unit: `"64M"`, `"2GiB"`, `"512 KiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kib", 1 << 10),
    ("m", 1 << 20),
    ("mib", 1 << 20),
    ("g", 1 << 30),
    ("gib", 1 << 30),
    ("t", 1 << 40),
    ("tib", 1 << 40),
];

const SIZE_EXPECTED: &str = "a size with a unit, such as \"512M\" or \"2GiB\" (units: K, M, G, T)";

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }

    pub const fn gib(n: u64) -> Self {
        ByteSize(n << 30)
    }

    /// Checks `min <= self <= max`; the error says what a key takes.
    pub fn check_range(self, min: ByteSize, max: ByteSize) -> Result<(), String> {
        if self < min || self > max {
            return Err(format!(
                "{self} is out of range; expected a size from {min} to {max}"
            ));
        }
        Ok(())
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.starts_with('-') {
            return Err(format!("expected a positive size, found \"{text}\""));
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let unit = unit.trim().to_ascii_lowercase();
        if digits.is_empty() {
            return Err(format!("expected {SIZE_EXPECTED}, found \"{text}\""));
        }
        if unit.is_empty() {
            return Err(format!("\"{text}\" has no unit; expected {SIZE_EXPECTED}"));
        }
        let Some(&(_, mult)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(format!(
                "unknown unit \"{unit}\" in \"{text}\"; expected {SIZE_EXPECTED}"
            ));
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("\"{text}\" is too large"))?;
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("\"{text}\" is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            if self.0 >= 1 << shift && self.0 % (1 << shift) == 0 {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(SIZE_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                if v < 0 {
                    return Err(E::custom(format!("expected a positive size, found {v}")));
                }
                Err(E::custom(format!(
                    "the number {v} has no unit; write it as a string with a unit, such as \"{v}M\""
                )))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Err(E::custom(format!(
                    "the number {v} has no unit; write it as a string with a unit, such as \"{v}M\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written with a unit: `"500ms"`, `"30s"`, `"2m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

const DURATION_EXPECTED: &str =
    "a duration with a unit, such as \"500ms\", \"30s\", \"5m\" or \"1h\"";

/// No config key takes more than this; each key checks its own, narrower
/// range too. Bounding every duration at parse keeps deadline arithmetic
/// (`Instant + duration`) far from overflow wherever a duration is used.
pub const MAX_DURATION: Duration = Duration::secs(365 * 24 * 3600);

impl Duration {
    pub const fn secs(n: u64) -> Self {
        Duration(std::time::Duration::from_secs(n))
    }

    pub const fn millis(n: u64) -> Self {
        Duration(std::time::Duration::from_millis(n))
    }

    /// Checks `min <= self <= max`; the error says what a key takes.
    pub fn check_range(self, min: Duration, max: Duration) -> Result<(), String> {
        if self < min || self > max {
            return Err(format!(
                "{} is out of range; expected a duration from {} to {}",
                self.human(),
                min.human(),
                max.human()
            ));
        }
        Ok(())
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.starts_with('-') {
            return Err(format!("expected a positive duration, found \"{text}\""));
        }
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim().to_ascii_lowercase();
        if num.is_empty() {
            return Err(format!("expected {DURATION_EXPECTED}, found \"{text}\""));
        }
        if unit.is_empty() {
            return Err(format!(
                "\"{text}\" has no unit; expected {DURATION_EXPECTED}"
            ));
        }
        let n: f64 = num
            .parse()
            .map_err(|_| format!("expected {DURATION_EXPECTED}, found \"{text}\""))?;
        let secs = match unit.as_str() {
            "ms" => n / 1000.0,
            "s" | "sec" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            _ => {
                return Err(format!(
                    "unknown unit \"{unit}\" in \"{text}\"; expected {DURATION_EXPECTED}"
                ))
            }
        };
        match std::time::Duration::try_from_secs_f64(secs) {
            Ok(d) if d <= MAX_DURATION.0 => Ok(Duration(d)),
            _ => Err(format!(
                "\"{text}\" is out of range; expected a duration of at most {}",
                MAX_DURATION.human()
            )),
        }
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl fmt::Display for Duration {
    /// Exact, so that it parses back to the same duration: `kiln build`
    /// writes the durations of VM configs into the appliance config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.subsec_nanos();
        if nanos % 1_000_000 != 0 {
            // Finer than a millisecond: seconds with every digit.
            let digits = format!("{nanos:09}");
            return write!(f, "{}.{}s", self.0.as_secs(), digits.trim_end_matches('0'));
        }
        let ms = self.0.as_millis();
        if ms % 1000 != 0 {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl Duration {
    /// In the largest unit that writes it exactly (ms, s, m or h), for
    /// messages about ranges: "from 1ms to 1h".
    pub fn human(self) -> String {
        let ms = self.0.as_millis();
        for (unit, per) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
            if ms >= per && ms % per == 0 {
                return format!("{}{unit}", ms / per);
            }
        }
        format!("{ms}ms")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A bare number where a duration belongs: say how to write it.
fn no_unit<E: de::Error>(v: impl fmt::Display) -> E {
    E::custom(format!(
        "the number {v} has no unit; write it as a string with a unit, such as \"{v}s\""
    ))
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(DURATION_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(no_unit(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(no_unit(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64M").unwrap().bytes(), 64 << 20);
        assert_eq!(ByteSize::parse("2GiB").unwrap().bytes(), 2 << 30);
        assert_eq!(ByteSize::parse("512 KiB").unwrap().bytes(), 512 << 10);
        assert!(ByteSize::parse("512").unwrap_err().contains("no unit"));
        assert!(ByteSize::parse("-5M").unwrap_err().contains("positive"));
        assert!(ByteSize::parse("5X").unwrap_err().contains("unknown unit"));
        assert!(ByteSize::parse("99999999999T")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(ByteSize::mib(128).to_string(), "128M");
        assert_eq!(ByteSize(3).to_string(), "3B");
    }

    #[test]
    fn durations() {
        assert_eq!(Duration::parse("30s").unwrap().get().as_secs(), 30);
        assert_eq!(Duration::parse("500ms").unwrap().get().as_millis(), 500);
        assert_eq!(Duration::parse("2m").unwrap().get().as_secs(), 120);
        assert!(Duration::parse("30").unwrap_err().contains("no unit"));
        assert!(Duration::parse("-1s").unwrap_err().contains("positive"));
        assert_eq!(Duration::parse("1500ms").unwrap().to_string(), "1500ms");
        assert_eq!(Duration::parse("3600s").unwrap().human(), "1h");
        assert_eq!(Duration::parse("90s").unwrap().human(), "90s");
        assert_eq!(Duration::parse("120s").unwrap().human(), "2m");
        assert_eq!(Duration::parse("0s").unwrap().human(), "0ms");
    }

    #[test]
    fn absurd_durations_are_refused_at_parse() {
        // Once a PID 1 panic in `Instant::now() + delay`.
        let e = Duration::parse("3000000000000000h").unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        assert!(e.contains("at most 8760h"), "{e}");
        assert!(Duration::parse("8760h").is_ok());
        assert!(Duration::parse("8761h").is_err());
        assert!(Duration::parse("1e300s").is_err());
    }

    #[test]
    fn ranges() {
        let (lo, hi) = (Duration::millis(1), Duration::secs(3600));
        assert!(Duration::secs(30).check_range(lo, hi).is_ok());
        assert_eq!(
            Duration::secs(7200).check_range(lo, hi).unwrap_err(),
            "2h is out of range; expected a duration from 1ms to 1h"
        );
        assert!(Duration::millis(0).check_range(lo, hi).is_err());
        assert_eq!(
            ByteSize::mib(1)
                .check_range(ByteSize::mib(16), ByteSize::gib(1024))
                .unwrap_err(),
            "1M is out of range; expected a size from 16M to 1T"
        );
        assert!(ByteSize::mib(16)
            .check_range(ByteSize::mib(16), ByteSize::gib(1024))
            .is_ok());
    }

    /// Found by the `config` fuzz target: "1.5ms" was written back as
    /// "1ms", so a VM in the image restarted on another schedule than its
    /// config said.
    #[test]
    fn durations_print_as_they_parse() {
        for (text, shown) in [
            ("1.5ms", "0.0015s"),
            ("0.000000001s", "0.000000001s"),
            ("2.25s", "2250ms"),
            ("90m", "5400s"),
            ("8760h", "31536000s"),
        ] {
            let d = Duration::parse(text).unwrap();
            assert_eq!(d.to_string(), shown);
            assert_eq!(Duration::parse(shown).unwrap(), d, "{text}");
        }
    }
}
