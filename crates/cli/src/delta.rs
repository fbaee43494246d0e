//! `oci-blocks delta`: patches that rebuild the blocks of a newer image from
//! the blocks of an older one, written beside the newer image as a delta
//! artifact its puller finds through the referrers API (`spec/deltas.md`).
//! Also the pieces `bundle` shares: an image's documents, its blocks
//! manifests paired with the older image's, and patches made in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use oci_blocks_client::{CopyOptions, ImageRef, RegistryOptions};
use oci_blocks_core::Digest;
use oci_blocks_core::delta::{self, Artifact, BlockInfo, Patch, Subject};
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::names::OCI_MANIFEST;
use oci_blocks_core::platform::{Platform, choose};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::output::{bytes, outln};
use crate::transfer::{Transport, fetch_documents, runtime};

/// Make delta patches for the blocks NEW has and OLD lacks, against the
/// version of the same dependency in OLD, and write them beside NEW as a
/// delta artifact (its subject NEW's blocks manifest) that `pull` uses.
///
/// References: oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST]; --src-*
/// flags reach OLD, --dest-* flags NEW.
#[derive(clap::Args)]
pub struct Args {
    /// The image the puller has (oci:… or docker://…).
    #[arg(long, value_name = "OLD")]
    from: String,
    /// The image to make deltas for, where the artifact is written.
    new: String,
    #[command(flatten)]
    making: Making,
    #[command(flatten)]
    transport: Transport,
}

/// How patches are made (`delta`, `bundle --delta`).
#[derive(clap::Args, Clone)]
pub struct Making {
    /// zstd level of the patches (1-22).
    #[arg(long, default_value_t = delta::DEFAULT_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=22))]
    level: i32,
    /// Blocks larger than this many bytes get no patch: making and applying
    /// one holds its base in memory.
    #[arg(long, default_value_t = oci_blocks_client::copy::DEFAULT_DELTA_MAX_SIZE,
          value_name = "BYTES")]
    pub delta_max_size: u64,
    /// Patches made at once (default: one per core).
    #[arg(long, value_name = "N")]
    patch_jobs: Option<usize>,
}

/// Blobs as (digest, size).
pub type Blobs = Vec<(Digest, u64)>;

/// A blocks manifest of an image.
pub struct BlocksManifest {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// The document.
    pub value: Value,
    /// The platform its index entry names.
    pub platform: Option<Platform>,
}

impl Making {
    /// The threads patches are made on: `--patch-jobs`, else one per core.
    fn pool(&self) -> Result<rayon::ThreadPool> {
        let jobs = self.patch_jobs.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        });
        rayon::ThreadPoolBuilder::new()
            .num_threads(jobs.max(1))
            .build()
            .context("a thread pool for patches")
    }
}

impl Default for Making {
    fn default() -> Self {
        Making {
            level: delta::DEFAULT_LEVEL,
            delta_max_size: oci_blocks_client::copy::DEFAULT_DELTA_MAX_SIZE,
            patch_jobs: None,
        }
    }
}

/// The documents of an image (index, manifests, configs) in a layout, and
/// its top descriptor.
pub struct Image {
    /// The reference as given.
    pub reference: ImageRef,
    /// Where its documents are (the image's own layout, or a temporary one).
    pub docs: OciDir,
    _tmp: Option<tempfile::TempDir>,
    /// Its top document.
    pub top: Digest,
    /// Its top document's size.
    pub top_size: u64,
    /// How to reach it, when it is on a registry.
    pub options: RegistryOptions,
}

impl Image {
    /// Reads `text`'s documents: from its layout, or fetched (verified) from
    /// its registry.
    pub fn open(text: &str, options: &RegistryOptions) -> Result<Image> {
        let reference = ImageRef::parse(text)?;
        let (docs, tmp, tag) = match &reference {
            ImageRef::Layout(r) => (OciDir::open(&r.path)?, None, r.tag.clone()),
            ImageRef::Registry(_) => {
                let copy = CopyOptions {
                    src: options.clone(),
                    ..CopyOptions::default()
                };
                let (tmp, tag) = fetch_documents(text, &copy)?;
                (OciDir::open(tmp.path())?, Some(tmp), Some(tag))
            }
        };
        let roots = docs.resolve(tag.as_deref())?;
        let [root] = roots.as_slice() else {
            bail!(
                "{text}: {} images in the layout; name one with :TAG",
                roots.len()
            );
        };
        Ok(Image {
            reference,
            docs,
            _tmp: tmp,
            top: Digest::try_from(root.digest())?,
            top_size: root.size(),
            options: options.clone(),
        })
    }

