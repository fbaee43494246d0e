//! `oci-blocks bundle` and `load`: an image carried as one file, holding
//! only what a site that has an earlier version lacks, or patches for it
//! (`spec/deltas.md`, "Offline bundles"); loaded with every digest verified
//! and every missing blob accounted for before anything is written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use oci_blocks_client::{CopyOptions, ImageRef};
use oci_blocks_core::Digest;
use oci_blocks_core::delta::{Artifact, Patch};
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::names::{
    ANNOTATION_BUNDLE_MATERIALIZED, ANNOTATION_BUNDLE_SINCE, ANNOTATION_REF_NAME,
    DELTA_ARTIFACT_TYPE, OCI_EMPTY_DIGEST, OCI_INDEX, OCI_MANIFEST,
};
use serde::Serialize;
use serde_json::json;

use crate::delta::{Blobs, Image, Making};
use crate::output::{bytes, outln};
use crate::transfer::{Transport, copy_between, runtime};

/// Write an image into one file (an OCI layout as a tar, which skopeo reads
/// as oci-archive:FILE:TAG) for a site without a registry. With --since, the
/// file leaves out every blob OLD has; with --delta too, it carries patches
/// against OLD's blocks instead of the changed blocks.
///
/// --src-* flags reach NEW and OLD.
#[derive(clap::Args)]
pub struct BundleArgs {
    /// The image to carry (oci:… or docker://…).
    new: String,
    /// The image the site already has: leave out what it holds.
    #[arg(long, value_name = "OLD")]
    since: Option<String>,
    /// Patch changed blocks against OLD's versions of them (needs --since).
    #[arg(long, requires = "since")]
    delta: bool,
    /// The tag the image has in the bundle (default: NEW's tag, else latest).
    #[arg(long)]
    tag: Option<String>,
    /// The file to write (replaced only when complete).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    making: Making,
    #[command(flatten)]
    transport: Transport,
}

/// Write the image of a bundle file to a layout or registry: the blobs the
/// bundle leaves out come from OLD (--onto) or are already in DEST; patches
/// are applied and every digest verified before anything is written, and the
/// tag is written last.
///
/// --src-* flags reach OLD, --dest-* flags DEST.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// The bundle file.
    file: PathBuf,
    /// The image the bundle was made since (required when it names one).
    #[arg(long, value_name = "OLD")]
    onto: Option<String>,
    /// Where to write the image: oci:DIR[:TAG] or docker://HOST/REPO[:TAG]
    /// (default tag: the bundle's).
    #[arg(long, value_name = "DEST")]
    into: String,
    #[command(flatten)]
    transport: Transport,
}

#[derive(Serialize)]
struct BundleReport {
    file: String,
    tag: String,
    bytes: u64,
    since: Option<String>,
    documents: usize,
    blobs: usize,
    blob_bytes: u64,
    blobs_left_out: usize,
    bytes_left_out: u64,
    patches: usize,
    patch_bytes: u64,
    patched_bytes: u64,
    seconds: f64,
}

fn tag_of(reference: &ImageRef) -> Option<String> {
    match reference {
        ImageRef::Layout(r) => r.tag.clone(),
        ImageRef::Registry(r) => r.tag.clone(),
    }
}

