//! The build: input trees to blocks, stub layers, config, manifest, in a
//! layout. This module runs the steps in order; each step's concern lives in
//! a submodule:
//!
//! - [`spec`]: what a build is asked for, checked before anything is read;
//! - `base`: the base image, validated and copied;
//! - `layer`: canonical blocks, stub layers and materialized legacy layers;
//! - `image`: the config, manifests, anchor and index as typed documents;
//! - [`report`]: what the build tells its caller.

mod base;
mod image;
mod layer;
pub mod report;
pub mod spec;

use std::collections::{HashMap, HashSet};

use oci_blocks_core::Digest;
use oci_blocks_core::expand::LayoutBlocks;
use oci_blocks_core::import::ImportEntry;
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::manifest::platform_text;
use oci_blocks_core::names::*;
use oci_blocks_core::oci_spec;
use rayon::prelude::*;
use serde_json::{Value, json};

pub(crate) use self::base::invalid;
use self::base::{Base, array_at, load_base};
use self::image::{Blob, ImageManifest, descriptor, index_entry};
use self::layer::{Item, Merged, layer_groups, layer_path, parent_dirs};
pub use self::report::{BlockReport, BuildReport, FallbackReport, LayerReport, PlatformReport};
pub(crate) use self::spec::wanted_platform;
pub use self::spec::{Add, BuildSpec, Fallback, parse_platform, platform_arg};
use crate::cache::{Cache, Cached, CachedLayer};
use crate::input::{self, Entry};
use crate::plan::{self, Plan, Rules};
use crate::{Error, Result};

/// One add, walked and planned.
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

/// The blocks of a platform's adds, written (or found in the cache): for
/// each `(add, block)` in plan order, its blob and whether the cache had it.
struct WrittenBlocks {
    jobs: Vec<(usize, usize)>,
    written: Vec<(Cached, bool)>,
}

impl WrittenBlocks {
    fn get(&self, add: usize, block: usize) -> Option<&Cached> {
        self.jobs
            .iter()
            .position(|&j| j == (add, block))
            .map(|i| &self.written[i].0)
    }
}

/// Writes every block of `adds`, in parallel; the cache spares unchanged ones.
fn write_blocks(
    adds: &[AddResult<'_>],
    out: &OciDir,
    cache: &mut Cache,
    epoch: u64,
    platform: Option<&str>,
    progress: &dyn Progress,
) -> Result<WrittenBlocks> {
    let jobs: Vec<(usize, usize)> = adds
        .iter()
        .enumerate()
        .flat_map(|(ai, a)| (0..a.plan.blocks.len()).map(move |bi| (ai, bi)))
        .collect();
    let by_rel: Vec<HashMap<&[u8], &Entry>> = adds
        .iter()
        .map(|a| a.entries.iter().map(|e| (&e.rel[..], e)).collect())
        .collect();
    let input_bytes = |ai: usize, bi: usize| -> u64 {
        let a = &adds[ai];
        a.plan.blocks[bi]
            .entries
            .iter()
            .map(|(_, i)| a.entries[*i].size)
            .sum()
    };
    let total: u64 = jobs.iter().map(|&(ai, bi)| input_bytes(ai, bi)).sum();
    progress.start(platform.unwrap_or("default platform"), jobs.len(), total);
    let cache_ref = &*cache;
    let written: Vec<(String, Cached, bool)> = jobs
        .par_iter()
        .map(|&(ai, bi)| {
            let (a, b) = (&adds[ai], &adds[ai].plan.blocks[bi]);
            let key = Cache::key(b, &a.entries, epoch);
            let bytes = input_bytes(ai, bi);
            if let Some(hit) = cache_ref.get(&key).filter(|c| out.has_blob(&c.digest)) {
                progress.block_done(bytes);
                return Ok((key, hit.clone(), true));
            }
            let annotations = b.annotate(&a.entries)?;
            let (digest, size) = layer::write_block(out, b, &a.entries, &by_rel[ai], epoch)?;
            progress.block_done(bytes);
            let blob = Cached {
                digest,
                size,
                annotations,
            };
            Ok((key, blob, false))
        })
        .collect::<Result<_>>()?;
    progress.finish();
    for (key, cached, _) in &written {
        cache.put(key.clone(), cached.clone());
    }
    Ok(WrittenBlocks {
        jobs,
        written: written.into_iter().map(|(_, c, hit)| (c, hit)).collect(),
    })
}

/// The layers of a platform's image, as the blocks manifest and (with a
/// fallback) the legacy manifest list them.
struct Layers {
    /// The blocks manifest's layer descriptors and diff IDs, base first.
    descriptors: Vec<Value>,
    diff_ids: Vec<Value>,
    /// The legacy manifest's, when a fallback is built.
    legacy: Option<(Vec<Value>, Vec<Value>)>,
    /// The config history entries of the added layers.
    history: Vec<Value>,
    report: Vec<LayerReport>,
    /// Adds merged into one layer, by destination.
    merged: Vec<Vec<String>>,
}

/// A descriptor's digest, media type and size, as the JSON has them.
fn descriptor_parts(d: &Value) -> Option<(Digest, String, u64)> {
    Some((
        Digest::parse(d.get("digest")?.as_str()?).ok()?,
        d.get("mediaType")?.as_str()?.to_string(),
        d.get("size")?.as_u64()?,
    ))
}

/// Layer entries by path, in the order they are written.
type PathItems<'a> = Vec<(Vec<u8>, Item<'a>)>;

