//! `oci-blocks compare`: a series of image versions rewritten under each
//! distribution strategy (as built, one flat layer, a layer per component,
//! blocks, blocks with deltas) in a scratch layout, and what each costs a
//! client and a registry: bytes and requests for a cold pull and for each
//! update, registry storage, layer count, and unpack time. Every figure is
//! computed from the real blobs the strategy produces; [`METHOD`] says how.
//! The inputs are never written to.

mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use oci_blocks_builder::Fallback;
use oci_blocks_builder::rechunk::{RechunkSpec, rechunk};
use oci_blocks_client::ImageRef;
use oci_blocks_core::Digest;
use oci_blocks_core::layout::{OciDir, OciRef};
use oci_blocks_core::names::{OCI_CONFIG, OCI_LAYER_TAR_GZIP, OCI_MANIFEST};
use oci_blocks_core::platform::{Platform, choose};
use serde::Serialize;
use serde_json::{Value, json};

use crate::delta::{Image, Making};
use crate::output::outln;
use crate::transfer::{SourceArgs, copy_between};

/// Compare how successive versions of one application travel and are stored
/// as built, as one flat layer, as a layer per component (rechunk's legacy
/// variant), as blocks, and as blocks with deltas.
///
/// Each IMAGE (oci:… or docker://…) is a version, oldest first. The figures
/// come from the blobs each strategy really produces, in a scratch directory.
#[derive(clap::Args)]
pub struct Args {
    /// The versions, oldest first.
    #[arg(value_name = "IMAGE", num_args = 2.., required = true)]
    images: Vec<String>,
    /// The cap on layers of the layer-per-component and blocks strategies.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_layers: usize,
    /// The platform to compare (default: this machine's).
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the report as Markdown.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Also write one self-contained HTML page with SVG charts.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Also write each chart as an SVG file in this directory.
    #[arg(long, value_name = "DIR")]
    svg: Option<PathBuf>,
    /// Skip the unpack timings (they unpack the last two versions under
    /// each strategy).
    #[arg(long)]
    no_unpack: bool,
    /// Where the strategies' images are written (default: a temporary
    /// directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
    #[command(flatten)]
    source: SourceArgs,
}

/// The strategies, in report order.
pub const STRATEGIES: [(&str, &str); 5] = [
    ("as-built", "as built"),
    ("flat", "one flat layer"),
    ("per-component", "a layer per component"),
    ("blocks", "blocks"),
    ("blocks+deltas", "blocks + deltas"),
];

/// How each metric is computed.
pub const METHOD: &[(&str, &str)] = &[
    (
        "strategies",
        "as built: the image as given. One flat layer: its root filesystem, unpacked by `oci-blocks unpack`, as one gzip layer. A layer per component: `oci-blocks rechunk` (--max-layers, each version with the previous one as --prior), its legacy variant. Blocks: the same rechunk's blocks variant. Blocks + deltas: those blocks, with `oci-blocks delta` patches from each version to the next.",
    ),
    (
        "bytes",
        "A client pulls each version in turn and keeps what it pulled. A pull's bytes are the sizes of the documents it fetches (index, the platform's manifest; for blocks also the legacy manifest and its config, as `oci-blocks pull` fetches them) plus the blobs of that version the client does not hold yet. With deltas, a block whose patch's base the client holds counts the patch's size, plus the delta artifact.",
    ),
    (
        "requests",
        "One manifest request per document fetched (with deltas: one more for the referrers list and one per artifact), one blob request per blob fetched.",
    ),
    (
        "storage",
        "The distinct blobs and documents of every version of that strategy alone, as one registry repository would hold them (blocks: the blocks variant alone; with deltas also the patches and artifacts).",
    ),
    (
        "layers",
        "The most layers any version's manifest has, against the 127 overlayfs stacks at most, and the most blocks; blocks are not layers.",
    ),
    (
        "unpack",
        "`oci-blocks unpack` of the last version into a new directory, with an empty block store (cold) and with one that holds the previous version's blocks (warm); one run each.",
    ),
];

/// One version under one strategy: what a client fetches.
#[derive(Clone, Debug, Default)]
struct Pulled {
    /// Documents fetched: digest to size.
    docs: BTreeMap<Digest, u64>,
    /// Blobs of the version: digest to size.
    blobs: BTreeMap<Digest, u64>,
    /// Layers of its manifest.
    layers: usize,
    /// Blocks of its manifest.
    blocks: usize,
    /// Patches that rebuild a blob of it: target to (patch size, base).
    patches: BTreeMap<Digest, (u64, Digest)>,
    /// The delta artifact's size, when it has patches.
    artifact: u64,
    /// Its reference in the scratch layout, for unpacking.
    tag: String,
}

