//! The build: input trees to blocks, stub layers, config, manifest, in a layout.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use oci_blocks_core::Digest;
use oci_blocks_core::digest::HashingWriter;
use oci_blocks_core::layout::{OciDir, OciRef};
use oci_blocks_core::manifest::{Index, Manifest, anchor_manifest, platform_text};
use oci_blocks_core::names::*;
use oci_blocks_core::oci_spec;
use oci_blocks_core::platform::Platform;
use oci_blocks_core::validate::check_image;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use oci_blocks_core::canonical::CanonicalTar;
use oci_blocks_core::expand::{ImportBudget, LayoutBlocks, expand};
use oci_blocks_core::import::ImportEntry;
use oci_blocks_core::limits::Limits;

use crate::cache::{Cache, Cached, CachedLayer};
use crate::input::{self, Entry, Kind};
use crate::plan::{self, BlockPlan, Plan, Rules};
use crate::{Error, Result, python};

/// One `--add SRC:DEST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Add {
    /// The input tree or file.
    pub src: PathBuf,
    /// The absolute path it is placed at.
    pub dest: String,
}

/// Everything a build needs.
#[derive(Clone, Debug)]
pub struct BuildSpec {
    /// The base image, whose layers are reused and whose config is inherited.
    pub base: Option<OciRef>,
    /// Layers to add, in order.
    pub adds: Vec<Add>,
    /// `config.Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `config.Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `K=V` environment entries (replacing inherited ones of the same K).
    pub env: Vec<String>,
    /// `config.WorkingDir`.
    pub workdir: Option<String>,
    /// `config.User`.
    pub user: Option<String>,
    /// `config.Labels` to add.
    pub labels: BTreeMap<String, String>,
    /// `OS/ARCH[/VARIANT]` of each image to build; none: the base's, or
    /// this machine's (as `docker build` and the unpacker default). Several
    /// give one index.
    pub platforms: Vec<String>,
    /// Layers added only for one platform (after the common ones).
    pub adds_for: Vec<(String, Add)>,
    /// Where the image goes.
    pub out: OciRef,
    /// Explicit block globs.
    pub block_globs: Vec<String>,
    /// Files below this size stay in the layer.
    pub block_min_size: u64,
    /// The canonical mtime (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: u64,
    /// Where the build cache lives (none: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Use the import-layer media type for stub layers (the default).
    pub import_media_type: bool,
    /// How the image is published: a fallback index (the default) or the bare
    /// blocks manifest.
    pub fallback: Fallback,
    /// At most this many layers: adjacent added layers are merged to fit.
    pub max_layers: Option<usize>,
    /// Leave the base image's blobs out of the output layout (they stay
    /// referenced; the layout entry is marked `io.oci-blocks.sparse`).
    pub sparse: bool,
}

/// How a build publishes its image (`spec/fallback.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// An index: the legacy manifest (every import materialized), the blocks
    /// manifest, and the GC anchor.
    #[default]
    Index,
    /// The bare blocks manifest, for registries and clients that know blocks.
    None,
}

/// What a build produced.
#[derive(Clone, Debug, Serialize)]
pub struct BuildReport {
    /// The image reference written.
    pub image: String,
    /// Each platform's image, in index order.
    pub platforms: Vec<PlatformReport>,
    /// The fallback index, when one was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackReport>,
}

/// One platform's image.
#[derive(Clone, Debug, Serialize)]
pub struct PlatformReport {
    /// `os/arch[/variant]`.
    pub platform: String,
    /// The (blocks) manifest's digest.
    pub manifest: Digest,
    /// The config's digest.
    pub config: Digest,
    /// The layers, base layers first.
    pub layers: Vec<LayerReport>,
    /// The blocks.
    pub blocks: Vec<BlockReport>,
    /// Added layers merged to respect `--max-layers`, by destination.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<Vec<String>>,
    /// The legacy manifest's digest, when a fallback was built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy_manifest: Option<Digest>,
}

/// The fallback index of a build.
#[derive(Clone, Debug, Serialize)]
pub struct FallbackReport {
    /// The index's digest (what the tag names).
    pub index: Digest,
    /// The GC anchor's digest.
    pub anchor: Digest,
    /// Bytes of the layers only the legacy manifests use: what the legacy copy
    /// costs in storage and transfer.
    pub legacy_only_bytes: u64,
}

/// A layer of the built image.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// Digest.
    pub digest: Digest,
    /// Compressed size.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// Where it came from (`base`, or the add's DEST).
    pub source: String,
    /// Number of import entries.
    pub imports: usize,
}

