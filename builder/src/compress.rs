//! Streaming compression in the formats the kernel can unpack an initramfs
//! from, and a decoder for all of them (for `kiln inspect` and compressed
//! kernel modules).
//!
//! Every encoder is pinned so that the same input gives the same bytes
//! whatever the machine's core count: no timestamps or names in headers, and
//! multithreaded modes whose output does not depend on the number of
//! threads. (zstd is built from the crate's bundled source; xz links the
//! system liblzma, so its bytes follow that library's version.)

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
    Lz4,
}

#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("unknown compression '{given}'; choose one of none, gzip, zstd, xz, lz4")]
    Unknown { given: String },
    #[error("the kernel cannot unpack a {compression}-compressed initramfs: its config lacks {symbol}=y; choose one of: {usable} (or build the kernel with {symbol}=y)")]
    NotInKernel {
        compression: Compression,
        symbol: &'static str,
        usable: String,
    },
}

impl Compression {
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Zstd,
        Compression::Xz,
        Compression::Lz4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
        }
    }

    /// File name extension without the dot ("" for none).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => "gz",
            Compression::Zstd => "zst",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
        }
    }

    /// The kernel option that lets the kernel unpack this format.
    pub fn kconfig_symbol(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("CONFIG_RD_GZIP"),
            Compression::Zstd => Some("CONFIG_RD_ZSTD"),
            Compression::Xz => Some("CONFIG_RD_XZ"),
            Compression::Lz4 => Some("CONFIG_RD_LZ4"),
        }
    }

    /// The level used when none is given.
    pub fn default_level(self) -> Option<i32> {
        match self {
            Compression::Gzip => Some(6),
            Compression::Zstd => Some(3),
            Compression::Xz => Some(6),
            Compression::None | Compression::Lz4 => None,
        }
    }

    /// The levels kiln takes for this format; `None`: it takes no level.
    /// zstd stops at 19: levels 20-22 need 64-128 MiB windows, which the
    /// kernel would have to allocate in early boot to decompress.
    pub fn level_range(self) -> Option<std::ops::RangeInclusive<i32>> {
        match self {
            Compression::Gzip | Compression::Xz => Some(0..=9),
            Compression::Zstd => Some(*zstd::compression_level_range().start()..=19),
            Compression::None | Compression::Lz4 => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = CompressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| CompressError::Unknown {
                given: s.to_owned(),
            })
    }
}

/// Refuses a format the kernel was built without, naming the missing
/// `CONFIG_RD_*` symbol and the formats that would work. `enabled` answers
/// whether a symbol is set (`=y`) in the kernel config.
pub fn check_kernel_support(
    c: Compression,
    enabled: impl Fn(&str) -> bool,
) -> Result<(), CompressError> {
    let Some(symbol) = c.kconfig_symbol() else {
        return Ok(());
    };
    if enabled(symbol) {
        return Ok(());
    }
    let usable: Vec<&str> = Compression::ALL
        .into_iter()
        .filter(|c| c.kconfig_symbol().is_none_or(&enabled))
        .map(Compression::name)
        .collect();
    Err(CompressError::NotInKernel {
        compression: c,
        symbol,
        usable: usable.join(", "),
    })
}

/// Worker threads for the multithreaded encoders: the machine's cores.
fn default_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
        .clamp(1, 64)
}

/// xz needs about 100 MiB per thread at preset 6, and an initramfs of tens
/// of MiB has only a few blocks (3 x dictionary size each) to share out, so
/// more threads would cost memory and gain nothing.
const XZ_MAX_THREADS: u32 = 4;

/// A streaming compressor writing to `W`.
///
/// `flush()` flushes only the underlying writer: forcing the compressor to
/// emit a block would put block boundaries wherever a caller happens to
/// flush and make the output depend on buffering. The compressed stream is
/// complete after [`Encoder::finish`].
pub struct Encoder<W: Write> {
    inner: Inner<W>,
}

