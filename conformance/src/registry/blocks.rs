//! `blocks/*`: the registry requirements of the blocks extension: manifests
//! kept byte for byte, blocks served, missing blocks refused, fallback indexes
//! accepted, what re-serializing copies leave refused, and blocks kept through
//! garbage collection.

use std::process::Command;
use std::time::{Duration, Instant};

use super::Ctx;
use super::check::{Check, bytes, code, fail, header_if_any, media_type, setup, skip, status};
use super::content::{BlocksImage, Content, OCI_INDEX, OCI_MANIFEST};
use super::http::{Method, shorten};

/// The repository of the accepted blocks manifest.
const ACCEPTED_REPO: &str = "g";
/// The repository of the fallback index.
const FALLBACK_REPO: &str = "h";
/// The repository of the manifest with a missing block.
const MISSING_REPO: &str = "i";
/// The repository of the blocks manifest without `blocks`.
const STRIPPED_REPO: &str = "j";
/// The repository of the unbound fallback index.
const UNBOUND_REPO: &str = "k";
/// The garbage-collection repositories: bare blocks manifest, fallback index,
/// unreferenced control blob.
const GC_BARE_REPO: &str = "x";
const GC_FALLBACK_REPO: &str = "y";
const GC_CONTROL_REPO: &str = "z";

/// Why the GC tests are skipped without a command.
const NO_GC_COMMAND: &str = "no --gc-command given";

/// Pushes a blocks manifest's blobs; the image and repository.
fn accepted_image(ctx: &mut Ctx<'_>) -> Check<(String, BlocksImage)> {
    let repo = ctx.repo(ACCEPTED_REPO);
    let image = ctx.fixtures.blocks_image("blocks/manifest-accepted")?;
    ctx.push_blobs(&repo, &image.manifest_blobs())?;
    Ok((repo, image))
}

/// `blocks/manifest-accepted`.
pub fn manifest_accepted(ctx: &mut Ctx<'_>) -> Check {
    let (repo, image) = accepted_image(ctx)?;
    let reply = ctx.put_manifest(&repo, "blocks", &image.manifest)?;
    status(&reply, &[201])?;
    header_if_any(&reply, "docker-content-digest", &image.manifest.digest)?;
    for reference in ["blocks", image.manifest.digest.as_str()] {
        let reply = ctx.fetch_manifest(Method::GET, &repo, reference)?;
        status(&reply, &[200])?;
        bytes(&reply, &image.manifest.bytes)?;
        media_type(&reply, OCI_MANIFEST)?;
    }
    Ok(())
}

/// `blocks/blocks-served`.
pub fn blocks_served(ctx: &mut Ctx<'_>) -> Check {
    let (repo, image) = accepted_image(ctx)?;
    for block in &image.blocks {
        let reply = ctx.get_blob(&repo, &block.digest)?;
        status(&reply, &[200])?;
        bytes(&reply, &block.bytes)?;
        header_if_any(&reply, "docker-content-digest", &block.digest)?;
    }
    Ok(())
}

/// `blocks/missing-block-refused`.
pub fn missing_block_refused(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(MISSING_REPO);
    let image = ctx.fixtures.blocks_image("blocks/missing-block-refused")?;
    let missing = image
        .blocks
        .get(1)
        .ok_or_else(|| fail("the blocks image has fewer than two blocks"))?
        .digest
        .clone();
    let present: Vec<&Content> = image
        .manifest_blobs()
        .into_iter()
        .filter(|b| b.digest != missing)
        .collect();
    ctx.push_blobs(&repo, &present)?;
    let reply = ctx.put_manifest(&repo, "missing-block", &image.manifest)?;
    if !(400..500).contains(&reply.status) {
        return Err(fail(format!(
            "{}: expected a 4xx with MANIFEST_BLOB_UNKNOWN, since block {missing} was never pushed, got {}",
            reply.what(),
            reply.summary()
        )));
    }
    code(&reply, "MANIFEST_BLOB_UNKNOWN")?;
    let reply = ctx.fetch_manifest(Method::GET, &repo, &image.manifest.digest)?;
    status(&reply, &[404])
}

/// Pushes a fallback index's blobs and child manifests by digest, then the
/// index by `tag`; each manifest must answer 201.
fn push_fallback(ctx: &mut Ctx<'_>, repo: &str, tag: &str, image: &BlocksImage) -> Check {
    ctx.push_blobs(repo, &image.index_blobs())?;
    for manifest in [&image.legacy, &image.anchor, &image.manifest] {
        let reply = ctx.put_manifest(repo, &manifest.digest, manifest)?;
        status(&reply, &[201])?;
    }
    let reply = ctx.put_manifest(repo, tag, &image.index)?;
    status(&reply, &[201])
}