/// A block of the built image.
#[derive(Clone, Debug, Serialize)]
pub struct BlockReport {
    /// Digest.
    pub digest: Digest,
    /// Size.
    pub size: u64,
    /// The rule that made it.
    pub rule: String,
    /// Descriptor annotations.
    pub annotations: BTreeMap<String, String>,
    /// Whether the build cache spared reading and writing it.
    pub cached: bool,
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Value {
    json!({"mediaType": media_type, "digest": digest.as_str(), "size": size})
}

fn check_options(spec: &BuildSpec) -> Result<()> {
    let mut platforms = HashSet::new();
    for p in &spec.platforms {
        parse_platform(p)?;
        if !platforms.insert(p.as_str()) {
            return Err(Error::option(
                format!("--platform {p}"),
                "the platform is given twice",
            ));
        }
    }
    for (p, add) in &spec.adds_for {
        if !platforms.contains(p.as_str()) {
            return Err(Error::option(
                format!("--add-for {p} {}:{}", add.src.display(), add.dest),
                format!("{p} is not a platform being built (give it with --platform)"),
            ));
        }
    }
    if spec.sparse && spec.base.is_none() {
        return Err(Error::option(
            "--sparse",
            "a sparse layout leaves out the base image's blobs, and there is no --base",
        ));
    }
    let mut seen = HashSet::new();
    let all_adds = spec
        .adds
        .iter()
        .map(|a| (None, a))
        .chain(spec.adds_for.iter().map(|(p, a)| (Some(p), a)));
    for (platform, add) in all_adds {
        let option = format!("--add {}:{}", add.src.display(), add.dest);
        if !add.dest.starts_with('/') {
            return Err(Error::option(
                option,
                format!("DEST {:?} is not an absolute path", add.dest),
            ));
        }
        if add.dest.split('/').any(|c| c == ".." || c == ".") {
            return Err(Error::option(
                option,
                format!("DEST {:?} has a `.` or `..` component", add.dest),
            ));
        }
        let clean = add.dest.trim_end_matches('/');
        if !seen.insert((platform, clean.to_string())) {
            return Err(Error::option(
                option,
                format!("DEST {:?} is given by two --add options", add.dest),
            ));
        }
        if std::fs::symlink_metadata(&add.src).is_err() {
            return Err(Error::MissingSource {
                src: add.src.display().to_string(),
            });
        }
    }
    Ok(())
}

/// `OS/ARCH[/VARIANT]` into its parts (core's [`Platform`] spelling).
pub fn parse_platform(text: &str) -> Result<(String, String, Option<String>)> {
    let p = Platform::parse(text).map_err(|_| {
        Error::option(
            format!("--platform {text}"),
            "expected OS/ARCH or OS/ARCH/VARIANT",
        )
    })?;
    Ok((p.os, p.architecture, p.variant))
}

struct Base {
    config: Value,
    layers: Vec<Value>,
    blocks: Vec<Value>,
    /// The layers and diff IDs of the base's legacy variant: its own layers
    /// when it has no imports, its legacy manifest's when it is a fallback
    /// index, none when it has imports but no legacy variant.
    legacy: Option<(Vec<Value>, Vec<Value>)>,
}

fn load_base(
    reference: &OciRef,
    platform: Option<&str>,
    out: &OciDir,
    sparse: bool,
) -> Result<Base> {
    let dir = OciDir::open(&reference.path)?;
    let checked = check_image(&dir, reference.tag.as_deref())?;
    if !checked.report.is_valid() {
        let report: Vec<String> = checked
            .report
            .errors()
            .take(10)
            .map(ToString::to_string)
            .collect();
        return Err(Error::InvalidBase {
            reference: reference.to_string(),
            report: report.join("\n"),
        });
    }
    let roots = dir.resolve(reference.tag.as_deref())?;
    let [root] = roots.as_slice() else {
        return Err(Error::InvalidBase {
            reference: reference.to_string(),
            report: format!("{} images in the layout; name one with :TAG", roots.len()),
        });
    };
    let mut digest = Digest::try_from(root.digest())?;
    let mut size = root.size();
    let mut bytes = dir.read_json_blob(&digest, Some(size))?;
    let mut legacy_entry = None;
    if root.media_type().to_string() == OCI_INDEX {
        let index = Index::from_bytes(bytes)?;
        let wanted = match platform {
            Some(p) => Platform::parse(p).map_err(|_| {
                Error::option(
                    format!("--platform {p}"),
                    "expected OS/ARCH or OS/ARCH/VARIANT",
                )
            })?,
            None => Platform::host(),
        };
        let raw: Value = serde_json::from_slice(index.raw()).map_err(|e| Error::InvalidBase {
            reference: reference.to_string(),
            report: e.to_string(),
        })?;
        let entries = array_at(&raw, "/manifests");
        let choice = oci_blocks_core::platform::choose(&entries, &wanted).ok_or_else(|| {
            Error::InvalidBase {
                reference: reference.to_string(),
                report: format!("no manifest for platform {wanted} in the index"),
            }
        })?;
        let descriptors = index.typed().manifests();
        let chosen = descriptors
            .get(choice.index)
            .ok_or_else(|| Error::InvalidBase {
                reference: reference.to_string(),
                report: "an index entry that is not a descriptor".into(),
            })?;
        legacy_entry = choice.legacy.and_then(|i| descriptors.get(i)).cloned();
        digest = Digest::try_from(chosen.digest())?;
        size = chosen.size();
        bytes = dir.read_json_blob(&digest, Some(size))?;
    }
    let manifest = Manifest::from_bytes(bytes)?;
    let config_desc = manifest.typed().config();
    let config_digest = Digest::try_from(config_desc.digest())?;
    let config: Value =
        serde_json::from_slice(&dir.read_json_blob(&config_digest, Some(config_desc.size()))?)
            .map_err(|e| Error::InvalidBase {
                reference: reference.to_string(),
                report: format!("config: {e}"),
            })?;
    let raw: Value = serde_json::from_slice(manifest.raw()).map_err(|e| Error::InvalidBase {
        reference: reference.to_string(),
        report: e.to_string(),
    })?;
    let (layers, blocks) = (array_at(&raw, "/layers"), array_at(&raw, "/blocks"));
    let legacy = match legacy_entry {
        Some(entry) => Some(load_legacy(&dir, out, reference, &entry, sparse)?),
        None if blocks.is_empty() => Some((layers.clone(), array_at(&config, "/rootfs/diff_ids"))),
        None => None,
    };
    if !sparse {
        copy_blobs(&dir, out, manifest.layers().iter().chain(manifest.blocks()))?;
    }
    Ok(Base {
        config,
        layers,
        blocks,
        legacy,
    })
}

/// The layers and diff IDs of a base image's legacy manifest, its blobs copied.
fn load_legacy(
    dir: &OciDir,
    out: &OciDir,
    reference: &OciRef,
    entry: &oci_spec::image::Descriptor,
    sparse: bool,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let invalid = |report: String| Error::InvalidBase {
        reference: reference.to_string(),
        report,
    };
    let d = Digest::try_from(entry.digest())?;
    let legacy = Manifest::from_bytes(dir.read_json_blob(&d, Some(entry.size()))?)?;
    let c = legacy.typed().config();
    let cd = Digest::try_from(c.digest())?;
    let config: Value = serde_json::from_slice(&dir.read_json_blob(&cd, Some(c.size()))?)
        .map_err(|e| invalid(format!("legacy config: {e}")))?;
    if !sparse {
        copy_blobs(dir, out, legacy.layers().iter())?;
    }
    let raw: Value = serde_json::from_slice(legacy.raw()).map_err(|e| invalid(e.to_string()))?;
    Ok((
        array_at(&raw, "/layers"),
        array_at(&config, "/rootfs/diff_ids"),
    ))
}

/// The array at `pointer` in a JSON document (empty when absent).
fn array_at(value: &Value, pointer: &str) -> Vec<Value> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Copies blobs from a base image's layout into the output, byte for byte and
/// verified as they are copied, unless the output already has them.
fn copy_blobs<'d>(
    dir: &OciDir,
    out: &OciDir,
    descriptors: impl Iterator<Item = &'d oci_spec::image::Descriptor>,
) -> Result<()> {
    if dir.root() == out.root() {
        return Ok(());
    }
    for d in descriptors {
        let digest = Digest::try_from(d.digest())?;
        if !out.has_blob(&digest) {
            out.write_blob_verified(
                dir.open_blob(&digest, Some(d.size()))?,
                &digest,
                Some(d.size()),
            )?;
        }
    }
    Ok(())
}

