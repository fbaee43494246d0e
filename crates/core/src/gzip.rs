//! The gzip writer of every layer the project writes: one gzip member whose
//! deflate stream is made in fixed chunks compressed side by side, as pigz
//! makes it, so that a layer is compressed on every core.
//!
//! The uncompressed stream is cut every [`CHUNK`] bytes. Each chunk is
//! deflated on its own with the 32 KiB before it as the dictionary (so
//! matches reach back across the cut as in one stream) and ends with a sync
//! flush, which aligns it to a byte; the last one ends the stream. The
//! chunks are concatenated in order, between one header and one trailer, so
//! the result is one ordinary gzip member that every reader takes, and the
//! same input at the same level always gives the same bytes, whatever the
//! number of cores. Chunks are compressed on the rayon pool, so a writer
//! used inside parallel work shares the cores with it instead of adding
//! threads.

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use rayon::prelude::*;

/// Bytes of uncompressed input per chunk.
pub const CHUNK: usize = 1 << 20;
/// Chunks gathered before they are compressed together.
const BATCH: usize = 8;
/// The window deflate matches reach back over.
const WINDOW: usize = 32 << 10;

/// A gzip writer that compresses its input in parallel chunks.
pub struct ParallelGz<W: Write> {
    inner: W,
    level: Compression,
    /// The level for chunks that look compressed already.
    compressed_level: Compression,
    /// Input not yet compressed: the dictionary's bytes first (`dict` of
    /// them), then whole chunks and a partial one.
    pending: Vec<u8>,
    dict: usize,
    crc: Crc,
}

impl<W: Write> ParallelGz<W> {
    /// Writes the gzip header to `inner`; `level` as zlib's levels.
    pub fn new(mut inner: W, level: Compression) -> io::Result<Self> {
        // ID1 ID2, deflate, no flags, no mtime, no extra flags, OS unknown.
        inner.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255])?;
        Ok(ParallelGz {
            inner,
            level,
            compressed_level: level,
            pending: Vec::with_capacity(WINDOW + CHUNK * BATCH),
            dict: 0,
            crc: Crc::new(),
        })
    }

    /// The writer of the project's layers: zlib level 6, and level 2 for
    /// chunks that look compressed already, which costs 0.2 % in size on
    /// jars for a quarter of their deflate time (BENCHMARKS.md, "gzip
    /// levels").
    pub fn for_layers(inner: W) -> io::Result<Self> {
        Ok(ParallelGz::new(inner, Compression::new(6))?.compressed_level(Compression::new(2)))
    }

    /// Deflates chunks that look compressed already (jars, wheels, images:
    /// [`looks_compressed`]) at `level` instead: deflate finds almost
    /// nothing in them, and the higher levels spend most of their time
    /// looking. Which chunks those are depends on their bytes alone, so the
    /// output is still the same for the same input.
    pub fn compressed_level(mut self, level: Compression) -> Self {
        self.compressed_level = level;
        self
    }

    /// Compresses the whole chunks pending (and, with `last`, the rest,
    /// ending the stream), keeping the window after them as the next
    /// dictionary.
    fn flush_chunks(&mut self, last: bool) -> io::Result<()> {
        let data = &self.pending[self.dict..];
        let whole = data.len() / CHUNK;
        let count = if last { whole + 1 } else { whole };
        if count == 0 {
            return Ok(());
        }
        let dict = self.dict;
        let pending = &self.pending;
        let (level, compressed_level) = (self.level, self.compressed_level);
        let outputs: Vec<io::Result<Vec<u8>>> = (0..count)
            .into_par_iter()
            .map(|i| {
                let start = dict + i * CHUNK;
                let end = if i == whole {
                    pending.len()
                } else {
                    start + CHUNK
                };
                let window = &pending[start.saturating_sub(WINDOW)..start];
                let chunk = &pending[start..end];
                let level = if compressed_level != level && looks_compressed(chunk) {
                    compressed_level
                } else {
                    level
                };
                deflate_chunk(level, window, chunk, last && i + 1 == count)
            })
            .collect();
        for out in outputs {
            self.inner.write_all(&out?)?;
        }
        let used = dict + whole * CHUNK;
        let keep_from = used.saturating_sub(WINDOW);
        self.pending.drain(..keep_from);
        self.dict = used - keep_from;
        Ok(())
    }

    /// Compresses what is left, writes the trailer and returns the inner
    /// writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush_chunks(true)?;
        let (crc, size) = (self.crc.sum(), self.crc.amount());
        let mut inner = self.inner;
        inner.write_all(&crc.to_le_bytes())?;
        inner.write_all(&size.to_le_bytes())?;
        Ok(inner)
    }
}

