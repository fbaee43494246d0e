//! `push/*`: the upload flows of the distribution spec, and manifest pushes.

use super::Ctx;
use super::check::{Check, bytes, code, fail, header, present, skip, status};
use super::content::{Content, OCI_INDEX, obj, s};
use super::http::{Method, Request};

/// The repository of the push tests.
const REPO: &str = "b";
/// The source repository of the mount tests.
const MOUNT_SOURCE: &str = "c";

/// The blob is served byte for byte from `repo`.
fn readable(ctx: &mut Ctx<'_>, repo: &str, blob: &Content) -> Check {
    let reply = ctx.get_blob(repo, &blob.digest)?;
    status(&reply, &[200])?;
    bytes(&reply, &blob.bytes)
}

/// The blob is not served from `repo`.
fn unreadable(ctx: &mut Ctx<'_>, repo: &str, digest: &str, what: &str) -> Check {
    let reply = ctx.get_blob(repo, digest)?;
    if reply.status == 200 {
        return Err(fail(format!(
            "{}: expected 404 for {what}, got 200",
            reply.what()
        )));
    }
    status(&reply, &[404])
}

/// `push/monolithic`.
pub fn monolithic(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let blob = ctx.fixtures.blob("push/monolithic", 1000);
    let location = ctx.start_upload(&repo)?;
    let reply = ctx.send(
        &Request::new(Method::PUT, location)
            .query("digest", &blob.digest)
            .header("content-type", "application/octet-stream")
            .body(&blob.bytes),
    )?;
    status(&reply, &[201])?;
    present(&reply, "location")?;
    readable(ctx, &repo, &blob)
}

/// `push/monolithic-single-post`.
pub fn monolithic_single_post(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let blob = ctx.fixtures.blob("push/monolithic-single-post", 1000);
    let reply = ctx.send(
        &Request::new(Method::POST, format!("/v2/{repo}/blobs/uploads/"))
            .query("digest", &blob.digest)
            .header("content-type", "application/octet-stream")
            .body(&blob.bytes),
    )?;
    if reply.status == 202 {
        if let Some(location) = ctx.client.location(&reply) {
            ctx.discard_upload(&location);
        }
        return Err(skip(format!(
            "{}: the registry opened an upload session (202) instead of storing the blob; \
             the spec allows this",
            reply.what()
        )));
    }
    status(&reply, &[201])?;
    present(&reply, "location")?;
    readable(ctx, &repo, &blob)
}

/// `push/chunked`.
pub fn chunked(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let blob = ctx.fixtures.blob("push/chunked", 3000);
    let mut location = ctx.start_upload(&repo)?;
    let mut start = 0;
    for piece in [1024, 1024, 952] {
        let end = start + piece;
        let chunk = blob
            .bytes
            .get(start..end)
            .ok_or_else(|| fail("the chunked test's blob is shorter than its chunks"))?;
        let reply = ctx.send(
            &Request::new(Method::PATCH, location.clone())
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{start}-{}", end - 1))
                .body(chunk),
        )?;
        status(&reply, &[202])?;
        header(&reply, "range", &format!("0-{}", end - 1))?;
        present(&reply, "location")?;
        location = ctx
            .client
            .location(&reply)
            .ok_or_else(|| fail(format!("{}: no usable Location", reply.what())))?;
        start = end;
    }
    let reply = ctx.send(&Request::new(Method::GET, location.clone()))?;
    status(&reply, &[204])?;
    header(&reply, "range", &format!("0-{}", blob.bytes.len() - 1))?;
    if let Some(next) = ctx.client.location(&reply) {
        location = next;
    }
    let reply = ctx.send(
        &Request::new(Method::PUT, location)
            .query("digest", &blob.digest)
            .body(&[]),
    )?;
    status(&reply, &[201])?;
    readable(ctx, &repo, &blob)
}

/// `push/chunked-out-of-order`.
pub fn chunked_out_of_order(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let blob = ctx.fixtures.blob("push/chunked-out-of-order", 300);
    let location = ctx.start_upload(&repo)?;
    let result = (|| {
        let reply = ctx.send(
            &Request::new(Method::PATCH, location.clone())
                .header("content-type", "application/octet-stream")
                .header("content-range", "0-99")
                .body(&blob.bytes[..100]),
        )?;
        status(&reply, &[202])?;
        let next = ctx.client.location(&reply).unwrap_or(location.clone());
        let reply = ctx.send(
            &Request::new(Method::PATCH, next)
                .header("content-type", "application/octet-stream")
                .header("content-range", "200-299")
                .body(&blob.bytes[200..300]),
        )?;
        status(&reply, &[416])
    })();
    ctx.discard_upload(&location);
    result
}

/// `push/streamed`.
pub fn streamed(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let blob = ctx.fixtures.blob("push/streamed", 5000);
    let location = ctx.start_upload(&repo)?;
    let reply = ctx.send(
        &Request::new(Method::PATCH, location)
            .header("content-type", "application/octet-stream")
            .stream(&blob.bytes),
    )?;
    status(&reply, &[202])?;
    let location = ctx
        .client
        .location(&reply)
        .ok_or_else(|| fail(format!("{}: 202 without a Location header", reply.what())))?;
    let reply = ctx.send(
        &Request::new(Method::PUT, location)
            .query("digest", &blob.digest)
            .body(&[]),
    )?;
    status(&reply, &[201])?;
    readable(ctx, &repo, &blob)
}

