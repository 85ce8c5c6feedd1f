//! kiln's cpio "newc" (070701) writer and reader: the archive format the
//! kernel unpacks into the initramfs (see the kernel's
//! Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Hand-written on purpose: the `cpio` crates write entries in the order and
//! with the inode numbers and timestamps they are given, so an archive would
//! depend on directory iteration order and on the build machine. kiln needs
//! sorted, renumbered, timestamp-pinned archives that are byte-identical for
//! the same inputs, plus a reader that accepts what the kernel accepts
//! (GNU cpio output, several archives back to back with zero padding).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Magic of the newc format without checksums (what kiln writes).
const MAGIC_NEWC: &[u8; 6] = b"070701";
/// Magic of the newc format with a checksum field; same layout otherwise.
const MAGIC_CRC: &[u8; 6] = b"070702";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";
/// Copy buffer for file data: large enough that each read and write is one
/// big system call, small enough to stay out of the way of the compressor.
const COPY_BUF: usize = 1 << 20;
/// Longer names or link targets than this are a damaged archive, not a real
/// file system (PATH_MAX is 4096 on Linux); the cap bounds allocations.
const MAX_NAME: u64 = 64 * 1024;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

/// Permission bits of the parent directories kiln creates on its own.
const IMPLICIT_DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("invalid archive path '{path}': {reason}; use a relative path such as 'usr/bin/tool'")]
    InvalidPath { path: String, reason: &'static str },
    #[error("'{path}' needs '{parent}' to be a directory, but '{parent}' was added as another kind of entry; add it as a directory or move '{path}'")]
    ParentNotDirectory { path: String, parent: String },
    #[error("cannot read '{}' for the archive; check that it exists and is readable", path.display())]
    ReadSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("'{}' changed size while the archive was written; build again once it is stable", path.display())]
    SourceChanged { path: PathBuf },
    #[error("'{}' is not a regular file, directory or symlink; only those can be taken from disk", path.display())]
    UnsupportedFileType { path: PathBuf },
    #[error("'{}' is not a directory; give a directory to add as a tree", path.display())]
    NotADirectory { path: PathBuf },
    #[error("'{}' is {size} bytes; a newc archive holds at most 4 GiB - 1 per file", path.display())]
    FileTooLarge { path: PathBuf, size: u64 },
    #[error("'{}' has a name that is not valid UTF-8; rename it", path.display())]
    NonUtf8Name { path: PathBuf },
    #[error("the archive has more entries than a newc archive can number; split it")]
    TooManyEntries,
    #[error("cannot write the cpio archive")]
    Write {
        #[source]
        source: io::Error,
    },
    #[error("cannot read the cpio archive at byte {offset}")]
    Read {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("the cpio archive ends early at byte {offset}; the file is truncated or damaged")]
    Truncated { offset: u64 },
    #[error("no cpio newc header at byte {offset} (found {found:?}); kiln reads newc (070701/070702) archives, so decompress a compressed one first")]
    NotNewc { offset: u64, found: String },
    #[error("damaged cpio header at byte {offset}: {what}")]
    BadHeader { offset: u64, what: &'static str },
    #[error(
        "cpio header at byte {offset} is not 4-byte aligned; the kernel rejects such an archive"
    )]
    Misaligned { offset: u64 },
}

/// What an [`Entry`] is, and where a file's contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// Contents read from this path when the archive is written.
    File(PathBuf),
    /// Contents given in memory.
    Bytes(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
    CharDevice {
        major: u32,
        minor: u32,
    },
}

/// One entry of an [`Archive`], before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    path: String,
    perm: u32,
    kind: EntryKind,
}

impl Entry {
    /// Normalized path, without a leading slash.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn kind(&self) -> &EntryKind {
        &self.kind
    }

    /// Full `st_mode`: type bits and permission bits.
    pub fn mode(&self) -> u32 {
        let ty = match self.kind {
            EntryKind::Dir => S_IFDIR,
            EntryKind::File(_) | EntryKind::Bytes(_) => S_IFREG,
            EntryKind::Symlink(_) => S_IFLNK,
            EntryKind::CharDevice { .. } => S_IFCHR,
        };
        ty | self.perm
    }
}