fn layer_path(dest: &str, rel: &[u8]) -> Vec<u8> {
    let mut p = dest.trim_matches('/').as_bytes().to_vec();
    if !rel.is_empty() {
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(rel);
    }
    p
}

/// What goes into a tar: an input entry, a synthesized directory, or an import.
#[derive(Clone)]
enum Item<'a> {
    /// An input entry, with what the canonical `.pyc` rule needs when it applies.
    Input(&'a Entry, Option<Pyc<'a>>),
    Dir(u32),
    /// An import entry's content, and the path it materializes.
    Import(String, Vec<u8>),
}

/// The `site-packages` of a Python block, and the entries of its input tree.
#[derive(Clone, Copy)]
struct Pyc<'a> {
    site: &'a [u8],
    by_rel: &'a HashMap<&'a [u8], &'a Entry>,
}

fn write_items<W: Write>(
    tar: &mut CanonicalTar<W>,
    items: &[(Vec<u8>, Item<'_>)],
    epoch: u64,
) -> Result<()> {
    let mut first_path: HashMap<(u64, u64), &[u8]> = HashMap::new();
    for (path, item) in items {
        let io_err = |e| Error::io(String::from_utf8_lossy(path).into_owned(), e);
        match item {
            Item::Dir(mode) => tar.dir(path, *mode).map_err(io_err)?,
            Item::Import(content, _) => tar
                .file_bytes(path, 0o644, content.as_bytes())
                .map_err(io_err)?,
            Item::Input(e, site) => match &e.kind {
                Kind::Dir => tar
                    .dir(path, e.mode)
                    .map_err(|err| Error::io(&e.abs, err))?,
                Kind::Symlink(target) => tar
                    .symlink(path, e.mode, target)
                    .map_err(|err| Error::io(&e.abs, err))?,
                Kind::File => {
                    if e.nlink > 1 {
                        if let Some(first) = first_path.get(&e.dev_ino) {
                            tar.hardlink(path, e.mode, first)
                                .map_err(|err| Error::io(&e.abs, err))?;
                            continue;
                        }
                        first_path.insert(e.dev_ino, path);
                    }
                    let rewritten = match site {
                        Some(pyc) => rewrite_pyc(e, *pyc, epoch).transpose()?,
                        None => None,
                    };
                    if let Some(bytes) = rewritten {
                        tar.file_bytes(path, e.mode, &bytes)
                            .map_err(|err| Error::io(&e.abs, err))?;
                    } else {
                        let mut f = File::open(&e.abs).map_err(|err| Error::io(&e.abs, err))?;
                        tar.file(path, e.mode, e.size, &mut f)
                            .map_err(|err| Error::io(&e.abs, err))?;
                    }
                }
            },
        }
    }
    Ok(())
}

/// The canonical form of a `.pyc` input, or `None` when the rule leaves it alone.
fn rewrite_pyc(e: &Entry, pyc: Pyc<'_>, epoch: u64) -> Option<Result<Vec<u8>>> {
    let name = e.name();
    if !name.ends_with(b".pyc") || e.size < 16 {
        return None;
    }
    let dir = e.rel.get(..e.rel.len() - name.len() - 1)?;
    let pkg = dir
        .strip_suffix(b"/__pycache__")
        .or_else(|| (dir == b"__pycache__").then_some(&b""[..]))?;
    let module = name.split(|&b| b == b'.').next()?;
    let mut source_rel = pkg.to_vec();
    if !source_rel.is_empty() {
        source_rel.push(b'/');
    }
    source_rel.extend_from_slice(module);
    source_rel.extend_from_slice(b".py");
    let source = pyc.by_rel.get(&source_rel[..])?;
    let in_site = source_rel.get(pyc.site.len()..)?;
    let in_site = std::str::from_utf8(in_site.strip_prefix(b"/").unwrap_or(in_site)).ok()?;
    let data = match std::fs::read(&e.abs) {
        Ok(d) => d,
        Err(err) => return Some(Err(Error::io(&e.abs, err))),
    };
    python::canonical_pyc(&data, in_site, source.mtime, source.size, epoch).map(Ok)
}

fn sort_items(items: &mut [(Vec<u8>, Item<'_>)]) {
    items.sort_by_cached_key(|(p, item)| {
        let mut k = p.clone();
        let is_dir = matches!(
            item,
            Item::Dir(_)
                | Item::Input(
                    Entry {
                        kind: Kind::Dir,
                        ..
                    },
                    _
                )
        );
        if is_dir {
            k.push(b'/');
        }
        k
    });
}

fn write_block(
    out: &OciDir,
    plan: &BlockPlan,
    entries: &[Entry],
    by_rel: &HashMap<&[u8], &Entry>,
    epoch: u64,
) -> Result<(Digest, u64)> {
    let pyc = plan.python.as_ref().map(|py| Pyc {
        site: &py.site_packages,
        by_rel,
    });
    let items: Vec<(Vec<u8>, Item<'_>)> = plan
        .entries
        .iter()
        .map(|(p, i)| (p.clone(), Item::Input(&entries[*i], pyc)))
        .collect();
    let mut tar = CanonicalTar::new(out.blob_writer()?, epoch);
    write_items(&mut tar, &items, epoch)?;
    let writer = tar.finish().map_err(|e| Error::io(out.root(), e))?;
    Ok(writer.commit()?)
}

/// Directory entries for the components of `dest` above it.
fn parent_dirs(dest: &str) -> Vec<(Vec<u8>, Item<'static>)> {
    let mut items = Vec::new();
    let mut prefix = String::new();
    for component in dest.split('/').filter(|c| !c.is_empty()) {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(component);
        if prefix.len() < dest.len() {
            items.push((prefix.clone().into_bytes(), Item::Dir(0o755)));
        }
    }
    items
}

/// Writes items as a canonical, canonically gzipped layer; returns its digest,
/// size and diff ID.
fn write_layer(
    out: &OciDir,
    items: &mut [(Vec<u8>, Item<'_>)],
    epoch: u64,
) -> Result<(Digest, u64, Digest)> {
    sort_items(items);
    let blob = out.blob_writer()?;
    let gz = flate2::GzBuilder::new()
        .operating_system(255)
        .write(blob, flate2::Compression::new(6));
    let mut tar = CanonicalTar::new(HashingWriter::new(gz), epoch);
    write_items(&mut tar, items, epoch)?;
    let (diff_id, gz) = tar.finish().map_err(|e| Error::io(out.root(), e))?.finish();
    let blob = gz.finish().map_err(|e| Error::io(out.root(), e))?;
    let (digest, size) = blob.commit()?;
    Ok((digest, size, diff_id))
}

/// Writes the materialization of the stub layer `stub` (`spec/fallback.md`)
/// as a canonically gzipped layer; returns its digest, size and diff ID.
fn write_materialized(
    out: &OciDir,
    stub: &Digest,
    size: u64,
    blocks: &mut LayoutBlocks<'_>,
) -> Result<(Digest, u64, Digest)> {
    let mut blob = out.open_blob(stub, Some(size))?;
    let mut decoded = flate2::read::MultiGzDecoder::new(&mut blob);
    let gz = flate2::GzBuilder::new()
        .operating_system(255)
        .write(out.blob_writer()?, flate2::Compression::new(6));
    let mut hashing = HashingWriter::new(gz);
    expand(
        &mut decoded,
        blocks,
        &mut hashing,
        &format!("stub layer {stub}"),
        &Limits::default(),
        &mut ImportBudget::default(),
    )?;
    drop(decoded);
    let (diff_id, gz) = hashing.finish();
    let written = gz.finish().map_err(|e| Error::io(out.root(), e))?;
    let (digest, size) = written.commit()?;
    Ok((digest, size, diff_id))
}

/// Which adds share a layer: each add alone, unless `max_layers` asks for fewer
/// layers, in which case the bottom adds are merged into one. Base layers are
/// never merged: they stay shared, byte for byte, with the base image.
fn layer_groups(
    max_layers: Option<usize>,
    base: usize,
    adds: usize,
) -> Result<Vec<std::ops::Range<usize>>> {
    let singles = || (0..adds).map(|i| i..i + 1).collect();
    let Some(max) = max_layers else {
        return Ok(singles());
    };
    let needed = base + usize::from(adds > 0);
    if max < needed {
        return Err(Error::option(
            format!("--max-layers {max}"),
            format!(
                "the base image has {base} layers, which are kept as they are, and the added layers need at least one more: the cap can be at least {needed}"
            ),
        ));
    }
    let room = max - base;
    if adds <= room {
        return Ok(singles());
    }
    let first = adds - room + 1;
    Ok(std::iter::once(0..first)
        .chain((first..adds).map(|i| i..i + 1))
        .collect())
}

/// The entries of one layer, merged from several adds as the layers would have
/// stacked: a later path replaces an earlier one (and its subtree when the
/// types differ), and an import replaces what the earlier adds had at its path.
#[derive(Default)]
struct Merged<'a> {
    items: BTreeMap<Vec<u8>, Item<'a>>,
}

impl<'a> Merged<'a> {
    fn is_dir(item: &Item<'_>) -> bool {
        matches!(
            item,
            Item::Dir(_)
                | Item::Input(
                    Entry {
                        kind: Kind::Dir,
                        ..
                    },
                    _
                )
        )
    }

    fn remove_subtree(&mut self, path: &[u8]) {
        let mut prefix = path.to_vec();
        prefix.push(b'/');
        let below: Vec<Vec<u8>> = self
            .items
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.items.remove(&k);
        }
    }

    fn add(&mut self, items: Vec<(Vec<u8>, Item<'a>)>, dest: &str) -> Result<()> {
        for (path, item) in items {
            // A path at or below an import of an earlier add would modify the
            // imported tree, which one layer cannot express.
            let into_import = self.items.values().any(|existing| match existing {
                Item::Import(_, target) => {
                    plan::is_under(&path, target) && !matches!(item, Item::Import(..))
                }
                _ => false,
            });
            if into_import {
                return Err(Error::option(
                    format!("--max-layers (merging the layer of {dest})"),
                    format!(
                        "{} would change a tree an earlier layer imports; raise the cap",
                        String::from_utf8_lossy(&path)
                    ),
                ));
            }
            if let Item::Import(_, target) = &item {
                self.items.remove(target);
                self.remove_subtree(target);
            }
            if let Some(existing) = self.items.get(&path) {
                if !(Self::is_dir(existing) && Self::is_dir(&item)) {
                    self.remove_subtree(&path);
                }
            }
            self.items.insert(path, item);
        }
        Ok(())
    }

    fn into_vec(self) -> Vec<(Vec<u8>, Item<'a>)> {
        self.items.into_iter().collect()
    }
}

struct AddResult<'a> {
    add: &'a Add,
    entries: Vec<Entry>,
    plan: Plan,
}

/// Receives a build's progress (from several threads at once).
pub trait Progress: Sync {
    /// The blocks of one platform are about to be written: how many, and the
    /// bytes of input they hold.
    fn start(&self, _platform: &str, _blocks: usize, _bytes: u64) {}
    /// One block is done (written, or found in the build cache).
    fn block_done(&self, _bytes: u64) {}
    /// The platform's blocks are all done.
    fn finish(&self) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {}

/// What one platform's build produced, for the index.
struct PlatformBuild {
    report: PlatformReport,
    /// The blocks manifest's index entry (with its platform).
    entry: Value,
    /// The legacy manifest's index entry, when a fallback was built.
    legacy_entry: Option<Value>,
    /// The block descriptors of the blocks manifest.
    blocks: Vec<Value>,
    /// Bytes of the layers only the legacy manifest uses.
    legacy_only_bytes: u64,
}

fn build_platform(
    spec: &BuildSpec,
    platform: Option<&str>,
    add_list: &[Add],
    out: &OciDir,
    cache: &mut Cache,
    rules: &Rules,
    progress: &dyn Progress,
) -> Result<PlatformBuild> {
    let epoch = spec.source_date_epoch;
    let base = spec
        .base
        .as_ref()
        .map(|b| load_base(b, platform, out, spec.sparse))
        .transpose()?;

    let adds: Vec<AddResult<'_>> = add_list
        .iter()
        .map(|add| {
            let entries = input::walk(&add.src)?;
            let plan = plan::plan(&entries, rules)?;
            Ok(AddResult { add, entries, plan })
        })
        .collect::<Result<_>>()?;

    // Blocks, in parallel; the cache spares unchanged ones.
    let jobs: Vec<(usize, usize)> = adds
        .iter()
        .enumerate()
        .flat_map(|(ai, a)| (0..a.plan.blocks.len()).map(move |bi| (ai, bi)))
        .collect();
    let by_rel: Vec<HashMap<&[u8], &Entry>> = adds
        .iter()
        .map(|a| a.entries.iter().map(|e| (&e.rel[..], e)).collect())
        .collect();
    let total: u64 = jobs
        .iter()
        .map(|&(ai, bi)| {
            let a = &adds[ai];
            a.plan.blocks[bi]
                .entries
                .iter()
                .map(|(_, i)| a.entries[*i].size)
                .sum::<u64>()
        })
        .sum();
    progress.start(platform.unwrap_or("default platform"), jobs.len(), total);
    let written: Vec<(String, Cached, bool)> = jobs
        .par_iter()
        .map(|&(ai, bi)| {
            let (a, b) = (&adds[ai], &adds[ai].plan.blocks[bi]);
            let key = Cache::key(b, &a.entries, epoch);
            let bytes: u64 = b.entries.iter().map(|(_, i)| a.entries[*i].size).sum();
            if let Some(hit) = cache.get(&key).filter(|c| out.has_blob(&c.digest)) {
                progress.block_done(bytes);
                return Ok((key, hit.clone(), true));
            }
            let annotations = b.annotate(&a.entries)?;
            let (digest, size) = write_block(out, b, &a.entries, &by_rel[ai], epoch)?;
            progress.block_done(bytes);
            Ok((
                key,
                Cached {
                    digest,
                    size,
                    annotations,
                },
                false,
            ))
        })
        .collect::<Result<_>>()?;
    progress.finish();
    for (key, cached, _) in &written {
        cache.put(key.clone(), cached.clone());
    }
    let block_of: HashMap<(usize, usize), &Cached> = jobs
        .iter()
        .copied()
        .zip(written.iter().map(|(_, c, _)| c))
        .collect();

    // Stub layers (one per add), with import entries in place of block contents.
    let mut layers: Vec<Value> = base.as_ref().map(|b| b.layers.clone()).unwrap_or_default();
    let mut diff_ids: Vec<Value> = base
        .as_ref()
        .map(|b| array_at(&b.config, "/rootfs/diff_ids"))
        .unwrap_or_default();
    let mut report_layers: Vec<LayerReport> = layers
        .iter()
        .filter_map(|l| {
            Some(LayerReport {
                digest: Digest::parse(l.get("digest")?.as_str()?).ok()?,
                size: l.get("size")?.as_u64()?,
                media_type: l.get("mediaType")?.as_str()?.to_string(),
                source: "base".into(),
                imports: 0,
            })
        })
        .collect();
    let mut history = Vec::new();
    // The legacy variant's layers: the same, with every import materialized.
    let has_blocks = adds.iter().any(|a| !a.plan.blocks.is_empty())
        || base.as_ref().is_some_and(|b| !b.blocks.is_empty());
    let fallback = spec.fallback == Fallback::Index && has_blocks;
    let (mut legacy_layers, mut legacy_diff_ids) = match &base {
        None => (Vec::new(), Vec::new()),
        Some(Base {
            legacy: Some((l, d)),
            ..
        }) => (l.clone(), d.clone()),
        Some(_) if fallback => {
            return Err(Error::option(
                "--fallback index",
                "the base image has imports but no legacy variant to build a legacy manifest on; use --fallback none",
            ));
        }
        Some(_) => (Vec::new(), Vec::new()),
    };
    let groups = layer_groups(
        spec.max_layers,
        base.as_ref().map_or(0, |b| b.layers.len()),
        adds.len(),
    )?;
    // What a stub of this build may import: the base's blocks and ours.
    let declared: HashMap<Digest, (String, u64)> = base
        .iter()
        .flat_map(|b| b.blocks.iter())
        .filter_map(|d| {
            Some((
                Digest::parse(d.get("digest")?.as_str()?).ok()?,
                (
                    d.get("mediaType")?.as_str()?.to_string(),
                    d.get("size")?.as_u64()?,
                ),
            ))
        })
        .chain(
            written
                .iter()
                .map(|(_, c, _)| (c.digest.clone(), (OCI_LAYER_TAR.to_string(), c.size))),
        )
        .collect();
    let mut materialized = LayoutBlocks::new(out, declared);
    let mut merged = Vec::new();
    for group in &groups {
        let mut items = Merged::default();
        let mut imports = 0;
        for ai in group.clone() {
            let a = &adds[ai];
            let dest = a.add.dest.trim_matches('/');
            let mut add_items = parent_dirs(dest);
            for e in &a.entries {
                if e.rel.is_empty() && dest.is_empty() {
                    continue;
                }
                if !a.plan.is_owned(&e.rel) {
                    add_items.push((layer_path(dest, &e.rel), Item::Input(e, None)));
                }
            }
            for (bi, b) in a.plan.blocks.iter().enumerate() {
                let cached = block_of[&(ai, bi)];
                for (target, source) in &b.imports {
                    let path = layer_path(dest, target);
                    let (dir, name) = match path.iter().rposition(|&c| c == b'/') {
                        Some(i) => (&path[..=i], &path[i + 1..]),
                        None => (&b""[..], &path[..]),
                    };
                    let mut entry_path = dir.to_vec();
                    entry_path.extend_from_slice(IMPORT_PREFIX.as_bytes());
                    entry_path.extend_from_slice(name);
                    let import = ImportEntry::new(source.clone(), cached.digest.clone())
                        .map_err(|e| Error::option("import", e.to_string()))?;
                    add_items.push((entry_path, Item::Import(import.to_content(), path.clone())));
                    imports += 1;
                }
            }
            items.add(add_items, &a.add.dest)?;
        }
        let dests: Vec<&str> = group.clone().map(|ai| adds[ai].add.dest.as_str()).collect();
        if dests.len() > 1 {
            merged.push(dests.iter().map(|d| d.to_string()).collect::<Vec<_>>());
        }
        let media_type = if imports > 0 && spec.import_media_type {
            IMPORT_LAYER_TAR_GZIP
        } else {
            OCI_LAYER_TAR_GZIP
        };
        let (digest, size, diff_id) = write_layer(out, &mut items.into_vec(), epoch)?;
        layers.push(descriptor(media_type, &digest, size));
        diff_ids.push(Value::String(diff_id.to_string()));
        if fallback {
            if imports == 0 {
                legacy_layers.push(descriptor(OCI_LAYER_TAR_GZIP, &digest, size));
                legacy_diff_ids.push(Value::String(diff_id.to_string()));
            } else {
                let key = Cache::layer_key(&digest);
                let (ld, ls, lid) = match cache.get_layer(&key).filter(|c| out.has_blob(&c.digest))
                {
                    Some(hit) => (hit.digest.clone(), hit.size, hit.diff_id.clone()),
                    None => {
                        let (ld, ls, lid) =
                            write_materialized(out, &digest, size, &mut materialized)?;
                        let value = CachedLayer {
                            digest: ld.clone(),
                            size: ls,
                            diff_id: lid.clone(),
                        };
                        cache.put_layer(key, value);
                        (ld, ls, lid)
                    }
                };
                legacy_layers.push(descriptor(OCI_LAYER_TAR_GZIP, &ld, ls));
                legacy_diff_ids.push(Value::String(lid.to_string()));
            }
        }
        history.push(json!({
            "created": created(epoch),
            // The source path would make the config depend on the build directory.
            "created_by": format!("oci-blocks build: add {}", dests.join(", ")),
            "comment": format!("{imports} imports"),
        }));
        report_layers.push(LayerReport {
            digest,
            size,
            media_type: media_type.to_string(),
            source: dests.join(", "),
            imports,
        });
    }
    if layers.len() > 125 && spec.max_layers.is_none() {
        tracing::warn!(
            "the image has {} layers; overlayfs stacks about 125 to 127: --max-layers merges adjacent added layers",
            layers.len()
        );
    }

    // Blocks of the manifest: the base's, then ours in first-use order, each once.
    let mut blocks: Vec<Value> = base.as_ref().map(|b| b.blocks.clone()).unwrap_or_default();
    let mut listed: HashSet<String> = blocks
        .iter()
        .filter_map(|b| b.get("digest")?.as_str().map(str::to_string))
        .collect();
    let mut report_blocks = Vec::new();
    for (&(ai, bi), (_, cached, hit)) in jobs.iter().zip(&written) {
        let b = &adds[ai].plan.blocks[bi];
        if !listed.insert(cached.digest.to_string()) {
            continue;
        }
        let mut d = descriptor(OCI_LAYER_TAR, &cached.digest, cached.size);
        if !cached.annotations.is_empty() {
            d["annotations"] = json!(cached.annotations);
        }
        blocks.push(d);
        report_blocks.push(BlockReport {
            digest: cached.digest.clone(),
            size: cached.size,
            rule: b.rule.clone(),
            annotations: cached.annotations.clone(),
            cached: *hit,
        });
    }

    let config = make_config(
        spec,
        platform,
        base.as_ref().map(|b| &b.config),
        diff_ids,
        history.clone(),
    )?;
    let config_bytes =
        serde_json::to_vec(&config).map_err(|e| Error::option("config", e.to_string()))?;
    let (config_digest, config_size) = out.write_blob_bytes(&config_bytes)?;
    let platform_value = platform_json(&config);
    // The legacy manifest first: the blocks manifest names it.
    let legacy = if fallback {
        let legacy_config = make_config(
            spec,
            platform,
            base.as_ref().map(|b| &b.config),
            legacy_diff_ids,
            history,
        )?;
        let (lcd, lcs) = out.write_blob_bytes(&to_json(&legacy_config)?)?;
        let legacy = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &lcd, lcs),
            "layers": legacy_layers,
        });
        let (lmd, lms) = out.write_blob_bytes(&to_json(&legacy)?)?;
        Some((legacy, lmd, lms))
    } else {
        None
    };
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        // The extension's own config type makes clients that cannot resolve
        // imports refuse the manifest (spec/blocks.md).
        "config": descriptor(
            if blocks.is_empty() { OCI_CONFIG } else { BLOCKS_CONFIG },
            &config_digest,
            config_size,
        ),
        "layers": layers,
    });
    if !blocks.is_empty() {
        manifest["blocks"] = Value::Array(blocks);
    }
    if let Some((_, lmd, _)) = &legacy {
        manifest["annotations"] = json!({ANNOTATION_LEGACY: lmd.as_str()});
    }
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| Error::option("manifest", e.to_string()))?;
    let (manifest_digest, manifest_size) = out.write_blob_bytes(&manifest_bytes)?;
    let mut entry = descriptor(OCI_MANIFEST, &manifest_digest, manifest_size);
    entry["platform"] = platform_value.clone();
    let mut report = PlatformReport {
        platform: platform_text(&platform_value),
        manifest: manifest_digest,
        config: config_digest,
        layers: report_layers,
        blocks: report_blocks,
        merged,
        legacy_manifest: None,
    };
    let blocks_list = array_at(&manifest, "/blocks");
    let Some((legacy, lmd, lms)) = legacy else {
        return Ok(PlatformBuild {
            report,
            entry,
            legacy_entry: None,
            blocks: blocks_list,
            legacy_only_bytes: 0,
        });
    };
    let mut legacy_entry = descriptor(OCI_MANIFEST, &lmd, lms);
    legacy_entry["platform"] = platform_value;
    entry["annotations"] = json!({ANNOTATION_VARIANT: VARIANT_BLOCKS});
    let blocks_layers: HashSet<&str> = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["digest"].as_str())
        .collect();
    let legacy_only_bytes = legacy["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| {
            !l["digest"]
                .as_str()
                .is_some_and(|d| blocks_layers.contains(d))
        })
        .filter_map(|l| l["size"].as_u64())
        .sum();
    report.legacy_manifest = Some(lmd);
    Ok(PlatformBuild {
        report,
        entry,
        legacy_entry: Some(legacy_entry),
        blocks: blocks_list,
        legacy_only_bytes,
    })
}

