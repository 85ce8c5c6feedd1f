//! `kiln inspect` on a GPT disk image: partitions and the files of its EFI
//! system partitions (through the FAT checks). The harness rewrites the
//! CRCs of both GPT headers and their partition arrays, so mutations reach
//! past the CRC checks into the partition entries and the ESP.
#![no_main]

use kiln_fuzz::inspect_file;
use libfuzzer_sys::fuzz_target;

const SECTOR: usize = 512;

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

/// Rewrites the partition-array and header CRCs of a header at sector
/// `lba`, the way the gpt crate checks them (the header CRC over its first
/// 92 bytes, whatever its size field says).
fn fix_header(d: &mut [u8], lba: usize) -> Option<()> {
    let h = lba.checked_mul(SECTOR)?;
    if d.get(h..h + 8)? != b"EFI PART" {
        return None;
    }
    let entries = usize::try_from(u64_at(d, h + 72)?)
        .ok()?
        .checked_mul(SECTOR)?;
    let count = usize::try_from(u32_at(d, h + 80)?).ok()?;
    let entry_size = usize::try_from(u32_at(d, h + 84)?).ok()?;
    let len = count.checked_mul(entry_size)?;
    if let Some(array) = d.get(entries..entries.checked_add(len)?) {
        let crc = crc32fast::hash(array);
        d.get_mut(h + 88..h + 92)?
            .copy_from_slice(&crc.to_le_bytes());
    }
    d.get_mut(h + 16..h + 20)?.fill(0);
    let crc = crc32fast::hash(d.get(h..h + 92)?);
    d.get_mut(h + 16..h + 20)?
        .copy_from_slice(&crc.to_le_bytes());
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let mut disk = data.to_vec();
    // The gpt crate finds the backup header at the file's last sector.
    fix_header(&mut disk, 1);
    if let Some(last) = (disk.len() / SECTOR).checked_sub(1) {
        fix_header(&mut disk, last);
    }
    inspect_file("disk.img", &disk);
});
