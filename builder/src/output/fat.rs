//! The files of a FAT volume (an EFI system partition), for `kiln inspect`.
//!
//! The volume comes from a disk image kiln may not have written, or one
//! damaged since. fatfs 0.3 trusts the boot sector, the allocation table
//! and the directory entries: its arithmetic on them overflows (a panic in a
//! debug build, reads at wrapped offsets in a release one) for, e.g., a
//! sectors-per-FAT field of 0xff000000 or a root or directory cluster below
//! 2, and it follows a looping cluster chain or directory tree for ever. So
//! [`list`] first checks, with checked arithmetic, every value fatfs computes
//! with on the way to a listing, and hands fatfs only a volume that passes.

use super::disk::EspFile;
use fatfs::{FatType, FileSystem, FsOptions};
use std::collections::{HashSet, VecDeque};
use std::io::Cursor;

/// Directories deeper than this are refused: an ESP is a few levels deep,
/// and the listing recurses once per level.
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("its boot sector is not a valid FAT boot sector: {0}")]
    BootSector(&'static str),
    #[error("its allocation table links cluster {cluster} to {next}, outside the volume's clusters 2 to {last}")]
    LinkOutOfRange { cluster: u32, next: u32, last: u32 },
    #[error("its allocation table has a chain that loops back to cluster {cluster}")]
    ChainLoops { cluster: u32 },
    #[error(
        "directory {name:?} starts at cluster {cluster}, outside the volume's clusters 2 to {last}"
    )]
    DirectoryOutOfRange {
        name: String,
        cluster: u32,
        last: u32,
    },
    #[error("directory {name:?} is also reachable by another path (its directories loop)")]
    DirectoryLinkedTwice { name: String },
    #[error("directory {dir:?} has an entry without a name (its 8.3 name is all spaces)")]
    UnnamedEntry { dir: String },
    #[error("its directories nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("fatfs cannot read it")]
    Read(#[source] std::io::Error),
}

/// A FAT volume's type ("FAT12", "FAT16" or "FAT32") and every file in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatListing {
    pub fat_type: &'static str,
    pub files: Vec<EspFile>,
}

/// Lists the files of the FAT volume `data`, checked first (see the module
/// documentation).
pub fn list(data: Vec<u8>) -> Result<FatListing, FatError> {
    check(&data)?;
    let fs = FileSystem::new(Cursor::new(data), FsOptions::new()).map_err(FatError::Read)?;
    let fat_type = match fs.fat_type() {
        FatType::Fat12 => "FAT12",
        FatType::Fat16 => "FAT16",
        FatType::Fat32 => "FAT32",
    };
    let mut files = Vec::new();
    walk(fs.root_dir(), "", &mut files).map_err(FatError::Read)?;
    Ok(FatListing { fat_type, files })
}

fn walk<T: fatfs::ReadWriteSeek>(
    dir: fatfs::Dir<T>,
    prefix: &str,
    out: &mut Vec<EspFile>,
) -> std::io::Result<()> {
    for entry in dir.iter() {
        let entry = entry?;
        // 8.3 names only: see the fatfs features in Cargo.toml.
        let name = String::from_utf8_lossy(entry.short_file_name_as_bytes()).into_owned();
        if is_dot(entry.short_file_name_as_bytes()) {
            continue;
        }
        let path = format!("{prefix}{name}");
        if entry.is_dir() {
            walk(entry.to_dir(), &format!("{path}/"), out)?;
        } else {
            out.push(EspFile {
                path,
                size: entry.len(),
            });
        }
    }
    Ok(())
}

/// `.` and `..`, which the listing does not descend into.
fn is_dot(short_name: &[u8]) -> bool {
    short_name == b"." || short_name == b".."
}

/// The layout of a volume, from its boot sector.
#[derive(Debug)]
struct Geometry {
    fat_type: FatType,
    /// Clusters 2 to `clusters + 1` hold data.
    clusters: u32,
    cluster_size: usize,
    /// Byte offsets in the volume.
    fat_start: usize,
    fat_len: usize,
    data_start: usize,
    root: Root,
}