/// Builds the image `spec` describes, for each of its platforms, and tags it in
/// the output layout: a manifest (or fallback index) for one platform, one index
/// for several.
pub fn build(spec: &BuildSpec) -> Result<BuildReport> {
    build_with_progress(spec, &NoProgress)
}

/// [`build`], reporting progress.
pub fn build_with_progress(spec: &BuildSpec, progress: &dyn Progress) -> Result<BuildReport> {
    check_options(spec)?;
    let rules = Rules::new(&spec.block_globs, spec.block_min_size)?;
    let (out, staging) = open_output(&spec.out.path)?;
    let mut cache = Cache::load(spec.cache_dir.as_deref());
    let platforms: Vec<Option<&str>> = if spec.platforms.is_empty() {
        vec![None]
    } else {
        spec.platforms.iter().map(|p| Some(p.as_str())).collect()
    };
    let mut builds = Vec::new();
    for platform in &platforms {
        let mut adds = spec.adds.clone();
        adds.extend(
            spec.adds_for
                .iter()
                .filter(|(p, _)| Some(p.as_str()) == *platform)
                .map(|(_, a)| a.clone()),
        );
        builds.push(build_platform(
            spec, *platform, &adds, &out, &mut cache, &rules, progress,
        )?);
    }
    let tag = spec.out.tag.as_deref().unwrap_or("latest");
    let any_fallback = builds.iter().any(|b| b.legacy_entry.is_some());
    let mut fallback_report = None;
    let mut desc = if !any_fallback && builds.len() == 1 {
        let b = &builds[0];
        let mut desc = oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::ImageManifest,
            b.entry["size"].as_u64().unwrap_or_default(),
            b.report.manifest.as_oci().clone(),
        );
        desc.set_platform(serde_json::from_value(b.entry["platform"].clone()).ok());
        desc
    } else {
        // The legacy manifests first (clients unaware of blocks pick the first
        // platform match), then one anchor listing each block once, then the
        // blocks manifests: a copy tool that pushes children in index order
        // uploads the blocks as the anchor's layers before a blocks-aware
        // registry sees a manifest that names them (spec/fallback.md).
        let mut manifests = Vec::new();
        let mut blocks_entries = Vec::new();
        let mut anchor_layers: Vec<Value> = Vec::new();
        let mut seen = HashSet::new();
        for b in &builds {
            match &b.legacy_entry {
                Some(legacy) => {
                    manifests.push(legacy.clone());
                    blocks_entries.push(b.entry.clone());
                }
                None => manifests.push(b.entry.clone()),
            }
            for block in &b.blocks {
                if seen.insert(block["digest"].as_str().unwrap_or_default().to_string()) {
                    anchor_layers.push(block.clone());
                }
            }
        }
        let mut anchor_digest = None;
        if any_fallback {
            out.write_blob_bytes(b"{}")?;
            let anchor = anchor_manifest(anchor_layers);
            let (amd, ams) = out.write_blob_bytes(&to_json(&anchor)?)?;
            let mut anchor_entry = descriptor(OCI_MANIFEST, &amd, ams);
            anchor_entry["platform"] = json!({"architecture": "unknown", "os": "unknown"});
            anchor_entry["annotations"] = json!({ANNOTATION_VARIANT: VARIANT_ANCHOR});
            manifests.push(anchor_entry);
            anchor_digest = Some(amd);
        }
        manifests.extend(blocks_entries);
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        let (id, is) = out.write_blob_bytes(&to_json(&index)?)?;
        if let Some(anchor) = anchor_digest {
            fallback_report = Some(FallbackReport {
                index: id.clone(),
                anchor,
                legacy_only_bytes: builds.iter().map(|b| b.legacy_only_bytes).sum(),
            });
        }
        oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::ImageIndex,
            is,
            id.as_oci().clone(),
        )
    };
    if spec.sparse {
        desc.set_annotations(Some(
            [(ANNOTATION_SPARSE.to_string(), "true".to_string())].into(),
        ));
    }
    // index.json last: until here, the layout shows the previous image.
    out.set_tag(tag, desc)?;
    if let Some(staging) = staging {
        // A new layout appears whole, or not at all.
        let target = &spec.out.path;
        if target.is_dir() {
            std::fs::remove_dir(target).map_err(|e| Error::io(target, e))?;
        }
        let kept = staging.keep();
        std::fs::rename(&kept, target).map_err(|e| Error::io(target, e))?;
    }
    cache.save();
    Ok(BuildReport {
        image: format!("oci:{}:{tag}", spec.out.path.display()),
        platforms: builds.into_iter().map(|b| b.report).collect(),
        fallback: fallback_report,
    })
}