    /// A document of the image, parsed.
    pub fn doc(&self, digest: &Digest, size: Option<u64>) -> Result<(Vec<u8>, Value)> {
        let bytes = self.docs.read_json_blob(digest, size)?;
        let value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: {digest} is not JSON", self.reference))?;
        Ok((bytes, value))
    }

    /// The top document's index entries (empty for a single manifest).
    pub fn entries(&self) -> Result<Vec<Value>> {
        let (_, top) = self.doc(&self.top, Some(self.top_size))?;
        Ok(top["manifests"].as_array().cloned().unwrap_or_default())
    }

    /// Its manifests: (digest, size, index entry), the entry `None` for an
    /// image that is one manifest.
    pub fn manifest_entries(&self) -> Result<Vec<(Digest, u64, Option<Value>)>> {
        let entries = self.entries()?;
        if entries.is_empty() {
            return Ok(vec![(self.top.clone(), self.top_size, None)]);
        }
        Ok(entries
            .into_iter()
            .filter_map(|e| {
                Some((
                    Digest::parse(e.get("digest")?.as_str()?).ok()?,
                    e.get("size")?.as_u64()?,
                    Some(e),
                ))
            })
            .collect())
    }

    /// Its blocks manifests.
    pub fn blocks_manifests(&self) -> Result<Vec<BlocksManifest>> {
        let mut out = Vec::new();
        for (d, size, entry) in self.manifest_entries()? {
            let (_, m) = self.doc(&d, Some(size))?;
            if m["blocks"].as_array().is_some_and(|b| !b.is_empty()) {
                out.push(BlocksManifest {
                    digest: d,
                    size,
                    value: m,
                    platform: entry.as_ref().and_then(Platform::of_entry),
                });
            }
        }
        Ok(out)
    }

    /// The blocks manifest of this image that a client of `platform` takes
    /// (the only one, for a single manifest).
    pub fn blocks_manifest_for(
        &self,
        platform: Option<&Platform>,
    ) -> Result<Option<(Digest, Value)>> {
        let entries = self.entries()?;
        if entries.is_empty() {
            let (_, m) = self.doc(&self.top, Some(self.top_size))?;
            return Ok(m["blocks"].is_array().then(|| (self.top.clone(), m)));
        }
        let Some(platform) = platform else {
            return Ok(None);
        };
        let Some(choice) = choose(&entries, platform).filter(|c| c.blocks) else {
            return Ok(None);
        };
        let e = &entries[choice.index];
        let d = Digest::parse(e["digest"].as_str().unwrap_or_default())?;
        let (_, m) = self.doc(&d, e["size"].as_u64())?;
        Ok(Some((d, m)))
    }

    /// Every blob and document the image references: (digest, size), the
    /// documents included.
    pub fn closure(&self) -> Result<BTreeMap<Digest, u64>> {
        let (mut docs, blobs) = self.graph()?;
        docs.extend(blobs);
        Ok(docs)
    }

    /// The image's documents (indexes and manifests) and its other blobs
    /// (configs, layers, blocks; foreign layers left out), as (digest, size).
    pub fn graph(&self) -> Result<(BTreeMap<Digest, u64>, BTreeMap<Digest, u64>)> {
        let mut docs = BTreeMap::new();
        let mut blobs = BTreeMap::new();
        let mut pending = vec![(self.top.clone(), self.top_size)];
        while let Some((d, size)) = pending.pop() {
            if docs.insert(d.clone(), size).is_some() {
                continue;
            }
            let (_, v) = self.doc(&d, Some(size))?;
            for e in v["manifests"].as_array().into_iter().flatten() {
                if let (Some(t), Some(s)) = (e["digest"].as_str(), e["size"].as_u64()) {
                    pending.push((Digest::parse(t)?, s));
                }
            }
            let mut descriptors: Vec<&Value> = v.get("config").into_iter().collect();
            for list in ["layers", "blocks"] {
                descriptors.extend(v[list].as_array().into_iter().flatten());
            }
            for b in descriptors {
                if b["urls"].as_array().is_some_and(|u| !u.is_empty()) {
                    continue;
                }
                if let (Some(t), Some(s)) = (b["digest"].as_str(), b["size"].as_u64()) {
                    blobs.insert(Digest::parse(t)?, s);
                }
            }
        }
        for d in docs.keys() {
            blobs.remove(d);
        }
        Ok((docs, blobs))
    }

