//! The newc on-disk format shared by the writer and the reader: magics,
//! the 110-byte header of hex fields, 4-byte padding and `st_mode` bits.

/// Magic of the newc format without checksums (what kiln writes).
pub(super) const MAGIC_NEWC: &[u8; 6] = b"070701";
/// Magic of the newc format with a checksum field; same layout otherwise.
pub(super) const MAGIC_CRC: &[u8; 6] = b"070702";
pub(super) const HEADER_LEN: usize = 110;
pub(super) const TRAILER: &str = "TRAILER!!!";
/// Copy buffer for file data: large enough that each read and write is one
/// big system call, small enough to stay out of the way of the compressor.
pub(super) const COPY_BUF: usize = 1 << 20;
/// Longer names or link targets than this are a damaged archive, not a real
/// file system (PATH_MAX is 4096 on Linux); the cap bounds allocations.
pub(super) const MAX_NAME: u64 = 64 * 1024;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

/// The numeric fields of a newc header, in on-disk order (after the magic).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) ino: u32,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) nlink: u32,
    pub(super) mtime: u32,
    pub(super) filesize: u32,
    pub(super) devmajor: u32,
    pub(super) devminor: u32,
    pub(super) rdevmajor: u32,
    pub(super) rdevminor: u32,
    pub(super) namesize: u32,
    pub(super) check: u32,
}

impl Header {
    fn fields(&self) -> [u32; 13] {
        [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.filesize,
            self.devmajor,
            self.devminor,
            self.rdevmajor,
            self.rdevminor,
            self.namesize,
            self.check,
        ]
    }

    pub(super) fn encode(&self) -> [u8; HEADER_LEN] {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = [0u8; HEADER_LEN];
        out[..6].copy_from_slice(MAGIC_NEWC);
        for (i, v) in self.fields().iter().enumerate() {
            // 6 + 13 * 8 = 110 = HEADER_LEN: every index below is in bounds.
            let field = &mut out[6 + i * 8..6 + (i + 1) * 8];
            for (j, digit) in field.iter_mut().enumerate() {
                *digit = HEX[((v >> (28 - 4 * j)) & 0xf) as usize];
            }
        }
        out
    }

    /// Parses the 104 hex digits after the magic; `None` if one is not hex.
    pub(super) fn decode(raw: &[u8; HEADER_LEN]) -> Option<Header> {
        let mut f = [0u32; 13];
        for (i, slot) in f.iter_mut().enumerate() {
            let digits = raw.get(6 + i * 8..6 + (i + 1) * 8)?;
            let s = std::str::from_utf8(digits).ok()?;
            *slot = u32::from_str_radix(s, 16).ok()?;
        }
        let [ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check] =
            f;
        Some(Header {
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            filesize,
            devmajor,
            devminor,
            rdevmajor,
            rdevminor,
            namesize,
            check,
        })
    }
}

/// Bytes of zero padding that bring `len` to a multiple of 4.
pub(super) fn pad4(len: u64) -> usize {
    ((4 - (len % 4)) % 4) as usize
}
