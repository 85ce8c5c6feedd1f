//! The setup header of a Linux x86 kernel image (bzImage): the boot
//! protocol ABI between a boot loader and the guest kernel
//! (Documentation/arch/x86/boot.rst).
//!
//! The kernel publishes in it what a loader must know (protocol version,
//! how to enter it, how large it is, its release string), and the loader
//! checks it before loading. kiln's runtime is such a loader; the builder
//! reads the same header to name a kernel's release and to tell a kernel
//! from other PE files. Offsets are from the start of the image file.

/// Where the setup header starts (`setup_sects`).
pub const SETUP_HEADER_START: usize = 0x1f1;
/// Where the setup header ends, as of protocol 2.15 (`kernel_info_offset`;
/// the fields linux-loader's `setup_header` holds).
pub const SETUP_HEADER_END: usize = 0x26c;
/// Where [`MAGIC`] sits.
pub const MAGIC_OFFSET: usize = 0x202;
/// The header's signature, "HdrS".
pub const MAGIC: [u8; 4] = *b"HdrS";
/// The `boot_flag` every bzImage carries (the old boot sector signature).
pub const BOOT_FLAG: u16 = 0xaa55;
/// 2.12: `xloadflags` and the 64-bit entry point.
pub const MIN_PROTOCOL_64: u16 = 0x020c;
/// `loadflags`: the protected-mode kernel loads at 1 MiB.
pub const LOADED_HIGH: u8 = 1;
/// `xloadflags`: the kernel has the 64-bit entry point.
pub const XLF_KERNEL_64: u16 = 1;
/// `kernel_version` points this far before its string.
const KERNEL_VERSION_BASE: usize = 0x200;
/// `setup_sects` of 0 means this many, for old kernels.
const DEFAULT_SETUP_SECTS: u64 = 4;
const SECTOR: u64 = 512;

/// Whether `image` (its first bytes at least) carries the boot protocol
/// header: a bzImage, with or without an EFI stub.
pub fn has_header(image: &[u8]) -> bool {
    image.get(MAGIC_OFFSET..MAGIC_OFFSET + MAGIC.len()) == Some(MAGIC.as_slice())
}

/// The setup header's fields kiln looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupHeader {
    pub setup_sects: u8,
    /// The protected-mode code's size, in 16-byte units.
    pub syssize: u32,
    pub boot_flag: u16,
    pub magic: [u8; 4],
    /// Protocol version, major in the high byte.
    pub version: u16,
    /// Where the release string is, relative to 0x200; 0 for none.
    pub kernel_version: u16,
    pub loadflags: u8,
    pub xloadflags: u16,
}

/// Why a kernel image is not one a 64-bit loader can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// The file is shorter than its header says (or than the header).
    Truncated { expected: u64 },
    /// No boot protocol header: not a bzImage.
    NotBzImage,
    /// The kernel speaks a protocol older than [`MIN_PROTOCOL_64`].
    OldProtocol { major: u16, minor: u16 },
    /// The kernel has no 64-bit entry point or does not load high.
    No64BitEntry,
}

fn le<const N: usize>(image: &[u8], at: usize) -> Option<[u8; N]> {
    image.get(at..at.checked_add(N)?)?.try_into().ok()
}

impl SetupHeader {
    /// Reads the header from the first [`SETUP_HEADER_END`] bytes of an
    /// image; `None` when `image` is shorter.
    pub fn read(image: &[u8]) -> Option<Self> {
        if image.len() < SETUP_HEADER_END {
            return None;
        }
        Some(SetupHeader {
            setup_sects: le::<1>(image, 0x1f1)?[0],
            syssize: u32::from_le_bytes(le(image, 0x1f4)?),
            boot_flag: u16::from_le_bytes(le(image, 0x1fe)?),
            magic: le(image, MAGIC_OFFSET)?,
            version: u16::from_le_bytes(le(image, 0x206)?),
            kernel_version: u16::from_le_bytes(le(image, 0x20e)?),
            loadflags: le::<1>(image, 0x211)?[0],
            xloadflags: u16::from_le_bytes(le(image, 0x236)?),
        })
    }

    /// Bytes before the protected-mode kernel.
    pub fn setup_size(&self) -> u64 {
        setup_size(self.setup_sects)
    }

    /// The smallest file that holds the whole kernel the header describes.
    pub fn image_size(&self) -> u64 {
        self.setup_size() + u64::from(self.syssize) * 16
    }
}

/// Bytes before the protected-mode kernel of a header with this
/// `setup_sects`: the boot sector and the setup sectors.
pub fn setup_size(setup_sects: u8) -> u64 {
    let sects = match setup_sects {
        0 => DEFAULT_SETUP_SECTS,
        n => u64::from(n),
    };
    (sects + 1) * SECTOR
}

