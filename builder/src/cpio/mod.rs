//! kiln's cpio "newc" (070701) archives: the format the kernel unpacks
//! into the initramfs (see the kernel's
//! Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! - [`newc`]: the on-disk format both sides share (magics, header, padding,
//!   mode bits);
//! - [`writer`]: [`Archive`], the reproducible writer `kiln build` uses;
//! - [`reader`]: [`read`] and [`Reader`], what `kiln inspect` lists with.
//!
//! Hand-written on purpose, re-checked against the `cpio` crate (0.4.2):
//! its `newc::Builder` takes the inode, mode, mtime and device numbers, so
//! it could encode kiln's headers, but that encoding is the smallest part
//! of this module (`newc.rs`, a few dozen lines). What makes an archive
//! reproducible is the tree: entries sorted, parents made implicitly,
//! inodes renumbered, timestamps pinned to `SOURCE_DATE_EPOCH` (`writer`),
//! and the crate has none of it; its `Writer` takes the output by value
//! per entry, which the streaming compressor behind kiln's writer would
//! have to be threaded through. Its `Reader` reads one entry at a time;
//! kiln's reader must also follow what the kernel accepts across entries
//! (GNU cpio's output, several archives back to back with zero padding)
//! and is fuzzed as such (fuzz/fuzz_targets/cpio.rs).
//! A dependency would replace the header codec only, so it stays.

mod newc;
mod reader;
#[cfg(test)]
mod test_util;
mod writer;

pub use newc::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK};
pub use reader::{
    mode_string, read, read_with, read_with_data, type_name, DataFn, ListedEntry, Reader,
};
pub use writer::{Archive, Entry, EntryKind};

use std::io;
use std::path::PathBuf;

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