/// The items of one add's stub layer: its parent directories, the entries
/// no block owns, and an import entry per block import; and how many
/// imports.
fn add_items<'a>(
    a: &'a AddResult<'_>,
    ai: usize,
    blocks: &WrittenBlocks,
) -> Result<(PathItems<'a>, usize)> {
    let dest = a.add.dest.trim_matches('/');
    let imports_only = a.add.imports_only.is_some();
    let mut items = if imports_only {
        Vec::new()
    } else {
        parent_dirs(dest)
    };
    for e in a.entries.iter().filter(|_| !imports_only) {
        if e.rel.is_empty() && dest.is_empty() {
            continue;
        }
        if !a.plan.is_owned(&e.rel) {
            items.push((layer_path(dest, &e.rel), Item::Input(e, None)));
        }
    }
    let mut imports = 0;
    for (bi, b) in a.plan.blocks.iter().enumerate() {
        let cached = blocks
            .get(ai, bi)
            .ok_or_else(|| Error::option("import", "a planned block was not written"))?;
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
            items.push((entry_path, Item::Import(import.to_content(), path.clone())));
            imports += 1;
        }
    }
    Ok((items, imports))
}

/// Writes the stub layers (one per group of adds) on top of the base's, and
/// with `fallback` their materializations for the legacy manifest.
#[allow(clippy::too_many_arguments)]
fn write_layers(
    spec: &BuildSpec,
    base: Option<&Base>,
    adds: &[AddResult<'_>],
    blocks: &WrittenBlocks,
    fallback: bool,
    out: &OciDir,
    cache: &mut Cache,
) -> Result<Layers> {
    let epoch = spec.source_date_epoch;
    let mut descriptors: Vec<Value> = base.map(|b| b.layers.clone()).unwrap_or_default();
    let mut diff_ids: Vec<Value> = base
        .map(|b| array_at(&b.config, "/rootfs/diff_ids"))
        .unwrap_or_default();
    let mut report: Vec<LayerReport> = descriptors
        .iter()
        .filter_map(descriptor_parts)
        .map(|(digest, media_type, size)| LayerReport {
            digest,
            size,
            media_type,
            source: "base".into(),
            imports: 0,
        })
        .collect();
    let mut legacy = match base {
        None => fallback.then(|| (Vec::new(), Vec::new())),
        Some(Base {
            legacy: Some((l, d)),
            ..
        }) => fallback.then(|| (l.clone(), d.clone())),
        Some(_) if fallback => {
            return Err(Error::option(
                "--fallback index",
                "the base image has imports but no legacy variant to build a legacy manifest on; use --fallback none",
            ));
        }
        Some(_) => None,
    };
    let groups = if adds.iter().any(|a| a.add.layer_group.is_some()) {
        // Explicit groups: each run of adjacent adds of one group is a layer.
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, a) in adds.iter().enumerate() {
            match ranges.last_mut() {
                Some(r) if adds[r.start].add.layer_group == a.add.layer_group => r.end = i + 1,
                _ => ranges.push(i..i + 1),
            }
        }
        ranges
    } else {
        layer_groups(
            spec.max_layers,
            base.map_or(0, |b| b.layers.len()),
            adds.len(),
        )?
    };
    // What a stub of this build may import: the base's blocks and ours.
    let declared: HashMap<Digest, (String, u64)> = base
        .iter()
        .flat_map(|b| b.blocks.iter())
        .filter_map(descriptor_parts)
        .map(|(digest, media_type, size)| (digest, (media_type, size)))
        .chain(
            blocks
                .written
                .iter()
                .map(|(c, _)| (c.digest.clone(), (OCI_LAYER_TAR.to_string(), c.size))),
        )
        .collect();
    // Stub layers whose materialization the legacy manifest needs: their
    // place in it, digest and size; written in parallel after the loop.
    let mut pending: Vec<(usize, Digest, u64)> = Vec::new();
    let mut history = Vec::new();
    let mut merged = Vec::new();
    for group in &groups {
        let mut items = Merged::default();
        let mut imports = 0;
        for ai in group.clone() {
            let (add_items, n) = add_items(&adds[ai], ai, blocks)?;
            items.add(add_items, &adds[ai].add.dest)?;
            imports += n;
        }
        let mut dests: Vec<&str> = group
            .clone()
            .map(|ai| {
                let add = &adds[ai].add;
                add.imports_only.as_deref().unwrap_or(add.dest.as_str())
            })
            .collect();
        dests.dedup();
        if dests.len() > 1 {
            merged.push(dests.iter().map(|d| d.to_string()).collect::<Vec<_>>());
        }
        let media_type = if imports > 0 && spec.import_media_type {
            IMPORT_LAYER_TAR_GZIP
        } else {
            OCI_LAYER_TAR_GZIP
        };
        let (digest, size, diff_id) = layer::write_layer(out, &mut items.into_vec(), epoch)?;
        descriptors.push(descriptor(media_type, &digest, size));
        diff_ids.push(Value::String(diff_id.to_string()));
        if let Some((legacy_layers, legacy_ids)) = &mut legacy {
            if imports > 0 {
                pending.push((legacy_layers.len(), digest.clone(), size));
            }
            legacy_layers.push(descriptor(OCI_LAYER_TAR_GZIP, &digest, size));
            legacy_ids.push(Value::String(diff_id.to_string()));
        }
        history.push(json!({
            "created": image::created(epoch),
            // The source path would make the config depend on the build directory.
            "created_by": if group.clone().all(|ai| adds[ai].add.imports_only.is_some()) {
                format!("oci-blocks rechunk: {}", dests.join(", "))
            } else {
                format!("oci-blocks build: add {}", dests.join(", "))
            },
            "comment": format!("{imports} imports"),
        }));
        report.push(LayerReport {
            digest,
            size,
            media_type: media_type.to_string(),
            source: dests.join(", "),
            imports,
        });
    }
    if let Some((legacy_layers, legacy_ids)) = &mut legacy {
        // Each materialization is one gzip stream: the groups' layers are
        // compressed side by side, one per core.
        let cache_ref = &*cache;
        let written: Vec<(bool, Digest, u64, Digest)> = pending
            .par_iter()
            .map(|(_, stub, size)| materialize(out, cache_ref, stub, *size, &declared))
            .collect::<Result<_>>()?;
        for ((at, stub, _), (fresh, ld, ls, lid)) in pending.iter().zip(written) {
            if fresh {
                cache.put_layer(
                    Cache::layer_key(stub),
                    CachedLayer {
                        digest: ld.clone(),
                        size: ls,
                        diff_id: lid.clone(),
                    },
                );
            }
            legacy_layers[*at] = descriptor(OCI_LAYER_TAR_GZIP, &ld, ls);
            legacy_ids[*at] = Value::String(lid.to_string());
        }
    }
    if descriptors.len() > 125 && spec.max_layers.is_none() {
        tracing::warn!(
            "the image has {} layers; overlayfs stacks about 125 to 127: --max-layers merges adjacent added layers",
            descriptors.len()
        );
    }
    Ok(Layers {
        descriptors,
        diff_ids,
        legacy,
        history,
        report,
        merged,
    })
}

