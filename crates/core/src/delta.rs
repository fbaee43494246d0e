//! Delta patches between blocks (`spec/deltas.md`): how a patch is made from
//! a base block and a target block, checked, and applied; the delta artifact
//! that lists patches for the blocks of one manifest; and which block of an
//! earlier image is the base for a block of a later one.
//!
//! A patch is one zstd frame that compresses the target block's bytes with
//! the base block's bytes as reference prefix (what `zstd --patch-from`
//! does), in long-distance mode with a window that covers both. Applying it
//! needs the base in memory and at most a window of output, so the cost is
//! bounded by the two sizes the artifact declares; both are checked against
//! the frame header before a byte is decoded. The rebuilt block is verified
//! by the caller like any downloaded blob: digest and size before it is
//! stored.

use std::io::{self, BufRead, Read, Write};

use serde_json::{Value, json};

use crate::digest::Digest;
use crate::names::{
    ANNOTATION_DELTA_BASE, ANNOTATION_DELTA_BASE_RAW_SIZE, ANNOTATION_DELTA_BASE_SIZE,
    ANNOTATION_DELTA_FROM, ANNOTATION_DELTA_RECOMPRESS, ANNOTATION_DELTA_TARGET,
    ANNOTATION_DELTA_TARGET_RAW_SIZE, ANNOTATION_DELTA_TARGET_SIZE, DELTA_ARTIFACT_TYPE,
    DELTA_PATCH, OCI_EMPTY, OCI_EMPTY_DIGEST, OCI_EMPTY_SIZE, OCI_MANIFEST, RECOMPRESS_GZIP,
    component_of,
};
use crate::{Error, Result};

/// The compression level patches are made at by default: level 19 finds the
/// long matches against the base that make a version bump's patch small,
/// and a patch is made once and applied many times.
pub const DEFAULT_LEVEL: i32 = 19;

/// The largest window a patch may need: zstd's maximum on 64-bit hosts
/// (2 GiB). Base and target together must fit in it.
pub const MAX_WINDOW_LOG: u32 = 31;

/// zstd's smallest window.
const MIN_WINDOW_LOG: u32 = 10;

/// The window log a patch between blocks of these sizes uses and an applier
/// allows: the smallest power of two at least twice the larger one, so a
/// match may reach from the end of the target back to the start of the base.
pub fn window_log(base_size: u64, target_size: u64) -> u32 {
    let larger = base_size.max(target_size).max(1);
    let bits = 64 - larger.leading_zeros();
    (bits + 1).clamp(MIN_WINDOW_LOG, MAX_WINDOW_LOG)
}

/// Whether blocks of these sizes can have a patch at all (their window fits
/// zstd's largest).
pub fn fits_window(base_size: u64, target_size: u64) -> bool {
    let larger = base_size.max(target_size).max(1);
    (64 - larger.leading_zeros()) < MAX_WINDOW_LOG
}

fn zstd_error(e: io::Error) -> String {
    e.to_string()
}

/// Makes the patch that rebuilds `target` (exactly `target_size` bytes) from
/// `base`, written to `out`.
pub fn make(
    base: &[u8],
    target: impl Read,
    target_size: u64,
    level: i32,
    out: impl Write,
) -> io::Result<()> {
    if !fits_window(base.len() as u64, target_size) {
        return Err(io::Error::other(format!(
            "blocks of {} and {target_size} bytes need a window larger than 2^{MAX_WINDOW_LOG} bytes",
            base.len()
        )));
    }
    let mut encoder = zstd::stream::write::Encoder::with_ref_prefix(out, level, base)?;
    encoder.long_distance_matching(true)?;
    encoder.window_log(window_log(base.len() as u64, target_size))?;
    encoder.include_checksum(true)?;
    encoder.include_contentsize(true)?;
    encoder.set_pledged_src_size(Some(target_size))?;
    let mut target = target.take(target_size);
    let copied = io::copy(&mut target, &mut encoder)?;
    if copied != target_size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the target ended after {copied} of {target_size} bytes"),
        ));
    }
    encoder.finish()?;
    Ok(())
}