/// The layout a build writes: an existing one (whose `index.json` changes
/// only when the image is complete), or, for a new one, a staging layout
/// beside it that is renamed into place at the end and removed on failure.
fn open_output(path: &std::path::Path) -> Result<(OciDir, Option<tempfile::TempDir>)> {
    if path.join("oci-layout").is_file() {
        return Ok((OciDir::open(path)?, None));
    }
    let occupied = std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some());
    if occupied || path.is_file() {
        return Err(Error::option(
            format!("--out {}", path.display()),
            "exists and is not an OCI image layout; give a new directory or an existing layout",
        ));
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.building-"))
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    Ok((OciDir::create(staging.path())?, Some(staging)))
}

fn to_json(value: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::option("json", e.to_string()))
}

fn platform_json(config: &Value) -> Value {
    let (os, arch, variant) = platform_of(config);
    let mut p = json!({"architecture": arch, "os": os});
    if let Some(v) = variant {
        p["variant"] = json!(v);
    }
    p
}

fn created(epoch: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(epoch)).to_string()
}

fn platform_of(config: &Value) -> (String, String, Option<String>) {
    let s = |k: &str| config.get(k).and_then(Value::as_str).map(str::to_string);
    (
        s("os").unwrap_or_default(),
        s("architecture").unwrap_or_default(),
        s("variant"),
    )
}

