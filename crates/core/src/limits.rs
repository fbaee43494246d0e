//! Bounds on the work a hostile image can cause: what one image may
//! materialize, how many imports one layer may hold, and how far a compressed
//! layer or block may expand. `spec/imports.md` ("Size bounds") says
//! implementations SHOULD bound these; this module holds the project's bounds,
//! their defaults and the flags that raise them, so that every tool names
//! them the same way.
//!
//! The defaults are far above what real images reach: the largest images in
//! common use (CUDA and ML runtimes) materialize some tens of GiB and compress
//! by less than 10x, and an application imports each block about once. An
//! image that needs more is refused with an error that names the bound and
//! its flag, before anything beyond the bound is written.

use std::fmt;
use std::io::{self, Read};

/// One GiB.
pub const GIB: u64 = 1 << 30;

/// Bounds one unpack (or validation) works within.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of file content the imports of one image may materialize in all
    /// (`--max-import-bytes`).
    pub import_bytes: u64,
    /// How many times the content of the blocks an image imports it may
    /// materialize, plus [`Limits::import_floor`]
    /// (`--max-import-ratio`): an import of the same block a thousand times is
    /// refused early, whatever the absolute bound.
    pub import_ratio: u64,
    /// Bytes every image may materialize beyond the ratio, for small blocks
    /// imported at many paths.
    pub import_floor: u64,
    /// Entries (files, directories, links) the imports of one image may
    /// materialize in all (`--max-import-entries`): a block of many empty
    /// files imported many times costs inodes, not bytes.
    pub import_entries: u64,
    /// Import entries in one layer (`--max-imports-per-layer`).
    pub imports_per_layer: u64,
    /// How many times its compressed size a layer or block may expand to,
    /// beyond a first [`Limits::expansion_floor`] (`--max-expansion`).
    pub expansion_ratio: u64,
    /// Bytes any layer or block may expand to whatever its compressed size.
    pub expansion_floor: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            import_bytes: 64 * GIB,
            import_ratio: 4,
            import_floor: 64 << 20,
            import_entries: 1 << 22,
            imports_per_layer: 65_536,
            expansion_ratio: 256,
            expansion_floor: GIB,
        }
    }
}

/// Bytes in a readable unit (`5.0 GiB`, `97 B`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Parses a byte count: a number with an optional unit, `K`/`M`/`G`/`T`
/// (powers of 1024, with or without `i` and `B`) or `B` (`64GiB`, `512M`,
/// `1000`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count (for example 64GiB, 512M, 1000)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "{other:?} in {text:?} is not a unit (B, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// A bound that an image exceeded, named with its flag.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} {amount}, more than the limit of {limit} ({flag} raises it)")]
pub struct Exceeded {
    /// What exceeded it (`layer 3 expands to`, `the image's imports materialize`).
    pub what: String,
    /// How much (human-readable).
    pub amount: String,
    /// The bound (human-readable, with how it was computed).
    pub limit: String,
    /// The flag that raises it.
    pub flag: &'static str,
}

impl Limits {
    /// The uncompressed bytes a layer or block of `compressed` bytes may
    /// expand to.
    pub fn expansion_limit(&self, compressed: u64) -> u64 {
        self.expansion_floor
            .max(compressed.saturating_mul(self.expansion_ratio))
    }

    /// Fails when `uncompressed` bytes of a blob of `compressed` bytes exceed
    /// its expansion limit; `what` names the blob (`layer 3 (sha256:…)`).
    pub fn check_expansion(
        &self,
        what: &str,
        compressed: u64,
        uncompressed: u64,
    ) -> Result<(), Exceeded> {
        let limit = self.expansion_limit(compressed);
        if uncompressed <= limit {
            return Ok(());
        }
        Err(Exceeded {
            what: format!("{what} expands to"),
            amount: format!("at least {}", human(uncompressed)),
            limit: format!(
                "{} ({}x its {} compressed, at least {})",
                human(limit),
                self.expansion_ratio,
                human(compressed),
                human(self.expansion_floor)
            ),
            flag: "--max-expansion",
        })
    }

    /// Fails when an image's imports would materialize `total` entries.
    pub fn check_import_entries(&self, total: u64) -> Result<(), Exceeded> {
        if total <= self.import_entries {
            return Ok(());
        }
        Err(Exceeded {
            what: "the image's imports would materialize".into(),
            amount: format!("{total} entries"),
            limit: format!("{} entries per image", self.import_entries),
            flag: "--max-import-entries",
        })
    }

    /// Fails when a layer holds more import entries than allowed.
    pub fn check_imports_per_layer(&self, what: &str, imports: u64) -> Result<(), Exceeded> {
        if imports <= self.imports_per_layer {
            return Ok(());
        }
        Err(Exceeded {
            what: format!("{what} holds"),
            amount: format!("{imports} import entries"),
            limit: format!("{} per layer", self.imports_per_layer),
            flag: "--max-imports-per-layer",
        })
    }