    /// A layout that holds `blobs` of this image: its own, or `scratch`
    /// after they are fetched into it (verified).
    pub fn blobs_in<'a>(
        &'a self,
        blobs: &[(Digest, u64)],
        scratch: &'a OciDir,
        jobs: usize,
    ) -> Result<&'a OciDir> {
        match &self.reference {
            ImageRef::Layout(_) => Ok(&self.docs),
            ImageRef::Registry(_) => {
                runtime()?.block_on(oci_blocks_client::copy::fetch_blobs(
                    &self.reference,
                    &self.options,
                    blobs,
                    scratch,
                    jobs,
                ))?;
                Ok(scratch)
            }
        }
    }
}

/// One patch made, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct MadePatch {
    /// The target block's title annotation.
    pub title: Option<String>,
    /// The patch.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// The block it applies to.
    pub base: String,
    /// The block it rebuilds.
    pub target: String,
    /// That block's size.
    pub target_size: u64,
}

/// Patches for one blocks manifest of NEW.
pub struct Planned {
    /// NEW's blocks manifest.
    pub subject: Subject,
    /// OLD's blocks manifest for the same platform.
    pub from: Digest,
    /// (target, base) pairs.
    pub pairs: Vec<(BlockInfo, BlockInfo)>,
}

/// Pairs each blocks manifest of `new` with `old`'s for its platform and
/// chooses a base in it for each block `old` lacks.
pub fn plan(old: &Image, new: &Image, max_size: u64) -> Result<Vec<Planned>> {
    let manifests = new.blocks_manifests()?;
    if manifests.is_empty() {
        bail!(
            "{}: no blocks manifest; deltas are made between blocks (build or rechunk it first)",
            new.reference
        );
    }
    let mut out = Vec::new();
    for BlocksManifest {
        digest,
        size,
        value: manifest,
        platform,
    } in manifests
    {
        let Some((from, old_manifest)) = old.blocks_manifest_for(platform.as_ref())? else {
            tracing::warn!(
                "{}: no blocks manifest for {} in {}; no deltas for it",
                new.reference,
                platform.map_or("its platform".to_string(), |p| p.to_string()),
                old.reference
            );
            continue;
        };
        let old_blocks = BlockInfo::of_manifest(&old_manifest);
        let new_blocks = BlockInfo::of_manifest(&manifest);
        let pairs = delta::choose_bases(&old_blocks, &new_blocks, max_size)
            .into_iter()
            .map(|(i, j)| (new_blocks[i].clone(), old_blocks[j].clone()))
            .collect();
        out.push(Planned {
            subject: Subject {
                media_type: OCI_MANIFEST.to_string(),
                digest,
                size,
            },
            from,
            pairs,
        });
    }
    Ok(out)
}

/// Whether a patch is worth shipping: it saves at least a quarter of its
/// block (`spec/deltas.md`, "Making a patch").
pub fn worth_it(patch_size: u64, target_size: u64) -> bool {
    patch_size.saturating_mul(4) < target_size.saturating_mul(3)
}