/// Checks that an image of `file_size` bytes, starting with `head`, is a
/// bzImage a loader can enter in 64-bit mode, and returns its header.
pub fn check_64bit(head: &[u8], file_size: u64) -> Result<SetupHeader, HeaderError> {
    let truncated = HeaderError::Truncated {
        expected: SETUP_HEADER_END as u64,
    };
    if file_size < SETUP_HEADER_END as u64 {
        return Err(truncated);
    }
    let hdr = SetupHeader::read(head).ok_or(truncated)?;
    if hdr.magic != MAGIC || hdr.boot_flag != BOOT_FLAG {
        return Err(HeaderError::NotBzImage);
    }
    if hdr.version < MIN_PROTOCOL_64 {
        return Err(HeaderError::OldProtocol {
            major: hdr.version >> 8,
            minor: hdr.version & 0xff,
        });
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 || hdr.loadflags & LOADED_HIGH == 0 {
        return Err(HeaderError::No64BitEntry);
    }
    let expected = hdr.image_size();
    if file_size < expected {
        return Err(HeaderError::Truncated { expected });
    }
    Ok(hdr)
}

/// 2.06: `cmdline_size`; older kernels take 255 bytes.
const CMDLINE_SIZE_PROTOCOL: u16 = 0x0206;
const OLD_CMDLINE_SIZE: u32 = 255;

/// The longest command line the kernel accepts, without its NUL
/// (`cmdline_size`); `None` when `image` is shorter than the header.
pub fn cmdline_size(image: &[u8]) -> Option<u32> {
    let version = u16::from_le_bytes(le(image, 0x206)?);
    if version < CMDLINE_SIZE_PROTOCOL {
        return Some(OLD_CMDLINE_SIZE);
    }
    Some(u32::from_le_bytes(le(image, 0x238)?))
}

/// The kernel's version string (`6.1.0-56-cloud-amd64 (debian-kernel@...)
/// #1 SMP ...`), which `kernel_version` points to; `None` when it has none
/// or `image` ends before the string does.
pub fn kernel_version(image: &[u8]) -> Option<&str> {
    let ptr = u16::from_le_bytes(le(image, 0x20e)?);
    if ptr == 0 {
        return None;
    }
    let text = image.get(KERNEL_VERSION_BASE + usize::from(ptr)..)?;
    let end = text.iter().position(|&b| b == 0)?;
    core::str::from_utf8(text.get(..end)?).ok()
}

/// The kernel's release (`uname -r`): the first word of its version string.
pub fn release(image: &[u8]) -> Option<&str> {
    kernel_version(image)?
        .split_ascii_whitespace()
        .next()
        .filter(|r| r.is_ascii())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// A 64-bit bzImage head with `version` as its version string and
    /// `syssize` 16-byte units of kernel.
    fn image(version: &str, syssize: u32) -> Vec<u8> {
        let mut k = vec![0u8; 0x1000];
        k[0x1f1] = 4; // setup_sects
        k[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        k[0x1fe..0x200].copy_from_slice(&BOOT_FLAG.to_le_bytes());
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        k[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        k[0x211] = LOADED_HIGH;
        k[0x236..0x238].copy_from_slice(&XLF_KERNEL_64.to_le_bytes());
        k[0x300..0x300 + version.len()].copy_from_slice(version.as_bytes());
        k
    }

    #[test]
    fn cmdline_size_is_read_from_the_header() {
        let mut k = image("6.1.0 (x)", 1);
        k[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes());
        assert_eq!(cmdline_size(&k), Some(2048));
        k[0x206..0x208].copy_from_slice(&0x0205u16.to_le_bytes());
        assert_eq!(cmdline_size(&k), Some(255));
        assert_eq!(cmdline_size(&k[..0x200]), None);
    }

    #[test]
    fn reads_the_release_from_the_version_string() {
        let k = image(
            "6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP",
            0,
        );
        assert!(has_header(&k));
        assert_eq!(release(&k), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(release(&k[..0x100]), None);
        assert_eq!(release(&k[..0x310]), None, "the string runs past the data");
        let mut none = k.clone();
        none[0x20e..0x210].fill(0);
        assert_eq!(release(&none), None);
        assert!(!has_header(&k[..0x204]));
    }

    #[test]
    fn checks_what_a_64_bit_loader_needs() {
        let k = image("6.1", 2);
        let hdr = check_64bit(&k, 5 * 512 + 32).unwrap();
        assert_eq!(hdr.setup_size(), 5 * 512);
        assert_eq!(
            check_64bit(&k, 5 * 512 + 31),
            Err(HeaderError::Truncated {
                expected: 5 * 512 + 32
            })
        );
        assert_eq!(
            check_64bit(&k[..0x200], 0x200),
            Err(HeaderError::Truncated { expected: 0x26c })
        );
        let mut old = k.clone();
        old[0x206] = 0x0a;
        assert_eq!(
            check_64bit(&old, 0x1000),
            Err(HeaderError::OldProtocol {
                major: 2,
                minor: 10
            })
        );
        let mut elf = k.clone();
        elf[0x202] = b'X';
        assert_eq!(check_64bit(&elf, 0x1000), Err(HeaderError::NotBzImage));
        let mut low = k;
        low[0x211] = 0;
        assert_eq!(check_64bit(&low, 0x1000), Err(HeaderError::No64BitEntry));
    }
}