    /// Fails when an image's imports would materialize `total` bytes, having
    /// imported blocks whose content is `blocks` bytes.
    pub fn check_import_bytes(&self, total: u64, blocks: u64) -> Result<(), Exceeded> {
        let what = "the image's imports would materialize".to_string();
        if total > self.import_bytes {
            return Err(Exceeded {
                what,
                amount: human(total),
                limit: human(self.import_bytes),
                flag: "--max-import-bytes",
            });
        }
        let by_ratio = self
            .import_floor
            .saturating_add(blocks.saturating_mul(self.import_ratio));
        if total > by_ratio {
            return Err(Exceeded {
                what,
                amount: human(total),
                limit: format!(
                    "{} ({}x the {} of the blocks it imports, plus {})",
                    human(by_ratio),
                    self.import_ratio,
                    human(blocks),
                    human(self.import_floor)
                ),
                flag: "--max-import-ratio",
            });
        }
        Ok(())
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "imports materialize at most {} and {} entries per image, and {}x the imported blocks plus {}; at most {} imports per layer; layers and blocks expand at most {}x, or {}",
            human(self.import_bytes),
            self.import_entries,
            self.import_ratio,
            human(self.import_floor),
            self.imports_per_layer,
            self.expansion_ratio,
            human(self.expansion_floor)
        )
    }
}

/// A reader of a decompressed stream that fails once more than `limit` bytes
/// came through: a decompression bomb stops at the bound, with an error that
/// [`exceeded_in`] recovers.
pub struct Bounded<R> {
    inner: R,
    read: u64,
    limit: u64,
    error: Option<Exceeded>,
}

impl<R: Read> Bounded<R> {
    /// Bounds `inner` to the expansion limit of a blob of `compressed` bytes.
    pub fn expansion(inner: R, limits: &Limits, what: &str, compressed: u64) -> Self {
        let limit = limits.expansion_limit(compressed);
        let error = limits
            .check_expansion(what, compressed, limit.saturating_add(1))
            .err();
        Bounded {
            inner,
            read: 0,
            limit,
            error,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.read
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            let e = self.error.clone().unwrap_or_else(|| Exceeded {
                what: "the stream".into(),
                amount: human(self.read),
                limit: human(self.limit),
                flag: "--max-expansion",
            });
            return Err(io::Error::other(e));
        }
        Ok(n)
    }
}

/// The bound behind an I/O error raised by [`Bounded`], if it is one.
pub fn exceeded_in(e: &io::Error) -> Option<&Exceeded> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Exceeded>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_is_bounded_by_ratio_beyond_the_floor() {
        let l = Limits::default();
        assert_eq!(l.expansion_limit(5 << 20), GIB + GIB / 4);
        assert_eq!(l.expansion_limit(1), GIB);
        assert!(l.check_expansion("layer 0", 5 << 20, 5 * GIB).is_err());
        assert!(l.check_expansion("layer 0", 5 << 20, GIB).is_ok());
        let e = l
            .check_expansion("layer 3", 5 << 20, 5 * GIB)
            .expect_err("over the bound");
        assert!(e.to_string().contains("--max-expansion"), "{e}");
        assert!(e.to_string().contains("layer 3 expands to"), "{e}");
    }

    #[test]
    fn a_bounded_reader_stops_at_the_bound() {
        let l = Limits {
            expansion_floor: 10,
            expansion_ratio: 1,
            ..Limits::default()
        };
        let mut r = Bounded::expansion(&[0u8; 100][..], &l, "block b", 4);
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).expect_err("over the bound");
        let bound = exceeded_in(&e).expect("the bound");
        assert_eq!(bound.flag, "--max-expansion");
        assert!(out.len() <= 100);
        let mut ok = Bounded::expansion(&[0u8; 10][..], &l, "block b", 4);
        assert_eq!(
            ok.read_to_end(&mut Vec::new()).expect("within the bound"),
            10
        );
    }

    #[test]
    fn imports_are_bounded_absolutely_and_by_ratio() {
        let l = Limits::default();
        // The same 50 MiB block imported 1,000 times stops after 5.
        let block = 50 << 20;
        assert!(l.check_import_bytes(5 * block, block).is_ok());
        assert!(l.check_import_bytes(6 * block, block).is_err());
        let e = l
            .check_import_bytes(1000 * block, block)
            .expect_err("over the bound");
        assert_eq!(e.flag, "--max-import-ratio");
        let e = l
            .check_import_bytes(65 * GIB, 64 * GIB)
            .expect_err("over the bound");
        assert_eq!(e.flag, "--max-import-bytes");
        assert!(l.check_imports_per_layer("layer 1", 65_537).is_err());
        assert!(l.check_import_entries(1 << 22).is_ok());
        let e = l
            .check_import_entries((1 << 22) + 1)
            .expect_err("over the bound");
        assert_eq!(e.flag, "--max-import-entries");
        assert_eq!(human(97), "97 B");
        assert_eq!(parse_bytes("64GiB"), Ok(64 * GIB));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("1.5 KiB"), Ok(1536));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert_eq!(human(5 * GIB), "5.0 GiB");
    }
}
