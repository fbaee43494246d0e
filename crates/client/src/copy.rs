//! Copying an image between OCI layouts and registries, in any direction, moving
//! only what the destination lacks.
//!
//! The top document and every child manifest travel as their exact bytes, so no
//! digest changes. Blobs — configs, layers and **blocks** — are transferred
//! concurrently (`jobs` at a time): skipped when the destination has them (or the
//! caller's block store does), mounted when source and destination are
//! repositories of one registry, otherwise streamed, and verified against their
//! digest before they are stored in a layout. Child manifests go after their blobs
//! and the top document last, so a blocks-aware registry always finds what a
//! manifest names.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures_util::{StreamExt, TryStreamExt};
use oci_blocks_core::Digest;
use oci_blocks_core::delta::Patch;
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::names::{MAX_INDEX_DEPTH, OCI_INDEX, OCI_MANIFEST};
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::reference::{ImageRef, RegistryRef};
use crate::registry::{Registry, RegistryOptions};

/// Which entries of an index to copy.
#[derive(Clone, Debug, Default)]
pub enum Selection {
    /// Every entry (skopeo's `--all`).
    #[default]
    All,
    /// For `os/arch[/variant]`: its blocks manifest when the index has one, else
    /// its plain manifest (what an unpacker of that platform needs).
    Platform(String),
}

/// How a copy runs.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Blobs transferred at once.
    pub jobs: usize,
    /// How to reach the source registry.
    pub src: RegistryOptions,
    /// How to reach the destination registry.
    pub dest: RegistryOptions,
    /// Blobs not to transfer because the caller already has them elsewhere
    /// (a block store's blocks); counted as reused.
    pub have: HashSet<Digest>,
    /// Which index entries to copy.
    pub selection: Selection,
    /// Into a layout: rebuild blocks from the patches of delta artifacts
    /// whose bases the layout holds, instead of fetching them whole
    /// (`spec/deltas.md`); any failure falls back to the whole block.
    pub deltas: bool,
    /// Blocks (and bases) larger than this are always fetched whole: applying
    /// a patch holds its base in memory.
    pub delta_max_size: u64,
}

/// The default of [`CopyOptions::delta_max_size`]: 512 MiB.
pub const DEFAULT_DELTA_MAX_SIZE: u64 = 512 << 20;

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            jobs: 6,
            src: RegistryOptions::default(),
            dest: RegistryOptions::default(),
            have: HashSet::new(),
            selection: Selection::All,
            deltas: false,
            delta_max_size: DEFAULT_DELTA_MAX_SIZE,
        }
    }
}

/// What a copy did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyReport {
    /// The digest of the top document (unchanged by the copy).
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Manifests and indexes copied.
    pub manifests: usize,
    /// Distinct blobs the copied manifests reference.
    pub blobs: usize,
    /// Blobs moved.
    pub blobs_transferred: usize,
    /// Their bytes.
    pub bytes_transferred: u64,
    /// Blobs the destination already had.
    pub blobs_skipped: usize,
    /// Their bytes.
    pub bytes_skipped: u64,
    /// Blobs linked by a cross-repository mount.
    pub blobs_mounted: usize,
    /// Blobs not fetched because the caller's store has them.
    pub blobs_reused: usize,
    /// Their bytes.
    pub bytes_reused: u64,
    /// Manifest bytes moved.
    pub manifest_bytes: u64,
    /// Blocks rebuilt from a patch and a base the destination held.
    pub blobs_patched: usize,
    /// The patch bytes moved for them.
    pub bytes_patched: u64,
    /// Their blocks' bytes less the patch bytes: what the deltas saved.
    pub bytes_saved: u64,
    /// Blocks whose delta failed, fetched whole instead.
    pub deltas_failed: usize,
    /// Bytes received from the source over the network (0 for a layout).
    pub network_bytes_received: u64,
    /// Bytes sent to the destination over the network (0 for a layout).
    pub network_bytes_sent: u64,
}

