//! Streaming scan of a layer or block tar: what it holds, its import entries, and
//! its uncompressed digest, computed in one pass without holding the blob in memory.

use std::collections::HashSet;
use std::io::{self, Read};

use crate::digest::{Algorithm, Digest, DigestReader, verification_error};
use crate::import::{ImportEntry, ImportError, import_name};
use crate::layout::OciDir;
use crate::names::{Compression, MAX_IMPORT_SIZE, WHITEOUT_PREFIX, tar_compression};
use crate::{Error, Result};

/// An import entry found in a layer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FoundImport {
    /// The path of the `.import.NAME` entry in the layer.
    pub entry: String,
    /// The path it materializes, `D/NAME`.
    pub target: String,
    /// The parsed entry.
    #[serde(serialize_with = "ser_display")]
    pub import: ImportEntry,
}

fn ser_display<S: serde::Serializer>(
    v: &ImportEntry,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Why a blob could not be read as its descriptor says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobProblem {
    /// Not in the layout.
    Missing,
    /// The content hashes to another digest.
    DigestMismatch(Digest),
    /// The content has another size.
    SizeMismatch {
        /// Size in the descriptor.
        expected: u64,
        /// Size found.
        found: u64,
    },
    /// A JSON blob is over the size a reader accepts.
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

/// Everything one pass over a tar blob learned.
#[derive(Clone, Debug, Default)]
pub struct TarScan {
    /// The blob could not be read as described.
    pub blob_problem: Option<BlobProblem>,
    /// The tar (or its compression) is malformed; scanning stopped there.
    pub tar_error: Option<String>,
    /// Digest of the uncompressed tar stream (the diff ID).
    pub diff_id: Option<Digest>,
    /// Bytes of the uncompressed stream.
    pub uncompressed_size: u64,
    /// Number of tar entries.
    pub entries: u64,
    /// Every entry path, normalized (no leading `./` or `/`, no trailing `/`), and
    /// every directory they imply.
    pub paths: HashSet<String>,
    /// Top-level names, in archive order, for display.
    pub top_level: Vec<String>,
    /// Valid import entries.
    pub imports: Vec<FoundImport>,
    /// Invalid import entries: path and why.
    pub bad_imports: Vec<(String, ImportError)>,
    /// `.import.` entries that are not regular files: path and type.
    pub non_regular_imports: Vec<(String, String)>,
    /// Import entries present twice.
    pub duplicate_imports: Vec<String>,
    /// Whiteout entries.
    pub whiteouts: Vec<String>,
    /// Entries (or hardlink targets) that are absolute or contain `..`.
    pub unclean_paths: Vec<String>,
}

impl TarScan {
    /// Whether `path` (normalized) is an entry or an implied directory.
    pub fn contains(&self, path: &str) -> bool {
        path.is_empty() || self.paths.contains(path)
    }
}

/// Normalizes a tar path: strips leading `./` and `/` and trailing `/`.
pub fn normalize(path: &str) -> &str {
    let mut p = path;
    loop {
        if let Some(rest) = p.strip_prefix("./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix('/') {
            p = rest;
        } else {
            break;
        }
    }
    p.trim_end_matches('/')
}

/// Whether a block entry path (or hard-link target) breaks `block.path-unclean`:
/// absolute, or with a `..` component.
pub fn is_unclean(raw: &str) -> bool {
    raw.starts_with('/') || raw.split('/').any(|c| c == "..")
}

/// Scans a tar blob of `media_type` from the layout. I/O errors other than a
/// missing or corrupt blob are returned as errors; problems with the content are
/// recorded in the scan.
pub fn scan_blob(dir: &OciDir, digest: &Digest, size: u64, media_type: &str) -> Result<TarScan> {
    let mut scan = TarScan::default();
    let Some(compression) = tar_compression(media_type) else {
        scan.tar_error = Some(format!(
            "media type {media_type:?} is not a tar type this tool reads"
        ));
        return Ok(scan);
    };
    let mut blob = match dir.open_blob(digest, Some(size)) {
        Ok(r) => r,
        Err(Error::BlobNotFound { .. }) => {
            scan.blob_problem = Some(BlobProblem::Missing);
            return Ok(scan);
        }
        Err(e) => return Err(e),
    };
    let outcome = {
        let decoded: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut blob),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut blob)),
            Compression::Zstd => match zstd::stream::read::Decoder::new(&mut blob) {
                Ok(d) => Box::new(d),
                Err(e) => {
                    scan.tar_error = Some(format!("zstd: {e}"));
                    Box::new(io::empty())
                }
            },
        };
        let mut uncompressed = DigestReader::new(decoded, Algorithm::Sha256);
        let walked = walk(&mut uncompressed, &mut scan);
        let drained = walked.and_then(|()| io::copy(&mut uncompressed, &mut io::sink()).map(drop));
        drained.and_then(|()| uncompressed.finish())
    };
    let rest = blob.finish();
    if let Err(e) = &rest {
        match verification_error(e) {
            Some(Error::DigestMismatch { found, .. }) => {
                scan.blob_problem = Some(BlobProblem::DigestMismatch(found.clone()));
            }
            Some(Error::SizeMismatch {
                expected, found, ..
            }) => {
                scan.blob_problem = Some(BlobProblem::SizeMismatch {
                    expected: *expected,
                    found: *found,
                });
            }
            _ => {
                return Err(Error::io(
                    dir.blob_path(digest),
                    io::Error::new(e.kind(), e.to_string()),
                ));
            }
        }
        return Ok(scan);
    }
    match outcome {
        Ok((diff_id, n)) => {
            scan.diff_id = Some(diff_id);
            scan.uncompressed_size = n;
        }
        Err(e) => {
            if scan.tar_error.is_none() {
                scan.tar_error = Some(e.to_string());
            }
        }
    }
    Ok(scan)
}