/// A patch as a delta artifact lists it (one entry of its `layers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patch {
    /// The patch blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// The block it applies to.
    pub base: Digest,
    /// That block's size.
    pub base_size: u64,
    /// The block it rebuilds.
    pub target: Digest,
    /// That block's size.
    pub target_size: u64,
    /// For gzip layers: the patch is between their uncompressed contents,
    /// and the target is recompressed after it is applied.
    pub recompress: Option<Recompress>,
}

/// The uncompressed sizes of a recompression patch's base and target
/// (`spec/deltas.md`, "Patches for gzip layers").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recompress {
    /// The base's uncompressed size.
    pub base_raw_size: u64,
    /// The target's uncompressed size.
    pub target_raw_size: u64,
}

/// Decompresses a gzip blob, refusing more than `limit` bytes of output.
fn gunzip(blob: impl Read, limit: u64, out: &mut impl Write) -> io::Result<u64> {
    let mut decoder = flate2::read::MultiGzDecoder::new(blob).take(limit + 1);
    let n = io::copy(&mut decoder, out)?;
    if n > limit {
        return Err(io::Error::other(format!(
            "decompresses to more than {limit} bytes"
        )));
    }
    Ok(n)
}

/// Makes a recompression patch for the gzip layer `target` (its blob read
/// from `target_blob`, `digest`) against the gzip layer `base`: between
/// their uncompressed contents, but only when recompressing the target's
/// contents with [`crate::gzip::ParallelGz::for_layers`] gives back its
/// digest exactly; otherwise `None`, and the layer must travel whole. The
/// uncompressed target is staged in `scratch`; neither side may decompress
/// to more than `limit` bytes.
pub fn make_recompressed(
    base: &[u8],
    target_blob: impl Read,
    digest: &Digest,
    level: i32,
    limit: u64,
    scratch: &std::path::Path,
    out: impl Write,
) -> io::Result<Option<Recompress>> {
    let mut base_raw = Vec::new();
    gunzip(base, limit, &mut base_raw)?;
    let mut staged = tempfile::tempfile_in(scratch)?;
    let target_raw_size = gunzip(
        io::BufReader::new(target_blob),
        limit,
        &mut io::BufWriter::new(&mut staged),
    )?;
    io::Seek::rewind(&mut staged)?;
    let mut hasher = crate::digest::Hasher::new(digest.algorithm());
    let mut gz = crate::gzip::ParallelGz::for_layers(&mut hasher)?;
    io::copy(&mut io::BufReader::new(&staged), &mut gz)?;
    gz.finish()?;
    if &hasher.finish() != digest {
        return Ok(None);
    }
    io::Seek::rewind(&mut staged)?;
    make(
        &base_raw,
        io::BufReader::new(&staged),
        target_raw_size,
        level,
        out,
    )?;
    Ok(Some(Recompress {
        base_raw_size: base_raw.len() as u64,
        target_raw_size,
    }))
}

impl Patch {
    /// The sizes the zstd frame is between: the blobs', or for a
    /// recompression patch their uncompressed contents'.
    fn frame_sizes(&self) -> (u64, u64) {
        match self.recompress {
            Some(r) => (r.base_raw_size, r.target_raw_size),
            None => (self.base_size, self.target_size),
        }
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Patch {
            what: format!("patch {} for block {}", self.digest, self.target),
            reason: reason.into(),
        }
    }

    /// Checks the start of the patch (at least its frame header) against the
    /// declared sizes: one zstd frame that declares the target's size. Run
    /// before anything is decoded.
    pub fn check_header(&self, head: &[u8]) -> Result<()> {
        let (_, target_size) = self.frame_sizes();
        match zstd::zstd_safe::get_frame_content_size(head) {
            Ok(Some(n)) if n == target_size => Ok(()),
            Ok(Some(n)) => Err(self.error(format!(
                "its frame declares {n} bytes, the artifact {target_size} bytes"
            ))),
            Ok(None) => Err(self.error("its frame does not declare the size it rebuilds")),
            Err(_) => Err(self.error("not a zstd frame")),
        }
    }