#[derive(Debug)]
enum Root {
    /// FAT12/16: a fixed region.
    Region { start: usize, len: usize },
    /// FAT32: a cluster chain.
    Cluster(u32),
}

/// Everything fatfs computes with while listing, checked the way it reads
/// it: the boot sector, the allocation table it reads, and every directory
/// the listing enters.
fn check(v: &[u8]) -> Result<(), FatError> {
    let g = geometry(v)?;
    let next = links(v, &g)?;
    check_tree(v, &g, &next)
}

fn u8_at(v: &[u8], at: usize) -> u8 {
    v.get(at).copied().unwrap_or(0)
}

fn u16_at(v: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([u8_at(v, at), u8_at(v, at + 1)])
}

fn u32_at(v: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([
        u8_at(v, at),
        u8_at(v, at + 1),
        u8_at(v, at + 2),
        u8_at(v, at + 3),
    ])
}

/// The boot sector's fields, checked in fatfs's order (its
/// `BiosParameterBlock::validate`), then what fatfs assumes without checking.
fn geometry(v: &[u8]) -> Result<Geometry, FatError> {
    use FatError::BootSector as Bad;
    if v.len() < 512 {
        return Err(Bad("the volume is shorter than one sector"));
    }
    if v.get(510..512) != Some(&[0x55, 0xaa][..]) {
        return Err(Bad("no boot signature"));
    }
    let bytes_per_sector = u32::from(u16_at(v, 11));
    let sectors_per_cluster = u32::from(u8_at(v, 13));
    let reserved = u32::from(u16_at(v, 14));
    let fats = u32::from(u8_at(v, 16));
    let root_entries = u32::from(u16_at(v, 17));
    let total_16 = u32::from(u16_at(v, 19));
    let fat_16 = u32::from(u16_at(v, 22));
    let total_32 = u32_at(v, 32);
    // FAT32 has no 16-bit FAT size; its extended fields follow.
    let is_fat32 = fat_16 == 0;
    let (fat_32, ext_flags, fs_version, root_cluster, fs_info, backup) = if is_fat32 {
        (
            u32_at(v, 36),
            u16_at(v, 40),
            u16_at(v, 42),
            u32_at(v, 44),
            u32::from(u16_at(v, 48)),
            u32::from(u16_at(v, 50)),
        )
    } else {
        (0, 0, 0, 0, 0, 0)
    };

    if !bytes_per_sector.is_power_of_two() || !(512..=4096).contains(&bytes_per_sector) {
        return Err(Bad("bytes per sector is not 512, 1024, 2048 or 4096"));
    }
    if !sectors_per_cluster.is_power_of_two() || sectors_per_cluster > 128 {
        return Err(Bad("sectors per cluster is not a power of two up to 128"));
    }
    if reserved == 0 {
        return Err(Bad("no reserved sectors"));
    }
    if fats == 0 {
        return Err(Bad("no FAT"));
    }
    if is_fat32 != (root_entries == 0) {
        return Err(Bad("the root directory size does not match the FAT type"));
    }
    if (is_fat32 && total_16 != 0) || (total_16 == 0) == (total_32 == 0) {
        return Err(Bad("the sector count is given twice or not at all"));
    }
    if is_fat32 && fat_32 == 0 {
        return Err(Bad("the FAT has no sectors"));
    }
    if fs_version != 0 {
        return Err(Bad("unknown FAT32 version"));
    }
    let total = if total_16 == 0 { total_32 } else { total_16 };
    let sectors_per_fat = if is_fat32 { fat_32 } else { fat_16 };
    // At most 65535 * 32 + 4095: no overflow.
    let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
    let first_data = fats
        .checked_mul(sectors_per_fat)
        .and_then(|f| f.checked_add(reserved))
        .and_then(|f| f.checked_add(root_sectors))
        .ok_or(Bad(
            "the FATs and root directory overflow the sector numbers",
        ))?;
    if total <= first_data {
        return Err(Bad("the volume has no room for data"));
    }
    if is_fat32 && (backup >= reserved || fs_info >= reserved) {
        return Err(Bad(
            "the backup boot sector or FSInfo is outside the reserved sectors",
        ));
    }
    let clusters = (total - first_data) / sectors_per_cluster;
    let fat_type = if clusters < 4085 {
        FatType::Fat12
    } else if clusters < 65525 {
        FatType::Fat16
    } else {
        FatType::Fat32
    };
    if is_fat32 != (fat_type == FatType::Fat32) {
        return Err(Bad("the cluster count does not match the FAT type"));
    }
    if clusters > 0x0fff_ffff {
        return Err(Bad("too many clusters"));
    }
    let bits = match fat_type {
        FatType::Fat12 => 12,
        FatType::Fat16 => 16,
        FatType::Fat32 => 32,
    };
    // fatfs counts the FAT's entries in 32 bits, less the two reserved ones.
    let fat_bytes = sectors_per_fat
        .checked_mul(bytes_per_sector)
        .ok_or(Bad("the FAT overflows the byte counts"))?;
    let entries = fat_bytes
        .checked_mul(8)
        .ok_or(Bad("the FAT overflows the byte counts"))?
        / bits;
    if entries < 2 + clusters {
        return Err(Bad("the FAT is too small for the volume's clusters"));
    }
    // Beyond fatfs: the volume must lie within its partition, so every
    // cluster fatfs reads is there.
    let size = u64::from(total) * u64::from(bytes_per_sector);
    if size > v.len() as u64 {
        return Err(Bad("the volume is larger than its partition"));
    }
    // With mirroring off (bit 7), fatfs reads the FAT bits 0-3 name.
    let active = if ext_flags & 0x80 != 0 {
        u32::from(ext_flags & 0x0f)
    } else {
        0
    };
    if active >= fats {
        return Err(Bad("the active FAT is not one of the volume's FATs"));
    }
    let last = clusters + 1;
    if is_fat32 && !(2..=last).contains(&root_cluster) {
        return Err(Bad("the root directory's cluster is outside the volume"));
    }
    // Every sector number below is under `total`, and `size` fits in the
    // slice's length: the byte offsets fit in usize.
    let bps = bytes_per_sector as usize;
    let root_start = (first_data - root_sectors) as usize * bps;
    Ok(Geometry {
        fat_type,
        clusters,
        cluster_size: sectors_per_cluster as usize * bps,
        fat_start: (reserved + active * sectors_per_fat) as usize * bps,
        fat_len: fat_bytes as usize,
        data_start: first_data as usize * bps,
        root: if is_fat32 {
            Root::Cluster(root_cluster)
        } else {
            Root::Region {
                start: root_start,
                len: root_sectors as usize * bps,
            }
        },
    })
}