/// Whether `chunk` looks compressed already: the order-0 entropy of every
/// fourth byte is above 7.8 bits per byte (deflate streams in jars are about
/// 7.95; machine code and text 4 to 6.5).
pub fn looks_compressed(chunk: &[u8]) -> bool {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for &b in chunk.iter().step_by(4) {
        counts[usize::from(b)] += 1;
        n += 1;
    }
    if n < 4096 {
        return false;
    }
    let n = f64::from(n);
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    bits > 7.8
}

/// Deflates `chunk` with `window` as the dictionary: ends with a sync flush,
/// or the end of the stream when `last`.
fn deflate_chunk(
    level: Compression,
    window: &[u8],
    chunk: &[u8],
    last: bool,
) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(level, false);
    if !window.is_empty() {
        c.set_dictionary(window).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 8 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&chunk[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let done = c.total_in() as usize == chunk.len();
        match status {
            Status::StreamEnd => break,
            // Room left in the output: the flush is complete.
            _ if done && !last && out.len() < out.capacity() => break,
            _ => out.reserve(64 << 10),
        }
    }
    Ok(out)
}

impl<W: Write> Write for ParallelGz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.crc.update(buf);
        self.pending.extend_from_slice(buf);
        if self.pending.len() - self.dict >= CHUNK * BATCH {
            self.flush_chunks(false)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gz(data: &[u8], level: u32) -> Vec<u8> {
        let mut w = ParallelGz::new(Vec::new(), Compression::new(level)).expect("header");
        // In uneven pieces, so that chunks are cut inside writes.
        for piece in data.chunks(77_777) {
            w.write_all(piece).expect("write");
        }
        w.finish().expect("finish")
    }

    fn sample(n: usize) -> Vec<u8> {
        // Text-like and repetitive across chunk cuts, with noise.
        let mut x: u32 = 1;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                if i % 3 == 0 {
                    (x >> 24) as u8
                } else {
                    b"the quick brown fox "[i % 20]
                }
            })
            .collect()
    }

    #[test]
    fn any_gzip_reader_reads_it_back() {
        for n in [
            0,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK * BATCH + 12_345,
        ] {
            let data = sample(n);
            let out = gz(&data, 6);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&out[..])
                .read_to_end(&mut back)
                .expect("one valid gzip member");
            assert_eq!(back, data, "{n} bytes");
            // One member: a multi-member reader finds nothing after it.
            let mut multi = Vec::new();
            flate2::read::MultiGzDecoder::new(&out[..])
                .read_to_end(&mut multi)
                .expect("valid");
            assert_eq!(multi.len(), n);
        }
    }

    #[test]
    fn the_same_input_gives_the_same_bytes_and_about_one_streams_size() {
        let data = sample(5 * CHUNK + 999);
        let a = gz(&data, 6);
        let b = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool")
            .install(|| gz(&data, 6));
        assert_eq!(a, b, "the bytes do not depend on the number of threads");
        let mut one = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        one.write_all(&data).expect("write");
        let one = one.finish().expect("finish");
        assert!(
            a.len() <= one.len() + one.len() / 100 + 64,
            "{} against one stream's {}",
            a.len(),
            one.len()
        );
    }

    #[test]
    fn compressed_chunks_take_their_own_level_and_the_stream_stays_whole() {
        // Noise (as in a jar) and text, a few chunks of each.
        let mut x: u64 = 7;
        let mut data: Vec<u8> = (0..2 * CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(looks_compressed(&data[..CHUNK]));
        let text = sample(2 * CHUNK);
        assert!(!looks_compressed(&text[..CHUNK]));
        data.extend(&text);
        let write = |fast: bool| {
            let mut w = ParallelGz::new(Vec::new(), Compression::new(6)).expect("header");
            if fast {
                w = w.compressed_level(Compression::new(1));
            }
            w.write_all(&data).expect("write");
            w.finish().expect("finish")
        };
        let (plain, adaptive) = (write(false), write(true));
        assert_ne!(plain, adaptive, "the noise took the other level");
        assert_eq!(adaptive, write(true), "the same bytes every time");
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&adaptive[..])
            .read_to_end(&mut back)
            .expect("one valid member");
        assert_eq!(back, data);
    }

    #[test]
    fn a_corrupt_chunk_is_caught_by_the_trailer() {
        let data = sample(2 * CHUNK);
        let mut out = gz(&data, 6);
        let at = out.len() - 4;
        out[at] ^= 1; // the size in the trailer
        let mut back = Vec::new();
        assert!(
            flate2::read::GzDecoder::new(&out[..])
                .read_to_end(&mut back)
                .is_err()
        );
    }
}