/// Progress of a copy, for a progress bar.
pub trait Progress: Send + Sync {
    /// The blobs to consider and their total size are known.
    fn start(&self, _blobs: usize, _bytes: u64) {}
    /// One blob is done, `bytes` of it moved (0 when skipped).
    fn blob_done(&self, _digest: &Digest, _size: u64, _moved: bool) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {}

pub(crate) enum End {
    Layout { dir: OciDir, tag: Option<String> },
    Registry { reg: Arc<Registry>, r: RegistryRef },
}

/// A manifest or index and its bytes.
struct Doc {
    digest: Digest,
    bytes: Vec<u8>,
    media_type: String,
}

#[derive(Clone)]
struct Blob {
    digest: Digest,
    size: u64,
}

async fn open(reference: &ImageRef, options: &RegistryOptions, dest: bool) -> Result<End> {
    Ok(match reference {
        ImageRef::Layout(r) => {
            let dir = if dest {
                let path = r.path.clone();
                // One syncfs before the tag, not two fsyncs per blob.
                tokio::task::spawn_blocking(move || OciDir::create(path))
                    .await
                    .map_err(|e| Error::Document {
                        what: r.to_string(),
                        reason: e.to_string(),
                    })??
                    .deferring_sync()
            } else {
                OciDir::open(&r.path)?
            };
            End::Layout {
                dir,
                tag: r.tag.clone(),
            }
        }
        ImageRef::Registry(r) => End::Registry {
            reg: Arc::new(Registry::connect(&r.host, options.clone()).await?),
            r: r.clone(),
        },
    })
}

fn media_type_of(bytes: &[u8], fallback: &str) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| fallback.to_string())
}

async fn top_doc(src: &End, name: &ImageRef) -> Result<Doc> {
    match src {
        End::Layout { dir, tag } => {
            let roots = dir.resolve(tag.as_deref())?;
            let [root] = roots.as_slice() else {
                return Err(Error::Document {
                    what: name.to_string(),
                    reason: format!("{} images in the layout; name one with :TAG", roots.len()),
                });
            };
            let digest = Digest::try_from(root.digest())?;
            let bytes = dir.read_json_blob(&digest, Some(root.size()))?;
            let media_type = media_type_of(&bytes, root.media_type().as_ref());
            Ok(Doc {
                digest,
                bytes,
                media_type,
            })
        }
        End::Registry { reg, r } => {
            let (bytes, header_type, digest) =
                reg.get_manifest(&r.repository, &r.reference()).await?;
            let media_type = media_type_of(&bytes, &header_type);
            Ok(Doc {
                digest,
                bytes,
                media_type,
            })
        }
    }
}

async fn child_doc(src: &End, digest: &Digest, size: Option<u64>, fallback: &str) -> Result<Doc> {
    match src {
        End::Layout { dir, .. } => {
            let bytes = dir.read_json_blob(digest, size)?;
            Ok(Doc {
                digest: digest.clone(),
                media_type: media_type_of(&bytes, fallback),
                bytes,
            })
        }
        End::Registry { reg, r } => {
            let (bytes, header_type, _) = reg.get_manifest(&r.repository, digest.as_str()).await?;
            Ok(Doc {
                digest: digest.clone(),
                media_type: media_type_of(&bytes, &header_type),
                bytes,
            })
        }
    }
}

/// The entries of an index to copy whole, and the one whose manifest and
/// config (not its layers) to copy beside them: the legacy manifest of a
/// selected blocks manifest, which an unpack checks it against
/// (`spec/fallback.md`, "One view").
fn select(entries: &[Value], selection: &Selection) -> Result<(Vec<usize>, Option<usize>)> {
    Ok(match selection {
        Selection::All => ((0..entries.len()).collect(), None),
        Selection::Platform(platform) => {
            let wanted = oci_blocks_core::platform::Platform::parse(platform)?;
            match oci_blocks_core::platform::choose(entries, &wanted) {
                Some(c) => (vec![c.index], c.legacy),
                None => (Vec::new(), None),
            }
        }
    })
}

