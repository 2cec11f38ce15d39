//! The import pipeline's readers: the blob as given is hashed (sha256, size), its
//! compression detected by magic bytes and undone, and the uncompressed tar stream
//! hashed again (blake3 for the key, sha256 for the OCI diff_id) as the tar reader
//! pulls it. Nothing is buffered beyond the decoders' own windows.

use std::io::{self, BufReader, Chain, Cursor, Read};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{Error, Result};

/// How a layer blob is compressed, detected from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (`1f 8b`), possibly several members.
    Gzip,
    /// zstd (`28 b5 2f fd`), possibly several frames.
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const MAGIC_LEN: usize = 6;

/// Counts and sha256-hashes the bytes of the blob as given (compressed).
#[derive(Debug)]
pub struct BlobReader<R> {
    inner: R,
    sha256: Sha256,
    bytes: u64,
}

impl<R: Read> BlobReader<R> {
    pub fn new(inner: R) -> Self {
        BlobReader {
            inner,
            sha256: Sha256::new(),
            bytes: 0,
        }
    }

    /// The blob's digest (`sha256:<hex>`) and size, after reading it to its end.
    pub fn finish(mut self) -> Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink()).map_err(Error::Read)?;
        Ok((
            super::digest::sha256_digest(&self.sha256.finalize()),
            self.bytes,
        ))
    }
}

impl<R: Read> Read for BlobReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha256.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

type Prefixed<R> = Chain<Cursor<Vec<u8>>, R>;

/// Undoes the blob's compression.
pub enum Decoder<R: Read> {
    Plain(Prefixed<R>),
    Gzip(flate2::read::MultiGzDecoder<Prefixed<R>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<Prefixed<R>>>),
}

impl<R: Read> std::fmt::Debug for Decoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Decoder").field(&self.compression()).finish()
    }
}

impl<R: Read> Decoder<R> {
    /// Reads the first bytes of `inner` to detect the compression and builds the
    /// matching decoder (the bytes read are replayed to it).
    pub fn detect(mut inner: R) -> Result<Self> {
        let mut magic = Vec::with_capacity(MAGIC_LEN);
        (&mut inner)
            .take(MAGIC_LEN as u64)
            .read_to_end(&mut magic)
            .map_err(Error::Read)?;
        let compression = if magic.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if magic.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else if magic.starts_with(XZ_MAGIC) {
            return Err(Error::UnsupportedCompression("xz"));
        } else {
            Compression::None
        };
        let input = Cursor::new(magic).chain(inner);
        Ok(match compression {
            Compression::None => Decoder::Plain(input),
            Compression::Gzip => Decoder::Gzip(flate2::read::MultiGzDecoder::new(input)),
            Compression::Zstd => {
                Decoder::Zstd(zstd::stream::read::Decoder::new(input).map_err(Error::Read)?)
            }
        })
    }

    pub fn compression(&self) -> Compression {
        match self {
            Decoder::Plain(_) => Compression::None,
            Decoder::Gzip(_) => Compression::Gzip,
            Decoder::Zstd(_) => Compression::Zstd,
        }
    }

    /// The compressed input, for reading whatever follows the compressed stream (the
    /// blob's digest covers every byte). Bytes the decoder buffered were already read
    /// from it, so they are hashed too.
    pub fn into_input(self) -> R {
        match self {
            Decoder::Plain(c) => c.into_inner().1,
            Decoder::Gzip(d) => d.into_inner().into_inner().1,
            Decoder::Zstd(d) => d.finish().into_inner().into_inner().1,
        }
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

/// Digests of the uncompressed tar stream.
#[derive(Debug)]
pub struct StreamDigests {
    pub blake3: blake3::Hash,
    /// `sha256:<hex>`, the OCI diff_id.
    pub diff_id: String,
    pub size: u64,
}

/// Hashes the uncompressed stream as the tar reader consumes it.
#[derive(Debug)]
pub struct TarStream<R> {
    inner: R,
    blake3: blake3::Hasher,
    sha256: Sha256,
    bytes: u64,
}

impl<R: Read> TarStream<R> {
    pub fn new(inner: R) -> Self {
        TarStream {
            inner,
            blake3: blake3::Hasher::new(),
            sha256: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads what follows the tar's end marker (padding, trailing blocks), so the
    /// digests cover the whole stream, and returns them with the inner reader.
    pub fn finish(mut self) -> Result<(StreamDigests, R)> {
        io::copy(&mut self, &mut io::sink()).map_err(Error::Read)?;
        let digests = StreamDigests {
            blake3: self.blake3.finalize(),
            diff_id: super::digest::sha256_digest(&self.sha256.finalize()),
            size: self.bytes,
        };
        Ok((digests, self.inner))
    }
}

impl<R: Read> Read for TarStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.blake3.update(&buf[..n]);
        self.sha256.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(blob: &[u8]) -> (Compression, Vec<u8>) {
        let mut d = Decoder::detect(blob).unwrap();
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        (d.compression(), out)
    }

    #[test]
    fn detects_by_magic() {
        let data = b"hello layer".repeat(100);
        assert_eq!(roundtrip(&data), (Compression::None, data.clone()));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        assert_eq!(
            roundtrip(&gz.finish().unwrap()),
            (Compression::Gzip, data.clone())
        );
        let zs = zstd::encode_all(&data[..], 1).unwrap();
        assert_eq!(roundtrip(&zs), (Compression::Zstd, data.clone()));
        assert_eq!(roundtrip(b"ab"), (Compression::None, b"ab".to_vec()));
        assert!(matches!(
            Decoder::detect(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1][..]),
            Err(Error::UnsupportedCompression("xz"))
        ));
    }

    #[test]
    fn blob_digest_covers_every_byte() {
        let blob = zstd::encode_all(&b"abc".repeat(10_000)[..], 1).unwrap();
        let mut d = Decoder::detect(BlobReader::new(&blob[..])).unwrap();
        io::copy(&mut d, &mut io::sink()).unwrap();
        let (digest, size) = d.into_input().finish().unwrap();
        assert_eq!(size, blob.len() as u64);
        assert_eq!(digest, crate::digest::sha256_digest(&Sha256::digest(&blob)));
    }
}