// The compressors' state is not worth printing: the format says what it is.
impl<W: Write> std::fmt::Debug for Encoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let format = match self.inner {
            Inner::None(_) => "none",
            Inner::Gzip(_) => "gzip",
            Inner::Zstd(_) => "zstd",
            Inner::Xz(_) => "xz",
            Inner::Lz4(_) => "lz4",
        };
        f.debug_struct("Encoder")
            .field("format", &format)
            .finish_non_exhaustive()
    }
}

enum Inner<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(xz2::write::XzEncoder<W>),
    Lz4(Lz4LegacyWriter<W>),
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl<W: Write> Encoder<W> {
    /// `level` is `None` for the format's default (gzip 6, zstd 3, xz 6);
    /// none and lz4 take no level.
    pub fn new(c: Compression, level: Option<i32>, out: W) -> io::Result<Self> {
        Self::with_workers(c, level, out, default_workers())
    }

    /// Like [`Encoder::new`] with a given number of worker threads (zstd,
    /// xz, lz4). The output is the same for any `workers >= 1`.
    pub fn with_workers(
        c: Compression,
        level: Option<i32>,
        out: W,
        workers: u32,
    ) -> io::Result<Self> {
        let workers = workers.max(1);
        let level = match (c.default_level(), level) {
            (None, Some(l)) => {
                return Err(invalid_input(format!(
                    "{c} compression takes no level (got {l}); leave the level out"
                )))
            }
            (default, given) => given.or(default),
        };
        let ranged = |range: std::ops::RangeInclusive<i32>| -> io::Result<i32> {
            let l = level.unwrap_or(*range.start());
            if range.contains(&l) {
                Ok(l)
            } else {
                Err(invalid_input(format!(
                    "{c} level {l} is out of range; use {} to {}",
                    range.start(),
                    range.end()
                )))
            }
        };
        let inner = match c {
            Compression::None => Inner::None(out),
            Compression::Gzip => {
                let l = ranged(c.level_range().unwrap_or(0..=0))?.unsigned_abs();
                // mtime 0 and no file name keep the header reproducible.
                let enc = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(out, flate2::Compression::new(l));
                Inner::Gzip(enc)
            }
            Compression::Zstd => {
                let l = ranged(c.level_range().unwrap_or(0..=0))?;
                let mut enc = zstd::stream::write::Encoder::new(out, l)?;
                // Always in multithreaded mode, even with one worker: jobs
                // are cut by size (fixed by the level), so the output is the
                // same for any worker count, whereas single-threaded mode
                // (0 workers) would give different bytes.
                enc.multithread(workers)?;
                enc.include_checksum(true)?;
                Inner::Zstd(enc)
            }
            Compression::Xz => {
                let l = ranged(c.level_range().unwrap_or(0..=0))?.unsigned_abs();
                // The kernel's XZ decoder only checks CRC32 (or nothing),
                // see the kernel's Documentation/staging/xz.rst. The
                // multithreaded encoder cuts blocks by size (3 x dictionary
                // size for the preset), independent of the thread count.
                let stream = xz2::stream::MtStreamBuilder::new()
                    .threads(workers.min(XZ_MAX_THREADS))
                    .preset(l)
                    .check(xz2::stream::Check::Crc32)
                    .encoder()
                    .map_err(io::Error::other)?;
                Inner::Xz(xz2::write::XzEncoder::new_stream(out, stream))
            }
            Compression::Lz4 => Inner::Lz4(Lz4LegacyWriter::new(out, workers as usize)),
        };
        Ok(Encoder { inner })
    }

    /// Ends the compressed stream and returns the underlying writer.
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            Inner::None(w) => Ok(w),
            Inner::Gzip(e) => e.finish(),
            Inner::Zstd(e) => e.finish(),
            Inner::Xz(e) => e.finish(),
            Inner::Lz4(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::None(w) => w.write(buf),
            Inner::Gzip(e) => e.write(buf),
            Inner::Zstd(e) => e.write(buf),
            Inner::Xz(e) => e.write(buf),
            Inner::Lz4(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::None(w) => w.flush(),
            Inner::Gzip(e) => e.get_mut().flush(),
            Inner::Zstd(e) => e.get_mut().flush(),
            Inner::Xz(e) => e.get_mut().flush(),
            Inner::Lz4(e) => e.out.flush(),
        }
    }
}

