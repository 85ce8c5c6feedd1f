//! The uncompressed kernel inside a bzImage: the protected-mode code the
//! setup header points at (`payload_offset`, `payload_length`) is the
//! vmlinux ELF compressed with the codec the kernel was built with, followed
//! (but for gzip, whose trailer holds it already) by its uncompressed size
//! as a little-endian u32. `kiln build` takes it out for `debian:` guest
//! kernels so the VMM boots the ELF through its PVH entry and the guest
//! does not decompress itself (docs/config.md#fast-boot).
//!
//! Decoding goes through [`crate::compress::decoder`]: the crates' decoders
//! for gzip, xz and zstd, and for legacy lz4 (`lz4 -l`, the kernel's
//! format) a few lines of framing around `lz4_flex::block`, hand-written
//! there because lz4_flex reads only the lz4 frame format. Every header
//! field is checked before use and the output is capped, so a damaged or
//! hostile bzImage fails with an error instead of filling memory or disk.

use crate::compress::{self, Compression};
use kiln_abi::bzimage;
use std::io::Read;

/// The most a vmlinux may unpack to (a Debian cloud kernel's is 53 MB).
pub const MAX_VMLINUX: u64 = 512 << 20;

/// `payload_offset` and `payload_length` in the setup header (protocol 2.08+).
const PAYLOAD_OFFSET_AT: usize = 0x248;
const PAYLOAD_LENGTH_AT: usize = 0x24c;
/// The first protocol with the payload fields.
const MIN_PROTOCOL_PAYLOAD: u16 = 0x0208;
/// The uncompressed size appended after the compressed stream.
const SIZE_TRAILER: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum VmlinuxError {
    #[error("the file is not a bzImage of boot protocol 2.08 or later (no payload fields in its setup header); give a bzImage")]
    NotBzImage,
    #[error("its payload ({offset:#x}+{length:#x} after the {setup}-byte setup) lies outside the {size}-byte file; the bzImage is damaged: fetch it again")]
    PayloadOutside {
        setup: u64,
        offset: u32,
        length: u32,
        size: u64,
    },
    #[error("its payload is compressed in a way kiln does not unpack (magic {magic}); kiln unpacks gzip, xz, zstd and legacy lz4")]
    UnknownCompression { magic: String },
    #[error("its payload unpacks to more than {cap} bytes, the most kiln takes from a bzImage; the bzImage is damaged or not a Linux kernel")]
    TooLarge { cap: u64 },
    #[error("its {codec} payload unpacked to {got} bytes but the bzImage says {expected}; the bzImage is damaged: fetch it again")]
    SizeMismatch {
        codec: Compression,
        got: u64,
        expected: u32,
    },
    #[error("its {codec} payload is damaged; fetch the bzImage again")]
    Decode {
        codec: Compression,
        #[source]
        source: std::io::Error,
    },
    #[error("its payload unpacked to something that is not an ELF file; the bzImage is damaged or not a Linux kernel")]
    NotElf,
}

/// A bzImage's compressed payload, as its setup header places it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload<'a> {
    pub codec: Compression,
    /// The compressed stream, without a size trailer.
    pub stream: &'a [u8],
    /// The uncompressed size the bzImage records.
    pub size: u32,
}

fn le32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Finds the compressed vmlinux in `image` (a whole bzImage) and its codec.
pub fn payload(image: &[u8]) -> Result<Payload<'_>, VmlinuxError> {
    let hdr = bzimage::SetupHeader::read(image).ok_or(VmlinuxError::NotBzImage)?;
    if hdr.magic != bzimage::MAGIC || hdr.version < MIN_PROTOCOL_PAYLOAD {
        return Err(VmlinuxError::NotBzImage);
    }
    let offset = le32(image, PAYLOAD_OFFSET_AT).ok_or(VmlinuxError::NotBzImage)?;
    let length = le32(image, PAYLOAD_LENGTH_AT).ok_or(VmlinuxError::NotBzImage)?;
    let setup = hdr.setup_size();
    let size = image.len() as u64;
    let outside = || VmlinuxError::PayloadOutside {
        setup,
        offset,
        length,
        size,
    };
    let start = setup.checked_add(u64::from(offset)).ok_or_else(outside)?;
    let end = start.checked_add(u64::from(length)).ok_or_else(outside)?;
    let bytes = usize::try_from(start)
        .ok()
        .zip(usize::try_from(end).ok())
        .and_then(|(s, e)| image.get(s..e))
        .filter(|b| b.len() > SIZE_TRAILER)
        .ok_or_else(outside)?;
    let codec = compress::detect(bytes);
    if codec == Compression::None {
        let magic = bytes
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        return Err(VmlinuxError::UnknownCompression { magic });
    }
    // `bytes.len() > SIZE_TRAILER` above.
    let (stream, trailer) = bytes.split_at(bytes.len() - SIZE_TRAILER);
    let size = le32(trailer, 0).ok_or_else(outside)?;
    // gzip's own trailer ends with the size; the others have it appended.
    let stream = if codec == Compression::Gzip {
        bytes
    } else {
        stream
    };
    Ok(Payload {
        codec,
        stream,
        size,
    })
}

