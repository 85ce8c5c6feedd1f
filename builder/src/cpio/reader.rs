//! The newc reader: lists what an archive holds (`kiln inspect`), accepting
//! what the kernel accepts.

use super::newc::{
    pad4, Header, COPY_BUF, HEADER_LEN, MAGIC_CRC, MAGIC_NEWC, MAX_NAME, S_IFBLK, S_IFCHR, S_IFDIR,
    S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, TRAILER,
};
use super::CpioError;
use std::io::{self, BufRead, BufReader, Read};

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
#[derive(Debug)]
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
    // Owner, group, other: each class's rwx bits and its special bit.
    let special = [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ];
    for (shift, bit, on, off) in special {
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
    use super::super::test_util::{bytes_of, run_cpio, sample};
    use super::super::{Archive, EntryKind};
    use super::*;
    use std::collections::BTreeSet;
    use std::fs;
    use std::os::unix::fs::symlink;

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
