//! `disk.img`: a raw GPT disk image with one EFI system partition holding
//! the UKI at `\EFI\BOOT\BOOTX64.EFI`, the path UEFI firmware boots from
//! removable media (and from any disk without a boot entry). Written to a USB
//! stick or a disk with `dd`, it boots a UEFI x86-64 machine.
//!
//! Layout: protective MBR at LBA 0, primary GPT at LBA 1-33, the ESP from
//! 1 MiB, the backup GPT in the last MiB. The `gpt` crate writes the tables
//! (it takes the disk and partition GUIDs we give it), `fatfs` formats and
//! fills the ESP with a fixed clock. Every identifier is derived from the
//! UKI's hash and SOURCE_DATE_EPOCH, so the same inputs give the same bytes.

use super::{io_err, round_up, write_atomically, OutputError};
use chrono::{Datelike, Timelike};
use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions, TimeProvider};
use gpt::partition::Partition;
use gpt::partition_types;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::path::Path;

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// The ESP starts at 1 MiB, the alignment partitioning tools use.
const ESP_START: u64 = MIB;
/// Room after the ESP for the backup partition table (33 sectors), keeping
/// the disk a whole number of MiB.
const TAIL: u64 = MIB;
/// The UEFI specification asks for FAT32 on a fixed disk's system partition
/// (FAT12/16 only on removable media), and some firmware holds to it; FAT32
/// needs at least 65525 clusters, about 33 MiB with 512-byte clusters, so
/// the ESP never gets smaller than this.
const MIN_ESP: u64 = 40 * MIB;
/// Where the UKI lives in the ESP: the removable-media boot path for x86-64.
pub const BOOT_DIRS: [&str; 2] = ["EFI", "BOOT"];
pub const BOOT_FILE: &str = "BOOTX64.EFI";
const ESP_NAME: &str = "EFI System Partition";
const VOLUME_LABEL: [u8; 11] = *b"KILN-ESP   ";

/// A GPT disk image as `kiln inspect` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiskListing {
    pub disk_guid: String,
    pub sector_size: u64,
    pub sectors: u64,
    /// Both GPT headers (and their partition arrays) have valid CRCs.
    pub primary_valid: bool,
    pub backup_valid: bool,
    pub partitions: Vec<PartitionListing>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionListing {
    /// 1-based, as `/dev/sdX<number>`.
    pub number: u32,
    pub type_guid: String,
    pub type_name: String,
    pub guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
    /// For an EFI system partition: its FAT type, e.g. "FAT32".
    pub filesystem: Option<String>,
    /// For an EFI system partition: every file in it.
    pub files: Vec<EspFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EspFile {
    /// Relative to the partition's root, with `/` separators.
    pub path: String,
    pub size: u64,
}

/// The ESP size for a UKI of `efi_len` bytes: the UKI plus 10% and 2 MiB
/// for the FAT and a later, slightly larger UKI, in whole MiB.
pub fn esp_size(efi_len: u64) -> u64 {
    round_up(efi_len + efi_len / 10 + 2 * MIB, MIB).max(MIN_ESP)
}

/// Builds `out`, a GPT disk image whose ESP boots the UKI `efi`. `epoch`
/// (SOURCE_DATE_EPOCH) dates every FAT entry and, with the UKI's hash,
/// seeds the disk and partition GUIDs and the FAT volume id.
pub fn build_disk(efi: &Path, epoch: u64, out: &Path) -> Result<(), OutputError> {
    let uki = std::fs::read(efi).map_err(io_err(format!("read {}", efi.display())))?;
    let ids = Ids::derive(&Sha256::digest(&uki), epoch);
    let esp_bytes = esp_size(uki.len() as u64);
    let esp = format_esp(&uki, esp_bytes, ids.volume, epoch)?;
    let total = ESP_START + esp_bytes + TAIL;
    let sectors = total / SECTOR;

    write_atomically(out, |file| {
        let write_err = || io_err(format!("write {}", out.display()));
        file.set_len(total).map_err(write_err())?;
        // The protective MBR covers the whole disk (capped at what 32 bits hold).
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX))
            .overwrite_lba0(file)
            .map_err(|source| OutputError::Mbr {
                path: out.to_path_buf(),
                source,
            })?;
        let gpt_err = |source| OutputError::Gpt {
            path: out.to_path_buf(),
            source,
        };
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .create_from_device(&mut *file, Some(ids.disk))
            .map_err(gpt_err)?;
        let esp_part = Partition {
            part_type_guid: partition_types::EFI,
            part_guid: ids.esp,
            first_lba: ESP_START / SECTOR,
            last_lba: (ESP_START + esp_bytes) / SECTOR - 1,
            flags: 0,
            name: ESP_NAME.to_string(),
        };
        disk.update_partitions(BTreeMap::from([(1, esp_part)]))
            .map_err(gpt_err)?;
        disk.write().map_err(gpt_err)?;
        file.seek(SeekFrom::Start(ESP_START)).map_err(write_err())?;
        file.write_all(&esp).map_err(write_err())
    })
}