/// Makes the patches of `planned` into `out`: bases read from `old_blobs`,
/// targets from `new_blobs`, `jobs` at once. Returns the artifacts (one
/// per blocks manifest with at least one patch worth shipping).
pub fn make(
    planned: &[Planned],
    old_blobs: &OciDir,
    new_blobs: &OciDir,
    out: &OciDir,
    making: &Making,
) -> Result<(Vec<Artifact>, Vec<MadePatch>)> {
    let pool = making.pool()?;
    // One patch per distinct (target, base), however many manifests share it.
    let distinct: BTreeSet<(Digest, Digest)> = planned
        .iter()
        .flat_map(|p| p.pairs.iter())
        .map(|(t, b)| (t.digest.clone(), b.digest.clone()))
        .collect();
    let info: BTreeMap<Digest, &BlockInfo> = planned
        .iter()
        .flat_map(|p| p.pairs.iter())
        .flat_map(|(t, b)| [(t.digest.clone(), t), (b.digest.clone(), b)])
        .collect();
    let level = making.level;
    let made: Vec<Result<Option<Patch>>> = pool.install(|| {
        distinct
            .par_iter()
            .map(|(t, b)| -> Result<Option<Patch>> {
                let (target, base) = (info[t], info[b]);
                let base_bytes = old_blobs
                    .read_blob(&base.digest, Some(base.size), base.size)
                    .with_context(|| format!("reading block {}", base.digest))?;
                let target_reader = new_blobs.open_blob(&target.digest, Some(target.size))?;
                let mut writer = out.blob_writer()?;
                delta::make(&base_bytes, target_reader, target.size, level, &mut writer)
                    .with_context(|| format!("making the patch for block {}", target.digest))?;
                if !worth_it(writer.size(), target.size) {
                    return Ok(None);
                }
                let (digest, size) = writer.commit()?;
                Ok(Some(Patch {
                    digest,
                    size,
                    base: base.digest.clone(),
                    base_size: base.size,
                    target: target.digest.clone(),
                    target_size: target.size,
                    recompress: None,
                }))
            })
            .collect()
    });
    let mut by_target: BTreeMap<(Digest, Digest), Patch> = BTreeMap::new();
    for p in made {
        if let Some(p) = p? {
            by_target.insert((p.target.clone(), p.base.clone()), p);
        }
    }
    let mut artifacts = Vec::new();
    let mut report = Vec::new();
    for plan in planned {
        let patches: Vec<Patch> = plan
            .pairs
            .iter()
            .filter_map(|(t, b)| {
                by_target
                    .get(&(t.digest.clone(), b.digest.clone()))
                    .cloned()
            })
            .collect();
        for p in &patches {
            if !report
                .iter()
                .any(|r: &MadePatch| r.digest == p.digest.as_str())
            {
                report.push(MadePatch {
                    title: info[&p.target].title.clone(),
                    digest: p.digest.to_string(),
                    size: p.size,
                    base: p.base.to_string(),
                    target: p.target.to_string(),
                    target_size: p.target_size,
                });
            }
        }
        if !patches.is_empty() {
            artifacts.push(Artifact {
                subject: plan.subject.clone(),
                from: plan.from.clone(),
                patches,
            });
        }
    }
    Ok((artifacts, report))
}

/// The blobs `planned` reads: the bases (of OLD) and the targets (of NEW).
pub fn needed(planned: &[Planned]) -> (Blobs, Blobs) {
    let mut bases = BTreeMap::new();
    let mut targets = BTreeMap::new();
    for (t, b) in planned.iter().flat_map(|p| p.pairs.iter()) {
        targets.insert(t.digest.clone(), t.size);
        bases.insert(b.digest.clone(), b.size);
    }
    (bases.into_iter().collect(), targets.into_iter().collect())
}

