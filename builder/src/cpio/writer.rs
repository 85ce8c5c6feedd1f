//! The newc writer: an in-memory tree written as one reproducible archive.

use super::newc::{
    pad4, Header, COPY_BUF, HEADER_LEN, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, TRAILER,
};
use super::CpioError;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Permission bits of the parent directories kiln creates on its own.
const IMPLICIT_DIR_MODE: u32 = 0o755;

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

#[cfg(test)]
mod tests {
    use super::super::newc::{MAGIC_NEWC, S_IFMT};
    use super::super::read_with_data;
    use super::super::test_util::{bytes_of, run_cpio, sample};
    use super::*;
    use std::os::unix::fs::symlink;

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
}