/// The identifiers of a disk image, all derived from its content.
struct Ids {
    disk: uuid::Uuid,
    esp: uuid::Uuid,
    volume: u32,
}

impl Ids {
    fn derive(efi_sha256: &[u8], epoch: u64) -> Ids {
        let hash = |what: &str| {
            let mut h = Sha256::new();
            h.update(b"kiln disk.img ");
            h.update(what.as_bytes());
            h.update(efi_sha256);
            h.update(epoch.to_le_bytes());
            h.finalize()
        };
        // Hash-derived GUIDs are "custom" (version 8) in RFC 9562's terms.
        let guid = |what: &str| {
            let bytes = hash(what).as_slice().first_chunk::<16>().copied();
            uuid::Builder::from_custom_bytes(bytes.unwrap_or_default()).into_uuid()
        };
        let volume = hash("volume")
            .as_slice()
            .first_chunk::<4>()
            .map_or(0, |b| u32::from_le_bytes(*b));
        Ids {
            disk: guid("disk"),
            esp: guid("esp"),
            volume,
        }
    }
}

/// The clock fatfs stamps every entry with: SOURCE_DATE_EPOCH.
#[derive(Debug)]
struct FixedTime(fatfs::DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// `epoch` (seconds since 1970, UTC) as a FAT date and time, clamped to
/// what FAT can store (1980 to 2107).
// Every field is in range once clamped: year in 1980..=2107.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn fat_time(epoch: u64) -> fatfs::DateTime {
    const FAT_FIRST: i64 = 315_532_800; // 1980-01-01T00:00:00Z
    const FAT_LAST: i64 = 4_354_819_199; // 2107-12-31T23:59:59Z
    let secs = i64::try_from(epoch)
        .unwrap_or(i64::MAX)
        .clamp(FAT_FIRST, FAT_LAST);
    let t = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    fatfs::DateTime {
        date: fatfs::Date {
            year: t.year() as u16,
            month: t.month() as u16,
            day: t.day() as u16,
        },
        time: fatfs::Time {
            hour: t.hour() as u16,
            min: t.minute() as u16,
            sec: t.second() as u16,
            millis: 0,
        },
    }
}

fn fat_err(what: &str) -> impl FnOnce(std::io::Error) -> OutputError {
    let what = what.to_string();
    move |source| OutputError::Fat { what, source }
}