/// One pull: a cold one or an update.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// The version pulled (0-based).
    pub version: usize,
    /// Bytes moved.
    pub bytes: u64,
    /// Blob requests.
    pub blob_requests: usize,
    /// Manifest (and referrers) requests.
    pub manifest_requests: usize,
}

/// One strategy's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Strategy {
    /// Its id.
    pub id: String,
    /// What it is.
    pub name: String,
    /// Pulls: the first version cold, then each update.
    pub steps: Vec<Step>,
    /// Registry bytes after each version.
    pub storage: Vec<u64>,
    /// The most layers a version has.
    pub layers: usize,
    /// The most blocks a version has.
    pub blocks: usize,
    /// Unpack of the last version with an empty store, seconds.
    pub unpack_cold: Option<f64>,
    /// Unpack of the last version with the previous one's blocks, seconds.
    pub unpack_warm: Option<f64>,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The versions, as given.
    pub images: Vec<String>,
    /// The platform compared.
    pub platform: String,
    /// `--max-layers`.
    pub max_layers: usize,
    /// The strategies.
    pub strategies: Vec<Strategy>,
    /// How each metric is computed.
    pub method: BTreeMap<String, String>,
}

/// A progress bar on a terminal, nothing otherwise.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(total: u64, quiet: bool) -> Progress {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}") {
            bar.set_style(style);
        }
        Progress(Some(bar))
    }
    fn step(&self, msg: String) {
        if let Some(b) = &self.0 {
            b.set_message(msg);
            b.inc(1);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

type Taken = (
    BTreeMap<Digest, u64>,
    Digest,
    Value,
    Option<(Digest, Value)>,
);

/// The manifest a client of `platform` takes from the top document of
/// `tag` in `dir`, with the documents it reads on the way: (documents,
/// the manifest's digest, the manifest, and for a blocks manifest the
/// legacy manifest beside it).
fn take(dir: &OciDir, tag: &str, platform: &Platform, blocks: bool) -> Result<Taken> {
    let roots = dir.resolve(Some(tag))?;
    let root = roots.first().context("no image")?;
    let top = Digest::try_from(root.digest())?;
    let mut docs = BTreeMap::from([(top.clone(), root.size())]);
    let bytes = dir.read_json_blob(&top, Some(root.size()))?;
    let value: Value = serde_json::from_slice(&bytes)?;
    let Some(entries) = value["manifests"].as_array() else {
        return Ok((docs, top, value, None));
    };
    let choice =
        choose(entries, platform).with_context(|| format!("{tag}: no entry for {platform}"))?;
    let index = if blocks || !choice.blocks {
        choice.index
    } else {
        choice.legacy.context("no legacy manifest")?
    };
    let doc = |e: &Value| -> Result<(Digest, Value, u64)> {
        let d = Digest::parse(e["digest"].as_str().unwrap_or_default())?;
        let b = dir.read_json_blob(&d, e["size"].as_u64())?;
        Ok((d, serde_json::from_slice(&b)?, b.len() as u64))
    };
    let (d, m, size) = doc(&entries[index])?;
    docs.insert(d.clone(), size);
    let side = match (blocks && choice.blocks, choice.legacy) {
        (true, Some(l)) => {
            let (ld, lm, lsize) = doc(&entries[l])?;
            docs.insert(ld.clone(), lsize);
            Some((ld, lm))
        }
        _ => None,
    };
    Ok((docs, d, m, side))
}

fn blobs_of(manifest: &Value) -> Result<BTreeMap<Digest, u64>> {
    let mut out = BTreeMap::new();
    let mut list: Vec<&Value> = manifest.get("config").into_iter().collect();
    for key in ["layers", "blocks"] {
        list.extend(manifest[key].as_array().into_iter().flatten());
    }
    for d in list {
        if d["urls"].as_array().is_some_and(|u| !u.is_empty()) {
            continue;
        }
        out.insert(
            Digest::parse(d["digest"].as_str().unwrap_or_default())?,
            d["size"].as_u64().unwrap_or(0),
        );
    }
    Ok(out)
}

fn pulled(dir: &OciDir, tag: &str, platform: &Platform, blocks: bool) -> Result<Pulled> {
    let (docs, _, manifest, side) = take(dir, tag, platform, blocks)?;
    let mut blobs = blobs_of(&manifest)?;
    if let Some((_, legacy)) = &side {
        if let Some(c) = legacy.get("config") {
            blobs.insert(
                Digest::parse(c["digest"].as_str().unwrap_or_default())?,
                c["size"].as_u64().unwrap_or(0),
            );
        }
    }
    Ok(Pulled {
        docs,
        blobs,
        layers: manifest["layers"].as_array().map_or(0, Vec::len),
        blocks: manifest["blocks"].as_array().map_or(0, Vec::len),
        tag: tag.to_string(),
        ..Pulled::default()
    })
}

/// Writes the version's root filesystem as one gzip layer and a manifest
/// and config for it, tagged `tag`: the flat strategy.
fn flatten(
    scratch: &OciDir,
    src_tag: &str,
    tag: &str,
    platform: &Platform,
    work: &Path,
) -> Result<()> {
    let rootfs = work.join(format!("flat-{tag}"));
    let store = work.join("flat-store");
    let options = oci_blocks_shim::UnpackOptions {
        store: store.clone(),
        link: oci_blocks_shim::LinkMode::Copy,
        read_only: false,
        platform: Some(platform.to_string()),
        limits: oci_blocks_core::limits::Limits::default(),
    };
    oci_blocks_shim::unpack(scratch, Some(src_tag), &rootfs, &options)
        .with_context(|| format!("unpacking {src_tag} to flatten it"))?;
    let writer = scratch.blob_writer()?;
    let gz = oci_blocks_core::gzip::ParallelGz::for_layers(writer)?;
    let mut hashing = oci_blocks_core::digest::HashingWriter::new(gz);
    {
        let mut tar = tar::Builder::new(&mut hashing);
        tar.follow_symlinks(false);
        tar.append_dir_all(".", &rootfs)
            .with_context(|| format!("{}: writing the flat layer", rootfs.display()))?;
        tar.finish()?;
    }
    let (diff_id, gz) = hashing.finish();
    let (layer, layer_size) = gz.finish()?.commit()?;
    make_writable(&rootfs);
    let _ = std::fs::remove_dir_all(&rootfs);
    let (_, _, manifest, _) = take(scratch, src_tag, platform, false)?;
    let cfg = &manifest["config"];
    let cd = Digest::parse(cfg["digest"].as_str().unwrap_or_default())?;
    let mut config: Value =
        serde_json::from_slice(&scratch.read_json_blob(&cd, cfg["size"].as_u64())?)?;
    config["rootfs"] = json!({"type": "layers", "diff_ids": [diff_id.as_str()]});
    if let Some(h) = config.get_mut("history") {
        *h = json!([{"created_by": "oci-blocks compare: one flat layer"}]);
    }
    let config_bytes = config.to_string().into_bytes();
    let (config_digest, config_size) = scratch.write_blob_bytes(&config_bytes)?;
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.as_str(), "size": config_size},
        "layers": [{"mediaType": OCI_LAYER_TAR_GZIP, "digest": layer.as_str(), "size": layer_size}],
    });
    let bytes = m.to_string().into_bytes();
    let (d, size) = scratch.write_blob_bytes(&bytes)?;
    scratch.set_tag(tag, descriptor(OCI_MANIFEST, &d, size)?)?;
    Ok(())
}

