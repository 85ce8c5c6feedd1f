//! PCI devices as the guest kernel sees them in sysfs.

use crate::console::Quoted;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where the kernel lists PCI functions (one symlink per BDF).
pub const SYSFS_DEVICES: &str = "/sys/bus/pci/devices";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot list PCI devices in {path}; is /sys mounted and PCI enabled in the guest kernel?"
    )]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One PCI function's identity and resources. Fields are `None` when their
/// sysfs file is absent or unreadable; they print as `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub bdf: String,
    pub vendor: Option<u16>,
    pub device: Option<u16>,
    pub class: Option<u32>,
    pub irq: Option<u32>,
    /// BARs 0 to 5 as the `resource` file gives them; `None` when it is
    /// absent or unreadable.
    pub bars: Option<Vec<Bar>>,
    /// Message-signalled interrupts a driver enabled: (MSI, MSI-X) vectors,
    /// from `msi_irqs/` (one file per vector, reading "msi" or "msix").
    pub msi: (usize, usize),
    /// The expansion ROM, when the function has one.
    pub rom: Option<Rom>,
}

/// An expansion ROM: its range (line 7 of `resource`) and what reading the
/// first bytes of the `rom` file gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rom {
    pub range: Bar,
    pub head: Result<Vec<u8>, String>,
}

/// How many leading bytes of a ROM are read.
const ROM_HEAD: usize = 16;

impl fmt::Display for Rom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rom {:#x}-{:#x}", self.range.start, self.range.end)?;
        match &self.head {
            // The 55 AA signature in hex, as specs write it.
            Ok(bytes) => write!(f, " starts {}", Quoted { bytes, hex: 2 }),
            Err(e) => write!(f, " unreadable: {e}"),
        }
    }
}

/// One BAR's range (inclusive) and kind, from a `resource` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    pub start: u64,
    pub end: u64,
    pub flags: u64,
}

// IORESOURCE_* bits of include/linux/ioport.h, as sysfs prints them.
const IORESOURCE_IO: u64 = 0x100;
const IORESOURCE_PREFETCH: u64 = 0x2000;
const IORESOURCE_MEM_64: u64 = 0x10_0000;

impl Bar {
    fn unused(&self) -> bool {
        self.start == 0 && self.end == 0
    }
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unused() {
            return f.write_str("none");
        }
        write!(f, "{:#x}-{:#x} ", self.start, self.end)?;
        if self.flags & IORESOURCE_IO != 0 {
            return f.write_str("io");
        }
        let width = if self.flags & IORESOURCE_MEM_64 != 0 {
            64
        } else {
            32
        };
        write!(f, "mem{width}")?;
        if self.flags & IORESOURCE_PREFETCH != 0 {
            f.write_str("-pref")?;
        }
        Ok(())
    }
}

/// Formats a present value with `show`, or `?` when absent.
struct Field<T>(Option<T>, fn(&T, &mut fmt::Formatter<'_>) -> fmt::Result);

impl<T> fmt::Display for Field<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => (self.1)(v, f),
            None => f.write_str("?"),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pci {} {}:{} class {} irq {} bar0 {}",
            self.bdf,
            Field(self.vendor, |v, f| write!(f, "{v:04x}")),
            Field(self.device, |v, f| write!(f, "{v:04x}")),
            Field(self.class, |v, f| write!(f, "{v:06x}")),
            Field(self.irq, |v, f| write!(f, "{v}")),
            Field(self.bars.as_ref(), |bars, f| match bars.first() {
                Some(bar) => write!(f, "{bar}"),
                None => f.write_str("none"),
            }),
        )?;
        // The other BARs only when the device has them.
        for (i, bar) in self.bars.iter().flatten().enumerate().skip(1) {
            if !bar.unused() {
                write!(f, " bar{i} {bar}")?;
            }
        }
        // Vectors only when a driver enabled some.
        match self.msi {
            (0, 0) => {}
            (msi, 0) => write!(f, " msi {msi}")?,
            (0, msix) => write!(f, " msix {msix}")?,
            (msi, msix) => write!(f, " msi {msi} msix {msix}")?,
        }
        if let Some(rom) = &self.rom {
            write!(f, " {rom}")?;
        }
        Ok(())
    }
}

fn read_trimmed(dir: &Path, name: &str) -> Option<String> {
    fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

fn hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("0x").unwrap_or(text), 16).ok()
}

fn parse_resource(line: &str) -> Option<Bar> {
    let mut fields = line.split_whitespace();
    Some(Bar {
        start: hex(fields.next()?)?,
        end: hex(fields.next()?)?,
        flags: hex(fields.next()?)?,
    })
}