#[derive(Serialize)]
struct Report {
    from: String,
    new: String,
    artifacts: Vec<String>,
    blocks_new: usize,
    blocks_without_base: usize,
    patches: Vec<MadePatch>,
    target_bytes: u64,
    patch_bytes: u64,
    seconds: f64,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    let options = args.transport.options()?;
    let old = Image::open(&args.from, &options.src)?;
    let new = Image::open(&args.new, &options.dest)?;
    let planned = plan(&old, &new, args.making.delta_max_size)?;
    let scratch = tempfile::tempdir().context("a temporary directory")?;
    let (old_scratch, new_scratch, out) = (
        OciDir::create(scratch.path().join("old"))?,
        OciDir::create(scratch.path().join("new"))?,
        OciDir::create(scratch.path().join("patches"))?,
    );
    let (bases, targets) = needed(&planned);
    let jobs = options.jobs;
    let old_blobs = old.blobs_in(&bases, &old_scratch, jobs)?;
    let new_blobs = new.blobs_in(&targets, &new_scratch, jobs)?;
    let (artifacts, patches) = make(&planned, old_blobs, new_blobs, &out, &args.making)?;
    let mut written = Vec::new();
    for a in &artifacts {
        let d = runtime()?
            .block_on(oci_blocks_client::delta::push(
                &new.reference,
                &options.dest,
                a,
                &out,
            ))
            .with_context(|| format!("writing the delta artifact into {}", args.new))?;
        written.push(d.to_string());
    }
    let new_blocks: BTreeSet<Digest> = planned
        .iter()
        .flat_map(|p| p.pairs.iter().map(|(t, _)| t.digest.clone()))
        .collect();
    let lacking = count_lacking(&old, &new)?;
    let report = Report {
        from: args.from.clone(),
        new: args.new.clone(),
        artifacts: written,
        blocks_new: lacking,
        blocks_without_base: lacking.saturating_sub(new_blocks.len()),
        target_bytes: patches.iter().map(|p| p.target_size).sum(),
        patch_bytes: patches.iter().map(|p| p.size).sum(),
        patches,
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.transport.json() {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "{} -> {}: {} patches, {} for {} of blocks ({} new blocks, {} without a base in OLD), {:.1} s",
            report.from,
            report.new,
            report.patches.len(),
            bytes(report.patch_bytes),
            bytes(report.target_bytes),
            report.blocks_new,
            report.blocks_without_base,
            report.seconds
        );
        for d in &report.artifacts {
            outln!("  delta artifact {d}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How many distinct blocks of `new`'s blocks manifests `old` lacks.
fn count_lacking(old: &Image, new: &Image) -> Result<usize> {
    let have: BTreeSet<Digest> = old.closure()?.into_keys().collect();
    let mut lacking = BTreeSet::new();
    for m in new.blocks_manifests()? {
        for b in BlockInfo::of_manifest(&m.value) {
            if !have.contains(&b.digest) {
                lacking.insert(b.digest);
            }
        }
    }
    Ok(lacking.len())
}

/// Recompression patches for the gzip layers of one plain manifest of NEW
/// (a legacy variant) against the layers of OLD's plain manifest for the
/// same platform, layer by layer (`spec/deltas.md`, "Patches for gzip
/// layers").
pub struct LayerPlan {
    /// NEW's plain manifest.
    pub subject: Subject,
    /// OLD's plain manifest.
    pub from: Digest,
    /// (target, base) layers, each (digest, size).
    pub pairs: Vec<((Digest, u64), (Digest, u64))>,
}

/// The plain (not blocks, not anchor) manifests of an image, with the
/// platform of their index entry.
/// A plain manifest: digest, size, document, its index entry's platform.
type Plain = (Digest, u64, Value, Option<Value>);

fn plain_manifests(image: &Image) -> Result<Vec<Plain>> {
    let mut out = Vec::new();
    for (d, size, entry) in image.manifest_entries()? {
        if entry
            .as_ref()
            .is_some_and(|e| oci_blocks_core::validate::variant_of(e).is_some())
        {
            continue;
        }
        let (_, m) = image.doc(&d, Some(size))?;
        if m.get("layers").is_some() && m.get("blocks").is_none() {
            out.push((d, size, m, entry.and_then(|e| e.get("platform").cloned())));
        }
    }
    Ok(out)
}

/// Pairs NEW's plain manifests with OLD's of the same platform, and their
/// gzip layers by position, for the layers OLD lacks.
pub fn plan_layers(old: &Image, new: &Image, max_size: u64) -> Result<Vec<LayerPlan>> {
    let held: BTreeSet<Digest> = old.closure()?.into_keys().collect();
    let old_plain = plain_manifests(old)?;
    let gzip = |l: &Value| -> Option<(Digest, u64)> {
        let t = l.get("mediaType")?.as_str()?;
        (oci_blocks_core::names::tar_compression(t)
            == Some(oci_blocks_core::names::Compression::Gzip))
        .then_some(())?;
        Some((
            Digest::parse(l.get("digest")?.as_str()?).ok()?,
            l.get("size")?.as_u64()?,
        ))
    };
    let mut out = Vec::new();
    for (digest, size, manifest, platform) in plain_manifests(new)? {
        let Some((from, _, old_manifest, _)) = old_plain.iter().find(|(_, _, _, p)| *p == platform)
        else {
            continue;
        };
        let (new_layers, old_layers) = (
            manifest["layers"].as_array().cloned().unwrap_or_default(),
            old_manifest["layers"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        let pairs = new_layers
            .iter()
            .zip(old_layers.iter())
            .filter_map(|(n, o)| Some((gzip(n)?, gzip(o)?)))
            .filter(|((t, ts), (_, bs))| !held.contains(t) && *ts <= max_size && *bs <= max_size)
            .collect::<Vec<_>>();
        if !pairs.is_empty() {
            out.push(LayerPlan {
                subject: Subject {
                    media_type: OCI_MANIFEST.to_string(),
                    digest,
                    size,
                },
                from: from.clone(),
                pairs,
            });
        }
    }
    Ok(out)
}

/// Makes the recompression patches of `planned` into `out`, keeping those
/// whose target recompresses exactly and that are worth shipping.
pub fn make_layers(
    planned: &[LayerPlan],
    old_blobs: &OciDir,
    new_blobs: &OciDir,
    out: &OciDir,
    scratch: &std::path::Path,
    making: &Making,
) -> Result<Vec<Artifact>> {
    let pool = making.pool()?;
    let level = making.level;
    let limit = making.delta_max_size;
    type Pair<'a> = (&'a Subject, &'a Digest, (Digest, u64), (Digest, u64));
    let pairs: Vec<Pair> = planned
        .iter()
        .flat_map(|p| {
            p.pairs
                .iter()
                .map(move |(t, b)| (&p.subject, &p.from, t.clone(), b.clone()))
        })
        .collect();
    let made: Vec<Result<Option<(usize, Patch)>>> = pool.install(|| {
        pairs
            .par_iter()
            .enumerate()
            .map(
                |(i, (_, _, (t, ts), (b, bs)))| -> Result<Option<(usize, Patch)>> {
                    let base = old_blobs
                        .read_blob(b, Some(*bs), *bs)
                        .with_context(|| format!("reading layer {b}"))?;
                    let target = new_blobs.open_blob(t, Some(*ts))?;
                    let mut writer = out.blob_writer()?;
                    let recompress = delta::make_recompressed(
                        &base,
                        target,
                        t,
                        level,
                        limit,
                        scratch,
                        &mut writer,
                    )
                    .with_context(|| format!("making the patch for layer {t}"))?;
                    let Some(recompress) = recompress else {
                        tracing::info!(
                            "layer {t}: recompressing does not reproduce it; it travels whole"
                        );
                        return Ok(None);
                    };
                    if !worth_it(writer.size(), *ts) {
                        return Ok(None);
                    }
                    let (digest, size) = writer.commit()?;
                    Ok(Some((
                        i,
                        Patch {
                            digest,
                            size,
                            base: b.clone(),
                            base_size: *bs,
                            target: t.clone(),
                            target_size: *ts,
                            recompress: Some(recompress),
                        },
                    )))
                },
            )
            .collect()
    });
    let mut artifacts: Vec<Artifact> = Vec::new();
    for m in made {
        let Some((i, patch)) = m? else { continue };
        let (subject, from, _, _) = &pairs[i];
        match artifacts.iter_mut().find(|a| &a.subject == *subject) {
            Some(a) if !a.patches.iter().any(|p| p.target == patch.target) => a.patches.push(patch),
            Some(_) => {}
            None => artifacts.push(Artifact {
                subject: (*subject).clone(),
                from: (*from).clone(),
                patches: vec![patch],
            }),
        }
    }
    Ok(artifacts)
}

/// A legacy layer that is the materialization of a stub layer of its blocks
/// manifest (`spec/fallback.md`, "One view"): what a bundle's loader can
/// make again instead of carrying it.
#[derive(Clone, Debug)]
pub struct Materialization {
    /// The legacy layer.
    pub layer: (Digest, u64),
    /// The stub layer at the same position of the blocks manifest: digest,
    /// size, media type.
    pub stub: (Digest, u64, String),
    /// The blocks manifest's blocks: digest to (media type, size).
    pub declared: std::collections::HashMap<Digest, (String, u64)>,
}

/// Every legacy layer of `image` bound, position by position, to a stub
/// layer of its blocks manifest.
pub fn materializations(image: &Image) -> Result<Vec<Materialization>> {
    let mut out = Vec::new();
    for b in image.blocks_manifests()? {
        let Some(legacy) = b.value["annotations"][oci_blocks_core::names::ANNOTATION_LEGACY]
            .as_str()
            .and_then(|d| Digest::parse(d).ok())
        else {
            continue;
        };
        let Ok((_, legacy_doc)) = image.doc(&legacy, None) else {
            continue;
        };
        let declared: std::collections::HashMap<Digest, (String, u64)> =
            BlockInfo::of_manifest(&b.value)
                .into_iter()
                .map(|i| (i.digest, (i.media_type, i.size)))
                .collect();
        let descriptor = |l: &Value| -> Option<(Digest, u64, String)> {
            Some((
                Digest::parse(l.get("digest")?.as_str()?).ok()?,
                l.get("size")?.as_u64()?,
                l.get("mediaType")?.as_str()?.to_string(),
            ))
        };
        let stubs = b.value["layers"].as_array().cloned().unwrap_or_default();
        let layers = legacy_doc["layers"].as_array().cloned().unwrap_or_default();
        if stubs.len() != layers.len() {
            continue;
        }
        for (s, l) in stubs.iter().zip(layers.iter()) {
            let (Some(stub), Some(layer)) = (descriptor(s), descriptor(l)) else {
                continue;
            };
            let gzip = oci_blocks_core::names::tar_compression(&layer.2)
                == Some(oci_blocks_core::names::Compression::Gzip);
            if stub.0 != layer.0 && gzip && oci_blocks_core::names::is_import_layer(&stub.2) {
                out.push(Materialization {
                    layer: (layer.0, layer.1),
                    stub,
                    declared: declared.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// Materializes `m` from the stub layer and blocks in `dir`, into `out`.
pub fn materialize<W: std::io::Write>(m: &Materialization, dir: &OciDir, out: W) -> Result<W> {
    let mut stub = dir.open_blob(&m.stub.0, Some(m.stub.1))?;
    let mut blocks = oci_blocks_core::expand::LayoutBlocks::new(dir, m.declared.clone());
    let (_, out) = oci_blocks_core::expand::write_materialized_gzip(
        &mut stub,
        &m.stub.2,
        &mut blocks,
        out,
        &format!("stub layer {}", m.stub.0),
    )?;
    Ok(out)
}

/// The legacy layers of `new` that `have` lacks and that materializing
/// their stub layer gives back exactly: a bundle leaves them out. Reads the
/// stubs and blocks from `new`'s layout, or fetches them into `scratch`.
pub fn verified_materializations(
    new: &Image,
    have: &BTreeSet<Digest>,
    scratch: &OciDir,
    jobs: usize,
) -> Result<Vec<Materialization>> {
    let candidates: Vec<Materialization> = materializations(new)?
        .into_iter()
        .filter(|m| !have.contains(&m.layer.0))
        .collect();
    if candidates.is_empty() {
        return Ok(candidates);
    }
    let mut needed: BTreeMap<Digest, u64> = BTreeMap::new();
    for m in &candidates {
        needed.insert(m.stub.0.clone(), m.stub.1);
        needed.extend(m.declared.iter().map(|(d, (_, s))| (d.clone(), *s)));
    }
    let needed: Vec<(Digest, u64)> = needed.into_iter().collect();
    let dir = new.blobs_in(&needed, scratch, jobs)?;
    let checked: Vec<Result<Option<Materialization>>> = candidates
        .par_iter()
        .map(|m| {
            let hasher = oci_blocks_core::digest::Hasher::new(m.layer.0.algorithm());
            let hasher = materialize(m, dir, hasher)?;
            Ok((hasher.finish() == m.layer.0).then(|| m.clone()))
        })
        .collect();
    let mut out = Vec::new();
    for c in checked {
        match c? {
            Some(m) => out.push(m),
            None => tracing::info!(
                "a legacy layer is not its stub's materialization as this version writes it; it travels whole"
            ),
        }
    }
    Ok(out)
}