fn make_writable(dir: &Path) {
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(dir)
        .status();
}

fn descriptor(
    media_type: &str,
    d: &Digest,
    size: u64,
) -> Result<oci_blocks_core::oci_spec::image::Descriptor> {
    Ok(serde_json::from_value(
        json!({"mediaType": media_type, "digest": d.as_str(), "size": size}),
    )?)
}

/// Tags the manifest `d` of `dir` (one a client took from an index) as `tag`.
fn tag_manifest(dir: &OciDir, d: &Digest, tag: &str) -> Result<()> {
    let size = std::fs::metadata(dir.blob_path(d))?.len();
    Ok(dir.set_tag(tag, descriptor(OCI_MANIFEST, d, size)?)?)
}

/// The pulls of a strategy's versions: the first cold, then each update
/// with what the earlier pulls brought.
fn steps(versions: &[Pulled], deltas: bool) -> Vec<Step> {
    let mut held: BTreeSet<Digest> = BTreeSet::new();
    let mut out = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let mut bytes: u64 = v.docs.values().sum();
        let mut manifest_requests = v.docs.len();
        let mut blob_requests = 0;
        let mut used_patches = false;
        for (d, size) in &v.blobs {
            if held.contains(d) {
                continue;
            }
            blob_requests += 1;
            match v.patches.get(d) {
                Some((patch, base)) if deltas && held.contains(base) => {
                    bytes += patch;
                    used_patches = true;
                }
                _ => bytes += size,
            }
        }
        if deltas && i > 0 {
            // The referrers list, then the artifact when there is one.
            manifest_requests += 1;
            if used_patches {
                manifest_requests += 1;
                bytes += v.artifact;
            }
        }
        held.extend(v.blobs.keys().cloned());
        out.push(Step {
            version: i,
            bytes,
            blob_requests,
            manifest_requests,
        });
    }
    out
}