/// `blocks/fallback-index-accepted`.
pub fn fallback_index_accepted(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(FALLBACK_REPO);
    let image = ctx
        .fixtures
        .blocks_image("blocks/fallback-index-accepted")?;
    push_fallback(ctx, &repo, "fallback", &image)?;
    let reply = ctx.fetch_manifest(Method::GET, &repo, "fallback")?;
    status(&reply, &[200])?;
    bytes(&reply, &image.index.bytes)?;
    media_type(&reply, OCI_INDEX)
}

/// A 4xx with `MANIFEST_INVALID`, and nothing served at `reference`.
fn refused_as_invalid(
    ctx: &mut Ctx<'_>,
    repo: &str,
    reference: &str,
    reply: &super::http::Reply,
    why: &str,
) -> Check {
    if !(400..500).contains(&reply.status) {
        return Err(fail(format!(
            "{}: expected a 4xx with MANIFEST_INVALID, since {why}, got {}",
            reply.what(),
            reply.summary()
        )));
    }
    code(reply, "MANIFEST_INVALID")?;
    let reply = ctx.fetch_manifest(Method::GET, repo, reference)?;
    status(&reply, &[404])
}

/// `blocks/stripped-manifest-refused`.
pub fn stripped_manifest_refused(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(STRIPPED_REPO);
    let image = ctx
        .fixtures
        .blocks_image("blocks/stripped-manifest-refused")?;
    ctx.push_blobs(&repo, &image.manifest_blobs())?;
    let reply = ctx.put_manifest(&repo, "stripped", &image.stripped)?;
    refused_as_invalid(
        ctx,
        &repo,
        "stripped",
        &reply,
        "its config has the blocks config media type and its layers an import layer, but it has no blocks field (blocks.missing)",
    )
}

/// `blocks/unbound-index-refused`.
pub fn unbound_index_refused(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(UNBOUND_REPO);
    let image = ctx.fixtures.blocks_image("blocks/unbound-index-refused")?;
    ctx.push_blobs(&repo, &image.index_blobs())?;
    for manifest in [&image.other_legacy, &image.anchor, &image.manifest] {
        let reply = ctx.put_manifest(&repo, &manifest.digest, manifest)?;
        setup(status(&reply, &[201]))?;
    }
    let reply = ctx.put_manifest(&repo, "unbound", &image.unbound_index)?;
    refused_as_invalid(
        ctx,
        &repo,
        "unbound",
        &reply,
        "its blocks manifest names another legacy manifest than the one it offers (fallback.legacy-unbound)",
    )
}

/// The outcomes of the two garbage-collection tests, which share one run of
/// the collector.
pub struct GcResults {
    /// `blocks/survive-gc`.
    pub survive: Check,
    /// `blocks/anchor-keeps-blocks`.
    pub anchor: Check,
    /// How long judging `anchor` took (the shared setup counts for `survive`).
    pub anchor_time: Duration,
}

impl GcResults {
    fn both(check: Check) -> GcResults {
        GcResults {
            survive: check.clone(),
            anchor: check,
            anchor_time: Duration::ZERO,
        }
    }
}

/// What survives collection must be there; one repository's share.
struct Kept {
    repo: String,
    tag: &'static str,
    manifest: Content,
    blobs: Vec<(String, Content)>,
}

/// Sets up the repositories, runs the GC command once and judges both tests.
pub fn collect(ctx: &mut Ctx<'_>) -> GcResults {
    let Some(command) = ctx.options.gc_command.clone() else {
        return GcResults::both(Err(skip(NO_GC_COMMAND)));
    };
    let bare = setup_bare(ctx);
    let fallback = setup_fallback(ctx);
    let control = match setup_control(ctx) {
        Ok(control) => control,
        Err(stop) => return GcResults::both(Err(stop)),
    };
    if let (Err(a), Err(b)) = (&bare, &fallback) {
        return GcResults {
            survive: Err(a.clone()),
            anchor: Err(b.clone()),
            anchor_time: Duration::ZERO,
        };
    }
    if let Err(stop) = run_gc(&command) {
        return GcResults::both(Err(stop));
    }
    let control_kept = match ctx.get_blob(&control.0, &control.1.digest) {
        Ok(reply) => reply.status == 200 && reply.body == control.1.bytes,
        Err(_) => false,
    };
    let survive = bare.and_then(|kept| judge(ctx, &kept, control_kept));
    let started = Instant::now();
    let anchor = fallback.and_then(|kept| judge(ctx, &kept, control_kept));
    GcResults {
        survive,
        anchor,
        anchor_time: started.elapsed(),
    }
}