/// Walks the top document: child documents (children first) and the blobs.
async fn plan(src: &End, top: Doc, selection: &Selection) -> Result<(Vec<Doc>, Vec<Blob>)> {
    let mut docs = Vec::new();
    let mut blobs: Vec<Blob> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    // (document, depth) in depth-first order; children are emitted first.
    // Each manifest is fetched once, however many indexes name it, and an
    // index nested deeper than MAX_INDEX_DEPTH is refused before its
    // children are fetched.
    let mut pending = vec![(top, 0usize)];
    let mut fetched: HashSet<Digest> = HashSet::new();
    let mut ordered: Vec<Doc> = Vec::new();
    while let Some((doc, depth)) = pending.pop() {
        let is_top = depth == 0;
        // A legacy manifest copied without its layers, after its index.
        let mut side = None;
        let value: Value = serde_json::from_slice(&doc.bytes).map_err(|e| Error::Document {
            what: doc.digest.to_string(),
            reason: format!("not JSON: {e}"),
        })?;
        if let Some(entries) = value.get("manifests").and_then(Value::as_array) {
            let (chosen, legacy) = if is_top {
                select(entries, selection)?
            } else {
                ((0..entries.len()).collect(), None)
            };
            if chosen.is_empty() {
                return Err(Error::Document {
                    what: doc.digest.to_string(),
                    reason: format!("no entry for {selection:?}"),
                });
            }
            if let Some(i) = legacy {
                let e = &entries[i];
                let d = Digest::parse(e["digest"].as_str().unwrap_or_default())?;
                let legacy = child_doc(src, &d, e["size"].as_u64(), OCI_MANIFEST).await?;
                let value: Value =
                    serde_json::from_slice(&legacy.bytes).map_err(|e| Error::Document {
                        what: d.to_string(),
                        reason: format!("not JSON: {e}"),
                    })?;
                if let Some(config) = value.get("config") {
                    let text = config["digest"].as_str().unwrap_or_default();
                    if seen.insert(text.to_string()) {
                        blobs.push(Blob {
                            digest: Digest::parse(text)?,
                            size: config["size"].as_u64().unwrap_or(0),
                        });
                    }
                }
                side = Some(legacy);
            }
            if depth + 1 > MAX_INDEX_DEPTH {
                return Err(Error::Limit {
                    what: format!("index {}", doc.digest),
                    reason: format!("its manifests would be {} indexes deep", depth + 1),
                    limit: format!("{MAX_INDEX_DEPTH} levels of nested indexes"),
                });
            }
            for i in chosen {
                let e = &entries[i];
                let d = Digest::parse(e["digest"].as_str().unwrap_or_default())?;
                if !fetched.insert(d.clone()) {
                    continue;
                }
                let child = child_doc(
                    src,
                    &d,
                    e["size"].as_u64(),
                    e["mediaType"].as_str().unwrap_or(OCI_MANIFEST),
                )
                .await?;
                pending.push((child, depth + 1));
            }
        } else {
            let mut descriptors: Vec<&Value> = value.get("config").into_iter().collect();
            for list in ["layers", "blocks"] {
                descriptors.extend(
                    value
                        .get(list)
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten(),
                );
            }
            for d in descriptors {
                let foreign = d["urls"].as_array().is_some_and(|u| !u.is_empty());
                if foreign {
                    continue;
                }
                let text = d["digest"].as_str().unwrap_or_default();
                if seen.insert(text.to_string()) {
                    blobs.push(Blob {
                        digest: Digest::parse(text)?,
                        size: d["size"].as_u64().unwrap_or(0),
                    });
                }
            }
        }
        ordered.push(doc);
        ordered.extend(side);
    }
    // `ordered` has parents before children; push children first.
    ordered.reverse();
    docs.extend(ordered);
    Ok((docs, blobs))
}

struct Counters {
    transferred: AtomicUsize,
    bytes_transferred: AtomicU64,
    skipped: AtomicUsize,
    bytes_skipped: AtomicU64,
    mounted: AtomicUsize,
    reused: AtomicUsize,
    bytes_reused: AtomicU64,
    patched: AtomicUsize,
    bytes_patched: AtomicU64,
    bytes_saved: AtomicU64,
    deltas_failed: AtomicUsize,
}

