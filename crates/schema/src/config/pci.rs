//! PCI device selectors: a bus address (`0000:00:04.0`, `00:04.0`) or a
//! vendor:device pair (`1234:11e8`).

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A PCI bus/device/function address with its segment (domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    pub domain: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PciSelector {
    Address(Bdf),
    Id { vendor: u16, device: u16 },
}

const EXPECTED: &str =
    "a PCI address such as \"0000:00:04.0\" or \"00:04.0\", or a vendor:device pair such as \"1234:11e8\"";

fn hex<T: TryFrom<u32>>(s: &str, digits: usize, what: &str, whole: &str) -> Result<T, String> {
    let ok = !s.is_empty() && s.len() <= digits && s.chars().all(|c| c.is_ascii_hexdigit());
    ok.then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| {
            format!("\"{whole}\" has a malformed {what} \"{s}\" (at most {digits} hex digits); expected {EXPECTED}")
        })
}

impl FromStr for Bdf {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (rest, function) = text
            .rsplit_once('.')
            .ok_or_else(|| format!("\"{text}\" is not a PCI address; expected {EXPECTED}"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [b, d] => ("0", *b, *d),
            [s, b, d] => (*s, *b, *d),
            _ => {
                return Err(format!(
                    "\"{text}\" is not a PCI address; expected {EXPECTED}"
                ))
            }
        };
        let bdf = Bdf {
            domain: hex(domain, 4, "domain", text)?,
            bus: hex(bus, 2, "bus", text)?,
            device: hex(device, 2, "device", text)?,
            function: hex(function, 1, "function", text)?,
        };
        if bdf.device > 0x1f || bdf.function > 7 {
            return Err(format!(
                "\"{text}\" is out of range: the device is at most 1f and the function at most 7"
            ));
        }
        Ok(bdf)
    }
}

impl FromStr for PciSelector {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.contains('.') {
            return t.parse().map(PciSelector::Address);
        }
        match t.split_once(':') {
            Some((v, d)) if !d.contains(':') => Ok(PciSelector::Id {
                vendor: hex(v, 4, "vendor id", text)?,
                device: hex(d, 4, "device id", text)?,
            }),
            _ => Err(format!(
                "\"{text}\" is not a PCI selector; expected {EXPECTED}"
            )),
        }
    }
}

impl fmt::Display for PciSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciSelector::Address(bdf) => bdf.fmt(f),
            PciSelector::Id { vendor, device } => write!(f, "{vendor:04x}:{device:04x}"),
        }
    }
}

impl Serialize for PciSelector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciSelector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PciSelector;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PciSelector, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_selectors() {
        let a: PciSelector = "0000:00:04.0".parse().unwrap();
        assert_eq!(a.to_string(), "0000:00:04.0");
        let b: PciSelector = "00:1f.3".parse().unwrap();
        assert_eq!(b.to_string(), "0000:00:1f.3");
        let c: PciSelector = "1234:11e8".parse().unwrap();
        assert_eq!(
            c,
            PciSelector::Id {
                vendor: 0x1234,
                device: 0x11e8
            }
        );
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in [
            "1234",
            "12345:11e8",
            "zz:11e8",
            "00:20.0",
            "00:04.8",
            "0:0:0:0.0",
            "00:04.",
        ] {
            let err = bad.parse::<PciSelector>().unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