pub fn run_bundle(args: BundleArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let options = args.transport.options()?;
    let new = Image::open(&args.new, &options.src)?;
    let old = args
        .since
        .as_deref()
        .map(|s| Image::open(s, &options.src))
        .transpose()?;
    let (docs, blobs) = new.graph()?;
    let have: BTreeSet<Digest> = match &old {
        Some(o) => o.closure()?.into_keys().collect(),
        None => BTreeSet::new(),
    };
    let scratch = tempfile::tempdir().context("a temporary directory")?;
    let (old_scratch, new_scratch, patches_dir) = (
        OciDir::create(scratch.path().join("old"))?,
        OciDir::create(scratch.path().join("new"))?,
        OciDir::create(scratch.path().join("patches"))?,
    );
    let jobs = options.jobs;
    let mut artifacts = Vec::new();
    let mut materialized: BTreeSet<Digest> = BTreeSet::new();
    if let (true, Some(old)) = (args.delta, &old) {
        // Blocks, when NEW has them (a plain image has only layers).
        let planned = if new.blocks_manifests()?.is_empty() {
            Vec::new()
        } else {
            crate::delta::plan(old, &new, args.making.delta_max_size)?
        };
        let (bases, targets) = crate::delta::needed(&planned);
        let old_blobs = old.blobs_in(&bases, &old_scratch, jobs)?;
        let new_blobs = new.blobs_in(&targets, &new_scratch, jobs)?;
        artifacts =
            crate::delta::make(&planned, old_blobs, new_blobs, &patches_dir, &args.making)?.0;
        // The legacy variant's layers: left out where the loader can
        // materialize them, else patched between their contents.
        materialized = crate::delta::verified_materializations(&new, &have, &new_scratch, jobs)?
            .into_iter()
            .map(|m| m.layer.0)
            .collect();
        let mut layers = crate::delta::plan_layers(old, &new, args.making.delta_max_size)?;
        for l in &mut layers {
            l.pairs.retain(|(t, _)| !materialized.contains(&t.0));
        }
        let (mut bases, mut targets) = (Vec::new(), Vec::new());
        for (t, b) in layers.iter().flat_map(|l| l.pairs.iter()) {
            targets.push(t.clone());
            bases.push(b.clone());
        }
        let old_blobs = old.blobs_in(&bases, &old_scratch, jobs)?;
        let new_blobs = new.blobs_in(&targets, &new_scratch, jobs)?;
        artifacts.extend(crate::delta::make_layers(
            &layers,
            old_blobs,
            new_blobs,
            &patches_dir,
            scratch.path(),
            &args.making,
        )?);
    }
    let patched: BTreeMap<Digest, &Patch> = artifacts
        .iter()
        .flat_map(|a| a.patches.iter())
        .map(|p| (p.target.clone(), p))
        .collect();
    let carried: Vec<(Digest, u64)> = blobs
        .iter()
        .filter(|(d, _)| {
            !have.contains(*d) && !patched.contains_key(*d) && !materialized.contains(*d)
        })
        .map(|(d, s)| (d.clone(), *s))
        .collect();
    // The blobs the documents' layout lacks (a registry image's layers and
    // blocks) are fetched, verified, into the scratch layout.
    let to_fetch: Vec<(Digest, u64)> = carried
        .iter()
        .filter(|(d, _)| !new.docs.has_blob(d))
        .cloned()
        .collect();
    if !to_fetch.is_empty() {
        new.blobs_in(&to_fetch, &new_scratch, jobs)?;
    }
    let artifact_docs: Vec<(Digest, Vec<u8>)> = artifacts
        .iter()
        .map(|a| {
            let bytes = a.to_bytes();
            (Digest::sha256(&bytes), bytes)
        })
        .collect();
    for (d, b) in &artifact_docs {
        patches_dir.write_blob_verified(&b[..], d, Some(b.len() as u64))?;
    }
    if !artifacts.is_empty() {
        patches_dir.write_blob_verified(&b"{}"[..], &Digest::parse(OCI_EMPTY_DIGEST)?, Some(2))?;
    }

    let tag = args
        .tag
        .clone()
        .or_else(|| tag_of(&new.reference))
        .unwrap_or_else(|| "latest".to_string());
    let top_type = {
        let (_, v) = new.doc(&new.top, Some(new.top_size))?;
        v["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_string()
    };
    let mut manifests = vec![json!({
        "mediaType": top_type, "digest": new.top.as_str(), "size": new.top_size,
        "annotations": { ANNOTATION_REF_NAME: tag },
    })];
    for (d, b) in &artifact_docs {
        manifests.push(json!({
            "mediaType": OCI_MANIFEST, "digest": d.as_str(), "size": b.len(),
            "artifactType": DELTA_ARTIFACT_TYPE,
        }));
    }
    let mut index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    if let Some(o) = &old {
        index["annotations"] = json!({ ANNOTATION_BUNDLE_SINCE: o.top.as_str() });
        if !materialized.is_empty() {
            index["annotations"][ANNOTATION_BUNDLE_MATERIALIZED] = json!(
                materialized
                    .iter()
                    .map(Digest::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    let index_bytes = serde_json::to_vec_pretty(&index)?;

    // Documents first, then the blobs, then the patches and artifacts.
    let mut entries: Vec<(Digest, u64, &OciDir)> = Vec::new();
    for (d, s) in &docs {
        entries.push((d.clone(), *s, &new.docs));
    }
    for (d, s) in &carried {
        let from = if new.docs.has_blob(d) {
            &new.docs
        } else {
            &new_scratch
        };
        entries.push((d.clone(), *s, from));
    }
    let mut patch_bytes = 0;
    for p in patched.values() {
        patch_bytes += p.size;
        entries.push((p.digest.clone(), p.size, &patches_dir));
    }
    if !artifacts.is_empty() {
        entries.push((Digest::parse(OCI_EMPTY_DIGEST)?, 2, &patches_dir));
    }
    for (d, b) in &artifact_docs {
        entries.push((d.clone(), b.len() as u64, &patches_dir));
    }
    let mut unique = BTreeSet::new();
    entries.retain(|(d, _, _)| unique.insert(d.clone()));

    let parent = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".bundle-")
        .tempfile_in(&parent)
        .with_context(|| format!("a temporary file in {}", parent.display()))?;
    oci_blocks_core::bundle::write(
        std::io::BufWriter::new(tmp.as_file()),
        &index_bytes,
        entries.iter().map(|(d, s, l)| (d, *s, *l)),
    )?;
    tmp.as_file().sync_all().context("syncing the bundle")?;
    // A file to hand on: readable as a normal file is (temporary files are 0600).
    tmp.as_file()
        .set_permissions(
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
        )
        .context("the bundle's mode")?;
    tmp.persist(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let size = std::fs::metadata(&args.output)?.len();
    let left_out: Vec<u64> = blobs
        .iter()
        .filter(|(d, _)| have.contains(*d) || patched.contains_key(*d) || materialized.contains(*d))
        .map(|(_, s)| *s)
        .collect();
    let report = BundleReport {
        file: args.output.display().to_string(),
        tag,
        bytes: size,
        since: old.as_ref().map(|o| o.top.to_string()),
        documents: docs.len(),
        blobs: carried.len(),
        blob_bytes: carried.iter().map(|(_, s)| s).sum(),
        blobs_left_out: left_out.len(),
        bytes_left_out: left_out.iter().sum(),
        patches: patched.len(),
        patch_bytes,
        patched_bytes: patched.values().map(|p| p.target_size).sum(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.transport.json() {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "{}: {} ({} documents, {} blobs of {}, {} patches of {} rebuilding {}); left out {} blobs of {} the site has or can rebuild",
            report.file,
            bytes(report.bytes),
            report.documents,
            report.blobs,
            bytes(report.blob_bytes),
            report.patches,
            bytes(report.patch_bytes),
            bytes(report.patched_bytes),
            report.blobs_left_out,
            bytes(report.bytes_left_out),
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct LoadReport {
    file: String,
    into: String,
    digest: String,
    blobs_from_bundle: usize,
    blobs_rebuilt: usize,
    blobs_from_old: usize,
    blobs_in_dest: usize,
}

/// Whether `dest` holds each of `blobs` (a layout that does not exist yet
/// holds none).
fn dest_has(dest: &ImageRef, options: &CopyOptions, blobs: &[Digest]) -> Result<BTreeSet<Digest>> {
    match dest {
        ImageRef::Layout(r) => Ok(match OciDir::open(&r.path) {
            Ok(dir) => blobs.iter().filter(|d| dir.has_blob(d)).cloned().collect(),
            Err(_) => BTreeSet::new(),
        }),
        ImageRef::Registry(r) => runtime()?.block_on(async {
            let reg = oci_blocks_client::Registry::connect(&r.host, options.dest.clone()).await?;
            let mut out = BTreeSet::new();
            for d in blobs {
                if reg.has_blob(&r.repository, d).await? {
                    out.insert(d.clone());
                }
            }
            anyhow::Ok(out)
        }),
    }
}

pub fn run_load(args: LoadArgs) -> Result<ExitCode> {
    let options = args.transport.options()?;
    let file = args.file.display().to_string();
    let scratch = tempfile::tempdir().context("a temporary directory")?;
    let staged = OciDir::create(scratch.path().join("image"))?;
    let contents = oci_blocks_core::bundle::extract(&args.file, &staged)?;
    let (top, top_size, top_type) = contents.top.clone();
    let old = match (&contents.since, &args.onto) {
        (Some(since), Some(onto)) => {
            let old = Image::open(onto, &options.src)?;
            if &old.top != since {
                bail!(
                    "{file} was made since {since}, but {onto} is {}: load it onto the image it was made since",
                    old.top
                );
            }
            Some(old)
        }
        (Some(since), None) => {
            bail!("{file} was made since {since} and lacks its blobs: name that image with --onto")
        }
        (None, Some(onto)) => Some(Image::open(onto, &options.src)?),
        (None, None) => None,
    };
    // The image as the bundle describes it: every document must be there.
    staged.set_tag(
        &contents.tag,
        serde_json::from_value(json!({
            "mediaType": if top_type.is_empty() { OCI_MANIFEST } else { &top_type },
            "digest": top.as_str(), "size": top_size,
        }))?,
    )?;
    let image = Image::open(
        &format!("oci:{}:{}", staged.root().display(), contents.tag),
        &options.src,
    )
    .with_context(|| format!("{file}: the image's documents"))?;
    let (docs, blobs) = image
        .graph()
        .with_context(|| format!("{file}: a document of the image is missing or corrupt"))?;
    let subjects: BTreeSet<&Digest> = docs.keys().collect();
    let mut patches: HashMap<Digest, Patch> = HashMap::new();
    for (d, s) in &contents.artifacts {
        let bytes = staged.read_json_blob(d, Some(*s))?;
        let artifact = Artifact::parse(&bytes, &format!("{file}: delta artifact {d}"))?;
        if !subjects.contains(&artifact.subject.digest) {
            bail!(
                "{file}: delta artifact {d} names {}, not a manifest of the image",
                artifact.subject.digest
            );
        }
        for p in artifact.patches {
            if blobs.get(&p.target) == Some(&p.target_size) && contents.blobs.contains(&p.digest) {
                patches.insert(p.target.clone(), p);
            }
        }
    }
    // Account for every blob before writing anything.
    // What OLD can give: its graph's blobs (a layout's only where the file
    // is there: a layout may lack blobs a registry would not).
    let old_blobs: BTreeMap<Digest, u64> = match &old {
        Some(o) => {
            let mut c = o.closure()?;
            if matches!(o.reference, ImageRef::Layout(_)) {
                c.retain(|d, _| o.docs.has_blob(d));
            }
            c
        }
        None => BTreeMap::new(),
    };
    let made: Vec<crate::delta::Materialization> = crate::delta::materializations(&image)?
        .into_iter()
        .filter(|m| contents.materialized.contains(&m.layer.0))
        .collect();
    let absent: Vec<Digest> = blobs
        .keys()
        .filter(|d| !contents.blobs.contains(*d))
        .cloned()
        .collect();
    // Blobs needed here (in the staging layout) to rebuild others: patch
    // bases, and the stubs and blocks of materialized layers.
    let mut inputs: BTreeMap<Digest, u64> = BTreeMap::new();
    for d in &absent {
        if let Some(p) = patches.get(d) {
            inputs.insert(p.base.clone(), p.base_size);
        } else if let Some(m) = made.iter().find(|m| &m.layer.0 == d) {
            inputs.insert(m.stub.0.clone(), m.stub.1);
            inputs.extend(m.declared.iter().map(|(b, (_, s))| (b.clone(), *s)));
        }
    }
    let mut asked: Vec<Digest> = absent.clone();
    asked.extend(inputs.keys().cloned());
    let in_dest = dest_has(&ImageRef::parse(&args.into)?, &options, &asked)?;
    let rebuilt = |d: &Digest| patches.contains_key(d) || made.iter().any(|m| &m.layer.0 == d);
    let available = |d: &Digest| {
        contents.blobs.contains(d)
            || old_blobs.contains_key(d)
            || in_dest.contains(d)
            || patches.contains_key(d)
    };
    let mut missing = Vec::new();
    for d in &absent {
        if let Some(p) = patches.get(d) {
            if !available(&p.base) {
                missing.push(format!("{d} (its patch's base {})", p.base));
            }
        } else if let Some(m) = made.iter().find(|m| &m.layer.0 == d) {
            let lacking: Vec<&Digest> = std::iter::once(&m.stub.0)
                .chain(m.declared.keys())
                .filter(|b| !available(b))
                .collect();
            if !lacking.is_empty() {
                missing.push(format!(
                    "{d} (materialized from blobs that are missing: {})",
                    lacking
                        .iter()
                        .map(|b| b.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        } else if !old_blobs.contains_key(d) && !in_dest.contains(d) {
            missing.push(d.to_string());
        }
    }
    if !missing.is_empty() {
        bail!(
            "{file}: {} blobs of the image are neither in the bundle nor in {} nor in {}: {}",
            missing.len(),
            args.onto
                .as_deref()
                .unwrap_or("an earlier image (none given with --onto)"),
            args.into,
            missing
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Into the staging layout: the inputs it lacks, and the blobs DEST lacks
    // that are neither carried nor rebuilt; from OLD where it has them, else
    // from DEST.
    let mut wanted: BTreeMap<Digest, u64> = inputs
        .into_iter()
        .filter(|(d, _)| !patches.contains_key(d))
        .collect();
    for d in &absent {
        if !rebuilt(d) && !in_dest.contains(d) {
            wanted.insert(d.clone(), blobs[d]);
        }
    }
    let (from_old, from_dest): (Blobs, Blobs) = wanted
        .into_iter()
        .filter(|(d, _)| !staged.has_blob(d))
        .partition(|(d, _)| old_blobs.contains_key(d));
    if let (Some(o), false) = (&old, from_old.is_empty()) {
        runtime()?.block_on(oci_blocks_client::copy::fetch_blobs(
            &o.reference,
            &o.options,
            &from_old,
            &staged,
            options.jobs,
        ))?;
    }
    if !from_dest.is_empty() {
        let dest_ref = ImageRef::parse(&args.into)?;
        runtime()?.block_on(oci_blocks_client::copy::fetch_blobs(
            &dest_ref,
            &options.dest,
            &from_dest,
            &staged,
            options.jobs,
        ))?;
    }
    for p in patches.values() {
        let base = staged.read_blob(&p.base, Some(p.base_size), p.base_size)?;
        let patch = staged.read_blob(&p.digest, Some(p.size), p.size)?;
        let mut writer = staged.blob_writer_for(p.target.algorithm())?;
        p.apply(&base, &patch[..], &mut writer)
            .with_context(|| format!("{file}: rebuilding block {}", p.target))?;
        writer
            .commit_verified(&p.target, p.target_size)
            .with_context(|| {
                format!(
                    "{file}: patch {} did not rebuild block {}",
                    p.digest, p.target
                )
            })?;
    }
    for m in made.iter().filter(|m| !in_dest.contains(&m.layer.0)) {
        let writer = staged.blob_writer_for(m.layer.0.algorithm())?;
        let writer = crate::delta::materialize(m, &staged, writer)
            .with_context(|| format!("{file}: materializing layer {}", m.layer.0))?;
        writer.commit_verified(&m.layer.0, m.layer.1).with_context(|| {
            format!(
                "{file}: materializing stub layer {} did not give layer {}; this version of oci-blocks writes it otherwise, so the bundle needs the layer itself",
                m.stub.0, m.layer.0
            )
        })?;
    }
    let dest = match ImageRef::parse(&args.into)? {
        ImageRef::Layout(mut r) => {
            r.tag = r.tag.or(Some(contents.tag.clone()));
            ImageRef::Layout(r)
        }
        ImageRef::Registry(mut r) => {
            if r.tag.is_none() && r.digest.is_none() {
                r.tag = Some(contents.tag.clone());
            }
            ImageRef::Registry(r)
        }
    };
    let src = format!("oci:{}:{}", staged.root().display(), contents.tag);
    let copy = copy_between(&src, &dest.to_string(), &options, args.transport.json())
        .with_context(|| format!("writing {file}'s image to {}", args.into))?;
    let report = LoadReport {
        file: file.clone(),
        into: dest.to_string(),
        digest: copy.digest.clone(),
        blobs_from_bundle: contents.blobs.len(),
        blobs_rebuilt: patches.len() + made.len(),
        blobs_from_old: from_old.len(),
        blobs_in_dest: copy.blobs_skipped,
    };
    if args.transport.json() {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "{file} -> {}: {} ({} blobs from the bundle, {} rebuilt from patches, {} from the earlier image, {} already there)",
            report.into,
            report.digest,
            report.blobs_from_bundle,
            report.blobs_rebuilt,
            report.blobs_from_old,
            report.blobs_in_dest
        );
    }
    Ok(ExitCode::SUCCESS)
}