/// The materialization of stub layer `stub` for the legacy manifest, from the
/// cache (keyed by the stub's digest, which names every block) or written
/// (then the first value is true, for the caller to cache).
fn materialize(
    out: &OciDir,
    cache: &Cache,
    stub: &Digest,
    size: u64,
    declared: &HashMap<Digest, (String, u64)>,
) -> Result<(bool, Digest, u64, Digest)> {
    let key = Cache::layer_key(stub);
    if let Some(hit) = cache.get_layer(&key).filter(|c| out.has_blob(&c.digest)) {
        return Ok((false, hit.digest.clone(), hit.size, hit.diff_id.clone()));
    }
    let mut blocks = LayoutBlocks::new(out, declared.clone());
    let (digest, size, diff_id) = layer::write_materialized(out, stub, size, &mut blocks)?;
    Ok((true, digest, size, diff_id))
}

/// The manifest's block descriptors: the base's, then ours in first-use
/// order, each once; and the report of ours.
fn list_blocks(
    base: Option<&Base>,
    adds: &[AddResult<'_>],
    blocks: &WrittenBlocks,
) -> (Vec<Value>, Vec<BlockReport>) {
    let mut list: Vec<Value> = base.map(|b| b.blocks.clone()).unwrap_or_default();
    let mut listed: HashSet<String> = list
        .iter()
        .filter_map(|b| b.get("digest")?.as_str().map(str::to_string))
        .collect();
    let mut report = Vec::new();
    for (&(ai, bi), (cached, hit)) in blocks.jobs.iter().zip(&blocks.written) {
        if !listed.insert(cached.digest.to_string()) {
            continue;
        }
        let mut d = descriptor(OCI_LAYER_TAR, &cached.digest, cached.size);
        if !cached.annotations.is_empty() {
            d["annotations"] = json!(cached.annotations);
        }
        list.push(d);
        report.push(BlockReport {
            digest: cached.digest.clone(),
            size: cached.size,
            rule: adds[ai].plan.blocks[bi].rule.clone(),
            annotations: cached.annotations.clone(),
            cached: *hit,
        });
    }
    (list, report)
}

/// Bytes of the legacy layers that are not layers of the blocks manifest.
fn legacy_only_bytes(blocks_layers: &[Value], legacy_layers: &[Value]) -> u64 {
    let shared: HashSet<&str> = blocks_layers
        .iter()
        .filter_map(|l| l["digest"].as_str())
        .collect();
    legacy_layers
        .iter()
        .filter(|l| !l["digest"].as_str().is_some_and(|d| shared.contains(d)))
        .filter_map(|l| l["size"].as_u64())
        .sum()
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
            let plan = match &add.whole_block {
                Some(annotations) => plan::whole(&entries, annotations)?,
                None => plan::plan(&entries, rules)?,
            };
            Ok(AddResult { add, entries, plan })
        })
        .collect::<Result<_>>()?;
    let written = write_blocks(&adds, out, cache, epoch, platform, progress)?;
    let has_blocks = adds.iter().any(|a| !a.plan.blocks.is_empty())
        || base.as_ref().is_some_and(|b| !b.blocks.is_empty());
    let fallback = spec.fallback == Fallback::Index && has_blocks;
    let layers = write_layers(spec, base.as_ref(), &adds, &written, fallback, out, cache)?;
    let (blocks, report_blocks) = list_blocks(base.as_ref(), &adds, &written);

    let base_config = base.as_ref().map(|b| &b.config);
    let config = image::make_config(
        spec,
        platform,
        base_config,
        layers.diff_ids,
        layers.history.clone(),
    )?;
    let config_blob = Blob::write_json(out, &config)?;
    let platform_value = image::platform_json(&config);
    // The legacy manifest first: the blocks manifest names it.
    let legacy = match &layers.legacy {
        Some((legacy_layers, legacy_ids)) => {
            let legacy_config = image::make_config(
                spec,
                platform,
                base_config,
                legacy_ids.clone(),
                layers.history,
            )?;
            let legacy_config = Blob::write_json(out, &legacy_config)?;
            let manifest = ImageManifest {
                config: (&legacy_config, OCI_CONFIG),
                layers: legacy_layers,
                blocks: &[],
                legacy: None,
            }
            .write(out)?;
            Some((
                manifest,
                legacy_only_bytes(&layers.descriptors, legacy_layers),
            ))
        }
        None => None,
    };
    let manifest = ImageManifest {
        // The extension's own config type makes clients that cannot resolve
        // imports refuse the manifest (spec/blocks.md).
        config: (
            &config_blob,
            if blocks.is_empty() {
                OCI_CONFIG
            } else {
                BLOCKS_CONFIG
            },
        ),
        layers: &layers.descriptors,
        blocks: &blocks,
        legacy: legacy.as_ref().map(|(m, _)| &m.digest),
    }
    .write(out)?;
    let variant = legacy.as_ref().map(|_| VARIANT_BLOCKS);
    let entry = index_entry(&manifest, &platform_value, variant);
    let report = PlatformReport {
        platform: platform_text(&platform_value),
        manifest: manifest.digest.clone(),
        config: config_blob.digest,
        layers: layers.report,
        blocks: report_blocks,
        merged: layers.merged,
        legacy_manifest: legacy.as_ref().map(|(m, _)| m.digest.clone()),
    };
    Ok(PlatformBuild {
        report,
        entry,
        legacy_entry: legacy
            .as_ref()
            .map(|(m, _)| index_entry(m, &platform_value, None)),
        blocks,
        legacy_only_bytes: legacy.map_or(0, |(_, bytes)| bytes),
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
    spec::check_options(spec)?;
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
    let (mut desc, fallback_report) = top_descriptor(&out, &builds)?;
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

/// What the tag names: the one manifest, or an index of every platform's
/// (a fallback index: legacy manifests, the anchor, blocks manifests).
fn top_descriptor(
    out: &OciDir,
    builds: &[PlatformBuild],
) -> Result<(oci_spec::image::Descriptor, Option<FallbackReport>)> {
    let any_fallback = builds.iter().any(|b| b.legacy_entry.is_some());
    if let [b] = builds
        && !any_fallback
    {
        let mut desc = oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::ImageManifest,
            b.entry["size"].as_u64().unwrap_or_default(),
            b.report.manifest.as_oci().clone(),
        );
        desc.set_platform(serde_json::from_value(b.entry["platform"].clone()).ok());
        return Ok((desc, None));
    }
    // The legacy manifests first (clients unaware of blocks pick the first
    // platform match), then one anchor listing each block once, then the
    // blocks manifests: a copy tool that pushes children in index order
    // uploads the blocks as the anchor's layers before a blocks-aware
    // registry sees a manifest that names them (spec/fallback.md).
    let mut manifests = Vec::new();
    let mut blocks_entries = Vec::new();
    let mut anchor_layers: Vec<Value> = Vec::new();
    let mut seen = HashSet::new();
    for b in builds {
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
    let anchor = if any_fallback {
        let (anchor, entry) = image::write_anchor(out, anchor_layers)?;
        manifests.push(entry);
        Some(anchor)
    } else {
        None
    };
    manifests.extend(blocks_entries);
    let index = image::write_index(out, manifests)?;
    let report = anchor.map(|anchor| FallbackReport {
        index: index.digest.clone(),
        anchor: anchor.digest,
        legacy_only_bytes: builds.iter().map(|b| b.legacy_only_bytes).sum(),
    });
    let desc = oci_spec::image::Descriptor::new(
        oci_spec::image::MediaType::ImageIndex,
        index.size,
        index.digest.as_oci().clone(),
    );
    Ok((desc, report))
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