/// What the allocation table says follows each data cluster (index
/// `cluster - 2`), decoded as fatfs decodes it; every link is checked to
/// name a data cluster, and no chain may loop.
fn links(v: &[u8], g: &Geometry) -> Result<Vec<Option<u32>>, FatError> {
    let fat = v
        .get(g.fat_start..g.fat_start + g.fat_len)
        .ok_or(FatError::BootSector("the FAT is outside the volume"))?;
    let last = g.clusters + 1;
    let mut next = Vec::with_capacity(g.clusters as usize);
    for cluster in 2..=last {
        let c = cluster as usize;
        let link = match g.fat_type {
            FatType::Fat12 => {
                let packed = u16_at(fat, c + c / 2);
                let value = if c % 2 == 0 {
                    packed & 0x0fff
                } else {
                    packed >> 4
                };
                match value {
                    0 | 0xff7..=0xfff => None,
                    n => Some(u32::from(n)),
                }
            }
            FatType::Fat16 => match u16_at(fat, c * 2) {
                0 | 0xfff7..=0xffff => None,
                n => Some(u32::from(n)),
            },
            FatType::Fat32 => match u32_at(fat, c * 4) & 0x0fff_ffff {
                // fatfs reads these cluster numbers' entries as bad.
                _ if (0x0fff_fff7..=0x0fff_ffff).contains(&cluster) => None,
                0 | 0x0fff_fff7..=0x0fff_ffff => None,
                n => Some(n),
            },
        };
        if let Some(n) = link {
            if !(2..=last).contains(&n) {
                return Err(FatError::LinkOutOfRange {
                    cluster,
                    next: n,
                    last,
                });
            }
        }
        next.push(link);
    }
    // Each cluster has at most one successor: walk each chain once,
    // marking clusters in progress (1) and finished (2).
    let mut state = vec![0u8; next.len()];
    let mut path = Vec::new();
    for start in 0..next.len() {
        let mut at = Some(start);
        while let Some(i) = at {
            match state.get(i).copied() {
                Some(0) => {
                    state[i] = 1;
                    path.push(i);
                    at = next[i].map(|n| n as usize - 2);
                }
                Some(1) => {
                    return Err(FatError::ChainLoops {
                        // Below the cluster count, a u32.
                        cluster: u32::try_from(i + 2).unwrap_or(u32::MAX),
                    });
                }
                _ => at = None,
            }
        }
        for i in path.drain(..) {
            state[i] = 2;
        }
    }
    Ok(next)
}