fn make_config(
    spec: &BuildSpec,
    platform: Option<&str>,
    base: Option<&Value>,
    diff_ids: Vec<Value>,
    history: Vec<Value>,
) -> Result<Value> {
    let mut config = base.cloned().unwrap_or_else(|| {
        let host = Platform::host();
        let mut c = json!({"architecture": host.architecture, "os": host.os, "config": {}});
        if let Some(v) = host.variant {
            c["variant"] = json!(v);
        }
        c
    });
    if let Some(p) = platform {
        let (os, arch, variant) = parse_platform(p)?;
        if base.is_some() {
            let (bos, barch, _) = platform_of(&config);
            if (bos.as_str(), barch.as_str()) != (os.as_str(), arch.as_str()) {
                return Err(Error::option(
                    format!("--platform {p}"),
                    format!("the base image is {bos}/{barch}"),
                ));
            }
        }
        config["os"] = json!(os);
        config["architecture"] = json!(arch);
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
    }
    config["created"] = json!(created(spec.source_date_epoch));
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    let mut all_history = array_at(&config, "/history");
    all_history.extend(history);
    config["history"] = Value::Array(all_history);
    if !config.get("config").is_some_and(Value::is_object) {
        config["config"] = json!({});
    }
    let c = &mut config["config"];
    if let Some(e) = &spec.entrypoint {
        c["Entrypoint"] = json!(e);
    }
    if let Some(cmd) = &spec.cmd {
        c["Cmd"] = json!(cmd);
    }
    if let Some(w) = &spec.workdir {
        c["WorkingDir"] = json!(w);
    }
    if let Some(u) = &spec.user {
        c["User"] = json!(u);
    }
    if !spec.env.is_empty() {
        let mut env: Vec<String> = c
            .get("Env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for kv in &spec.env {
            let Some((k, _)) = kv.split_once('=') else {
                return Err(Error::option(format!("--env {kv}"), "expected K=V"));
            };
            env.retain(|e| e.split_once('=').map_or(e.as_str(), |(ek, _)| ek) != k);
            env.push(kv.clone());
        }
        c["Env"] = json!(env);
    }
    if !spec.labels.is_empty() {
        if !c.get("Labels").is_some_and(Value::is_object) {
            c["Labels"] = json!({});
        }
        for (k, v) in &spec.labels {
            c["Labels"][k] = json!(v);
        }
    }
    Ok(config)
}