    /// Applies the patch (read from `patch`, at most [`Patch::size`] bytes)
    /// to the base blob `base`, writing the rebuilt blob to `out`; the
    /// frame's output size is checked here, the blob's digest by the
    /// caller. The window is bounded by the declared sizes, so a patch that
    /// asks for more is refused, not obeyed. A recompression patch is
    /// applied to the base's uncompressed contents and its output
    /// recompressed.
    pub fn apply(&self, base: &[u8], patch: impl Read, out: impl Write) -> Result<()> {
        if base.len() as u64 != self.base_size {
            return Err(self.error(format!(
                "its base {} is {} bytes, the artifact says {}",
                self.base,
                base.len(),
                self.base_size
            )));
        }
        let (base_size, target_size) = self.frame_sizes();
        if !fits_window(base_size, target_size) {
            return Err(self.error(format!(
                "base and target need a window larger than 2^{MAX_WINDOW_LOG} bytes"
            )));
        }
        let raw;
        let prefix = match self.recompress {
            None => base,
            Some(_) => {
                let mut bytes = Vec::new();
                let n = gunzip(base, base_size, &mut bytes)
                    .map_err(|e| self.error(format!("its base {}: {e}", self.base)))?;
                if n != base_size {
                    return Err(self.error(format!(
                        "its base {} decompresses to {n} bytes, the artifact says {base_size}",
                        self.base
                    )));
                }
                raw = bytes;
                &raw[..]
            }
        };
        let mut reader = io::BufReader::new(patch.take(self.size));
        let head = reader.fill_buf().map_err(|e| self.error(e.to_string()))?;
        self.check_header(head)?;
        let mut decoder = zstd::stream::read::Decoder::with_ref_prefix(reader, prefix)
            .map_err(|e| self.error(zstd_error(e)))?
            .single_frame();
        decoder
            .window_log_max(window_log(base_size, target_size))
            .map_err(|e| self.error(zstd_error(e)))?;
        // One byte past the declared size shows a patch that rebuilds more.
        let mut bounded = (&mut decoder).take(target_size + 1);
        let n = match self.recompress {
            None => {
                let mut out = CountingWriter { inner: out, n: 0 };
                io::copy(&mut bounded, &mut out).map_err(|e| self.error(zstd_error(e)))?;
                out.n
            }
            Some(_) => {
                let gz = crate::gzip::ParallelGz::for_layers(out)
                    .map_err(|e| self.error(e.to_string()))?;
                let mut counted = CountingWriter { inner: gz, n: 0 };
                io::copy(&mut bounded, &mut counted).map_err(|e| self.error(zstd_error(e)))?;
                counted
                    .inner
                    .finish()
                    .map_err(|e| self.error(e.to_string()))?;
                counted.n
            }
        };
        if n != target_size {
            return Err(self.error(format!(
                "it rebuilt {n} bytes, the artifact says {target_size}"
            )));
        }
        Ok(())
    }

    fn to_json(&self) -> Value {
        let mut value = json!({
            "mediaType": DELTA_PATCH,
            "digest": self.digest.as_str(),
            "size": self.size,
            "annotations": {
                ANNOTATION_DELTA_BASE: self.base.as_str(),
                ANNOTATION_DELTA_BASE_SIZE: self.base_size.to_string(),
                ANNOTATION_DELTA_TARGET: self.target.as_str(),
                ANNOTATION_DELTA_TARGET_SIZE: self.target_size.to_string(),
            },
        });
        if let Some(r) = self.recompress {
            let a = &mut value["annotations"];
            a[ANNOTATION_DELTA_RECOMPRESS] = json!(RECOMPRESS_GZIP);
            a[ANNOTATION_DELTA_BASE_RAW_SIZE] = json!(r.base_raw_size.to_string());
            a[ANNOTATION_DELTA_TARGET_RAW_SIZE] = json!(r.target_raw_size.to_string());
        }
        value
    }
}

struct CountingWriter<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The manifest a delta artifact's `subject` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

/// A delta artifact: patches that rebuild blocks of the subject manifest
/// from blocks of the manifest `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// The blocks manifest whose blocks the patches rebuild.
    pub subject: Subject,
    /// The manifest whose blocks are the bases.
    pub from: Digest,
    /// The patches, in the order of the subject's blocks.
    pub patches: Vec<Patch>,
}