/// Unpacks the vmlinux ELF from `image`, a whole bzImage; at most `cap`
/// bytes. The same bzImage always gives the same bytes.
pub fn extract(image: &[u8], cap: u64) -> Result<Vec<u8>, VmlinuxError> {
    let p = payload(image)?;
    if u64::from(p.size) > cap {
        return Err(VmlinuxError::TooLarge { cap });
    }
    let decode = |source| VmlinuxError::Decode {
        codec: p.codec,
        source,
    };
    let (_, reader) = compress::decoder(p.stream).map_err(decode)?;
    // Reserve what the bzImage says (capped above), read one byte past the
    // cap to tell a lying size from a real one.
    let mut out = Vec::with_capacity(usize::try_from(p.size).unwrap_or(0));
    reader
        .take(cap.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(decode)?;
    let got = out.len() as u64;
    if got > cap {
        return Err(VmlinuxError::TooLarge { cap });
    }
    if got != u64::from(p.size) {
        return Err(VmlinuxError::SizeMismatch {
            codec: p.codec,
            got,
            expected: p.size,
        });
    }
    if !out.starts_with(b"\x7fELF") {
        return Err(VmlinuxError::NotElf);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::compress::Encoder;

    /// A small ELF-looking body (only the magic matters here).
    fn elf(len: usize) -> Vec<u8> {
        let mut v = b"\x7fELF".to_vec();
        let mut x = 7u32;
        while v.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            v.push(x.to_le_bytes()[2] % 16);
        }
        v
    }

    pub(crate) fn compressed(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut enc = Encoder::new(c, None, Vec::new()).unwrap();
        std::io::Write::write_all(&mut enc, data).unwrap();
        let mut out = enc.finish().unwrap();
        if c != Compression::Gzip {
            out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
        }
        out
    }

    /// A bzImage (1 setup sector) whose payload is `payload` at `offset`
    /// into the protected-mode code, which is `pm_len` bytes long.
    pub(crate) fn bzimage_around(payload: &[u8], offset: u32, pm_len: usize) -> Vec<u8> {
        let setup = 2 * 512;
        let mut k = vec![0u8; setup + pm_len];
        k[0x1f1] = 1;
        k[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        k[0x211] = bzimage::LOADED_HIGH;
        k[0x236..0x238].copy_from_slice(&bzimage::XLF_KERNEL_64.to_le_bytes());
        k[0x1f4..0x1f8].copy_from_slice(&u32::try_from(pm_len / 16).unwrap().to_le_bytes());
        k[PAYLOAD_OFFSET_AT..PAYLOAD_OFFSET_AT + 4].copy_from_slice(&offset.to_le_bytes());
        k[PAYLOAD_LENGTH_AT..PAYLOAD_LENGTH_AT + 4]
            .copy_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        let at = setup + offset as usize;
        k[at..at + payload.len()].copy_from_slice(payload);
        k
    }

    /// `payload` placed 0x40 bytes into a protected-mode part with room.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        bzimage_around(payload, 0x40, (payload.len() + 0x100).next_multiple_of(16))
    }

    #[test]
    fn each_codec_unpacks_to_the_same_bytes() {
        let body = elf(300_000);
        for c in [
            Compression::Lz4,
            Compression::Gzip,
            Compression::Xz,
            Compression::Zstd,
        ] {
            let k = bzimage(&compressed(c, &body));
            assert_eq!(payload(&k).unwrap().codec, c);
            let out = extract(&k, MAX_VMLINUX).unwrap();
            assert!(out == body, "{c}");
            assert!(
                extract(&k, MAX_VMLINUX).unwrap() == out,
                "{c}: reproducible"
            );
        }
    }

    #[test]
    fn lz4_over_several_blocks_unpacks() {
        // More than one 8 MiB legacy block.
        let body = elf((8 << 20) + 5000);
        let k = bzimage(&compressed(Compression::Lz4, &body));
        assert!(extract(&k, MAX_VMLINUX).unwrap() == body);
    }

    #[test]
    fn a_truncated_file_or_an_old_header_is_no_bzimage() {
        let k = bzimage(&compressed(Compression::Gzip, &elf(1000)));
        assert!(matches!(
            extract(&k[..0x200], MAX_VMLINUX),
            Err(VmlinuxError::NotBzImage)
        ));
        let mut old = k.clone();
        old[0x206..0x208].copy_from_slice(&0x0207u16.to_le_bytes());
        assert!(matches!(
            extract(&old, MAX_VMLINUX),
            Err(VmlinuxError::NotBzImage)
        ));
        // Cut inside the payload: it now runs past the end.
        let e = extract(&k[..k.len() - 0x100], MAX_VMLINUX).unwrap_err();
        assert!(matches!(e, VmlinuxError::PayloadOutside { .. }), "{e}");
    }

    #[test]
    fn payload_fields_past_the_end_or_overflowing_are_refused() {
        let mut k = bzimage(&compressed(Compression::Zstd, &elf(1000)));
        let len = u32::try_from(k.len()).unwrap();
        k[PAYLOAD_OFFSET_AT..PAYLOAD_OFFSET_AT + 4].copy_from_slice(&len.to_le_bytes());
        let e = extract(&k, MAX_VMLINUX).unwrap_err();
        assert!(e.to_string().contains("lies outside the"), "{e}");
        // offset + length wraps a u32 (and would wrap a usize on 32 bits).
        k[PAYLOAD_OFFSET_AT..PAYLOAD_OFFSET_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        k[PAYLOAD_LENGTH_AT..PAYLOAD_LENGTH_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            extract(&k, MAX_VMLINUX),
            Err(VmlinuxError::PayloadOutside { .. })
        ));
        // A payload too short to hold even the size trailer.
        k[PAYLOAD_OFFSET_AT..PAYLOAD_OFFSET_AT + 4].copy_from_slice(&0x40u32.to_le_bytes());
        k[PAYLOAD_LENGTH_AT..PAYLOAD_LENGTH_AT + 4].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            extract(&k, MAX_VMLINUX),
            Err(VmlinuxError::PayloadOutside { .. })
        ));
    }

    #[test]
    fn an_unknown_codec_is_named_by_its_magic() {
        // bzip2, which the kernel can use and kiln does not unpack.
        let k = bzimage(b"BZh91AY&SY\0\0\0\0\0\0\0\0");
        let e = extract(&k, MAX_VMLINUX).unwrap_err();
        assert!(matches!(e, VmlinuxError::UnknownCompression { .. }), "{e}");
        assert!(e.to_string().contains("magic 425a68393141"), "{e}");
    }

    #[test]
    fn output_over_the_cap_is_refused_whatever_the_trailer_says() {
        let body = elf(100_000);
        let k = bzimage(&compressed(Compression::Xz, &body));
        let e = extract(&k, 50_000).unwrap_err();
        assert!(matches!(e, VmlinuxError::TooLarge { cap: 50_000 }), "{e}");
        // A trailer that claims little cannot get more than the cap out.
        let mut lying = compressed(Compression::Lz4, &body);
        let n = lying.len();
        lying[n - 4..].copy_from_slice(&10u32.to_le_bytes());
        let e = extract(&bzimage(&lying), 50_000).unwrap_err();
        assert!(matches!(e, VmlinuxError::TooLarge { .. }), "{e}");
        // Under the cap, the lie shows as a size mismatch.
        let e = extract(&bzimage(&lying), MAX_VMLINUX).unwrap_err();
        assert!(
            matches!(
                e,
                VmlinuxError::SizeMismatch {
                    got: 100_000,
                    expected: 10,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_legacy_lz4_block_past_the_end_is_damage() {
        let mut p = compressed(Compression::Lz4, &elf(1000));
        // The first block's size, after the 4-byte magic, now says 1 MiB.
        p[4..8].copy_from_slice(&(1u32 << 20).to_le_bytes());
        let e = extract(&bzimage(&p), MAX_VMLINUX).unwrap_err();
        assert!(
            matches!(
                e,
                VmlinuxError::Decode {
                    codec: Compression::Lz4,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_payload_that_is_no_elf_is_refused() {
        let k = bzimage(&compressed(Compression::Gzip, &[0u8; 4096]));
        assert!(matches!(
            extract(&k, MAX_VMLINUX),
            Err(VmlinuxError::NotElf)
        ));
    }
}