/// A FAT volume of `size` bytes holding `efi` at `\EFI\BOOT\BOOTX64.EFI`.
/// FAT32 when the volume has enough clusters for it (about 33 MiB with
/// 512-byte clusters), else FAT16, which UEFI firmware reads as well.
fn format_esp(efi: &[u8], size: u64, volume_id: u32, epoch: u64) -> Result<Vec<u8>, OutputError> {
    let len = usize::try_from(size).map_err(|_| OutputError::TooLarge {
        what: "the EFI system partition".into(),
        size,
    })?;
    let mut esp = Cursor::new(vec![0u8; len]);
    let options = |fat_type| {
        FormatVolumeOptions::new()
            .fat_type(fat_type)
            .volume_id(volume_id)
            .volume_label(VOLUME_LABEL)
    };
    // The FAT32 hint picks small clusters, and fatfs settles on FAT32 or
    // FAT16 by the cluster count; the FAT16 hint covers the rare sizes where
    // neither fits those clusters.
    if fatfs::format_volume(&mut esp, options(FatType::Fat32)).is_err() {
        esp.set_position(0);
        fatfs::format_volume(&mut esp, options(FatType::Fat16))
            .map_err(fat_err("format the EFI system partition"))?;
    }
    esp.set_position(0);

    // fatfs 0.3 takes its clock as `&'static`; one small leak per disk image
    // built is the price of a clock set at run time.
    let clock: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(epoch))));
    let fs = FileSystem::new(&mut esp, FsOptions::new().time_provider(clock))
        .map_err(fat_err("mount the new EFI system partition"))?;
    {
        let mut dir = fs.root_dir();
        for name in BOOT_DIRS {
            dir = dir.create_dir(name).map_err(fat_err(&format!(
                "create {name} in the EFI system partition"
            )))?;
        }
        let mut file = dir
            .create_file(BOOT_FILE)
            .map_err(fat_err("create BOOTX64.EFI in the EFI system partition"))?;
        file.write_all(efi)
            .map_err(fat_err("copy the UKI into the EFI system partition"))?;
        file.flush()
            .map_err(fat_err("copy the UKI into the EFI system partition"))?;
    }
    fs.unmount()
        .map_err(fat_err("finish the EFI system partition"))?;
    let mut esp = esp.into_inner();
    if fat32_root_dotdot_fix(&mut esp).is_none() {
        return Err(OutputError::Fat {
            what: "finish the EFI system partition".into(),
            source: std::io::Error::other("the new FAT volume's layout is not as written"),
        });
    }
    Ok(esp)
}

