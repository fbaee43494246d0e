//! `pull/*`: reading blobs and manifests.

use super::Ctx;
use super::check::{
    Check, bytes, code, code_if_any, fail, header, header_if_any, media_type, status,
};
use super::content::Image;
use super::http::{Method, Request};

/// The tag the pull tests push their image under.
const TAG: &str = "pull";

impl Ctx<'_> {
    /// The pull tests' image in repository `a`, pushed on first use.
    fn pulled(&mut self) -> Check<(String, Image)> {
        let repo = self.repo("a");
        if let Some(image) = &self.pull_image {
            return Ok((repo, image.clone()));
        }
        let image = self.fixtures.image("pull")?;
        self.push_image(&repo, TAG, &image)?;
        self.pull_image = Some(image.clone());
        Ok((repo, image))
    }
}

/// `pull/api-version`.
pub fn api_version(ctx: &mut Ctx<'_>) -> Check {
    let reply = ctx.send(&Request::new(Method::GET, "/v2/"))?;
    status(&reply, &[200])
}

/// `pull/blob`.
pub fn blob(ctx: &mut Ctx<'_>) -> Check {
    let (repo, image) = ctx.pulled()?;
    let reply = ctx.get_blob(&repo, &image.layer.digest)?;
    status(&reply, &[200])?;
    bytes(&reply, &image.layer.bytes)?;
    header_if_any(&reply, "docker-content-digest", &image.layer.digest)
}

/// `pull/blob-head`.
pub fn blob_head(ctx: &mut Ctx<'_>) -> Check {
    let (repo, image) = ctx.pulled()?;
    let reply = ctx.send(&Request::new(
        Method::HEAD,
        format!("/v2/{repo}/blobs/{}", image.layer.digest),
    ))?;
    status(&reply, &[200])?;
    header(&reply, "content-length", &image.layer.size().to_string())
}

/// `pull/blob-unknown`.
pub fn blob_unknown(ctx: &mut Ctx<'_>) -> Check {
    let (repo, _) = ctx.pulled()?;
    let absent = ctx.fixtures.blob("never pushed (pull/blob-unknown)", 64);
    let reply = ctx.get_blob(&repo, &absent.digest)?;
    status(&reply, &[404])?;
    code_if_any(&reply, "BLOB_UNKNOWN")
}

/// GET of the pull image's manifest by `reference`: bytes, type and digest.
fn manifest_by(ctx: &mut Ctx<'_>, by_digest: bool) -> Check {
    let (repo, image) = ctx.pulled()?;
    let reference = if by_digest {
        image.manifest.digest.clone()
    } else {
        TAG.to_string()
    };
    let reply = ctx.fetch_manifest(Method::GET, &repo, &reference)?;
    status(&reply, &[200])?;
    bytes(&reply, &image.manifest.bytes)?;
    media_type(&reply, &image.manifest.media_type)?;
    header(&reply, "docker-content-digest", &image.manifest.digest)
}

/// `pull/manifest-by-tag`.
pub fn manifest_by_tag(ctx: &mut Ctx<'_>) -> Check {
    manifest_by(ctx, false)
}

/// `pull/manifest-by-digest`.
pub fn manifest_by_digest(ctx: &mut Ctx<'_>) -> Check {
    manifest_by(ctx, true)
}

/// `pull/manifest-head`.
pub fn manifest_head(ctx: &mut Ctx<'_>) -> Check {
    let (repo, image) = ctx.pulled()?;
    let reply = ctx.fetch_manifest(Method::HEAD, &repo, TAG)?;
    status(&reply, &[200])?;
    header(&reply, "docker-content-digest", &image.manifest.digest)?;
    header(&reply, "content-length", &image.manifest.size().to_string())
}

/// `pull/manifest-unknown`.
pub fn manifest_unknown(ctx: &mut Ctx<'_>) -> Check {
    let (repo, _) = ctx.pulled()?;
    let reply = ctx.fetch_manifest(Method::GET, &repo, "never-pushed")?;
    status(&reply, &[404])?;
    if reply.errors().is_empty() {
        return Err(fail(format!(
            "{}: expected error code MANIFEST_UNKNOWN, got 404 without an error body",
            reply.what()
        )));
    }
    code(&reply, "MANIFEST_UNKNOWN")
}