/// Every directory the listing enters starts at a data cluster, is entered
/// once, and is at most [`MAX_DEPTH`] deep.
fn check_tree(v: &[u8], g: &Geometry, next: &[Option<u32>]) -> Result<(), FatError> {
    let last = g.clusters + 1;
    let mut seen = HashSet::new();
    let mut queue = VecDeque::new();
    if let Root::Cluster(c) = g.root {
        seen.insert(c);
    }
    queue.push_back((dir_bytes(v, g, next, &g.root), 0usize, String::new()));
    while let Some((bytes, depth, dir)) = queue.pop_front() {
        for entry in bytes.chunks_exact(32) {
            let (first, attr) = (entry[0], entry[11]);
            if first == 0 {
                break;
            }
            // Deleted entries, long-name parts and the volume label are
            // skipped by fatfs.
            if first == 0xe5 || attr & 0x0f == 0x0f || attr & 0x08 != 0 {
                continue;
            }
            let name = short_name(entry);
            // A listing line needs a name (found by fuzzing).
            if name.is_empty() {
                return Err(FatError::UnnamedEntry { dir });
            }
            // Only directories are entered.
            if attr & 0x10 == 0 || is_dot(&name) {
                continue;
            }
            let name = String::from_utf8_lossy(&name).into_owned();
            let hi = if g.fat_type == FatType::Fat32 {
                u32::from(u16_at(entry, 20))
            } else {
                0
            };
            let cluster = hi << 16 | u32::from(u16_at(entry, 26));
            // fatfs opens cluster 0 as the root (what `..` means there).
            if cluster == 0 {
                return Err(FatError::DirectoryLinkedTwice { name });
            }
            if !(2..=last).contains(&cluster) {
                return Err(FatError::DirectoryOutOfRange {
                    name,
                    cluster,
                    last,
                });
            }
            if !seen.insert(cluster) {
                return Err(FatError::DirectoryLinkedTwice { name });
            }
            if depth + 1 >= MAX_DEPTH {
                return Err(FatError::TooDeep);
            }
            let path = format!("{dir}{name}/");
            queue.push_back((
                dir_bytes(v, g, next, &Root::Cluster(cluster)),
                depth + 1,
                path,
            ));
        }
    }
    Ok(())
}

/// A directory's bytes: the root region, or its cluster chain (finite:
/// [`links`] found no loop).
fn dir_bytes(v: &[u8], g: &Geometry, next: &[Option<u32>], dir: &Root) -> Vec<u8> {
    match *dir {
        Root::Region { start, len } => v.get(start..start + len).unwrap_or_default().to_vec(),
        Root::Cluster(first) => {
            let mut bytes = Vec::new();
            let mut at = Some(first);
            while let Some(c) = at {
                let start = g.data_start + (c as usize - 2) * g.cluster_size;
                bytes.extend_from_slice(v.get(start..start + g.cluster_size).unwrap_or_default());
                at = next.get(c as usize - 2).copied().flatten();
            }
            bytes
        }
    }
}