impl Artifact {
    /// The artifact manifest's bytes: compact JSON with sorted keys, so one
    /// set of patches always gives one digest.
    pub fn to_bytes(&self) -> Vec<u8> {
        let value = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": DELTA_ARTIFACT_TYPE,
            "config": {
                "mediaType": OCI_EMPTY, "digest": OCI_EMPTY_DIGEST, "size": OCI_EMPTY_SIZE,
            },
            "layers": self.patches.iter().map(Patch::to_json).collect::<Vec<_>>(),
            "subject": {
                "mediaType": self.subject.media_type,
                "digest": self.subject.digest.as_str(),
                "size": self.subject.size,
            },
            "annotations": { ANNOTATION_DELTA_FROM: self.from.as_str() },
        });
        value.to_string().into_bytes()
    }

    /// Parses a delta artifact manifest, which must pass the schema and
    /// rules of `spec/deltas.md` (`what` names it in errors).
    pub fn parse(bytes: &[u8], what: &str) -> Result<Artifact> {
        let malformed = |reason: String| Error::Malformed {
            what: what.to_string(),
            reason,
        };
        let (kind, report) = crate::validate::validate_document(bytes, what);
        if kind != Some(crate::validate::DocumentKind::DeltaArtifact) {
            return Err(malformed(format!(
                "not a delta artifact (artifactType {DELTA_ARTIFACT_TYPE})"
            )));
        }
        if let Some(v) = report.errors().next() {
            return Err(malformed(format!(
                "{} at {}: {}",
                v.rule.id(),
                v.pointer.as_deref().unwrap_or("/"),
                v.message
            )));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| Error::Json {
            what: what.to_string(),
            source: e,
        })?;
        let text = |v: &Value, pointer: &str| -> Result<String> {
            v.pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| malformed(format!("no {pointer}")))
        };
        let number = |v: &Value, pointer: &str| -> Result<u64> {
            match v.pointer(pointer) {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.parse().ok(),
                _ => None,
            }
            .ok_or_else(|| malformed(format!("{pointer} is not a size")))
        };
        let key = |k: &str| format!("/annotations/{}", k.replace('~', "~0").replace('/', "~1"));
        let mut patches = Vec::new();
        for layer in value["layers"].as_array().into_iter().flatten() {
            patches.push(Patch {
                digest: Digest::parse(&text(layer, "/digest")?)?,
                size: number(layer, "/size")?,
                base: Digest::parse(&text(layer, &key(ANNOTATION_DELTA_BASE))?)?,
                base_size: number(layer, &key(ANNOTATION_DELTA_BASE_SIZE))?,
                target: Digest::parse(&text(layer, &key(ANNOTATION_DELTA_TARGET))?)?,
                target_size: number(layer, &key(ANNOTATION_DELTA_TARGET_SIZE))?,
                recompress: match layer.pointer(&key(ANNOTATION_DELTA_RECOMPRESS)) {
                    None => None,
                    Some(_) => Some(Recompress {
                        base_raw_size: number(layer, &key(ANNOTATION_DELTA_BASE_RAW_SIZE))?,
                        target_raw_size: number(layer, &key(ANNOTATION_DELTA_TARGET_RAW_SIZE))?,
                    }),
                },
            });
        }
        Ok(Artifact {
            subject: Subject {
                media_type: text(&value, "/subject/mediaType")?,
                digest: Digest::parse(&text(&value, "/subject/digest")?)?,
                size: number(&value, "/subject/size")?,
            },
            from: Digest::parse(&text(&value, &key(ANNOTATION_DELTA_FROM))?)?,
            patches,
        })
    }
}

/// A block as the choice of bases sees it.
#[derive(Clone, Debug)]
pub struct BlockInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// The component it holds, whatever the version ([`component_of`]).
    pub component: Option<String>,
    /// Its title annotation, for reports.
    pub title: Option<String>,
}