/// BARs 0-5 from the `resource` file: a "start end flags" line in hex for
/// each (then the ROM and bridge windows, which are not BARs).
fn parse_bars(resource: &str) -> Option<Vec<Bar>> {
    resource
        .lines()
        .take(6)
        .map(parse_resource)
        .collect::<Option<Vec<_>>>()
        .filter(|bars| !bars.is_empty())
}

/// The ROM's range: line 7 of `resource` (index 6), when it is in use.
fn parse_rom(resource: &str) -> Option<Bar> {
    resource
        .lines()
        .nth(6)
        .and_then(parse_resource)
        .filter(|r| !r.unused())
}

/// The first bytes of the ROM through the `rom` file: reading needs "1"
/// written to it first (the kernel then enables the ROM BAR for the read);
/// "0" afterwards turns that off again.
fn read_rom(dir: &Path) -> Result<Vec<u8>, String> {
    let path = dir.join("rom");
    let describe = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    // Never created: the kernel makes it only for a function with a ROM.
    let set = |value: &[u8]| {
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(value))
    };
    set(b"1").map_err(|e| describe("cannot enable", e))?;
    let mut head = Vec::with_capacity(ROM_HEAD);
    let read = fs::File::open(&path)
        .and_then(|f| f.take(ROM_HEAD as u64).read_to_end(&mut head))
        .map_err(|e| describe("cannot read", e));
    let disabled = set(b"0").map_err(|e| describe("cannot disable", e));
    read?;
    disabled?;
    Ok(head)
}

/// Counts the (MSI, MSI-X) vectors listed in `msi_irqs/`.
fn msi_vectors(dir: &Path) -> (usize, usize) {
    let Ok(entries) = fs::read_dir(dir.join("msi_irqs")) else {
        return (0, 0);
    };
    entries
        .filter_map(Result::ok)
        .fold((0, 0), |(msi, msix), e| {
            match fs::read_to_string(e.path()).as_deref().map(str::trim) {
                Ok("msix") => (msi, msix + 1),
                Ok("msi") => (msi + 1, msix),
                _ => (msi, msix),
            }
        })
}

/// Reads one function's directory (e.g. `/sys/bus/pci/devices/0000:00:03.0`).
pub fn read_device(dir: &Path, bdf: String) -> Device {
    let hex_field = |name| read_trimmed(dir, name).as_deref().and_then(hex);
    let resource = fs::read_to_string(dir.join("resource")).ok();
    Device {
        bdf,
        vendor: hex_field("vendor").and_then(|v| u16::try_from(v).ok()),
        device: hex_field("device").and_then(|v| u16::try_from(v).ok()),
        class: hex_field("class").and_then(|v| u32::try_from(v).ok()),
        irq: read_trimmed(dir, "irq").and_then(|s| s.parse().ok()),
        bars: resource.as_deref().and_then(parse_bars),
        msi: msi_vectors(dir),
        rom: resource.as_deref().and_then(parse_rom).map(|range| Rom {
            range,
            head: read_rom(dir),
        }),
    }
}

