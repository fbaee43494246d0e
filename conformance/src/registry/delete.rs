//! `delete/*`: deleting manifests, tags and blobs, where the registry allows it.

use super::Ctx;
use super::check::{Check, bytes, skip, status};
use super::http::{Method, Reply, Request};

/// The repository of the delete tests.
const REPO: &str = "f";

/// The error codes of a reply, for messages.
fn codes(reply: &Reply) -> String {
    let codes: Vec<String> = reply.errors().into_iter().map(|e| e.code).collect();
    if codes.is_empty() {
        "no error code".to_string()
    } else {
        codes.join(", ")
    }
}

/// `delete/manifest`.
pub fn manifest(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let image = ctx.fixtures.image("delete/manifest")?;
    let digest = image.manifest.digest.clone();
    ctx.push_image(&repo, &digest, &image)?;
    let reply = ctx.send(&Request::new(
        Method::DELETE,
        format!("/v2/{repo}/manifests/{digest}"),
    ))?;
    if reply.status == 405 {
        return Err(skip(format!(
            "{}: manifest deletion is disabled (405, {}), which the spec allows",
            reply.what(),
            codes(&reply)
        )));
    }
    status(&reply, &[202])?;
    let reply = ctx.fetch_manifest(Method::GET, &repo, &digest)?;
    status(&reply, &[404])
}

/// `delete/tag`.
pub fn tag(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let image = ctx.fixtures.image("delete/tag")?;
    ctx.push_image(&repo, "keep", &image)?;
    ctx.push_image(&repo, "drop", &image)?;
    let reply = ctx.send(&Request::new(
        Method::DELETE,
        format!("/v2/{repo}/manifests/drop"),
    ))?;
    if matches!(reply.status, 400 | 405) {
        return Err(skip(format!(
            "{}: tag deletion not supported ({}, {}); the spec makes it optional",
            reply.what(),
            reply.status,
            codes(&reply)
        )));
    }
    status(&reply, &[202])?;
    let reply = ctx.fetch_manifest(Method::GET, &repo, "drop")?;
    status(&reply, &[404])?;
    let reply = ctx.fetch_manifest(Method::GET, &repo, "keep")?;
    status(&reply, &[200])?;
    bytes(&reply, &image.manifest.bytes)
}

/// `delete/blob`.
pub fn blob(ctx: &mut Ctx<'_>) -> Check {
    let repo = ctx.repo(REPO);
    let blob = ctx.fixtures.blob("delete/blob", 600);
    ctx.push_blob(&repo, &blob)?;
    let reply = ctx.send(&Request::new(
        Method::DELETE,
        format!("/v2/{repo}/blobs/{}", blob.digest),
    ))?;
    if reply.status == 405 {
        return Err(skip(format!(
            "{}: blob deletion is disabled (405, {}), which the spec allows",
            reply.what(),
            codes(&reply)
        )));
    }
    status(&reply, &[202])?;
    let reply = ctx.get_blob(&repo, &blob.digest)?;
    status(&reply, &[404])
}
