//! Validated content digests and streaming hashing.
//!
//! [`Digest`] builds on `oci_spec`'s digest grammar and narrows it to the algorithms
//! this extension allows (`sha256`, `sha512`; see `spec/blocks.md`), so that every
//! digest that reaches a file path or a comparison has been checked once.
//! [`DigestReader`] hashes a stream as it is read; [`VerifyingReader`] also refuses
//! it, at the end or as soon as it is too long, when it does not match a descriptor.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use oci_spec::image::DigestAlgorithm;
use sha2::Digest as _;

use crate::{Error, Result};

/// The digest algorithms this extension accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-256, 64 lowercase hexadecimal characters.
    Sha256,
    /// SHA-512, 128 lowercase hexadecimal characters.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as written in a digest.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

/// A content digest `ALGORITHM:HEX` with an accepted algorithm and a well-formed value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    inner: oci_spec::image::Digest,
    algorithm: Algorithm,
}

impl Digest {
    /// Parses and validates a digest.
    pub fn parse(value: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidDigest {
            value: value.to_string(),
            reason,
        };
        let inner = oci_spec::image::Digest::from_str(value).map_err(|e| invalid(e.to_string()))?;
        let algorithm = match inner.algorithm() {
            DigestAlgorithm::Sha256 => Algorithm::Sha256,
            DigestAlgorithm::Sha512 => Algorithm::Sha512,
            other => {
                return Err(invalid(format!(
                    "algorithm {other:?} is not supported (sha256 or sha512)",
                    other = other.as_ref()
                )));
            }
        };
        Ok(Digest { inner, algorithm })
    }

    /// The SHA-256 digest of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Self {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(bytes);
        h.finish()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hexadecimal part after the colon.
    pub fn hex(&self) -> &str {
        self.inner.digest()
    }

    /// The whole digest, `ALGORITHM:HEX`.
    pub fn as_str(&self) -> &str {
        self.inner.as_ref()
    }

    /// The `oci_spec` digest, for building `oci_spec` descriptors.
    pub fn as_oci(&self) -> &oci_spec::image::Digest {
        &self.inner
    }

    /// A short form for messages: the algorithm and the first 12 hex characters.
    pub fn short(&self) -> String {
        format!("{}:{}", self.algorithm.as_str(), &self.hex()[..12])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.as_str())
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Digest::parse(s)
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = Error;
    fn try_from(d: &oci_spec::image::Digest) -> Result<Self> {
        Digest::parse(d.as_ref())
    }
}

impl PartialOrd for Digest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Digest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental hash of one of the accepted algorithms.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// SHA-512 state.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh hash state.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        let text = format!("{}:{hex}", algorithm.as_str());
        let inner = oci_spec::image::Digest::from_str(&text)
            .unwrap_or_else(|_| unreachable!("a hash output is always a valid digest"));
        Digest { inner, algorithm }
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader that hashes and counts what passes through it.
pub struct DigestReader<R> {
    inner: R,
    hasher: Hasher,
    bytes: u64,
}

impl<R: Read> DigestReader<R> {
    /// Hashes `inner` with `algorithm`.
    pub fn new(inner: R, algorithm: Algorithm) -> Self {
        DigestReader {
            inner,
            hasher: Hasher::new(algorithm),
            bytes: 0,
        }
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reads what is left, then returns the digest and length of the whole stream.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.hasher.finish(), self.bytes))
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A writer that hashes (SHA-256) what it passes on.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: io::Write> HashingWriter<W> {
    /// Hashes what is written to `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(Algorithm::Sha256),
        }
    }

    /// The digest of everything written, and the writer.
    pub fn finish(self) -> (Digest, W) {
        (self.hasher.finish(), self.inner)
    }
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that fails unless the stream has exactly the expected digest and size.
///
/// The check happens when the inner reader reports its end: the read that would
/// return end-of-stream returns an [`io::ErrorKind::InvalidData`] error wrapping
/// [`Error::DigestMismatch`] or [`Error::SizeMismatch`] instead. A stream longer
/// than the expected size fails as soon as it passes it, so a hostile source
/// cannot make a reader consume unbounded data.
pub struct VerifyingReader<R> {
    inner: DigestReader<R>,
    expected: Digest,
    expected_size: Option<u64>,
    done: bool,
}

impl<R: Read> VerifyingReader<R> {
    /// Verifies `inner` against `expected` (and `expected_size` when given).
    pub fn new(inner: R, expected: Digest, expected_size: Option<u64>) -> Self {
        VerifyingReader {
            inner: DigestReader::new(inner, expected.algorithm()),
            expected,
            expected_size,
            done: false,
        }
    }

    /// Reads the rest of the stream, so that the digest is checked even when the
    /// consumer stopped early.
    pub fn finish(mut self) -> io::Result<u64> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.inner.bytes)
    }

    fn failure(err: Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        let seen = self.inner.bytes;
        if let Some(size) = self.expected_size {
            if seen > size {
                return Err(Self::failure(Error::SizeMismatch {
                    digest: self.expected.clone(),
                    expected: size,
                    found: seen,
                }));
            }
        }
        if n == 0 {
            if let Some(size) = self.expected_size {
                if seen != size {
                    return Err(Self::failure(Error::SizeMismatch {
                        digest: self.expected.clone(),
                        expected: size,
                        found: seen,
                    }));
                }
            }
            let found = self.inner.hasher.clone().finish();
            if found != self.expected {
                return Err(Self::failure(Error::DigestMismatch {
                    expected: self.expected.clone(),
                    found,
                }));
            }
            self.done = true;
        }
        Ok(n)
    }
}

/// Recovers this crate's error from an I/O error raised by a [`VerifyingReader`].
pub fn verification_error(err: &io::Error) -> Option<&Error> {
    err.get_ref().and_then(|e| e.downcast_ref::<Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn sha256_of_empty_is_the_known_value() {
        assert_eq!(Digest::sha256(b"").as_str(), EMPTY);
    }

    #[test]
    fn rejects_wrong_length_uppercase_and_unknown_algorithms() {
        for bad in [
            "sha256:abc",
            &EMPTY.to_uppercase(),
            &EMPTY.replace("sha256", "sha256x"),
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256",
            "",
            "../blah:attack",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Digest::parse(EMPTY).is_ok());
    }

    #[test]
    fn verifying_reader_refuses_one_flipped_byte() {
        let data = b"hello blocks".to_vec();
        let digest = Digest::sha256(&data);
        let mut ok = VerifyingReader::new(&data[..], digest.clone(), Some(data.len() as u64));
        let mut out = Vec::new();
        ok.read_to_end(&mut out).expect("intact data verifies");
        let mut bad = data.clone();
        bad[3] ^= 1;
        let mut r = VerifyingReader::new(&bad[..], digest.clone(), None);
        let err = r.read_to_end(&mut Vec::new()).expect_err("flipped byte");
        assert!(matches!(
            verification_error(&err),
            Some(Error::DigestMismatch { .. })
        ));
    }

    #[test]
    fn verifying_reader_stops_at_expected_size() {
        let data = vec![0u8; 100_000];
        let digest = Digest::sha256(&data);
        let mut r = VerifyingReader::new(&data[..], digest, Some(10));
        let err = r.read_to_end(&mut Vec::new()).expect_err("too long");
        assert!(matches!(
            verification_error(&err),
            Some(Error::SizeMismatch { expected: 10, .. })
        ));
    }
}