fn walk(stream: impl Read, scan: &mut TarScan) -> io::Result<()> {
    let mut archive = tar::Archive::new(stream);
    let mut seen_imports: HashSet<String> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        crate::tarcheck::check_entry_size(&entry)?;
        scan.entries += 1;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = normalize(&raw).to_string();
        if is_unclean(&raw) {
            scan.unclean_paths.push(raw.clone());
        }
        let entry_type = entry.header().entry_type();
        if entry_type.is_hard_link() {
            if let Some(target) = entry.link_name_bytes() {
                let target = String::from_utf8_lossy(&target).into_owned();
                if is_unclean(&target) {
                    scan.unclean_paths
                        .push(format!("{raw} (hardlink to {target})"));
                }
            }
        }
        let (dir, base) = match path.rsplit_once('/') {
            Some((d, b)) => (d, b),
            None => ("", path.as_str()),
        };
        let top = path.split('/').next().unwrap_or_default();
        if !top.is_empty() && !scan.paths.contains(top) {
            scan.top_level.push(top.to_string());
        }
        if base.starts_with(WHITEOUT_PREFIX) {
            scan.whiteouts.push(path.clone());
        }
        if let Some(name) = import_name(base) {
            if !(entry_type.is_file() || entry_type == tar::EntryType::Continuous) {
                scan.non_regular_imports
                    .push((path.clone(), format!("{entry_type:?}")));
            } else if !seen_imports.insert(path.clone()) {
                scan.duplicate_imports.push(path.clone());
            } else {
                match name.and_then(|name| {
                    let size = entry.size();
                    if size > MAX_IMPORT_SIZE {
                        return Err(ImportError::TooLarge { size });
                    }
                    let mut content = Vec::with_capacity(size as usize);
                    entry
                        .by_ref()
                        .take(MAX_IMPORT_SIZE + 1)
                        .read_to_end(&mut content)
                        .map_err(|_| ImportError::Syntax {
                            reason: "content unreadable",
                        })?;
                    ImportEntry::parse(&content).map(|import| (name, import))
                }) {
                    Ok((name, import)) => scan.imports.push(FoundImport {
                        entry: path.clone(),
                        target: if dir.is_empty() {
                            name.to_string()
                        } else {
                            format!("{dir}/{name}")
                        },
                        import,
                    }),
                    Err(e) => scan.bad_imports.push((path.clone(), e)),
                }
            }
        }
        // A whiteout names a path of a lower layer, not content of this one (a
        // whiteout below `D/NAME` beside `D/.import.NAME` is allowed).
        if !base.starts_with(WHITEOUT_PREFIX) {
            insert_with_ancestors(&mut scan.paths, &path);
        }
    }
    crate::tarcheck::check_end(archive.into_inner())
}

fn insert_with_ancestors(paths: &mut HashSet<String>, path: &str) {
    let mut p = path;
    while !p.is_empty() && paths.insert(p.to_string()) {
        p = p.rsplit_once('/').map_or("", |(d, _)| d);
    }
}