impl BlockInfo {
    /// The block a descriptor names (`None` for a malformed descriptor,
    /// which validation reports).
    pub fn of_descriptor(d: &Value) -> Option<BlockInfo> {
        let annotation = |k: &str| d.get("annotations")?.get(k)?.as_str();
        Some(BlockInfo {
            digest: Digest::parse(d.get("digest")?.as_str()?).ok()?,
            size: d.get("size")?.as_u64()?,
            media_type: d.get("mediaType")?.as_str()?.to_string(),
            component: component_of(annotation),
            title: annotation(crate::names::ANNOTATION_TITLE).map(str::to_string),
        })
    }

    /// The blocks of a manifest.
    pub fn of_manifest(manifest: &Value) -> Vec<BlockInfo> {
        manifest
            .get("blocks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(BlockInfo::of_descriptor)
            .collect()
    }
}

/// The title of a block without any version at its end: the stem up to a
/// trailing run of digits, dots, `-` and `_` (`py4j0.10.9.7.jar` gives
/// `py4j`): the second way to find a base, for names that glue the version
/// on.
fn bare_title(b: &BlockInfo) -> Option<String> {
    let title = b.title.as_deref()?;
    let base = title.rsplit('/').next().unwrap_or(title);
    let stem = base.strip_suffix(".jar").unwrap_or(base);
    let bare = stem.trim_end_matches(|c: char| c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    (!bare.is_empty() && bare.len() < stem.len()).then(|| bare.to_string())
}

/// For each block of `new` that `old` lacks, the block of `old` to patch it
/// from: one of the same component in the same media type, else one whose
/// title without its trailing version is the same; the one closest in size.
/// Returned as (index in `new`, index in `old`), in `new`'s order; blocks
/// without a counterpart, or too large for `max_size`, get none.
pub fn choose_bases(old: &[BlockInfo], new: &[BlockInfo], max_size: u64) -> Vec<(usize, usize)> {
    let held: std::collections::HashSet<&Digest> = old.iter().map(|b| &b.digest).collect();
    let mut out = Vec::new();
    for (i, b) in new.iter().enumerate() {
        if held.contains(&b.digest) || b.size > max_size {
            continue;
        }
        let fits = |o: &&BlockInfo| {
            o.media_type == b.media_type && o.size <= max_size && fits_window(o.size, b.size)
        };
        let closest = |same: &dyn Fn(&BlockInfo) -> bool| {
            old.iter()
                .enumerate()
                .filter(|(_, o)| fits(o) && same(o))
                .min_by_key(|(_, o)| (o.size.abs_diff(b.size), o.digest.as_str().to_string()))
                .map(|(j, _)| j)
        };
        let by_component = b
            .component
            .as_ref()
            .and_then(|c| closest(&|o: &BlockInfo| o.component.as_ref() == Some(c)));
        let by_title = || {
            let bare = bare_title(b)?;
            closest(&|o: &BlockInfo| bare_title(o).as_ref() == Some(&bare))
        };
        if let Some(j) = by_component.or_else(by_title) {
            out.push((i, j));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch_for(base: &[u8], target: &[u8]) -> (Patch, Vec<u8>) {
        let mut bytes = Vec::new();
        make(base, target, target.len() as u64, 3, &mut bytes).expect("patch");
        let patch = Patch {
            digest: Digest::sha256(&bytes),
            size: bytes.len() as u64,
            base: Digest::sha256(base),
            base_size: base.len() as u64,
            target: Digest::sha256(target),
            target_size: target.len() as u64,
            recompress: None,
        };
        (patch, bytes)
    }

    /// Pseudo-random bytes that do not compress on their own.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_patch_rebuilds_the_target_and_is_small_when_little_changed() {
        let base = noise(3 << 20, 7);
        let mut target = base.clone();
        target[1_000_000..1_000_100].copy_from_slice(&noise(100, 9));
        target.extend_from_slice(&noise(5000, 11));
        let (patch, bytes) = patch_for(&base, &target);
        assert!(patch.size < 20_000, "patch of {} bytes", patch.size);
        let mut out = Vec::new();
        patch.apply(&base, &bytes[..], &mut out).expect("apply");
        assert_eq!(out, target);
    }

    #[test]
    fn a_tampered_patch_a_wrong_base_or_wrong_sizes_are_refused() {
        let base = noise(200_000, 1);
        let mut target = base.clone();
        target[500..600].fill(0);
        let (patch, bytes) = patch_for(&base, &target);
        // A flipped byte past the header: zstd's checksum or the decoder
        // refuses it (or the caller's digest check would).
        let mut tampered = bytes.clone();
        let at = tampered.len() - 6;
        tampered[at] ^= 0x55;
        let mut out = Vec::new();
        let refused = patch.apply(&base, &tampered[..], &mut out);
        assert!(refused.is_err() || out != target);
        // Another base of the declared size rebuilds something else.
        let other = noise(200_000, 2);
        let mut out = Vec::new();
        let r = patch.apply(&other, &bytes[..], &mut out);
        assert!(r.is_err() || Digest::sha256(&out) != patch.target);
        // A base of another size is refused before decoding.
        let err = patch
            .apply(&base[..1000], &bytes[..], &mut Vec::new())
            .expect_err("short base");
        assert!(err.to_string().contains("1000 bytes"), "{err}");
        // A declared target size the frame does not carry.
        let lying = Patch {
            target_size: patch.target_size + 1,
            ..patch.clone()
        };
        let err = lying
            .apply(&base, &bytes[..], &mut Vec::new())
            .expect_err("size");
        assert!(err.to_string().contains("declares"), "{err}");
        // Not zstd at all.
        let err = patch
            .apply(&base, &b"not a zstd frame at all"[..], &mut Vec::new())
            .expect_err("garbage");
        assert!(err.to_string().contains("not a zstd frame"), "{err}");
        // A truncated patch.
        let err = patch
            .apply(&base, &bytes[..bytes.len() / 2], &mut Vec::new())
            .expect_err("truncated");
        assert!(err.to_string().contains(patch.target.as_str()), "{err}");
    }

    #[test]
    fn a_patch_that_needs_a_larger_window_than_declared_is_refused() {
        // Made for a 4 MiB base, declared as if base and target were small:
        // the applier's window is derived from the declared sizes.
        let base = noise(4 << 20, 3);
        let target = base[..(1 << 20)].to_vec();
        let mut bytes = Vec::new();
        let mut encoder =
            zstd::stream::write::Encoder::with_ref_prefix(&mut bytes, 3, &base).expect("encoder");
        encoder.long_distance_matching(true).expect("ldm");
        encoder.window_log(24).expect("window");
        encoder.include_contentsize(true).expect("size");
        encoder
            .set_pledged_src_size(Some(target.len() as u64))
            .expect("pledge");
        encoder.write_all(&target).expect("write");
        encoder.finish().expect("finish");
        let patch = Patch {
            digest: Digest::sha256(&bytes),
            size: bytes.len() as u64,
            base: Digest::sha256(&base[..1024]),
            base_size: 1024,
            target: Digest::sha256(&target),
            target_size: target.len() as u64,
            recompress: None,
        };
        let err = patch
            .apply(&base[..1024], &bytes[..], &mut Vec::new())
            .expect_err("window");
        assert!(err.to_string().contains(patch.target.as_str()), "{err}");
    }

    #[test]
    fn a_gzip_layer_is_patched_between_its_contents_and_recompressed_exactly() {
        let gz = |raw: &[u8]| {
            let mut out = Vec::new();
            let mut w = crate::gzip::ParallelGz::for_layers(&mut out).expect("gz");
            w.write_all(raw).expect("write");
            w.finish().expect("finish");
            out
        };
        // Text that deflate shrinks, so the gzip streams differ from the
        // first change on while the contents differ in a few places.
        let text: Vec<u8> = (0..60_000u32)
            .flat_map(|i| format!("line {i} of a layer\n").into_bytes())
            .collect();
        let mut changed = text.clone();
        changed[400_000..400_010].copy_from_slice(b"0123456789");
        let (base, target) = (gz(&text), gz(&changed));
        let digest = Digest::sha256(&target);
        let dir = tempfile::tempdir().expect("dir");
        let mut bytes = Vec::new();
        let r = make_recompressed(
            &base,
            &target[..],
            &digest,
            3,
            1 << 30,
            dir.path(),
            &mut bytes,
        )
        .expect("patch")
        .expect("our own gzip recompresses exactly");
        assert!(bytes.len() < target.len() / 20, "{} bytes", bytes.len());
        let patch = Patch {
            digest: Digest::sha256(&bytes),
            size: bytes.len() as u64,
            base: Digest::sha256(&base),
            base_size: base.len() as u64,
            target: digest.clone(),
            target_size: target.len() as u64,
            recompress: Some(r),
        };
        let mut out = Vec::new();
        patch.apply(&base, &bytes[..], &mut out).expect("apply");
        assert_eq!(out, target);
        // Another encoder's stream is not reproduced: no patch.
        let mut other = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
        other.write_all(&changed).expect("write");
        let other = other.finish().expect("finish");
        let none = make_recompressed(
            &base,
            &other[..],
            &Digest::sha256(&other),
            3,
            1 << 30,
            dir.path(),
            &mut Vec::new(),
        )
        .expect("runs");
        assert_eq!(none, None);
        // A base that decompresses past the limit is refused.
        let err = make_recompressed(
            &base,
            &target[..],
            &digest,
            3,
            1000,
            dir.path(),
            &mut Vec::new(),
        )
        .expect_err("limit");
        assert!(err.to_string().contains("1000"), "{err}");
    }

    #[test]
    fn an_artifact_survives_its_bytes_and_a_broken_one_is_named() {
        let d = |s: &str| Digest::sha256(s.as_bytes());
        let artifact = Artifact {
            subject: Subject {
                media_type: OCI_MANIFEST.into(),
                digest: d("new"),
                size: 1234,
            },
            from: d("old"),
            patches: vec![Patch {
                digest: d("p"),
                size: 10,
                base: d("b"),
                base_size: 100,
                target: d("t"),
                target_size: 120,
                recompress: Some(Recompress {
                    base_raw_size: 300,
                    target_raw_size: 310,
                }),
            }],
        };
        let bytes = artifact.to_bytes();
        assert_eq!(Artifact::parse(&bytes, "a").expect("parse"), artifact);
        let mut value: Value = serde_json::from_slice(&bytes).expect("json");
        value["layers"][0]["annotations"][ANNOTATION_DELTA_TARGET_SIZE] = json!("12x");
        let err = Artifact::parse(value.to_string().as_bytes(), "broken").expect_err("size");
        assert!(err.to_string().contains("broken"), "{err}");
        assert!(err.to_string().contains("/layers/0"), "{err}");
    }

    #[test]
    fn bases_are_versions_of_the_same_component_closest_in_size() {
        let b = |name: &str, component: Option<&str>, size: u64| BlockInfo {
            digest: Digest::sha256(name.as_bytes()),
            size,
            media_type: crate::names::OCI_LAYER_TAR.into(),
            component: component.map(str::to_string),
            title: None,
        };
        let old = vec![
            b("a1", Some("maven:g:a"), 1000),
            b("a0", Some("maven:g:a"), 5000),
            b("c1", Some("maven:g:c"), 1000),
            b("same", Some("maven:g:s"), 10),
        ];
        let new = vec![
            b("a2", Some("maven:g:a"), 1100),
            b("z", Some("maven:g:z"), 1000),
            b("anon", None, 1000),
            b("same", Some("maven:g:s"), 10),
            b("huge", Some("maven:g:c"), 10_000),
        ];
        assert_eq!(choose_bases(&old, &new, u64::MAX), vec![(0, 0), (4, 2)]);
        assert_eq!(choose_bases(&old, &new, 5000), vec![(0, 0)]);
        // A version glued to the name: found by the title without it.
        let titled = |name: &str, title: &str| BlockInfo {
            title: Some(title.to_string()),
            component: Some(format!("title:{title}")),
            ..b(name, None, 1000)
        };
        let old = vec![titled("p7", "py4j0.10.9.7.jar"), titled("o", "other.jar")];
        let new = vec![titled("p9", "py4j0.10.9.9.jar"), titled("n", "nothing.jar")];
        assert_eq!(choose_bases(&old, &new, u64::MAX), vec![(0, 0)]);
    }
}