/// Magic of the legacy lz4 format (`lz4 -l`), little-endian on disk.
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Magic of the current lz4 frame format, which the kernel cannot unpack.
const LZ4_FRAME_MAGIC: u32 = 0x184D_2204;
/// Uncompressed size of every legacy block but the last.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// Writes the legacy lz4 format, the only lz4 format the kernel unpacks
/// (lib/decompress_unlz4.c): the magic, then blocks of 8 MiB of input, each
/// an lz4 block prefixed by its compressed length (u32 LE). Hand-written
/// because lz4_flex writes only the frame format; the blocks come from
/// `lz4_flex::block`. Blocks are independent, so they are compressed in
/// parallel and the output does not depend on the worker count.
struct Lz4LegacyWriter<W: Write> {
    out: W,
    pending: Vec<u8>,
    workers: usize,
    started: bool,
}

impl<W: Write> Lz4LegacyWriter<W> {
    fn new(out: W, workers: usize) -> Self {
        Lz4LegacyWriter {
            out,
            pending: Vec::new(),
            workers: workers.max(1),
            started: false,
        }
    }

    fn capacity(&self) -> usize {
        self.workers * LZ4_LEGACY_BLOCK
    }

    /// Compresses the pending input (only whole blocks unless `last`).
    fn emit(&mut self, last: bool) -> io::Result<()> {
        if !self.started {
            self.out.write_all(&LZ4_LEGACY_MAGIC.to_le_bytes())?;
            self.started = true;
        }
        let take = if last {
            self.pending.len()
        } else {
            self.pending.len() / LZ4_LEGACY_BLOCK * LZ4_LEGACY_BLOCK
        };
        let chunks: Vec<&[u8]> = self.pending[..take].chunks(LZ4_LEGACY_BLOCK).collect();
        let blocks: Vec<Vec<u8>> = if chunks.len() > 1 {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunks
                    .iter()
                    .map(|c| s.spawn(move || lz4_flex::block::compress(c)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .map_err(|_| io::Error::other("an lz4 compression thread failed"))
                    })
                    .collect::<io::Result<Vec<_>>>()
            })?
        } else {
            chunks
                .iter()
                .map(|c| lz4_flex::block::compress(c))
                .collect()
        };
        for block in blocks {
            // An 8 MiB block compresses to at most about 8.04 MiB.
            let len = u32::try_from(block.len()).map_err(io::Error::other)?;
            self.out.write_all(&len.to_le_bytes())?;
            self.out.write_all(&block)?;
        }
        self.pending.drain(..take);
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        self.emit(true)?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Lz4LegacyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(self.capacity());
        }
        let n = buf.len().min(self.capacity() - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == self.capacity() {
            self.emit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads the legacy lz4 format (see [`Lz4LegacyWriter`]). Like the kernel
/// and `lz4 -d`, a repeated magic starts another legacy stream.
struct Lz4LegacyReader<R> {
    inner: R,
    block: Vec<u8>,
    pos: usize,
    compressed: Vec<u8>,
}

impl<R: Read> Lz4LegacyReader<R> {
    fn new(mut inner: R) -> io::Result<Self> {
        let mut magic = [0u8; 4];
        inner.read_exact(&mut magic)?;
        if u32::from_le_bytes(magic) != LZ4_LEGACY_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a legacy lz4 stream",
            ));
        }
        Ok(Lz4LegacyReader {
            inner,
            block: Vec::new(),
            pos: 0,
            compressed: Vec::new(),
        })
    }

    /// Decodes the next block; `false` at the end of the stream.
    fn next_block(&mut self) -> io::Result<bool> {
        loop {
            let mut len = [0u8; 4];
            let mut got = 0;
            while got < 4 {
                match self.inner.read(&mut len[got..]) {
                    Ok(0) if got == 0 => return Ok(false),
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let len = u32::from_le_bytes(len);
            if len == LZ4_LEGACY_MAGIC {
                continue;
            }
            let bound = lz4_flex::block::get_maximum_output_size(LZ4_LEGACY_BLOCK);
            if len as usize > bound {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("legacy lz4 block of {len} bytes is larger than the format allows"),
                ));
            }
            self.compressed.resize(len as usize, 0);
            self.inner.read_exact(&mut self.compressed)?;
            self.block.resize(LZ4_LEGACY_BLOCK, 0);
            let n = lz4_flex::block::decompress_into(&self.compressed, &mut self.block)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.block.truncate(n);
            self.pos = 0;
            return Ok(true);
        }
    }
}