/// Repository X: a tagged bare blocks manifest whose blocks only it references.
fn setup_bare(ctx: &mut Ctx<'_>) -> Check<Kept> {
    let repo = ctx.repo(GC_BARE_REPO);
    let image = ctx.fixtures.blocks_image("blocks/survive-gc")?;
    ctx.push_blobs(&repo, &image.manifest_blobs())?;
    ctx.push_manifest(&repo, "bare", &image.manifest)?;
    let mut blobs = named_blocks(&image);
    blobs.push(("config".to_string(), image.config.clone()));
    blobs.push(("base layer".to_string(), image.base.clone()));
    blobs.push(("stub layer".to_string(), image.stub.clone()));
    Ok(Kept {
        repo,
        tag: "bare",
        manifest: image.manifest,
        blobs,
    })
}

/// Repository Y: a tagged fallback index whose blocks only its anchor and its
/// blocks manifest reference.
fn setup_fallback(ctx: &mut Ctx<'_>) -> Check<Kept> {
    let repo = ctx.repo(GC_FALLBACK_REPO);
    let image = ctx.fixtures.blocks_image("blocks/anchor-keeps-blocks")?;
    setup(push_fallback(ctx, &repo, "fallback", &image))?;
    Ok(Kept {
        repo,
        tag: "fallback",
        blobs: named_blocks(&image),
        manifest: image.index,
    })
}

/// Repository Z: a blob nothing references, which a collector must remove.
fn setup_control(ctx: &mut Ctx<'_>) -> Check<(String, Content)> {
    let repo = ctx.repo(GC_CONTROL_REPO);
    let blob = ctx
        .fixtures
        .blob("blocks/gc control blob, unreferenced", 700);
    ctx.push_blob(&repo, &blob)?;
    Ok((repo, blob))
}

fn named_blocks(image: &BlocksImage) -> Vec<(String, Content)> {
    image
        .blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (format!("block {}", i + 1), b.clone()))
        .collect()
}

/// Runs the GC command with `sh -c`; it must exit 0.
fn run_gc(command: &str) -> Check {
    let output = Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .map_err(|e| {
            fail(format!(
                "could not run the GC command `sh -c {command:?}`: {e}"
            ))
        })?;
    if output.status.success() {
        return Ok(());
    }
    let tail = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        let start = text.len().saturating_sub(1500);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    };
    Err(fail(format!(
        "the GC command `{command}` failed ({}); stdout: {:?}; stderr: {:?}",
        output.status,
        tail(&output.stdout),
        tail(&output.stderr)
    )))
}

/// After the collection: everything of `kept` is served byte for byte, and the
/// collector removed at least the control blob.
fn judge(ctx: &mut Ctx<'_>, kept: &Kept, control_kept: bool) -> Check {
    let mut gone = Vec::new();
    for (label, blob) in &kept.blobs {
        match ctx.get_blob(&kept.repo, &blob.digest) {
            Ok(reply) if reply.status == 200 && reply.body == blob.bytes => {}
            Ok(reply) if reply.status == 200 => gone.push(format!(
                "{} ({label}: 200 but {} bytes instead of {})",
                blob.digest,
                reply.body.len(),
                blob.bytes.len()
            )),
            Ok(reply) => gone.push(format!(
                "{} ({label}: {} answered {})",
                blob.digest,
                reply.what(),
                reply.summary()
            )),
            Err(stop) => gone.push(format!(
                "{} ({label}: {})",
                blob.digest,
                shorten(stop.text(), 200)
            )),
        }
    }
    match ctx.fetch_manifest(Method::GET, &kept.repo, kept.tag) {
        Ok(reply) if reply.status == 200 && reply.body == kept.manifest.bytes => {}
        Ok(reply) => gone.push(format!(
            "{} (the manifest tagged {}: {} answered {}{})",
            kept.manifest.digest,
            kept.tag,
            reply.what(),
            reply.summary(),
            if reply.status == 200 {
                " with other bytes"
            } else {
                ""
            }
        )),
        Err(stop) => gone.push(format!(
            "{} (the manifest tagged {}: {})",
            kept.manifest.digest,
            kept.tag,
            shorten(stop.text(), 200)
        )),
    }
    if !gone.is_empty() {
        return Err(fail(format!(
            "after garbage collection, {} of {} items of {}:{} are gone: {}",
            gone.len(),
            kept.blobs.len() + 1,
            kept.repo,
            kept.tag,
            gone.join("; ")
        )));
    }
    if control_kept {
        return Err(skip(
            "the GC command removed nothing, not even an unreferenced blob; survival proves nothing; \
             run the collector with no grace period",
        ));
    }
    Ok(())
}