#[allow(clippy::too_many_arguments)]
async fn transfer(
    src: &End,
    dest: &End,
    blob: &Blob,
    options: &CopyOptions,
    patches: &HashMap<Digest, Patch>,
    counters: &Counters,
    progress: &dyn Progress,
) -> Result<()> {
    let d = &blob.digest;
    if options.have.contains(d) {
        counters.reused.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes_reused
            .fetch_add(blob.size, Ordering::Relaxed);
        progress.blob_done(d, blob.size, false);
        return Ok(());
    }
    let present = match dest {
        End::Layout { dir, .. } => dir.has_blob_sized(d, blob.size),
        End::Registry { reg, r } => reg.has_blob(&r.repository, d).await?,
    };
    if present {
        counters.skipped.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes_skipped
            .fetch_add(blob.size, Ordering::Relaxed);
        progress.blob_done(d, blob.size, false);
        return Ok(());
    }
    if let (Some(patch), End::Layout { dir, .. }) = (patches.get(d), dest) {
        match crate::delta::rebuild(src, dir, patch).await {
            Ok(moved) => {
                counters.patched.fetch_add(1, Ordering::Relaxed);
                counters.bytes_patched.fetch_add(moved, Ordering::Relaxed);
                counters
                    .bytes_saved
                    .fetch_add(blob.size.saturating_sub(moved), Ordering::Relaxed);
                progress.blob_done(d, blob.size, true);
                return Ok(());
            }
            Err(e) => {
                counters.deltas_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("block {d}: its delta failed, fetching the whole block: {e}");
            }
        }
    }
    match (src, dest) {
        (End::Registry { reg: s, r: sr }, End::Registry { reg: t, r: tr })
            if s.host() == t.host() && sr.repository != tr.repository =>
        {
            if t.mount(&tr.repository, d, &sr.repository).await? {
                counters.mounted.fetch_add(1, Ordering::Relaxed);
                progress.blob_done(d, blob.size, false);
                return Ok(());
            }
            copy_through_file(s, &sr.repository, t, &tr.repository, blob).await?;
        }
        (End::Layout { dir: s, .. }, End::Registry { reg: t, r: tr }) => {
            t.upload_file(&tr.repository, d, &s.blob_path(d), blob.size)
                .await?;
        }
        (End::Registry { reg: s, r: sr }, End::Layout { dir: t, .. }) => {
            // A body that breaks off is fetched again; content that does not
            // match its digest is not (it would not match the next time either).
            let mut attempt = 1;
            loop {
                match download_into_layout(s, &sr.repository, t, blob).await {
                    Err(
                        Error::Http { .. }
                        | Error::Io { .. }
                        | Error::Core(oci_blocks_core::Error::Io { .. }),
                    ) if attempt < 3 => {
                        tracing::warn!(digest = %d, attempt, "download broke off; fetching it again");
                        attempt += 1;
                    }
                    other => break other?,
                }
            }
        }
        (End::Registry { reg: s, r: sr }, End::Registry { reg: t, r: tr }) => {
            copy_through_file(s, &sr.repository, t, &tr.repository, blob).await?;
        }
        (End::Layout { dir: s, .. }, End::Layout { dir: t, .. }) => {
            let (path, size, digest, target) = (s.blob_path(d), blob.size, d.clone(), t.clone());
            tokio::task::spawn_blocking(move || -> Result<()> {
                let file = std::fs::File::open(&path).map_err(|e| Error::Io { path, source: e })?;
                target.write_blob_verified(file, &digest, Some(size))?;
                Ok(())
            })
            .await
            .map_err(|e| Error::Document {
                what: d.to_string(),
                reason: e.to_string(),
            })??;
        }
    }
    counters.transferred.fetch_add(1, Ordering::Relaxed);
    counters
        .bytes_transferred
        .fetch_add(blob.size, Ordering::Relaxed);
    progress.blob_done(d, blob.size, true);
    Ok(())
}