impl<R: Read> Read for Lz4LegacyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.block.len() {
            if buf.is_empty() || !self.next_block()? {
                return Ok(0);
            }
        }
        // `pos < block.len()` after the loop above.
        let avail = &self.block[self.pos..];
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// The compression of a stream, from its first bytes (`None` when no known
/// compression magic is there).
pub fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else if head.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        Compression::Lz4
    } else {
        Compression::None
    }
}

/// Formats kiln recognizes only to explain that it does not read them.
fn foreign_format(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&LZ4_FRAME_MAGIC.to_le_bytes()) {
        Some("in the lz4 frame format (the kernel only unpacks legacy lz4, as written by `lz4 -l`)")
    } else if head.starts_with(b"BZh") {
        Some("bzip2-compressed")
    } else if head.starts_with(&[0x89, b'L', b'Z', b'O']) {
        Some("lzop-compressed")
    } else if head.starts_with(&[0x5d, 0, 0]) {
        Some("lzma-compressed")
    } else {
        None
    }
}

/// Reads up to `buf.len()` bytes, fewer only at the end of input.
fn read_head<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Detects the compression of `r` from its magic and returns a reader of
/// the decompressed data: gzip (several members), zstd (several frames), xz
/// (several streams), legacy lz4, or the data itself when uncompressed.
pub fn decoder<'a, R: Read + 'a>(mut r: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut head = [0u8; 6];
    let n = read_head(&mut r, &mut head)?;
    let head = &head[..n];
    if let Some(what) = foreign_format(head) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the data is {what}; kiln reads gzip, zstd, xz, legacy lz4 and uncompressed data"
            ),
        ));
    }
    let c = detect(head);
    let input = BufReader::with_capacity(1 << 16, io::Cursor::new(head.to_vec()).chain(r));
    let reader: Box<dyn Read + 'a> = match c {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
        Compression::Xz => Box::new(xz2::bufread::XzDecoder::new_multi_decoder(input)),
        Compression::Lz4 => Box::new(Lz4LegacyReader::new(input)?),
    };
    Ok((c, reader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// Compressible but not trivial: words from a small vocabulary with
    /// pseudo-random choices and numbers.
    fn sample(len: usize) -> Vec<u8> {
        let words: [&[u8]; 8] = [
            b"kernel ",
            b"module ",
            b"kvm ",
            b"vfio ",
            b"\x00\x01\x02\x03",
            b"initramfs\n",
            b"appliance ",
            b"\x7fELF",
        ];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(words[(x % 8) as usize]);
            if x % 5 == 0 {
                out.extend_from_slice(format!("{}", x % 100_000).as_bytes());
            }
        }
        out.truncate(len);
        out
    }

    fn compress(
        c: Compression,
        level: Option<i32>,
        workers: u32,
        data: &[u8],
        chunk: usize,
    ) -> Vec<u8> {
        let mut enc = Encoder::with_workers(c, level, Vec::new(), workers).unwrap();
        for piece in data.chunks(chunk) {
            enc.write_all(piece).unwrap();
            // Flushing must not change the output (see Encoder's docs).
            enc.flush().unwrap();
        }
        enc.finish().unwrap()
    }

    fn decode(bytes: &[u8]) -> (Compression, Vec<u8>) {
        let (c, mut r) = decoder(bytes).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        (c, out)
    }

    /// Runs a reference tool; a missing tool fails the test loudly.
    fn tool(name: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
        let package = match name {
            "xz" => "xz-utils",
            other => other,
        };
        let mut child = Command::new(name)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{name} is needed for this test ({e}): apt-get install {package}")
            });
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "{name} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn reference_decompress(c: Compression, bytes: &[u8]) -> Vec<u8> {
        match c {
            Compression::None => bytes.to_vec(),
            Compression::Gzip => tool("gzip", &["-d", "-c"], bytes),
            Compression::Zstd => tool("zstd", &["-d", "-c", "-q"], bytes),
            Compression::Xz => tool("xz", &["-d", "-c"], bytes),
            Compression::Lz4 => tool("lz4", &["-d", "-c", "-q"], bytes),
        }
    }

    #[test]
    fn every_format_round_trips_and_is_deterministic() {
        let data = sample(3 << 20);
        for c in Compression::ALL {
            let level = match c {
                Compression::Xz => Some(1),
                _ => None,
            };
            let a = compress(c, level, 2, &data, 1 << 20);
            let b = compress(c, level, 2, &data, 77_777);
            assert_eq!(a, b, "{c}: same input, same bytes");
            assert_eq!(detect(&a), c);
            if c != Compression::None {
                assert!(a.len() < data.len() / 2, "{c} compresses");
            }
            let (found, ours) = decode(&a);
            assert_eq!(found, c);
            assert!(ours == data, "{c}: our decoder gives the input back");
            assert!(
                reference_decompress(c, &a) == data,
                "{c}: the reference tool agrees"
            );
        }
    }

    #[test]
    fn gzip_header_has_no_time_or_name() {
        let gz = compress(Compression::Gzip, None, 1, b"x", 1);
        // Flags (byte 3) without FNAME, and MTIME (bytes 4..8) zero.
        assert_eq!(gz[3] & 0x08, 0);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
    }

    #[test]
    fn zstd_is_the_same_for_any_worker_count() {
        let data = sample(12 << 20);
        let one = compress(Compression::Zstd, None, 1, &data, 1 << 20);
        for workers in [2, 4] {
            let many = compress(Compression::Zstd, None, workers, &data, 300_001);
            assert!(
                one == many,
                "zstd with {workers} workers differs from 1 worker"
            );
        }
        assert!(decode(&one).1 == data);
        // Frame header: checksum flag set (bit 2 of the descriptor).
        assert_ne!(one[4] & 0x04, 0);
    }

    #[test]
    fn xz_is_the_same_for_any_worker_count_and_uses_crc32() {
        // Preset 1 has a 1 MiB dictionary, so 3 MiB blocks: several blocks.
        let data = sample(10 << 20);
        let one = compress(Compression::Xz, Some(1), 1, &data, 1 << 20);
        let three = compress(Compression::Xz, Some(1), 3, &data, 123_457);
        assert!(one == three, "xz output depends on the thread count");
        // Stream flags (bytes 6..8): check type 1 is CRC32.
        assert_eq!(&one[6..8], &[0x00, 0x01]);
        assert!(decode(&one).1 == data);
    }

    #[test]
    fn lz4_legacy_is_parallel_deterministic_and_reads_lz4_cli() {
        // More than two 8 MiB blocks, the last partial.
        let data = sample(17 << 20);
        let one = compress(Compression::Lz4, None, 1, &data, 1 << 20);
        let three = compress(Compression::Lz4, None, 3, &data, 5_000_000);
        assert!(one == three, "lz4 output depends on the worker count");
        assert_eq!(&one[..4], &LZ4_LEGACY_MAGIC.to_le_bytes());
        let first_len = u32::from_le_bytes(one[4..8].try_into().unwrap()) as usize;
        let first = lz4_flex::block::decompress(&one[8..8 + first_len], LZ4_LEGACY_BLOCK).unwrap();
        assert_eq!(first.len(), LZ4_LEGACY_BLOCK, "blocks hold 8 MiB");
        assert!(tool("lz4", &["-d", "-c", "-q"], &one) == data);

        let cli = tool("lz4", &["-l", "-c", "-q"], &data);
        let (c, ours) = decode(&cli);
        assert_eq!(c, Compression::Lz4);
        assert!(ours == data, "we read what `lz4 -l` writes");
        // Two legacy streams back to back are one stream of both inputs.
        let mut two = compress(Compression::Lz4, None, 1, b"first ", 64);
        two.extend(compress(Compression::Lz4, None, 1, b"second", 64));
        assert_eq!(decode(&two).1, b"first second");
        // Empty input: the magic alone.
        assert_eq!(
            compress(Compression::Lz4, None, 1, b"", 1),
            LZ4_LEGACY_MAGIC.to_le_bytes()
        );
        assert!(decode(&LZ4_LEGACY_MAGIC.to_le_bytes()).1.is_empty());
    }

    #[test]
    fn decoder_reads_reference_tools_and_concatenations() {
        let data = sample(200_000);
        for (c, name, args) in [
            (Compression::Gzip, "gzip", &["-c", "-n"][..]),
            (Compression::Zstd, "zstd", &["-c", "-q", "-T0"][..]),
            (Compression::Xz, "xz", &["-c", "--check=crc32"][..]),
        ] {
            let theirs = tool(name, args, &data);
            let (found, ours) = decode(&theirs);
            assert_eq!(found, c);
            assert!(ours == data, "{c}: we read what {name} writes");
            let mut twice = theirs.clone();
            twice.extend_from_slice(&theirs);
            let (_, ours) = decode(&twice);
            assert!(
                ours.len() == 2 * data.len(),
                "{c}: concatenated streams are both read"
            );
        }
    }

    #[test]
    fn decoder_explains_foreign_formats() {
        let frame = tool("lz4", &["-c", "-q"], b"frame format");
        let err = decoder(frame.as_slice()).err().unwrap();
        assert!(err.to_string().contains("legacy lz4"), "{err}");
        let err = decoder(&b"BZh91AY&SY"[..]).err().unwrap();
        assert!(err.to_string().contains("bzip2"), "{err}");
        let (c, mut r) = decoder(&b"0707"[..]).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!((c, s.as_str()), (Compression::None, "0707"));
    }

    #[test]
    fn names_parse_display_and_serialize() {
        for c in Compression::ALL {
            assert_eq!(c.to_string().parse::<Compression>().unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{c}\""));
            assert_eq!(serde_json::from_str::<Compression>(&json).unwrap(), c);
        }
        assert_eq!("ZSTD".parse::<Compression>().unwrap(), Compression::Zstd);
        let err = "bzip2".parse::<Compression>().unwrap_err().to_string();
        assert!(
            err.contains("bzip2") && err.contains("none, gzip, zstd, xz, lz4"),
            "{err}"
        );
        assert_eq!(Compression::Zstd.extension(), "zst");
        assert_eq!(Compression::None.extension(), "");
        assert_eq!(Compression::Lz4.kconfig_symbol(), Some("CONFIG_RD_LZ4"));
        assert_eq!(Compression::None.kconfig_symbol(), None);
    }

    #[test]
    fn levels_are_checked() {
        let bad = [
            (Compression::Xz, Some(10)),
            (Compression::Gzip, Some(-1)),
            (Compression::Zstd, Some(22)),
            (Compression::Lz4, Some(1)),
            (Compression::None, Some(1)),
        ];
        for (c, level) in bad {
            let err = Encoder::new(c, level, Vec::new()).err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{c} {level:?}");
        }
        assert!(Encoder::new(Compression::Zstd, Some(19), Vec::new()).is_ok());
        let fast = compress(Compression::Zstd, Some(1), 1, &sample(1 << 20), 1 << 16);
        let slow = compress(Compression::Zstd, Some(12), 1, &sample(1 << 20), 1 << 16);
        assert_ne!(fast, slow, "the level is applied");
    }

    #[test]
    fn kernel_support_is_checked() {
        let config = ["CONFIG_RD_GZIP", "CONFIG_RD_XZ"];
        let enabled = |s: &str| config.contains(&s);
        assert!(check_kernel_support(Compression::Gzip, enabled).is_ok());
        assert!(check_kernel_support(Compression::None, |_| false).is_ok());
        let err = check_kernel_support(Compression::Zstd, enabled).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("CONFIG_RD_ZSTD"), "{msg}");
        assert!(msg.contains("none, gzip, xz"), "{msg}");
        assert!(!msg.contains("lz4,"), "{msg}");
    }
}