/// All functions under `root`, sorted by address.
pub fn devices(root: &Path) -> Result<Vec<Device>, Error> {
    let entries = fs::read_dir(root).map_err(|source| Error::List {
        path: root.to_path_buf(),
        source,
    })?;
    let mut devices: Vec<Device> = entries
        .filter_map(Result::ok)
        .map(|entry| {
            read_device(
                &entry.path(),
                entry.file_name().to_string_lossy().into_owned(),
            )
        })
        .collect();
    devices.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn lists_devices_in_address_order_with_their_resources() {
        let root = tempfile::tempdir().unwrap();
        let edu = root.path().join("0000:00:03.0");
        fs::create_dir(&edu).unwrap();
        write(&edu, "vendor", "0x1234\n");
        write(&edu, "device", "0x11e8\n");
        write(&edu, "class", "0x00ff00\n");
        write(&edu, "irq", "11\n");
        write(
            &edu,
            "resource",
            "0x00000000fea00000 0x00000000feafffff 0x0000000000040200\n\
             0x0000000000000000 0x0000000000000000 0x0000000000000000\n",
        );
        let host = root.path().join("0000:00:00.0");
        fs::create_dir(&host).unwrap();
        write(&host, "vendor", "0x8086\n");
        write(&host, "device", "0x29c0\n");
        write(&host, "class", "0x060000\n");
        write(&host, "irq", "0\n");
        write(
            &host,
            "resource",
            "0x0000000000000000 0x0000000000000000 0x0000000000000000\n",
        );

        let lines: Vec<String> = devices(root.path())
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "pci 0000:00:00.0 8086:29c0 class 060000 irq 0 bar0 none",
                "pci 0000:00:03.0 1234:11e8 class 00ff00 irq 11 bar0 0xfea00000-0xfeafffff mem32",
            ]
        );
    }

    #[test]
    fn io_and_64_bit_prefetchable_bars_are_told_apart() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("0000:00:01.0");
        fs::create_dir(&dev).unwrap();
        write(&dev, "vendor", "0x1b36\n");
        write(&dev, "device", "0x0005\n");
        write(&dev, "class", "0x00ff00\n");
        write(&dev, "irq", "0\n");
        // pci-testdev with membar: MMIO, I/O ports, then a 64-bit
        // prefetchable BAR (which takes BAR2 and BAR3), then the ROM.
        write(
            &dev,
            "resource",
            "0x00000000c0000000 0x00000000c0000fff 0x0000000000040200\n\
             0x000000000000c000 0x000000000000c0ff 0x0000000000040101\n\
             0x00000000c1000000 0x00000000c1ffffff 0x000000000014220c\n\
             0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
             0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
             0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
             0x00000000c2000000 0x00000000c203ffff 0x0000000000046200\n",
        );
        // The ROM is listed last; with no `rom` file to read it through,
        // as unreadable.
        let line = read_device(&dev, "0000:00:01.0".into()).to_string();
        assert!(
            line.starts_with(
                "pci 0000:00:01.0 1b36:0005 class 00ff00 irq 0 \
                 bar0 0xc0000000-0xc0000fff mem32 bar1 0xc000-0xc0ff io \
                 bar2 0xc1000000-0xc1ffffff mem64-pref \
                 rom 0xc2000000-0xc203ffff unreadable: cannot enable "
            ),
            "{line}"
        );
        assert!(!dev.join("rom").exists());
    }

    #[test]
    fn a_rom_is_read_between_enabling_and_disabling_it() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("0000:00:01.0");
        fs::create_dir(&dev).unwrap();
        write(&dev, "vendor", "0x1234\n");
        write(&dev, "device", "0x11e8\n");
        write(&dev, "class", "0x00ff00\n");
        write(&dev, "irq", "11\n");
        let none = "0x0000000000000000 0x0000000000000000 0x0000000000000000\n";
        write(
            &dev,
            "resource",
            &format!(
                "0x00000000c0000000 0x00000000c00fffff 0x0000000000040200\n{}\
                 0x00000000c0100000 0x00000000c010ffff 0x0000000000046200\n",
                none.repeat(5)
            ),
        );
        // A plain file stands in for sysfs's: the "1" written first lands
        // on the signature's first byte, so the bytes read show the order.
        let mut rom = b"\x55\xaakiln rom\0\x01\x02".to_vec();
        rom.resize(64, 0);
        fs::write(dev.join("rom"), &rom).unwrap();
        assert_eq!(
            read_device(&dev, "0000:00:01.0".into()).to_string(),
            "pci 0000:00:01.0 1234:11e8 class 00ff00 irq 11 \
             bar0 0xc0000000-0xc00fffff mem32 \
             rom 0xc0100000-0xc010ffff starts \"\\x31\\xaakiln rom\""
        );
        // Disabled again after the read.
        assert_eq!(fs::read(dev.join("rom")).unwrap()[0], b'0');
    }

    #[test]
    fn msi_x_vectors_a_driver_enabled_are_counted() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("0000:00:02.0");
        fs::create_dir_all(dev.join("msi_irqs")).unwrap();
        write(&dev, "vendor", "0x1b36\n");
        write(&dev, "device", "0x0010\n");
        write(&dev, "class", "0x010802\n");
        write(&dev, "irq", "11\n");
        write(
            &dev,
            "resource",
            "0x00000000c0000000 0x00000000c0003fff 0x0000000000140204\n",
        );
        for irq in ["24", "25", "26"] {
            write(&dev.join("msi_irqs"), irq, "msix\n");
        }
        assert_eq!(
            read_device(&dev, "0000:00:02.0".into()).to_string(),
            "pci 0000:00:02.0 1b36:0010 class 010802 irq 11 \
             bar0 0xc0000000-0xc0003fff mem64 msix 3"
        );
    }

    #[test]
    fn absent_or_garbled_files_print_as_question_marks() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("0000:00:1f.3");
        fs::create_dir(&dev).unwrap();
        write(&dev, "vendor", "0x8086\n");
        write(&dev, "device", "0x123456\n");
        let d = read_device(&dev, "0000:00:1f.3".into());
        assert_eq!(
            d.to_string(),
            "pci 0000:00:1f.3 8086:? class ? irq ? bar0 ?"
        );
    }

    #[test]
    fn a_missing_bus_directory_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            devices(&root.path().join("absent")),
            Err(Error::List { .. })
        ));
    }
}