/// Registry bytes after each version: the distinct documents and blobs so
/// far, and with deltas the patches and artifacts made so far.
fn storage(versions: &[Pulled], deltas: bool) -> Vec<u64> {
    let mut seen: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut extra = 0;
    let mut out = Vec::new();
    for v in versions {
        seen.extend(v.docs.iter().map(|(d, s)| (d.clone(), *s)));
        seen.extend(v.blobs.iter().map(|(d, s)| (d.clone(), *s)));
        if deltas {
            extra += v.patches.values().map(|(s, _)| s).sum::<u64>() + v.artifact;
        }
        out.push(seen.values().sum::<u64>() + extra);
    }
    out
}

/// Unpacks `tag` into a new directory with `store`, timed.
fn timed_unpack(
    dir: &OciDir,
    tag: &str,
    store: &Path,
    work: &Path,
    platform: &Platform,
) -> Result<f64> {
    let rootfs = tempfile::tempdir_in(work)?;
    let target = rootfs.path().join("rootfs");
    let options = oci_blocks_shim::UnpackOptions {
        store: store.to_path_buf(),
        link: oci_blocks_shim::LinkMode::Auto,
        read_only: false,
        platform: Some(platform.to_string()),
        limits: oci_blocks_core::limits::Limits::default(),
    };
    let started = Instant::now();
    oci_blocks_shim::unpack(dir, Some(tag), &target, &options)
        .with_context(|| format!("unpacking {tag}"))?;
    let seconds = started.elapsed().as_secs_f64();
    make_writable(rootfs.path());
    Ok(seconds)
}

