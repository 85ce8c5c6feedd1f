//! The uncompressed kernel inside a bzImage: the protected-mode code the
//! setup header points at (`payload_offset`, `payload_length`) is the
//! vmlinux ELF compressed with the codec the kernel was built with, followed
//! (but for gzip, whose trailer holds it already) by its uncompressed size
//! as a little-endian u32. `kiln build` takes it out for `debian:` guest
//! kernels with `boot.pvh`, so the VMM boots the ELF through its PVH entry
//! and the guest does not decompress itself
//! (docs/config.md#booting-the-vmlinux-through-pvh).
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
    #[error("its vmlinux has program headers that lie outside the file; the bzImage is damaged: fetch it again")]
    BadProgramHeaders,
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

/// Leaves out of `elf`, an ELF64 little-endian executable, what a loader
/// would only copy as zeros: each PT_LOAD segment's trailing zero bytes
/// leave the file (its `p_filesz` shrinks, its `p_memsz` stays, so the
/// loader zero-fills them as it does .bss), and when the section headers
/// lie past every segment, they and everything after the last segment go
/// (loaders read program headers only). A Debian cloud kernel's vmlinux
/// loses 12 of its 53 MB, its .bss and .brk, which the VMM would otherwise
/// copy into guest RAM at every boot. The fields are rewritten in place
/// through `object`'s ELF structures.
pub fn trim_zeros(elf: &mut Vec<u8>) -> Result<(), VmlinuxError> {
    use object::elf::{FileHeader64, ProgramHeader64, PT_LOAD};
    use object::{pod, LittleEndian as Le};
    let bad = |_| VmlinuxError::BadProgramHeaders;
    let (header, _) = pod::from_bytes::<FileHeader64<Le>>(elf).map_err(bad)?;
    let (phoff, phnum) = (header.e_phoff.get(Le), header.e_phnum.get(Le));
    let shoff = header.e_shoff.get(Le);
    let phent = std::mem::size_of::<ProgramHeader64<Le>>();
    if usize::from(header.e_phentsize.get(Le)) != phent {
        return Err(VmlinuxError::BadProgramHeaders);
    }
    let range = |at: u64, len: u64| -> Result<std::ops::Range<usize>, VmlinuxError> {
        let start = usize::try_from(at).map_err(|_| VmlinuxError::BadProgramHeaders)?;
        let len = usize::try_from(len).map_err(|_| VmlinuxError::BadProgramHeaders)?;
        let end = start
            .checked_add(len)
            .ok_or(VmlinuxError::BadProgramHeaders)?;
        Ok(start..end)
    };
    let table = range(phoff, (phent as u64).saturating_mul(u64::from(phnum)))?;
    let mut keep = table.end.max(std::mem::size_of::<FileHeader64<Le>>());
    let mut new_sizes = Vec::new();
    for i in 0..usize::from(phnum) {
        let at = table.start.saturating_add(i.saturating_mul(phent));
        let bytes = elf.get(at..).ok_or(VmlinuxError::BadProgramHeaders)?;
        let (ph, _) = pod::from_bytes::<ProgramHeader64<Le>>(bytes).map_err(bad)?;
        let seg = range(ph.p_offset.get(Le), ph.p_filesz.get(Le))?;
        let data = elf
            .get(seg.clone())
            .ok_or(VmlinuxError::BadProgramHeaders)?;
        let kept = if ph.p_type.get(Le) == PT_LOAD {
            data.iter()
                .rposition(|&b| b != 0)
                .map_or(0, |last| last + 1)
        } else {
            data.len()
        };
        // Even a segment left with no bytes keeps its offset in the file,
        // which loaders check against the file's size.
        keep = keep.max(seg.start.saturating_add(kept));
        new_sizes.push((at, kept as u64));
    }
    for (at, size) in new_sizes {
        let bytes = elf.get_mut(at..).ok_or(VmlinuxError::BadProgramHeaders)?;
        let (ph, _) = pod::from_bytes_mut::<ProgramHeader64<Le>>(bytes).map_err(bad)?;
        if ph.p_type.get(Le) == PT_LOAD {
            ph.p_filesz.set(Le, size);
        }
    }
    let sections_after = usize::try_from(shoff).is_ok_and(|s| s >= keep);
    if shoff == 0 || sections_after {
        let (header, _) = pod::from_bytes_mut::<FileHeader64<Le>>(elf).map_err(bad)?;
        header.e_shoff.set(Le, 0);
        header.e_shnum.set(Le, 0);
        header.e_shstrndx.set(Le, 0);
        elf.truncate(keep);
    }
    Ok(())
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

    /// An ELF64 with a PVH note and two PT_LOADs, `a` at 16 MiB and `b` at
    /// 32 MiB, each 0x100 bytes larger in memory than in the file.
    fn elf_with_loads(a: &[u8], b: &[u8]) -> Vec<u8> {
        let mem = |d: &[u8]| d.len() as u64 + 0x100;
        crate::build::bootcheck::tests::elf_exec(
            b"Xen",
            18,
            &[(0x100_0000, a, mem(a)), (0x200_0000, b, mem(b))],
        )
    }

    /// Guest memory as a loader fills it from `elf`'s PT_LOADs: file bytes,
    /// then zeros up to `p_memsz`.
    fn loaded(elf: &[u8]) -> Vec<(u64, Vec<u8>)> {
        use object::read::elf::{FileHeader, ProgramHeader};
        let h = object::elf::FileHeader64::<object::Endianness>::parse(elf).unwrap();
        let e = h.endian().unwrap();
        h.program_headers(e, elf)
            .unwrap()
            .iter()
            .filter(|p| p.p_type(e) == object::elf::PT_LOAD)
            .map(|p| {
                let mut m = p.data(e, elf).unwrap().to_vec();
                m.resize(usize::try_from(p.p_memsz(e)).unwrap(), 0);
                (p.p_paddr(e), m)
            })
            .collect()
    }

    /// Points the section header table at 64 bytes appended to `elf`.
    fn with_section_headers_at_end(mut elf: Vec<u8>) -> Vec<u8> {
        let at = elf.len() as u64;
        elf.extend_from_slice(&[0u8; 64]);
        elf[0x28..0x30].copy_from_slice(&at.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn trailing_zeros_leave_the_file_and_memory_stays_the_same() {
        let mut a = vec![0x90u8; 5000];
        a[100] = 0; // a zero inside the data stays
        a.extend_from_slice(&[0u8; 9000]);
        let mut b = vec![5u8; 10];
        b.extend_from_slice(&[0u8; 3000]);
        let elf = with_section_headers_at_end(elf_with_loads(&a, &b));
        let mut trimmed = elf.clone();
        trim_zeros(&mut trimmed).unwrap();
        assert_eq!(loaded(&trimmed), loaded(&elf));
        // `b` comes last: the file ends where its data does.
        let b_off = elf.windows(13).rposition(|w| w == &b[..13]).unwrap();
        assert_eq!(trimmed.len(), b_off + 10);
        // `a` lost its zeros too: 14000 bytes of it are 5000 in the file.
        let a_filesz = u64::from_le_bytes(trimmed[0x40 + 56 + 0x20..][..8].try_into().unwrap());
        assert_eq!(a_filesz, 5000);
        // The section headers went with the tail.
        assert_eq!(&trimmed[0x28..0x30], &[0; 8]);
        assert_eq!(&trimmed[0x3c..0x3e], &[0; 2]);
        // The PVH note is still found.
        let pvh = crate::build::bootcheck::check_pvh(trimmed.as_slice());
        assert!(pvh.is_ok(), "{pvh:?}");
        // Trimming twice changes nothing more.
        let mut again = trimmed.clone();
        trim_zeros(&mut again).unwrap();
        assert_eq!(again, trimmed);
    }

    #[test]
    fn an_all_zero_segment_keeps_its_offset_in_the_file() {
        let elf = elf_with_loads(&[7u8; 100], &[0u8; 100]);
        let mut trimmed = elf.clone();
        trim_zeros(&mut trimmed).unwrap();
        assert_eq!(loaded(&trimmed), loaded(&elf));
        let pvh = crate::build::bootcheck::check_pvh(trimmed.as_slice());
        assert!(pvh.is_ok(), "{pvh:?}");
    }

    #[test]
    fn section_headers_inside_the_kept_bytes_keep_the_file_whole() {
        let elf = elf_with_loads(&[7u8; 100], &[0u8; 100]);
        let mut inside = elf.clone();
        inside[0x28..0x30].copy_from_slice(&0x40u64.to_le_bytes());
        inside[0x3c..0x3e].copy_from_slice(&1u16.to_le_bytes());
        let mut trimmed = inside.clone();
        trim_zeros(&mut trimmed).unwrap();
        assert_eq!(trimmed.len(), inside.len());
        assert_eq!(loaded(&trimmed), loaded(&inside));
    }

    #[test]
    fn program_headers_outside_the_file_are_damage() {
        let elf = elf_with_loads(&[7u8; 100], &[1u8; 100]);
        let mut far = elf.clone();
        far[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            trim_zeros(&mut far),
            Err(VmlinuxError::BadProgramHeaders)
        ));
        // The last PT_LOAD's p_filesz (third header, +0x20) past the end.
        let mut long = elf.clone();
        let at = 0x40 + 2 * 56 + 0x20;
        long[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            trim_zeros(&mut long),
            Err(VmlinuxError::BadProgramHeaders)
        ));
        let mut short = elf[..0x30].to_vec();
        assert!(matches!(
            trim_zeros(&mut short),
            Err(VmlinuxError::BadProgramHeaders)
        ));
    }
}