/// The 8.3 name fatfs makes of an entry: name and extension without their
/// padding, joined by a dot when there is an extension.
fn short_name(entry: &[u8]) -> Vec<u8> {
    let trim = |s: &[u8]| -> Vec<u8> {
        let len = s.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
        s.get(..len).unwrap_or_default().to_vec()
    };
    let mut name = trim(entry.get(0..8).unwrap_or_default());
    let ext = trim(entry.get(8..11).unwrap_or_default());
    if !ext.is_empty() {
        name.push(b'.');
        name.extend_from_slice(&ext);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use fatfs::FormatVolumeOptions;
    use std::io::Write;

    /// A volume holding EFI/BOOT/BOOTX64.EFI, as kiln lays out an ESP.
    fn volume(fat_type: FatType, size: usize) -> Vec<u8> {
        let mut c = Cursor::new(vec![0u8; size]);
        fatfs::format_volume(&mut c, FormatVolumeOptions::new().fat_type(fat_type)).unwrap();
        c.set_position(0);
        {
            let fs = FileSystem::new(&mut c, FsOptions::new()).unwrap();
            let boot = fs.root_dir().create_dir("EFI").unwrap();
            let boot = boot.create_dir("BOOT").unwrap();
            let mut f = boot.create_file("BOOTX64.EFI").unwrap();
            f.write_all(b"MZ stub").unwrap();
        }
        c.into_inner()
    }

    /// The byte offset of the entry called `name` (11 bytes, padded) in `dir`.
    fn entry(v: &[u8], dir: std::ops::Range<usize>, name: &[u8; 11]) -> usize {
        (dir.start..dir.end)
            .step_by(32)
            .find(|&at| &v[at..at + 11] == name)
            .unwrap()
    }

    /// A FAT16 volume, where the EFI and BOOT directory entries are, and
    /// the EFI directory's cluster.
    fn fat16() -> (Vec<u8>, Geometry, usize, usize, usize) {
        let v = volume(FatType::Fat16, 8 << 20);
        let g = geometry(&v).unwrap();
        assert_eq!(g.fat_type, FatType::Fat16);
        let Root::Region { start, len } = g.root else {
            panic!("FAT16 has a root region")
        };
        let efi = entry(&v, start..start + len, b"EFI        ");
        let cluster = usize::from(u16_at(&v, efi + 26));
        let dir = g.data_start + (cluster - 2) * g.cluster_size;
        let boot = entry(&v, dir..dir + g.cluster_size, b"BOOT       ");
        (v, g, efi, boot, cluster)
    }

    fn set_u16(v: &mut [u8], at: usize, value: u16) {
        v[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn lists_sound_volumes() {
        for (fat_type, size, name) in [
            (FatType::Fat12, 1 << 20, "FAT12"),
            (FatType::Fat16, 8 << 20, "FAT16"),
            (FatType::Fat32, 34 << 20, "FAT32"),
        ] {
            let l = list(volume(fat_type, size)).unwrap();
            assert_eq!(l.fat_type, name);
            assert_eq!(
                l.files,
                [EspFile {
                    path: "EFI/BOOT/BOOTX64.EFI".into(),
                    size: 7
                }]
            );
        }
    }

    /// The overflow fatfs hits at boot_sector.rs:311 (FATs × sectors per
    /// FAT): the top byte of the FAT32 sectors-per-FAT field set to 0xff.
    #[test]
    fn a_huge_fat_size_is_refused_before_fatfs() {
        let mut v = volume(FatType::Fat32, 34 << 20);
        v[0x27] = 0xff;
        let e = list(v).unwrap_err();
        assert!(matches!(e, FatError::BootSector(_)), "{e}");
    }

    /// fatfs subtracts 2 from the root cluster (fs.rs:448).
    #[test]
    fn a_root_cluster_below_2_is_refused() {
        for root in [0u8, 1] {
            let mut v = volume(FatType::Fat32, 34 << 20);
            v[44..48].copy_from_slice(&[root, 0, 0, 0]);
            let e = list(v).unwrap_err();
            assert_eq!(
                e.to_string(),
                "its boot sector is not a valid FAT boot sector: the root directory's cluster is outside the volume"
            );
        }
    }

    /// Found by fuzzing: an entry whose 8.3 name is all spaces was listed
    /// with an empty path.
    #[test]
    fn an_entry_without_a_name_is_refused() {
        let (mut v, g, efi, boot, _) = fat16();
        // The file in EFI/BOOT, then the root's EFI directory.
        let dir = g.data_start + (usize::from(u16_at(&v, boot + 26)) - 2) * g.cluster_size;
        let file = entry(&v, dir..dir + g.cluster_size, b"BOOTX64 EFI");
        let mut unnamed_file = v.clone();
        unnamed_file[file..file + 11].copy_from_slice(&[b' '; 11]);
        let e = list(unnamed_file).unwrap_err();
        assert_eq!(
            e.to_string(),
            "directory \"EFI/BOOT/\" has an entry without a name (its 8.3 name is all spaces)"
        );
        v[efi..efi + 11].copy_from_slice(&[b' '; 11]);
        assert!(matches!(list(v), Err(FatError::UnnamedEntry { dir }) if dir.is_empty()));
    }

    #[test]
    fn a_volume_larger_than_its_partition_is_refused() {
        let mut v = volume(FatType::Fat16, 8 << 20);
        v.truncate(4 << 20);
        assert!(matches!(list(v), Err(FatError::BootSector(_))));
    }

    #[test]
    fn a_directory_below_cluster_2_is_refused() {
        let (mut v, _, efi, _, _) = fat16();
        set_u16(&mut v, efi + 26, 1);
        let e = list(v).unwrap_err();
        assert!(
            matches!(&e, FatError::DirectoryOutOfRange { name, cluster: 1, .. } if name == "EFI"),
            "{e}"
        );
    }

    #[test]
    fn a_link_outside_the_volume_is_refused() {
        let (mut v, g, _, _, cluster) = fat16();
        set_u16(&mut v, g.fat_start + cluster * 2, 1);
        let e = list(v).unwrap_err();
        assert!(matches!(e, FatError::LinkOutOfRange { next: 1, .. }), "{e}");
    }

    #[test]
    fn a_looping_chain_is_refused() {
        let (mut v, g, _, _, cluster) = fat16();
        set_u16(
            &mut v,
            g.fat_start + cluster * 2,
            u16::try_from(cluster).unwrap(),
        );
        let e = list(v).unwrap_err();
        assert!(
            matches!(e, FatError::ChainLoops { cluster: c } if c as usize == cluster),
            "{e}"
        );
    }

    /// BOOT pointing back at EFI: fatfs would list EFI/BOOT/BOOT/... for
    /// ever, and recurse until the stack overflows.
    #[test]
    fn a_directory_loop_is_refused() {
        let (mut v, _, _, boot, cluster) = fat16();
        set_u16(&mut v, boot + 26, u16::try_from(cluster).unwrap());
        let e = list(v).unwrap_err();
        assert!(
            matches!(&e, FatError::DirectoryLinkedTwice { name } if name == "BOOT"),
            "{e}"
        );
    }

    /// Found by the `fat` fuzz target: a directory entry at cluster 0 is
    /// the root to fatfs (as `..` is there), so BOOT at 0 loops to the root.
    #[test]
    fn a_directory_at_cluster_0_is_a_loop_to_the_root() {
        let (mut v, _, _, boot, _) = fat16();
        set_u16(&mut v, boot + 26, 0);
        let e = list(v).unwrap_err();
        assert!(
            matches!(&e, FatError::DirectoryLinkedTwice { name } if name == "BOOT"),
            "{e}"
        );
    }
}