pub fn run(args: Args) -> Result<ExitCode> {
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let tmp;
    let work = match &args.scratch {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("a scratch directory")?;
            tmp.path().to_path_buf()
        }
    };
    let n = args.images.len();
    let progress = Progress::new((n * 4 + 2) as u64, args.json);
    let scratch = OciDir::create(work.join("layout"))?;
    // The versions, copied into the scratch layout (verified on the way).
    for (i, image) in args.images.iter().enumerate() {
        progress.step(format!("copying {image}"));
        let reference = ImageRef::parse(image)?;
        if let ImageRef::Layout(r) = &reference {
            if r.path == scratch.root() {
                bail!("{image}: the scratch directory is not an input");
            }
        }
        copy_between(
            image,
            &format!("oci:{}:v{i}", scratch.root().display()),
            &oci_blocks_client::CopyOptions {
                src: args.source.options()?,
                ..oci_blocks_client::CopyOptions::default()
            },
            true,
        )
        .with_context(|| format!("reading {image}"))?;
    }
    let mut built = Vec::new();
    let mut flat = Vec::new();
    let mut legacy = Vec::new();
    let mut blocks = Vec::new();
    for i in 0..n {
        progress.step(format!("v{i}: as built and flat"));
        let p = pulled(&scratch, &format!("v{i}"), &platform, false)
            .with_context(|| args.images[i].clone())?;
        built.push(p);
        flatten(
            &scratch,
            &format!("v{i}"),
            &format!("flat-v{i}"),
            &platform,
            &work,
        )?;
        flat.push(pulled(&scratch, &format!("flat-v{i}"), &platform, false)?);
        progress.step(format!("v{i}: rechunk"));
        // Rechunk the manifest the client takes, with the previous version
        // as the prior, as an update would be made.
        let (_, d, _, _) = take(&scratch, &format!("v{i}"), &platform, false)?;
        tag_manifest(&scratch, &d, &format!("src-v{i}"))?;
        let spec = RechunkSpec {
            src: OciRef {
                path: scratch.root().to_path_buf(),
                tag: Some(format!("src-v{i}")),
            },
            origin: args.images[i].clone(),
            out: OciRef {
                path: scratch.root().to_path_buf(),
                tag: Some(format!("r-v{i}")),
            },
            platforms: Vec::new(),
            max_layers: args.max_layers,
            fallback: Fallback::Index,
            source_date_epoch: 1,
            cache_dir: None,
            prior: (i > 0).then(|| OciRef {
                path: scratch.root().to_path_buf(),
                tag: Some(format!("r-v{}", i - 1)),
            }),
        };
        rechunk(&spec).with_context(|| format!("rechunking {}", args.images[i]))?;
        let mut l = pulled(&scratch, &format!("r-v{i}"), &platform, false)?;
        let (_, ld, _, _) = take(&scratch, &format!("r-v{i}"), &platform, false)?;
        tag_manifest(&scratch, &ld, &format!("legacy-v{i}"))?;
        l.tag = format!("legacy-v{i}");
        legacy.push(l);
        blocks.push(pulled(&scratch, &format!("r-v{i}"), &platform, true)?);
    }
    // Deltas between successive versions' blocks manifests.
    let mut with_deltas = blocks.clone();
    #[allow(clippy::needless_range_loop)] // `i` names tags, not only the slot.
    for i in 1..n {
        progress.step(format!("v{i}: deltas"));
        let old = Image::open(
            &format!("oci:{}:r-v{}", scratch.root().display(), i - 1),
            &Default::default(),
        )?;
        let new = Image::open(
            &format!("oci:{}:r-v{i}", scratch.root().display()),
            &Default::default(),
        )?;
        let planned =
            crate::delta::plan(&old, &new, oci_blocks_client::copy::DEFAULT_DELTA_MAX_SIZE)?;
        let making = Making::default();
        let (artifacts, _) = crate::delta::make(&planned, &scratch, &scratch, &scratch, &making)?;
        for a in artifacts {
            with_deltas[i].artifact += a.to_bytes().len() as u64;
            for p in a.patches {
                with_deltas[i]
                    .patches
                    .insert(p.target.clone(), (p.size, p.base.clone()));
            }
        }
    }
    progress.step("unpacking".into());
    let runs = [
        (&built, false),
        (&flat, false),
        (&legacy, false),
        (&blocks, false),
        (&with_deltas, true),
    ];
    let mut strategies = Vec::new();
    for ((id, name), (versions, deltas)) in STRATEGIES.iter().zip(runs) {
        let (cold, warm) = if args.no_unpack || *id == "blocks+deltas" {
            (None, None)
        } else {
            let last = &versions[n - 1];
            let prev = &versions[n - 2];
            let cold_store = tempfile::tempdir_in(&work)?;
            let cold = timed_unpack(&scratch, &last.tag, cold_store.path(), &work, &platform)?;
            let warm_store = tempfile::tempdir_in(&work)?;
            timed_unpack(&scratch, &prev.tag, warm_store.path(), &work, &platform)?;
            let warm = timed_unpack(&scratch, &last.tag, warm_store.path(), &work, &platform)?;
            make_writable(cold_store.path());
            make_writable(warm_store.path());
            (Some(cold), Some(warm))
        };
        strategies.push(Strategy {
            id: id.to_string(),
            name: name.to_string(),
            steps: steps(versions, deltas),
            storage: storage(versions, deltas),
            layers: versions.iter().map(|v| v.layers).max().unwrap_or(0),
            blocks: versions.iter().map(|v| v.blocks).max().unwrap_or(0),
            unpack_cold: cold,
            unpack_warm: warm,
        });
    }
    // Deltas change transfer only: the unpack is the blocks strategy's.
    let (bc, bw) = (strategies[3].unpack_cold, strategies[3].unpack_warm);
    strategies[4].unpack_cold = bc;
    strategies[4].unpack_warm = bw;
    drop(progress);
    let report = Report {
        images: args.images.clone(),
        platform: platform.to_string(),
        max_layers: args.max_layers,
        strategies,
        method: METHOD
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    if let Some(path) = &args.markdown {
        write_atomic(path, render::markdown(&report).as_bytes())?;
    }
    if let Some(path) = &args.html {
        write_atomic(path, render::html(&report).as_bytes())?;
    }
    if let Some(dir) = &args.svg {
        std::fs::create_dir_all(dir)?;
        for (name, svg) in render::charts(&report) {
            write_atomic(&dir.join(format!("{name}.svg")), svg.as_bytes())?;
        }
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!("{}", render::table(&report));
    }
    make_writable(&work);
    Ok(ExitCode::SUCCESS)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&parent)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