/// Sets the `..` entry of each directory in the root to cluster 0, as FAT
/// requires (0 means "the root"). fatfs 0.3 points it at the FAT32 root's
/// cluster instead, which fsck.fat and Windows' chkdsk reject; FAT12/16
/// volumes are left as they are. Hand-written because fatfs offers no way to
/// edit a raw directory entry. `None` if the volume is not as fatfs wrote it.
fn fat32_root_dotdot_fix(esp: &mut [u8]) -> Option<()> {
    let u16_at = |esp: &[u8], at: usize| -> Option<u32> {
        Some(u32::from(u16::from_le_bytes(
            esp.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    let u32_at = |esp: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(esp.get(at..at + 4)?.try_into().ok()?))
    };
    // BPB: FAT16 volumes have a 16-bit FAT size; FAT32 ones set it to 0.
    if u16_at(esp, 22)? != 0 {
        return Some(());
    }
    let bytes_per_sector = u16_at(esp, 11)? as usize;
    let cluster = bytes_per_sector * usize::from(*esp.get(13)?);
    let reserved = u16_at(esp, 14)? as usize;
    let fats = usize::from(*esp.get(16)?);
    let fat_sectors = u32_at(esp, 36)? as usize;
    let root = u32_at(esp, 44)? as usize;
    let data_start = (reserved + fats * fat_sectors) * bytes_per_sector;
    let cluster_at = |c: usize| Some(data_start + c.checked_sub(2)? * cluster);
    // kiln's root holds one directory, so its first cluster is the whole of it.
    let root_at = cluster_at(root)?;
    for entry in 0..cluster / 32 {
        let e = root_at + entry * 32;
        let (first, attr) = (*esp.get(e)?, *esp.get(e + 11)?);
        if first == 0 {
            break;
        }
        const DIRECTORY: u8 = 0x10;
        const LONG_NAME: u8 = 0x0f;
        if first == 0xe5 || attr == LONG_NAME || attr & DIRECTORY == 0 {
            continue;
        }
        let child = (u16_at(esp, e + 20)? << 16 | u16_at(esp, e + 26)?) as usize;
        let dotdot = cluster_at(child)? + 32;
        if esp.get(dotdot..dotdot + 11)? != b"..         " {
            return None;
        }
        esp.get_mut(dotdot + 20..dotdot + 22)?.fill(0);
        esp.get_mut(dotdot + 26..dotdot + 28)?.fill(0);
    }
    Some(())
}

/// The partitions of a GPT disk image, and the files of its EFI system
/// partitions. Reading goes through the `gpt` crate, which checks both
/// headers' CRCs.
pub fn list_disk(path: &Path) -> Result<DiskListing, OutputError> {
    check_entry_size(path)?;
    let disk = gpt::GptConfig::new()
        .writable(false)
        .open(path)
        .map_err(|source| OutputError::NotGpt {
            path: path.to_path_buf(),
            source,
        })?;
    let size = std::fs::metadata(path)
        .map_err(io_err(format!("read {}", path.display())))?
        .len();
    let mut file = std::fs::File::open(path).map_err(io_err(format!("read {}", path.display())))?;
    let mut partitions = Vec::new();
    for (&number, p) in disk.partitions().iter().filter(|(_, p)| p.is_used()) {
        let is_esp = p.part_type_guid == partition_types::EFI;
        let (filesystem, files) = if is_esp {
            let (fat, files) = esp_files(&mut file, p, path)?;
            (Some(fat), files)
        } else {
            (None, Vec::new())
        };
        partitions.push(PartitionListing {
            number,
            type_guid: p.part_type_guid.guid.to_string().to_uppercase(),
            type_name: type_name(&p.part_type_guid).to_string(),
            guid: p.part_guid.to_string().to_uppercase(),
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            name: p.name.clone(),
            filesystem,
            files,
        });
    }
    Ok(DiskListing {
        disk_guid: disk.guid().to_string().to_uppercase(),
        sector_size: SECTOR,
        sectors: size / SECTOR,
        primary_valid: disk.primary_header().is_ok(),
        backup_valid: disk.backup_header().is_ok(),
        partitions,
    })
}

/// Refuses partition entries of another size than 128 bytes, which the
/// gpt crate asserts (a panic, in release builds too). It reads the primary
/// header, or the backup, at the file's last sector, when the primary's
/// CRC is wrong: so is this.
fn check_entry_size(path: &Path) -> Result<(), OutputError> {
    use gpt::disk::LogicalBlockSize::Lb512;
    use gpt::header::read_header_from_arbitrary_device as read_header;
    let what = || format!("read {}", path.display());
    let mut file = std::fs::File::open(path).map_err(io_err(what()))?;
    let header = match read_header(&mut file, Lb512) {
        Ok(h) => Some(h),
        Err(_) => {
            let len = file.metadata().map_err(io_err(what()))?.len();
            // A copy with the last sector as its LBA 1, where read_header looks.
            let mut copy = [0u8; 1024];
            if len >= 3 * SECTOR {
                file.seek(SeekFrom::Start((len / SECTOR - 1) * SECTOR))
                    .map_err(io_err(what()))?;
                file.read_exact(&mut copy[512..]).map_err(io_err(what()))?;
            }
            read_header(&mut Cursor::new(copy), Lb512).ok()
        }
    };
    match header {
        Some(h) if h.part_size != 128 => Err(OutputError::GptEntrySize {
            path: path.to_path_buf(),
            size: h.part_size,
        }),
        _ => Ok(()),
    }
}

fn type_name(t: &gpt::partition_types::Type) -> &'static str {
    if *t == partition_types::EFI {
        "EFI System"
    } else if *t == partition_types::LINUX_FS {
        "Linux filesystem"
    } else if *t == partition_types::BASIC {
        "Microsoft basic data"
    } else {
        "unknown"
    }
}

/// The FAT type and every file of a FAT partition, read into memory (an
/// ESP is tens of MiB) because fatfs wants a writable stream.
fn esp_files(
    file: &mut std::fs::File,
    p: &Partition,
    path: &Path,
) -> Result<(String, Vec<EspFile>), OutputError> {
    let what = format!("read partition {} of {}", p.name, path.display());
    let start = p.first_lba.saturating_mul(SECTOR);
    let len = p
        .last_lba
        .saturating_sub(p.first_lba)
        .saturating_add(1)
        .saturating_mul(SECTOR);
    let mut data = Vec::new();
    file.seek(SeekFrom::Start(start)).map_err(io_err(&what))?;
    file.take(len)
        .read_to_end(&mut data)
        .map_err(io_err(&what))?;
    let listing =
        super::fat::list(data).map_err(|source| OutputError::FatVolume { what, source })?;
    Ok((listing.fat_type.to_string(), listing.files))
}

impl fmt::Display for DiskListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.sectors * self.sector_size;
        writeln!(
            f,
            "GPT disk image, {} ({} sectors of {} bytes), disk GUID {}",
            crate::progress::human_bytes(bytes),
            self.sectors,
            self.sector_size,
            self.disk_guid
        )?;
        let state = |ok: bool| if ok { "valid" } else { "INVALID" };
        writeln!(
            f,
            "  primary table {}, backup table {}",
            state(self.primary_valid),
            state(self.backup_valid)
        )?;
        for p in &self.partitions {
            // The LBAs come from the disk: a damaged table may hold anything.
            let size = p
                .last_lba
                .saturating_add(1)
                .saturating_sub(p.first_lba)
                .saturating_mul(self.sector_size);
            writeln!(
                f,
                "  partition {}: {} ({}), LBA {}-{} ({}), GUID {}, name \"{}\"",
                p.number,
                p.type_name,
                p.type_guid,
                p.first_lba,
                p.last_lba,
                crate::progress::human_bytes(size),
                p.guid,
                p.name
            )?;
            if let Some(fs) = &p.filesystem {
                writeln!(f, "    {fs} file system:")?;
            }
            for file in &p.files {
                writeln!(f, "    {:<28} {:>12}", file.path, file.size)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
// The images here are a few MiB: their sizes and offsets fit every width.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    /// Fails loudly when a cross-checking tool is missing: these tests never
    /// pass by skipping.
    fn tool(name: &str, package: &str) -> Command {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(name))
            .find(|p| p.is_file());
        let path = found.unwrap_or_else(|| {
            panic!("{name} is missing: run tests/setup (apt-get install -y {package})")
        });
        Command::new(path)
    }

    struct Built {
        dir: tempfile::TempDir,
        efi: Vec<u8>,
        disk: PathBuf,
    }

    /// A disk image from a stand-in UKI of `len` bytes (its content does not
    /// matter to the disk writer).
    fn build(len: usize, seed: u8, epoch: u64) -> Built {
        let dir = tempfile::tempdir().unwrap();
        let efi: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ seed).collect();
        std::fs::write(dir.path().join("kiln.efi"), &efi).unwrap();
        let disk = dir.path().join("disk.img");
        build_disk(&dir.path().join("kiln.efi"), epoch, &disk).unwrap();
        Built { dir, efi, disk }
    }

    fn esp_bytes(b: &Built) -> Vec<u8> {
        let data = std::fs::read(&b.disk).unwrap();
        let size = esp_size(b.efi.len() as u64) as usize;
        data[ESP_START as usize..ESP_START as usize + size].to_vec()
    }

    #[test]
    fn gpt_and_esp_hold_the_uki() {
        let b = build(3 * MIB as usize + 123, 1, 1_700_000_000);
        let esp = esp_size(b.efi.len() as u64);
        let size = std::fs::metadata(&b.disk).unwrap().len();
        assert_eq!(size, ESP_START + esp + TAIL);
        assert_eq!(size % MIB, 0);

        let l = list_disk(&b.disk).unwrap();
        assert!(l.primary_valid && l.backup_valid, "{l}");
        assert_eq!(l.sectors, size / SECTOR);
        assert_eq!(l.partitions.len(), 1);
        let p = &l.partitions[0];
        assert_eq!(p.type_guid, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!((p.first_lba, p.last_lba), (2048, 2048 + esp / SECTOR - 1));
        assert_eq!(p.name, "EFI System Partition");
        assert_eq!(
            p.filesystem.as_deref(),
            Some("FAT32"),
            "a fixed disk's ESP must be FAT32 by the UEFI spec"
        );
        assert_eq!(
            p.files,
            [EspFile {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                size: b.efi.len() as u64
            }]
        );

        // Read the file back through fatfs, with its dates.
        let fs = FileSystem::new(Cursor::new(esp_bytes(&b)), FsOptions::new()).unwrap();
        let mut f = fs.root_dir().open_file("EFI/BOOT/BOOTX64.EFI").unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert!(back == b.efi, "BOOTX64.EFI differs from the UKI");
        let entry = fs
            .root_dir()
            .open_dir("EFI/BOOT")
            .unwrap()
            .iter()
            .map(Result::unwrap)
            .find(|e| e.short_file_name_as_bytes() == b"BOOTX64.EFI")
            .unwrap();
        let m = entry.modified();
        assert_eq!((m.date.year, m.date.month, m.date.day), (2023, 11, 14));
        assert_eq!((m.time.hour, m.time.min, m.time.sec), (22, 13, 20));
        assert_eq!(entry.created().date, m.date);
        assert_eq!(fs.volume_label_as_bytes(), b"KILN-ESP");
    }

    #[test]
    fn partitioning_tools_accept_the_disk() {
        let b = build(2 * MIB as usize, 2, 0);
        let l = list_disk(&b.disk).unwrap();
        let p = &l.partitions[0];

        let out = tool("sgdisk", "gdisk")
            .arg("-v")
            .arg(&b.disk)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("No problems found"),
            "{text}"
        );

        let out = tool("sfdisk", "fdisk")
            .arg("--dump")
            .arg(&b.disk)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("label: gpt"), "{text}");
        assert!(
            text.contains(&format!("label-id: {}", l.disk_guid)),
            "{text}"
        );
        let expect = format!(
            "start=        2048, size={:>12}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={}, name=\"EFI System Partition\"",
            p.last_lba - p.first_lba + 1,
            p.guid
        );
        assert!(text.contains(&expect), "{text}\nexpected: {expect}");
    }

    #[test]
    fn fat_tools_accept_the_esp() {
        let b = build(5 * MIB as usize + 7, 3, 951_782_400);
        let image = format!("{}@@1M", b.disk.display());
        let out = tool("mtype", "mtools")
            .args(["-i", &image, "::/EFI/BOOT/BOOTX64.EFI"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == b.efi, "mtype reads other bytes than the UKI");
        let out = tool("mdir", "mtools")
            .args(["-i", &image, "::/EFI/BOOT"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("BOOTX64  EFI") && text.contains("2000-02-29"),
            "{text}"
        );

        let esp = b.dir.path().join("esp.img");
        std::fs::write(&esp, esp_bytes(&b)).unwrap();
        let out = tool("fsck.fat", "dosfstools")
            .args(["-n", "-v"])
            .arg(&esp)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "fsck.fat finds errors:\n{text}");
        assert!(
            !text.contains("FSCK") && !text.contains("Expected"),
            "{text}"
        );
    }

    #[test]
    fn a_large_uki_gets_fat32() {
        let b = build(40 * MIB as usize, 4, 0);
        let l = list_disk(&b.disk).unwrap();
        assert_eq!(l.partitions[0].filesystem.as_deref(), Some("FAT32"));
        assert_eq!(l.partitions[0].files[0].size, b.efi.len() as u64);
        let esp = b.dir.path().join("esp.img");
        std::fs::write(&esp, esp_bytes(&b)).unwrap();
        let out = tool("fsck.fat", "dosfstools")
            .arg("-n")
            .arg(&esp)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let fs = FileSystem::new(Cursor::new(esp_bytes(&b)), FsOptions::new()).unwrap();
        let mut back = Vec::new();
        fs.root_dir()
            .open_file("EFI/BOOT/BOOTX64.EFI")
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == b.efi);
    }

    #[test]
    fn rebuilds_are_identical_and_follow_their_inputs() {
        let a = build(MIB as usize, 5, 1_234_567_891);
        let b = build(MIB as usize, 5, 1_234_567_891);
        let (da, db) = (
            std::fs::read(&a.disk).unwrap(),
            std::fs::read(&b.disk).unwrap(),
        );
        assert!(da == db, "two builds of the same UKI differ");

        let later = build(MIB as usize, 5, 1_234_567_893);
        assert!(
            std::fs::read(&later.disk).unwrap() != da,
            "the epoch changes the image"
        );
        let other = build(MIB as usize, 6, 1_234_567_891);
        let (la, lo, ll) = (
            list_disk(&a.disk).unwrap(),
            list_disk(&other.disk).unwrap(),
            list_disk(&later.disk).unwrap(),
        );
        assert_ne!(la.disk_guid, lo.disk_guid, "another UKI, another disk GUID");
        assert_ne!(
            la.disk_guid, ll.disk_guid,
            "another epoch, another disk GUID"
        );
        assert_ne!(la.partitions[0].guid, lo.partitions[0].guid);
        assert_ne!(la.disk_guid, la.partitions[0].guid);
    }

    #[test]
    fn fat_dates_follow_the_epoch() {
        let t = |e| {
            let d = fat_time(e);
            (
                d.date.year,
                d.date.month,
                d.date.day,
                d.time.hour,
                d.time.min,
                d.time.sec,
            )
        };
        assert_eq!(t(0), (1980, 1, 1, 0, 0, 0));
        assert_eq!(t(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(t(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(t(4_102_444_800), (2100, 1, 1, 0, 0, 0));
        assert_eq!(t(1 << 40), (2107, 12, 31, 23, 59, 59));
        assert_eq!(t(u64::MAX), (2107, 12, 31, 23, 59, 59));
    }

    #[test]
    fn other_files_are_not_disks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.img");
        std::fs::write(&p, vec![0u8; 64 * 1024]).unwrap();
        let e = list_disk(&p).unwrap_err().to_string();
        assert!(e.contains("is not a GPT disk image"), "{e}");
    }

    #[test]
    fn describe_lists_a_disk() {
        let b = build(MIB as usize, 7, 0);
        let text = crate::output::describe(&b.disk).unwrap().unwrap();
        let mib = (ESP_START + esp_size(b.efi.len() as u64) + TAIL) / MIB;
        assert!(
            text.starts_with(&format!("GPT disk image, {mib}.0 MiB")),
            "{text}"
        );
        assert!(
            text.contains("primary table valid, backup table valid"),
            "{text}"
        );
        assert!(text.contains("partition 1: EFI System"), "{text}");
        assert!(text.contains("EFI/BOOT/BOOTX64.EFI"), "{text}");
    }

    /// Found by the `gpt` fuzz target: the gpt crate asserts 128-byte
    /// partition entries, so a disk with others panicked `kiln inspect`.
    #[test]
    fn other_partition_entry_sizes_are_refused() {
        let b = build(MIB as usize, 5, 0);
        let mut disk = std::fs::read(&b.disk).unwrap();
        let len = disk.len();
        for header in [SECTOR as usize, len - SECTOR as usize] {
            disk[header + 84..header + 88].copy_from_slice(&256u32.to_le_bytes());
            disk[header + 16..header + 20].fill(0);
            let crc = crc32fast::hash(&disk[header..header + 92]);
            disk[header + 16..header + 20].copy_from_slice(&crc.to_le_bytes());
        }
        std::fs::write(&b.disk, &disk).unwrap();
        let e = list_disk(&b.disk).unwrap_err().to_string();
        assert!(e.contains("has GPT partition entries of 256 bytes"), "{e}");
        // With the primary header damaged, the backup's entries count.
        disk[SECTOR as usize] ^= 0xff;
        std::fs::write(&b.disk, &disk).unwrap();
        let e = list_disk(&b.disk).unwrap_err().to_string();
        assert!(e.contains("has GPT partition entries of 256 bytes"), "{e}");
    }

    /// A corrupted ESP used to panic fatfs in debug builds (an overflow at
    /// its boot_sector.rs:311 with byte 0x100027 = 0xff, one at fs.rs:448
    /// with root cluster 0): `kiln inspect` reports it instead.
    #[test]
    fn a_corrupted_esp_is_an_error() {
        let b = build(MIB as usize, 3, 0);
        let good = std::fs::read(&b.disk).unwrap();
        let root_cluster = ESP_START as usize + 44;
        for (at, bytes) in [(0x100027, &[0xff][..]), (root_cluster, &[0, 0, 0, 0][..])] {
            let mut bad = good.clone();
            bad[at..at + bytes.len()].copy_from_slice(bytes);
            std::fs::write(&b.disk, &bad).unwrap();
            let e = kiln_abi::error::Chain::new(&list_disk(&b.disk).unwrap_err()).to_string();
            assert!(
                e.starts_with("Cannot read partition EFI System Partition of")
                    && e.contains("is not a valid FAT boot sector"),
                "{e}"
            );
            let mut out = Vec::new();
            crate::inspect::inspect(&b.disk, true, &mut out).unwrap_err();
            crate::inspect::inspect(&b.disk, false, &mut out).unwrap_err();
        }
    }
}