/// `push/digest-mismatch`.
pub fn digest_mismatch(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let blob = ctx.fixtures.blob("push/digest-mismatch content", 500);
    let claimed = ctx.fixtures.blob("push/digest-mismatch claimed", 500);
    let location = ctx.start_upload(&repo)?;
    let reply = ctx.send(
        &Request::new(Method::PUT, location.clone())
            .query("digest", &claimed.digest)
            .header("content-type", "application/octet-stream")
            .body(&blob.bytes),
    )?;
    if reply.status != 400 {
        ctx.discard_upload(&location);
    }
    status(&reply, &[400])?;
    code(&reply, "DIGEST_INVALID")?;
    unreadable(ctx, &repo, &claimed.digest, "the claimed digest")?;
    unreadable(ctx, &repo, &blob.digest, "the content's real digest")
}

/// `push/cancel`.
pub fn cancel(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let location = ctx.start_upload(&repo)?;
    let reply = ctx.send(&Request::new(Method::DELETE, location.clone()))?;
    status(&reply, &[204])?;
    let reply = ctx.send(&Request::new(Method::GET, location))?;
    status(&reply, &[404])
}

/// `push/cross-mount`.
pub fn cross_mount(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let source = ctx.repo(MOUNT_SOURCE);
    let blob = ctx.fixtures.blob("push/cross-mount", 800);
    ctx.push_blob(&source, &blob)?;
    let reply = ctx.send(
        &Request::new(Method::POST, format!("/v2/{repo}/blobs/uploads/"))
            .query("mount", &blob.digest)
            .query("from", &source),
    )?;
    if reply.status == 202
        && let Some(location) = ctx.client.location(&reply)
    {
        ctx.discard_upload(&location);
    }
    status(&reply, &[201])?;
    present(&reply, "location")?;
    readable(ctx, &repo, &blob)
}

/// `push/cross-mount-unknown`.
pub fn cross_mount_unknown(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let source = ctx.repo(MOUNT_SOURCE);
    // The source must exist for the mount to be meaningful.
    let present_blob = ctx.fixtures.blob("push/cross-mount", 800);
    ctx.push_blob(&source, &present_blob)?;
    let absent = ctx
        .fixtures
        .blob("push/cross-mount-unknown never pushed", 800);
    let reply = ctx.send(
        &Request::new(Method::POST, format!("/v2/{repo}/blobs/uploads/"))
            .query("mount", &absent.digest)
            .query("from", &source),
    )?;
    status(&reply, &[202])?;
    let location = present(&reply, "location")?.to_string();
    let location = ctx.client.resolve(&location);
    ctx.discard_upload(&location);
    Ok(())
}

/// `push/manifest`.
pub fn manifest(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let image = ctx.fixtures.image("push/manifest")?;
    ctx.push_blobs(&repo, &image.blobs())?;
    let reply = ctx.put_manifest(&repo, "manifest", &image.manifest)?;
    status(&reply, &[201])?;
    present(&reply, "location")?;
    header(&reply, "docker-content-digest", &image.manifest.digest)
}

/// `push/manifest-by-digest`.
pub fn manifest_by_digest(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let image = ctx.fixtures.image("push/manifest-by-digest")?;
    ctx.push_blobs(&repo, &image.blobs())?;
    let reply = ctx.put_manifest(&repo, &image.manifest.digest, &image.manifest)?;
    status(&reply, &[201])
}

/// `push/index`.
pub fn index(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let mut entries = Vec::new();
    for (arch, label) in [("amd64", "push/index amd64"), ("arm64", "push/index arm64")] {
        let image = ctx.fixtures.image(label)?;
        ctx.push_image(&repo, &image.manifest.digest, &image)?;
        entries.push(image.manifest.descriptor_with(vec![(
            "platform",
            obj([("architecture", s(arch)), ("os", s("linux"))]),
        )]));
    }
    let doc = obj([
        ("schemaVersion", super::content::Json::Num(2)),
        ("mediaType", s(OCI_INDEX)),
        ("manifests", super::content::Json::Arr(entries)),
    ]);
    let index = Content::new(OCI_INDEX, doc.compact().into_bytes());
    let reply = ctx.put_manifest(&repo, "index", &index)?;
    status(&reply, &[201])?;
    let reply = ctx.fetch_manifest(Method::GET, &repo, "index")?;
    status(&reply, &[200])?;
    bytes(&reply, &index.bytes)?;
    super::check::media_type(&reply, OCI_INDEX)
}

/// `push/manifest-blob-unknown`.
pub fn manifest_blob_unknown(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let image = ctx.fixtures.image("push/manifest-blob-unknown")?;
    // The config is there; the layer is not.
    ctx.push_blob(&repo, &image.config)?;
    let reply = ctx.put_manifest(&repo, "blob-unknown", &image.manifest)?;
    if !(400..500).contains(&reply.status) {
        return Err(fail(format!(
            "{}: expected a 4xx with MANIFEST_BLOB_UNKNOWN for the never-pushed layer {}, got {}",
            reply.what(),
            image.layer.digest,
            reply.summary()
        )));
    }
    code(&reply, "MANIFEST_BLOB_UNKNOWN")
}