/// Streams a blob from a registry into a layout: verified (digest and size)
/// before it appears under its name.
async fn download_into_layout(
    reg: &Registry,
    repository: &str,
    layout: &OciDir,
    blob: &Blob,
) -> Result<()> {
    let resp = reg.get_blob(repository, &blob.digest).await?;
    // More than the descriptor's size is refused before it is read; a body
    // that goes on past it is cut off there by the layout's writer.
    if let Some(announced) = resp.content_length().filter(|l| *l > blob.size) {
        return Err(Error::Limit {
            what: format!("blob {}", blob.digest),
            reason: format!("the registry announces {announced} bytes"),
            limit: format!("its descriptor's size, {} bytes", blob.size),
        });
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    // The layout's writer is synchronous: it reads the body through a bridge on
    // a blocking thread, as tokio-util documents, while the runtime's workers
    // drive the connection.
    let bridge = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let layout = layout.clone();
    let (digest, size) = (blob.digest.clone(), blob.size);
    let written = tokio::task::spawn_blocking(move || -> Result<u64> {
        Ok(layout.write_blob_verified(bridge, &digest, Some(size))?)
    })
    .await
    .map_err(|e| Error::Document {
        what: blob.digest.to_string(),
        reason: e.to_string(),
    })??;
    reg.bytes_received.fetch_add(written, Ordering::Relaxed);
    Ok(())
}

async fn copy_through_file(
    src: &Registry,
    src_repo: &str,
    dest: &Registry,
    dest_repo: &str,
    blob: &Blob,
) -> Result<()> {
    let tmp = tempfile::tempdir().map_err(|e| Error::Io {
        path: std::env::temp_dir(),
        source: e,
    })?;
    let layout = OciDir::create(tmp.path())?;
    download_into_layout(src, src_repo, &layout, blob).await?;
    dest.upload_file(
        dest_repo,
        &blob.digest,
        &layout.blob_path(&blob.digest),
        blob.size,
    )
    .await
}

/// Copies `src` to `dest`.
pub async fn copy(
    src_ref: &ImageRef,
    dest_ref: &ImageRef,
    options: &CopyOptions,
    progress: &dyn Progress,
) -> Result<CopyReport> {
    let src = open(src_ref, &options.src, false).await?;
    let dest = open(dest_ref, &options.dest, true).await?;
    let top = top_doc(&src, src_ref).await?;
    let (top_digest, top_type) = (top.digest.clone(), top.media_type.clone());
    let (docs, blobs) = plan(&src, top, &options.selection).await?;
    progress.start(blobs.len(), blobs.iter().map(|b| b.size).sum());
    let counters = Counters {
        transferred: AtomicUsize::new(0),
        bytes_transferred: AtomicU64::new(0),
        skipped: AtomicUsize::new(0),
        bytes_skipped: AtomicU64::new(0),
        mounted: AtomicUsize::new(0),
        reused: AtomicUsize::new(0),
        bytes_reused: AtomicU64::new(0),
        patched: AtomicUsize::new(0),
        bytes_patched: AtomicU64::new(0),
        bytes_saved: AtomicU64::new(0),
        deltas_failed: AtomicUsize::new(0),
    };
    let patches = match &dest {
        End::Layout { dir, .. } if options.deltas => {
            let wanted: HashMap<Digest, u64> = blobs
                .iter()
                .filter(|b| {
                    !options.have.contains(&b.digest) && !dir.has_blob_sized(&b.digest, b.size)
                })
                .map(|b| (b.digest.clone(), b.size))
                .collect();
            let manifests: Vec<Digest> = docs
                .iter()
                .filter(|d| {
                    serde_json::from_slice::<Value>(&d.bytes)
                        .is_ok_and(|v| v.get("blocks").is_some_and(Value::is_array))
                })
                .map(|d| d.digest.clone())
                .collect();
            if wanted.is_empty() || manifests.is_empty() {
                HashMap::new()
            } else {
                crate::delta::plan(&src, dir, &manifests, &wanted, options.delta_max_size).await
            }
        }
        _ => HashMap::new(),
    };
    futures_util::stream::iter(blobs.iter())
        .map(|b| transfer(&src, &dest, b, options, &patches, &counters, progress))
        .buffer_unordered(options.jobs.max(1))
        .try_collect::<Vec<()>>()
        .await?;

    let mut manifest_bytes = 0u64;
    let last = docs.len().saturating_sub(1);
    for (i, doc) in docs.iter().enumerate() {
        manifest_bytes += doc.bytes.len() as u64;
        match &dest {
            End::Registry { reg, r } => {
                let reference = if i == last {
                    r.tag.clone().unwrap_or_else(|| doc.digest.to_string())
                } else {
                    doc.digest.to_string()
                };
                reg.put_manifest(&r.repository, &reference, &doc.bytes, &doc.media_type)
                    .await?;
            }
            End::Layout { dir, .. } => {
                let (stored, _) = dir.write_blob_bytes(&doc.bytes)?;
                if stored != doc.digest {
                    return Err(Error::Mismatch {
                        what: format!("manifest {}", doc.digest),
                        expected: doc.digest.to_string(),
                        found: stored.to_string(),
                    });
                }
            }
        }
    }
    if let End::Layout { dir, tag } = &dest {
        let top = docs.last().ok_or_else(|| Error::Document {
            what: src_ref.to_string(),
            reason: "nothing to copy".into(),
        })?;
        let media_type = if top.media_type == OCI_INDEX {
            oci_blocks_core::oci_spec::image::MediaType::ImageIndex
        } else if top.media_type == OCI_MANIFEST {
            oci_blocks_core::oci_spec::image::MediaType::ImageManifest
        } else {
            oci_blocks_core::oci_spec::image::MediaType::Other(top.media_type.clone())
        };
        let descriptor = oci_blocks_core::oci_spec::image::Descriptor::new(
            media_type,
            top.bytes.len() as u64,
            top.digest.as_oci().clone(),
        );
        dir.set_tag(tag.as_deref().unwrap_or("latest"), descriptor)?;
    }

    let network = |end: &End, sent: bool| match end {
        End::Registry { reg, .. } if sent => reg.bytes_sent.load(Ordering::Relaxed),
        End::Registry { reg, .. } => reg.bytes_received.load(Ordering::Relaxed),
        End::Layout { .. } => 0,
    };
    Ok(CopyReport {
        digest: top_digest.to_string(),
        media_type: top_type,
        manifests: docs.len(),
        blobs: blobs.len(),
        blobs_transferred: counters.transferred.load(Ordering::Relaxed),
        bytes_transferred: counters.bytes_transferred.load(Ordering::Relaxed),
        blobs_skipped: counters.skipped.load(Ordering::Relaxed),
        bytes_skipped: counters.bytes_skipped.load(Ordering::Relaxed),
        blobs_mounted: counters.mounted.load(Ordering::Relaxed),
        blobs_reused: counters.reused.load(Ordering::Relaxed),
        bytes_reused: counters.bytes_reused.load(Ordering::Relaxed),
        blobs_patched: counters.patched.load(Ordering::Relaxed),
        bytes_patched: counters.bytes_patched.load(Ordering::Relaxed),
        bytes_saved: counters.bytes_saved.load(Ordering::Relaxed),
        deltas_failed: counters.deltas_failed.load(Ordering::Relaxed),
        manifest_bytes,
        network_bytes_received: network(&src, false),
        network_bytes_sent: network(&dest, true),
    })
}

/// Fetches the blobs `blobs` (digest, size) of the image `src` into the
/// layout `into`, each verified, `jobs` at a time; those `into` has are
/// skipped. For the commands that read a few blobs of an image (`delta`,
/// `bundle`).
pub async fn fetch_blobs(
    src: &ImageRef,
    options: &RegistryOptions,
    blobs: &[(Digest, u64)],
    into: &OciDir,
    jobs: usize,
) -> Result<()> {
    let src = open(src, options, false).await?;
    futures_util::stream::iter(blobs.iter())
        .map(|(digest, size)| {
            let src = &src;
            async move {
                if into.has_blob_sized(digest, *size) {
                    return Ok(());
                }
                let blob = Blob {
                    digest: digest.clone(),
                    size: *size,
                };
                match src {
                    End::Registry { reg, r } => {
                        download_into_layout(reg, &r.repository, into, &blob).await
                    }
                    End::Layout { dir, .. } => {
                        let path = dir.blob_path(digest);
                        let file = std::fs::File::open(&path)
                            .map_err(|e| Error::Io { path, source: e })?;
                        into.write_blob_verified(file, digest, Some(*size))?;
                        Ok(())
                    }
                }
            }
        })
        .buffer_unordered(jobs.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}
