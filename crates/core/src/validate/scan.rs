//! Streaming scan of a layer or block tar: what it holds, its import entries, and
//! its uncompressed digest, computed in one pass without holding the blob in memory.

use std::collections::HashSet;
use std::io::{self, Read};

use crate::block::{BlockIndex, BlockProblem, BlockShape, EntryMeta};
use crate::digest::{Algorithm, Digest, DigestReader, verification_error};
use crate::entry::{self, Kind, Role};
use crate::import::{ImportEntry, ImportError};
use crate::layout::OciDir;
use crate::limits::{Bounded, Exceeded, Limits, exceeded_in};
use crate::names::{Compression, MAX_IMPORT_SIZE, tar_compression};
use crate::{Error, Result};

/// An import entry found in a layer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FoundImport {
    /// The path of the `.import.NAME` entry in the layer.
    pub entry: String,
    /// The path it materializes, `D/NAME`.
    pub target: String,
    /// The same, as the bytes of the cleaned name.
    #[serde(skip)]
    pub target_bytes: Vec<u8>,
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
    /// A bound of [`Limits`] stopped the scan there.
    pub limit: Option<Exceeded>,
    /// Every entry path, cleaned ([`entry::clean`]), and every directory they
    /// imply.
    pub paths: HashSet<Vec<u8>>,
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
    /// Entries whose type no reader here applies: path and type.
    pub bad_types: Vec<(String, String)>,
    /// Entry names that are absolute or contain `..` (cleaned lexically).
    pub unclean_paths: Vec<String>,
    /// What the archive breaks of the rules for blocks ([`BlockShape`]);
    /// reported only when it is a block.
    pub block_problems: Vec<BlockProblem>,
    /// The entries as a block index, when the blob was scanned as a block
    /// ([`scan_block_within`]) and is a readable one: what its imports
    /// would materialize is planned from it.
    pub index: Option<BlockIndex>,
}

impl TarScan {
    /// Whether `path` (cleaned, relative) is an entry or an implied directory.
    pub fn contains(&self, path: &str) -> bool {
        path.is_empty() || self.paths.contains(path.as_bytes())
    }
}

/// Scans a tar blob of `media_type` from the layout. I/O errors other than a
/// missing or corrupt blob are returned as errors; problems with the content are
/// recorded in the scan.
pub fn scan_blob(dir: &OciDir, digest: &Digest, size: u64, media_type: &str) -> Result<TarScan> {
    scan_blob_within(dir, digest, size, media_type, &Limits::default())
}

/// [`scan_blob`] within the given bounds.
pub fn scan_blob_within(
    dir: &OciDir,
    digest: &Digest,
    size: u64,
    media_type: &str,
    limits: &Limits,
) -> Result<TarScan> {
    scan_within(dir, digest, size, media_type, limits, false)
}

/// [`scan_blob_within`] of a block: the scan also holds its
/// [`TarScan::index`].
pub fn scan_block_within(
    dir: &OciDir,
    digest: &Digest,
    size: u64,
    media_type: &str,
    limits: &Limits,
) -> Result<TarScan> {
    scan_within(dir, digest, size, media_type, limits, true)
}

fn scan_within(
    dir: &OciDir,
    digest: &Digest,
    size: u64,
    media_type: &str,
    limits: &Limits,
    as_block: bool,
) -> Result<TarScan> {
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
        let what = format!("blob {digest}");
        let bounded = Bounded::expansion(decoded, limits, &what, size);
        let mut uncompressed = DigestReader::new(bounded, Algorithm::Sha256);
        let bound = |end: u64| limits.check_expansion(&what, size, end).err();
        let mut index = as_block.then(Vec::new);
        let walked = walk(&mut uncompressed, &mut scan, &bound, index.as_mut());
        if let Some(entries) = index.filter(|_| walked.is_ok() && scan.block_problems.is_empty()) {
            scan.index = Some(BlockIndex::new(entries));
        }
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
            if let Some(bound) = exceeded_in(&e) {
                scan.limit = Some(bound.clone());
            } else if scan.tar_error.is_none() {
                scan.tar_error = Some(e.to_string());
            }
        }
    }
    Ok(scan)
}

/// `bound` says whether an entry ending at that offset of the uncompressed
/// stream exceeds the expansion bound: such an entry stops the scan before
/// its content is read.
fn walk(
    stream: impl Read,
    scan: &mut TarScan,
    bound: &dyn Fn(u64) -> Option<Exceeded>,
    mut index: Option<&mut Vec<EntryMeta>>,
) -> io::Result<()> {
    let mut archive = tar::Archive::new(stream);
    let mut seen_imports: HashSet<Vec<u8>> = HashSet::new();
    let mut shape = BlockShape::default();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if let Some(e) = bound(entry.raw_file_position().saturating_add(entry.size())) {
            return Err(io::Error::other(e));
        }
        crate::tarcheck::check_entry(&mut entry)?;
        scan.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let name = entry::clean(&raw);
        let kind = entry::kind(entry.header().entry_type());
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        shape.add(&raw, kind.clone(), link.as_deref());
        let kind = match kind {
            Ok(Kind::GlobalHeader) => continue,
            Ok(k) => k,
            Err(why) => {
                scan.bad_types.push((shown, why));
                continue;
            }
        };
        if let Some(index) = index.as_deref_mut() {
            index.push(EntryMeta::of(&mut entry, kind)?);
        }
        if name.is_unclean() {
            scan.unclean_paths.push(shown.clone());
        }
        if kind == Kind::HardLink {
            if let Some(target) = &link {
                if entry::clean(target).is_unclean() {
                    scan.unclean_paths.push(format!(
                        "{shown} (hard link to {})",
                        String::from_utf8_lossy(target)
                    ));
                }
            }
        }
        let path = name.display();
        let top = path.split('/').next().unwrap_or_default();
        if !top.is_empty() && !scan.paths.contains(top.as_bytes()) {
            scan.top_level.push(top.to_string());
        }
        let role = entry::role(&name);
        if let Role::Import(named) = &role {
            if kind != Kind::File {
                scan.non_regular_imports
                    .push((path.clone(), kind.describe().to_string()));
            } else if !seen_imports.insert(name.path.clone()) {
                scan.duplicate_imports.push(path.clone());
            } else {
                match named.clone().and_then(|target_name| {
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
                    ImportEntry::parse(&content).map(|import| (target_name, import))
                }) {
                    Ok((target_name, import)) => {
                        let target = entry::join(name.parent(), &target_name);
                        scan.imports.push(FoundImport {
                            entry: path.clone(),
                            target: String::from_utf8_lossy(&target).into_owned(),
                            target_bytes: target,
                            import,
                        })
                    }
                    Err(e) => scan.bad_imports.push((path.clone(), e)),
                }
            }
        }
        // A whiteout names a path of a lower layer, not content of this one (a
        // whiteout below `D/NAME` beside `D/.import.NAME` is allowed).
        if !matches!(role, Role::Whiteout(_) | Role::Opaque) {
            insert_with_ancestors(&mut scan.paths, &name.path);
        }
    }
    scan.block_problems = shape.finish();
    crate::tarcheck::check_end(archive.into_inner())
}

fn insert_with_ancestors(paths: &mut HashSet<Vec<u8>>, path: &[u8]) {
    let mut p = path;
    while !p.is_empty() && paths.insert(p.to_vec()) {
        p = p
            .iter()
            .rposition(|&b| b == b'/')
            .map_or(&[][..], |i| &p[..i]);
    }
}