/// An in-memory file tree written as one reproducible newc archive.
///
/// Output rules: entries sorted by path bytes (so every parent precedes its
/// children), missing parent directories created with mode 0755, uid/gid 0,
/// one mtime for all entries, inode numbers 1..N in output order, nlink 2
/// for directories and 1 for everything else (files must not have nlink > 1:
/// the kernel would treat them as hard links), then the `TRAILER!!!` entry.
/// The archive is not padded to 512 bytes: the kernel does not need it and
/// a compressor would only spend bytes on the zeros.
///
/// Adding a path twice replaces the first entry: the last one wins. The
/// `add_*` methods cannot fail, so building a tree reads straight; an invalid
/// path is remembered and reported by [`Archive::write`].
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
    /// The first invalid `add_*` call: (path as given, reason).
    invalid: Option<(String, &'static str)>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory; `mode` gives its permission bits (type bits are ignored).
    pub fn add_dir(&mut self, path: &str, mode: u32) {
        self.insert(path, mode, EntryKind::Dir);
    }

    /// A regular file whose contents are read from `src` when the archive is
    /// written (its size is taken then too), streamed rather than loaded.
    pub fn add_file(&mut self, path: &str, src: &Path, mode: u32) {
        self.insert(path, mode, EntryKind::File(src.to_path_buf()));
    }

    /// A regular file with the given contents.
    pub fn add_bytes(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.insert(path, mode, EntryKind::Bytes(data));
    }

    /// A symbolic link (mode 0777, as on Linux).
    pub fn add_symlink(&mut self, path: &str, target: &str) {
        if target.is_empty() || target.contains('\0') {
            self.remember_invalid(
                path,
                "a symlink target must be non-empty and hold no NUL byte",
            );
            return;
        }
        self.insert(path, 0o777, EntryKind::Symlink(target.to_owned()));
    }

    /// A character device node, e.g. `dev/console` 5:1, which the kernel
    /// opens for init's stdio before devtmpfs is mounted.
    pub fn add_char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.insert(path, mode, EntryKind::CharDevice { major, minor });
    }

    /// Adds the directory tree `src_dir` under `dest` ("" or "/" for the
    /// archive root): regular files, directories and symlinks (not
    /// followed), with their permission bits from disk. Anything else (a
    /// socket, a device node) is an error.
    pub fn add_tree(&mut self, dest: &str, src_dir: &Path) -> Result<(), CpioError> {
        let meta = fs::metadata(src_dir).map_err(|source| CpioError::ReadSource {
            path: src_dir.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(CpioError::NotADirectory {
                path: src_dir.to_path_buf(),
            });
        }
        let dest = match dest.strip_prefix('/').unwrap_or(dest) {
            "" => String::new(),
            d => normalize(d).map_err(|reason| CpioError::InvalidPath {
                path: dest.to_owned(),
                reason,
            })?,
        };
        if !dest.is_empty() {
            self.add_dir(&dest, meta.permissions().mode());
        }
        self.add_dir_contents(&dest, src_dir)
    }

    fn add_dir_contents(&mut self, dest: &str, dir: &Path) -> Result<(), CpioError> {
        let read_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CpioError::ReadSource { path, source }
        };
        for item in fs::read_dir(dir).map_err(read_err(dir))? {
            let item = item.map_err(read_err(dir))?;
            let src = item.path();
            let name = item.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| CpioError::NonUtf8Name { path: src.clone() })?;
            let path = if dest.is_empty() {
                name.to_owned()
            } else {
                format!("{dest}/{name}")
            };
            let meta = fs::symlink_metadata(&src).map_err(read_err(&src))?;
            let ty = meta.file_type();
            let mode = meta.permissions().mode();
            if ty.is_dir() {
                self.add_dir(&path, mode);
                self.add_dir_contents(&path, &src)?;
            } else if ty.is_file() {
                self.add_file(&path, &src, mode);
            } else if ty.is_symlink() {
                let target = fs::read_link(&src).map_err(read_err(&src))?;
                let target = target
                    .to_str()
                    .ok_or_else(|| CpioError::NonUtf8Name { path: src.clone() })?;
                self.add_symlink(&path, target);
            } else {
                return Err(CpioError::UnsupportedFileType { path: src });
            }
        }
        Ok(())
    }

    /// Number of entries that will be written, implicit parents included
    /// (the trailer is not counted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in output order (sorted by path bytes).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Writes the archive to `out` with every entry's mtime set to `mtime`
    /// (the caller passes SOURCE_DATE_EPOCH or a fixed default) and flushes
    /// `out`. Padding is relative to the start of `out`. Returns the number
    /// of bytes written.
    pub fn write<W: Write>(&self, out: W, mtime: u32) -> Result<u64, CpioError> {
        if let Some((path, reason)) = &self.invalid {
            return Err(CpioError::InvalidPath {
                path: path.clone(),
                reason,
            });
        }
        self.check_parents()?;
        let mut w = BufWriter::with_capacity(COPY_BUF, Counter { inner: out, n: 0 });
        let mut buf = vec![0u8; COPY_BUF];
        for (i, entry) in self.entries.values().enumerate() {
            let ino = u32::try_from(i + 1).map_err(|_| CpioError::TooManyEntries)?;
            write_entry(&mut w, entry, ino, mtime, &mut buf)?;
        }
        let trailer = Header {
            nlink: 1,
            ..Header::default()
        };
        write_header(&mut w, &trailer, TRAILER)?;
        w.flush().map_err(|source| CpioError::Write { source })?;
        Ok(w.get_ref().n)
    }

    fn check_parents(&self) -> Result<(), CpioError> {
        for path in self.entries.keys() {
            if let Some((parent, _)) = path.rsplit_once('/') {
                if !matches!(
                    self.entries.get(parent).map(Entry::kind),
                    Some(EntryKind::Dir)
                ) {
                    return Err(CpioError::ParentNotDirectory {
                        path: path.clone(),
                        parent: parent.to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    fn insert(&mut self, path: &str, mode: u32, kind: EntryKind) {
        let path = match normalize(path) {
            Ok(p) => p,
            Err(reason) => return self.remember_invalid(path, reason),
        };
        for (i, _) in path.match_indices('/') {
            let parent = &path[..i];
            if !self.entries.contains_key(parent) {
                self.entries.insert(
                    parent.to_owned(),
                    Entry {
                        path: parent.to_owned(),
                        perm: IMPLICIT_DIR_MODE,
                        kind: EntryKind::Dir,
                    },
                );
            }
        }
        let entry = Entry {
            path: path.clone(),
            perm: mode & 0o7777,
            kind,
        };
        self.entries.insert(path, entry);
    }

    fn remember_invalid(&mut self, path: &str, reason: &'static str) {
        if self.invalid.is_none() {
            self.invalid = Some((path.to_owned(), reason));
        }
    }
}

/// Strips one leading slash and checks that every component is a real name.
fn normalize(path: &str) -> Result<String, &'static str> {
    let p = path.strip_prefix('/').unwrap_or(path);
    if p.is_empty() {
        return Err("the path is empty");
    }
    if p.contains('\0') {
        return Err("the path holds a NUL byte");
    }
    for comp in p.split('/') {
        match comp {
            "" => return Err("the path has an empty component (a doubled or trailing slash)"),
            "." | ".." => return Err("the path has a '.' or '..' component"),
            _ => {}
        }
    }
    Ok(p.to_owned())
}

/// Counts the bytes that reach the caller's writer.
struct Counter<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The numeric fields of a newc header, in on-disk order (after the magic).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    devmajor: u32,
    devminor: u32,
    rdevmajor: u32,
    rdevminor: u32,
    namesize: u32,
    check: u32,
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

    fn encode(&self) -> [u8; HEADER_LEN] {
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
    fn decode(raw: &[u8; HEADER_LEN]) -> Option<Header> {
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
fn pad4(len: u64) -> usize {
    ((4 - (len % 4)) % 4) as usize
}

fn write_header<W: Write>(w: &mut W, h: &Header, name: &str) -> Result<(), CpioError> {
    let err = |source| CpioError::Write { source };
    let namesize = name.len() + 1;
    let h = Header {
        namesize: u32::try_from(namesize).map_err(|_| CpioError::InvalidPath {
            path: name.to_owned(),
            reason: "the path is too long",
        })?,
        ..h.clone()
    };
    w.write_all(&h.encode()).map_err(err)?;
    w.write_all(name.as_bytes()).map_err(err)?;
    // The NUL terminator plus padding of header + name to a multiple of 4.
    let pad = 1 + pad4((HEADER_LEN + namesize) as u64);
    w.write_all(&[0u8; 4][..pad]).map_err(err)
}

fn write_entry<W: Write>(
    w: &mut W,
    entry: &Entry,
    ino: u32,
    mtime: u32,
    buf: &mut [u8],
) -> Result<(), CpioError> {
    let mut h = Header {
        ino,
        mode: entry.mode(),
        nlink: 1,
        mtime,
        ..Header::default()
    };
    let werr = |source| CpioError::Write { source };
    let small_data: &[u8] = match &entry.kind {
        EntryKind::Dir => {
            h.nlink = 2;
            &[]
        }
        EntryKind::CharDevice { major, minor } => {
            h.rdevmajor = *major;
            h.rdevminor = *minor;
            &[]
        }
        EntryKind::Symlink(target) => target.as_bytes(),
        EntryKind::Bytes(data) => data,
        EntryKind::File(src) => return write_file(w, h, &entry.path, src, buf),
    };
    h.filesize = u32::try_from(small_data.len()).map_err(|_| CpioError::FileTooLarge {
        path: PathBuf::from(&entry.path),
        size: small_data.len() as u64,
    })?;
    write_header(w, &h, &entry.path)?;
    w.write_all(small_data).map_err(werr)?;
    w.write_all(&[0u8; 4][..pad4(small_data.len() as u64)])
        .map_err(werr)
}

/// Streams a file from disk: the size is taken when the file is opened, and
/// a file that changes size meanwhile is an error rather than a corrupt
/// archive.
fn write_file<W: Write>(
    w: &mut W,
    mut h: Header,
    path: &str,
    src: &Path,
    buf: &mut [u8],
) -> Result<(), CpioError> {
    let rerr = |source| CpioError::ReadSource {
        path: src.to_path_buf(),
        source,
    };
    let werr = |source| CpioError::Write { source };
    let mut file = File::open(src).map_err(rerr)?;
    let meta = file.metadata().map_err(rerr)?;
    if !meta.is_file() {
        return Err(CpioError::UnsupportedFileType {
            path: src.to_path_buf(),
        });
    }
    let size = meta.len();
    h.filesize = u32::try_from(size).map_err(|_| CpioError::FileTooLarge {
        path: src.to_path_buf(),
        size,
    })?;
    write_header(w, &h, path)?;
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let chunk = &mut buf[..want];
        let n = match file.read(chunk) {
            Ok(0) => {
                return Err(CpioError::SourceChanged {
                    path: src.to_path_buf(),
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(rerr(e)),
        };
        // `n <= want <= buf.len()`: read never reports more than it was given.
        w.write_all(&chunk[..n]).map_err(werr)?;
        left -= n as u64;
    }
    let mut probe = [0u8; 1];
    if file.read(&mut probe).map_err(rerr)? != 0 {
        return Err(CpioError::SourceChanged {
            path: src.to_path_buf(),
        });
    }
    w.write_all(&[0u8; 4][..pad4(size)]).map_err(werr)
}

/// One entry as listed from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry {
    /// The name as stored, e.g. "usr/bin/x" (GNU cpio may also store "." for
    /// the root).
    pub path: String,
    /// Full `st_mode`, type bits included.
    pub mode: u32,
    pub size: u64,
    pub mtime: u32,
    pub link_target: Option<String>,
    /// (major, minor) for character and block devices.
    pub rdev: Option<(u32, u32)>,
}

/// A callback that may read an entry's data; what it leaves is skipped.
pub type DataFn<'f> = dyn FnMut(&ListedEntry, &mut dyn Read) -> io::Result<()> + 'f;

/// Reads newc archives from a buffered stream, one archive at a time, so a
/// caller can tell where one ends (e.g. an uncompressed early archive
/// followed by a compressed one, as the kernel allows).
pub struct Reader<R> {
    inner: R,
    offset: u64,
}

impl<R: BufRead> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader { inner, offset: 0 }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Skips the zero padding the kernel allows between archives. Returns
    /// the next byte without consuming it, or `None` at the end of input.
    /// Like the kernel, a next byte of `b'0'` means another cpio archive.
    pub fn skip_padding(&mut self) -> Result<Option<u8>, CpioError> {
        loop {
            let buf = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(CpioError::Read {
                        offset: self.offset,
                        source,
                    })
                }
            };
            if buf.is_empty() {
                return Ok(None);
            }
            let zeros = buf.iter().take_while(|&&b| b == 0).count();
            let next = buf.get(zeros).copied();
            self.inner.consume(zeros);
            self.offset += zeros as u64;
            if next.is_some() {
                return Ok(next);
            }
        }
    }

    /// Reads one archive up to and including its trailer, handing each
    /// entry's data to `f` (for symlinks the target is already taken out
    /// into `link_target`).
    pub fn read_archive(&mut self, f: &mut DataFn<'_>) -> Result<Vec<ListedEntry>, CpioError> {
        let mut entries = Vec::new();
        loop {
            let start = self.offset;
            if start % 4 != 0 {
                return Err(CpioError::Misaligned { offset: start });
            }
            let mut raw = [0u8; HEADER_LEN];
            self.read_exact(&mut raw)?;
            if &raw[..6] != MAGIC_NEWC && &raw[..6] != MAGIC_CRC {
                return Err(CpioError::NotNewc {
                    offset: start,
                    found: String::from_utf8_lossy(&raw[..6]).into_owned(),
                });
            }
            let h = Header::decode(&raw).ok_or(CpioError::BadHeader {
                offset: start,
                what: "a field is not hexadecimal",
            })?;
            let namesize = u64::from(h.namesize);
            if namesize == 0 || namesize > MAX_NAME {
                return Err(CpioError::BadHeader {
                    offset: start,
                    what: "the name size is out of range",
                });
            }
            let mut name = self.read_vec(namesize)?;
            if name.pop() != Some(0) {
                return Err(CpioError::BadHeader {
                    offset: start,
                    what: "the name is not NUL-terminated",
                });
            }
            self.skip(pad4(self.offset) as u64)?;
            let path = String::from_utf8_lossy(&name).into_owned();
            let size = u64::from(h.filesize);
            if path == TRAILER {
                self.skip(size)?;
                self.skip(pad4(self.offset) as u64)?;
                return Ok(entries);
            }
            let ty = h.mode & S_IFMT;
            let link_target = if ty == S_IFLNK {
                if size > MAX_NAME {
                    return Err(CpioError::BadHeader {
                        offset: start,
                        what: "the symlink target is too long",
                    });
                }
                Some(String::from_utf8_lossy(&self.read_vec(size)?).into_owned())
            } else {
                None
            };
            let entry = ListedEntry {
                path,
                mode: h.mode,
                size,
                mtime: h.mtime,
                rdev: (ty == S_IFCHR || ty == S_IFBLK).then_some((h.rdevmajor, h.rdevminor)),
                link_target,
            };
            if entry.link_target.is_none() {
                let data_start = self.offset;
                let mut data = (&mut self.inner).take(size);
                let result = f(&entry, &mut data)
                    .and_then(|()| io::copy(&mut data, &mut io::sink()).map(|_| ()));
                let left = data.limit();
                self.offset = data_start + (size - left);
                result.map_err(|e| self.io_err(e))?;
                if left != 0 {
                    return Err(CpioError::Truncated {
                        offset: self.offset,
                    });
                }
            }
            self.skip(pad4(self.offset) as u64)?;
            entries.push(entry);
        }
    }

    fn io_err(&self, source: io::Error) -> CpioError {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            CpioError::Truncated {
                offset: self.offset,
            }
        } else {
            CpioError::Read {
                offset: self.offset,
                source,
            }
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), CpioError> {
        self.inner.read_exact(buf).map_err(|e| self.io_err(e))?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn read_vec(&mut self, n: u64) -> Result<Vec<u8>, CpioError> {
        let mut v = Vec::new();
        let got = (&mut self.inner)
            .take(n)
            .read_to_end(&mut v)
            .map_err(|e| self.io_err(e))?;
        self.offset += got as u64;
        if (got as u64) < n {
            return Err(CpioError::Truncated {
                offset: self.offset,
            });
        }
        Ok(v)
    }

    fn skip(&mut self, n: u64) -> Result<(), CpioError> {
        let got = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())
            .map_err(|e| self.io_err(e))?;
        self.offset += got;
        if got < n {
            return Err(CpioError::Truncated {
                offset: self.offset,
            });
        }
        Ok(())
    }
}

/// Lists every entry of an uncompressed newc stream: one archive or several
/// back to back with zero padding between them (as the kernel accepts).
pub fn read<R: Read>(r: R) -> Result<Vec<ListedEntry>, CpioError> {
    read_with(r, |_, _| Ok(()))
}

/// Like [`read`], handing each entry's data to `f` as it streams past.
pub fn read_with<R, F>(r: R, mut f: F) -> Result<Vec<ListedEntry>, CpioError>
where
    R: Read,
    F: FnMut(&ListedEntry, &mut dyn Read) -> io::Result<()>,
{
    let mut reader = Reader::new(BufReader::with_capacity(COPY_BUF, r));
    let mut entries = Vec::new();
    while let Some(next) = reader.skip_padding()? {
        if next != b'0' {
            let offset = reader.offset();
            let mut head = Vec::new();
            // Best effort, only to show what was found in the error.
            let _ = reader.into_inner().take(6).read_to_end(&mut head);
            return Err(CpioError::NotNewc {
                offset,
                found: String::from_utf8_lossy(&head).into_owned(),
            });
        }
        entries.extend(reader.read_archive(&mut f)?);
    }
    Ok(entries)
}

/// Like [`read`], with every entry's data loaded (symlinks: empty). Meant
/// for tests and small archives.
pub fn read_with_data<R: Read>(r: R) -> Result<Vec<(ListedEntry, Vec<u8>)>, CpioError> {
    let mut data = Vec::new();
    let entries = read_with(r, |_, d| {
        let mut v = Vec::new();
        d.read_to_end(&mut v)?;
        data.push(v);
        Ok(())
    })?;
    let mut data = data.into_iter();
    Ok(entries
        .into_iter()
        .map(|e| {
            let d = if e.link_target.is_some() {
                Vec::new()
            } else {
                data.next().unwrap_or_default()
            };
            (e, d)
        })
        .collect())
}

/// `ls -l` style mode string: `drwxr-xr-x`, `-rw-r--r--`, `lrwxrwxrwx`,
/// `crw-------`, with setuid/setgid/sticky shown as s/S and t/T.
pub fn mode_string(mode: u32) -> String {
    let ty = match mode & S_IFMT {
        S_IFDIR => 'd',
        S_IFREG => '-',
        S_IFLNK => 'l',
        S_IFCHR => 'c',
        S_IFBLK => 'b',
        S_IFIFO => 'p',
        S_IFSOCK => 's',
        _ => '?',
    };
    let mut s = String::with_capacity(10);
    s.push(ty);
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, (bit, on, off)) in special.into_iter().enumerate() {
        let shift = 6 - 3 * i as u32;
        let rwx = (mode >> shift) & 0o7;
        s.push(if rwx & 4 != 0 { 'r' } else { '-' });
        s.push(if rwx & 2 != 0 { 'w' } else { '-' });
        s.push(match (rwx & 1 != 0, mode & bit != 0) {
            (true, true) => on,
            (false, true) => off,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// Short name of an `st_mode`'s file type, for listings and JSON.
pub fn type_name(mode: u32) -> &'static str {
    match mode & S_IFMT {
        S_IFDIR => "dir",
        S_IFREG => "file",
        S_IFLNK => "symlink",
        S_IFCHR => "char",
        S_IFBLK => "block",
        S_IFIFO => "fifo",
        S_IFSOCK => "socket",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::os::unix::fs::symlink;
    use std::process::{Command, Stdio};

    /// The reference tool must be there: a missing tool fails the test.
    fn gnu_cpio() -> &'static str {
        match Command::new("cpio").arg("--version").output() {
            Ok(o) if String::from_utf8_lossy(&o.stdout).contains("GNU cpio") => "cpio",
            _ => panic!("GNU cpio is needed to check kiln's archives: apt-get install cpio"),
        }
    }

    fn run_cpio(args: &[&str], dir: &Path, stdin: &[u8]) -> Vec<u8> {
        let mut child = Command::new(gnu_cpio())
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut sin = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let feeder = std::thread::spawn(move || sin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "cpio {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A small tree on disk plus in-memory entries, links and nesting.
    fn sample(dir: &Path) -> Archive {
        let src = dir.join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("big.bin"), pseudo_random(3 * 1024 * 1024 + 3)).unwrap();
        fs::write(src.join("sub/hello.txt"), b"hello\n").unwrap();
        fs::set_permissions(src.join("sub/hello.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        let mut a = Archive::new();
        a.add_dir("etc", 0o755);
        a.add_bytes("etc/hostname", b"kiln\n".to_vec(), 0o644);
        a.add_bytes("init", b"#!/bin/sh\n".to_vec(), 0o755);
        a.add_file("usr/lib/big.bin", &src.join("big.bin"), 0o600);
        a.add_symlink("bin", "usr/bin");
        a.add_bytes("usr/bin/tool", vec![1, 2, 3], 0o4755);
        a.add_bytes("empty", Vec::new(), 0o644);
        a.add_tree("opt/tree", &src).unwrap();
        a
    }

    fn pseudo_random(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn bytes_of(a: &Archive, mtime: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let n = a.write(&mut out, mtime).unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    /// Walks raw headers independently of the reader: (header, name).
    fn raw_headers(bytes: &[u8]) -> Vec<(Header, String)> {
        let mut off = 0usize;
        let mut out = Vec::new();
        loop {
            let raw: &[u8; HEADER_LEN] = bytes[off..off + HEADER_LEN].try_into().unwrap();
            assert_eq!(&raw[..6], MAGIC_NEWC);
            let h = Header::decode(raw).unwrap();
            let name_end = off + HEADER_LEN + h.namesize as usize - 1;
            let name = String::from_utf8(bytes[off + HEADER_LEN..name_end].to_vec()).unwrap();
            assert_eq!(bytes[name_end], 0);
            off = (name_end + 1).next_multiple_of(4);
            off = (off + h.filesize as usize).next_multiple_of(4);
            let done = name == TRAILER;
            out.push((h, name));
            if done {
                assert_eq!(off, bytes.len(), "nothing follows the trailer");
                return out;
            }
        }
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_what_kiln_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = sample(tmp.path());
        let bytes = bytes_of(&a, 1_700_000_000);

        let listed = String::from_utf8(run_cpio(&["-t", "--quiet"], tmp.path(), &bytes)).unwrap();
        let listed: Vec<&str> = listed.lines().collect();
        let ours: Vec<&str> = a.entries().map(Entry::path).collect();
        assert_eq!(listed, ours);

        let dest = tmp.path().join("out");
        fs::create_dir(&dest).unwrap();
        run_cpio(
            &[
                "-i",
                "-d",
                "--no-absolute-filenames",
                "--quiet",
                "--preserve-modification-time",
            ],
            &dest,
            &bytes,
        );
        for e in a.entries() {
            let p = dest.join(e.path());
            let meta = fs::symlink_metadata(&p).unwrap();
            assert_eq!(meta.permissions().mode(), e.mode(), "mode of {}", e.path());
            use std::os::unix::fs::MetadataExt;
            // GNU cpio restores the time of files only (not of the
            // symlinks and directories it creates).
            if meta.is_file() {
                assert_eq!(meta.mtime(), 1_700_000_000, "mtime of {}", e.path());
            }
            match e.kind() {
                EntryKind::Bytes(d) => assert_eq!(&fs::read(&p).unwrap(), d),
                EntryKind::File(src) => assert_eq!(fs::read(&p).unwrap(), fs::read(src).unwrap()),
                EntryKind::Symlink(t) => assert_eq!(fs::read_link(&p).unwrap(), Path::new(t)),
                EntryKind::Dir => assert!(meta.is_dir()),
                EntryKind::CharDevice { .. } => unreachable!("not in the sample"),
            }
        }
        // A device node is listed (not extracted: that needs CAP_MKNOD).
        a.add_char_device("dev/console", 0o600, 5, 1);
        let listed = run_cpio(&["-tv", "--quiet"], tmp.path(), &bytes_of(&a, 0));
        let line = String::from_utf8(listed)
            .unwrap()
            .lines()
            .find(|l| l.ends_with("dev/console"))
            .map(str::to_owned)
            .unwrap();
        assert!(line.starts_with("crw-------"), "{line}");
        assert!(line.contains("5,") && line.contains(" 1 "), "{line}");
    }

    #[test]
    fn output_is_sorted_renumbered_and_reproducible() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        fs::write(&f, b"data").unwrap();
        let mut a = Archive::new();
        a.add_bytes("z/last", b"1".to_vec(), 0o644);
        a.add_file("a/b/c", &f, 0o600);
        a.add_symlink("a.link", "a/b/c");
        a.add_char_device("/dev/console", 0o600, 5, 1);
        let mut b = Archive::new();
        b.add_char_device("dev/console", 0o600, 5, 1);
        b.add_symlink("a.link", "a/b/c");
        b.add_file("a/b/c", &f, 0o600);
        b.add_bytes("z/last", b"1".to_vec(), 0o644);

        let first = bytes_of(&a, 42);
        assert_eq!(first, bytes_of(&a, 42), "same archive twice");
        assert_eq!(first, bytes_of(&b, 42), "different insertion order");
        assert_ne!(first, bytes_of(&a, 43), "mtime is applied");

        let heads = raw_headers(&first);
        let names: Vec<&str> = heads.iter().map(|(_, n)| n.as_str()).collect();
        // Byte order puts "a.link" ('.' = 0x2e) before "a/..." ('/' = 0x2f),
        // and every parent before its children, created implicitly.
        assert_eq!(
            names,
            [
                "a",
                "a.link",
                "a/b",
                "a/b/c",
                "dev",
                "dev/console",
                "z",
                "z/last",
                TRAILER
            ]
        );
        for (i, (h, name)) in heads.iter().enumerate() {
            if name == TRAILER {
                assert_eq!(h.ino, 0);
                continue;
            }
            assert_eq!(h.ino as usize, i + 1, "inode of {name}");
            assert_eq!(h.mtime, 42);
            assert_eq!((h.uid, h.gid, h.devmajor, h.devminor), (0, 0, 0, 0));
            let is_dir = h.mode & S_IFMT == S_IFDIR;
            assert_eq!(h.nlink, if is_dir { 2 } else { 1 });
        }
        let (dev, _) = &heads[5];
        assert_eq!(
            (dev.mode, dev.rdevmajor, dev.rdevminor),
            (S_IFCHR | 0o600, 5, 1)
        );
        let (implicit, _) = &heads[0];
        assert_eq!(implicit.mode, S_IFDIR | 0o755);
        assert_eq!(a.len(), 8);
    }

    #[test]
    fn last_add_wins_and_explicit_parent_is_kept() {
        let mut a = Archive::new();
        a.add_dir("etc", 0o700);
        a.add_bytes("etc/x", b"old".to_vec(), 0o644);
        a.add_bytes("etc/x", b"new".to_vec(), 0o600);
        let got = read_with_data(bytes_of(&a, 0).as_slice()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].0.mode,
            S_IFDIR | 0o700,
            "adding a child keeps the parent"
        );
        assert_eq!(
            (got[1].0.mode, got[1].1.as_slice()),
            (S_IFREG | 0o600, &b"new"[..])
        );
    }

    #[test]
    fn invalid_paths_and_conflicts_fail_at_write() {
        for bad in ["", "/", "a//b", "a/../b", "./a", "a/", "a\0b"] {
            let mut a = Archive::new();
            a.add_dir(bad, 0o755);
            let err = a.write(Vec::new(), 0).unwrap_err();
            assert!(
                matches!(err, CpioError::InvalidPath { .. }),
                "{bad:?}: {err}"
            );
        }
        let mut a = Archive::new();
        a.add_symlink("x", "");
        assert!(matches!(
            a.write(Vec::new(), 0),
            Err(CpioError::InvalidPath { .. })
        ));

        let mut a = Archive::new();
        a.add_bytes("a/b", Vec::new(), 0o644);
        a.add_bytes("a", Vec::new(), 0o644);
        let err = a.write(Vec::new(), 0).unwrap_err();
        assert!(
            matches!(&err, CpioError::ParentNotDirectory { parent, .. } if parent == "a"),
            "{err}"
        );

        let mut a = Archive::new();
        a.add_file("gone", Path::new("/nonexistent/kiln-test"), 0o644);
        assert!(matches!(
            a.write(Vec::new(), 0),
            Err(CpioError::ReadSource { .. })
        ));
    }

    #[test]
    fn reader_round_trips_the_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = sample(tmp.path());
        a.add_char_device("dev/console", 0o600, 5, 1);
        let got = read_with_data(bytes_of(&a, 7).as_slice()).unwrap();
        assert_eq!(got.len(), a.len());
        for ((l, data), e) in got.iter().zip(a.entries()) {
            assert_eq!(l.path, e.path());
            assert_eq!(l.mode, e.mode());
            assert_eq!(l.mtime, 7);
            match e.kind() {
                EntryKind::Dir => assert_eq!((l.size, data.len()), (0, 0)),
                EntryKind::Bytes(d) => assert_eq!(data, d),
                EntryKind::File(src) => {
                    assert_eq!(data, &fs::read(src).unwrap());
                    assert_eq!(l.size, data.len() as u64);
                }
                EntryKind::Symlink(t) => assert_eq!(l.link_target.as_deref(), Some(t.as_str())),
                EntryKind::CharDevice { major, minor } => {
                    assert_eq!(l.rdev, Some((*major, *minor)))
                }
            }
        }
    }

    #[test]
    fn reads_gnu_cpio_archives_and_concatenations() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("d/e")).unwrap();
        fs::write(root.join("d/e/f.txt"), b"gnu cpio data").unwrap();
        fs::write(root.join("odd"), b"12345").unwrap();
        symlink("d/e/f.txt", root.join("ln")).unwrap();
        let list = "d\nd/e\nd/e/f.txt\nln\nodd\n";
        let gnu = run_cpio(&["-o", "-H", "newc", "--quiet"], &root, list.as_bytes());
        assert_eq!(gnu.len() % 512, 0, "GNU cpio pads to 512");

        let got = read_with_data(gnu.as_slice()).unwrap();
        let names: Vec<&str> = got.iter().map(|(e, _)| e.path.as_str()).collect();
        assert_eq!(names, ["d", "d/e", "d/e/f.txt", "ln", "odd"]);
        let (f, data) = &got[2];
        assert_eq!(data, b"gnu cpio data");
        assert_eq!(f.mode & S_IFMT, S_IFREG);
        assert_eq!(got[3].0.link_target.as_deref(), Some("d/e/f.txt"));
        assert_eq!(got[4].1, b"12345");

        // Kiln archive + GNU archive (already zero-padded) + more zeros + kiln
        // archive again: the kernel takes all of them, and so must we.
        let mut a = Archive::new();
        a.add_bytes("init", b"x".to_vec(), 0o755);
        let ours = bytes_of(&a, 0);
        let mut cat = ours.clone();
        cat.extend_from_slice(&gnu);
        cat.extend_from_slice(&[0u8; 100]);
        cat.extend_from_slice(&ours);
        let names: BTreeSet<String> = read(cat.as_slice())
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        let want: BTreeSet<String> = ["init", "d", "d/e", "d/e/f.txt", "ln", "odd"]
            .map(String::from)
            .into();
        assert_eq!(names, want);
        assert_eq!(read(cat.as_slice()).unwrap().len(), 7);
    }

    #[test]
    fn reader_rejects_damage() {
        let mut a = Archive::new();
        a.add_bytes("file", vec![7; 100], 0o644);
        let bytes = bytes_of(&a, 0);
        let err = read(&bytes[..bytes.len() - 20]).unwrap_err();
        assert!(matches!(err, CpioError::Truncated { .. }), "{err}");
        let err = read(&bytes[..150]).unwrap_err();
        assert!(matches!(err, CpioError::Truncated { .. }), "{err}");
        let err = read(&b"\x28\xb5\x2f\xfd rest"[..]).unwrap_err();
        assert!(matches!(err, CpioError::NotNewc { offset: 0, .. }), "{err}");
        let mut shifted = vec![0u8; 2];
        shifted.extend_from_slice(&bytes);
        let err = read(shifted.as_slice()).unwrap_err();
        assert!(matches!(err, CpioError::Misaligned { offset: 2 }), "{err}");
        assert!(read(&[][..]).unwrap().is_empty());
    }

    #[test]
    fn add_tree_keeps_modes_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("mods");
        fs::create_dir_all(src.join("kernel/kvm")).unwrap();
        fs::write(src.join("kernel/kvm/kvm.ko"), b"elf").unwrap();
        fs::set_permissions(
            src.join("kernel/kvm/kvm.ko"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::set_permissions(src.join("kernel"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("kernel/kvm/kvm.ko", src.join("link.ko")).unwrap();
        let mut a = Archive::new();
        a.add_tree("/lib/modules/6.1", &src).unwrap();
        let got: Vec<(String, u32)> = a
            .entries()
            .map(|e| (e.path().to_owned(), e.mode()))
            .collect();
        let root_mode = fs::metadata(&src).unwrap().permissions().mode();
        assert_eq!(
            got,
            [
                ("lib".into(), S_IFDIR | 0o755),
                ("lib/modules".into(), S_IFDIR | 0o755),
                ("lib/modules/6.1".into(), root_mode),
                ("lib/modules/6.1/kernel".into(), S_IFDIR | 0o750),
                (
                    "lib/modules/6.1/kernel/kvm".into(),
                    fs::metadata(src.join("kernel/kvm"))
                        .unwrap()
                        .permissions()
                        .mode()
                ),
                ("lib/modules/6.1/kernel/kvm/kvm.ko".into(), S_IFREG | 0o600),
                ("lib/modules/6.1/link.ko".into(), S_IFLNK | 0o777),
            ]
        );
        let mut root = Archive::new();
        root.add_tree("", &src).unwrap();
        assert_eq!(root.entries().next().map(Entry::path), Some("kernel"));
        let err = root.add_tree("x", &src.join("link.ko")).unwrap_err();
        assert!(matches!(err, CpioError::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string(S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(mode_string(S_IFLNK | 0o777), "lrwxrwxrwx");
        assert_eq!(mode_string(S_IFCHR | 0o600), "crw-------");
        assert_eq!(mode_string(S_IFREG | 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(S_IFREG | 0o2640), "-rw-r-S---");
        assert_eq!(mode_string(S_IFBLK | 0o660), "brw-rw----");
    }
}
