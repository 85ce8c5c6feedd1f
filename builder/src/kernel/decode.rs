//! Decompression by file name, for a .deb's `data.tar.*` member and for
//! compressed kernel modules (`.ko.xz`, `.ko.zst`, `.ko.gz`).
// TODO(lead): switch to compress::decoder

use std::io::{self, Read};

/// A reader that decompresses `inner` according to the suffix of `name`
/// (`.xz`, `.zst`, `.gz`, or none for plain data); `None` for a compression
/// this helper does not know.
pub(super) fn decoder<'a>(
    name: &str,
    inner: impl Read + 'a,
) -> io::Result<Option<Box<dyn Read + 'a>>> {
    let reader: Box<dyn Read + 'a> = if name.ends_with(".xz") {
        Box::new(xz2::read::XzDecoder::new_multi_decoder(inner))
    } else if name.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(inner)?)
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(inner))
    } else if name.ends_with(".bz2") || name.ends_with(".lzma") || name.ends_with(".lz4") {
        return Ok(None);
    } else {
        Box::new(inner)
    };
    Ok(Some(reader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(name: &str, packed: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        decoder(name, packed)
            .unwrap()
            .expect("known compression")
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn decodes_each_known_suffix() {
        let data = b"modinfo bytes ".repeat(100);
        let xz = {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&data[..], 3).unwrap();
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(roundtrip("a.ko.xz", &xz), data);
        assert_eq!(roundtrip("data.tar.zst", &zst), data);
        assert_eq!(roundtrip("a.ko.gz", &gz), data);
        assert_eq!(roundtrip("a.ko", &data), data);
        assert!(decoder("data.tar.bz2", &data[..]).unwrap().is_none());
    }
}
