//! The source of a rechunk: its manifests, one per platform; a Docker
//! schema 2 image renamed to OCI's types; and a prior rechunk's number of
//! groups.

use std::fs;
use std::path::Path;

use oci_blocks_core::Digest;
use oci_blocks_core::layout::{OciDir, OciRef};
use oci_blocks_core::names::{
    ANNOTATION_VARIANT, DOCKER_CONFIG, DOCKER_LAYER_TAR_GZIP, DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR_GZIP, OCI_MANIFEST, tar_compression,
};
use oci_blocks_core::platform::Platform;
use serde_json::{Value, json};

use super::RechunkSpec;
use crate::build::{platform_arg, wanted_platform};
use crate::{Error, Result};

pub(super) fn image_error(image: &str, reason: impl Into<String>) -> Error {
    Error::Image {
        image: image.to_string(),
        reason: reason.into(),
    }
}

pub(super) fn read_json(dir: &OciDir, digest: &Digest, size: u64, image: &str) -> Result<Value> {
    let bytes = dir.read_json_blob(digest, Some(size))?;
    serde_json::from_slice(&bytes).map_err(|e| image_error(image, format!("{digest}: {e}")))
}

pub(super) fn descriptor_of(v: &Value, image: &str) -> Result<(Digest, String, u64)> {
    let parts = || -> Option<(Digest, String, u64)> {
        Some((
            Digest::parse(v.get("digest")?.as_str()?).ok()?,
            v.get("mediaType")?.as_str()?.to_string(),
            v.get("size")?.as_u64()?,
        ))
    };
    parts().ok_or_else(|| image_error(image, format!("not a descriptor: {v}")))
}

/// The source's manifests to rechunk: `(platform, manifest)`.
pub(super) fn manifests(spec: &RechunkSpec, dir: &OciDir) -> Result<Vec<(Option<String>, Value)>> {
    let image = &spec.origin;
    let roots = dir.resolve(spec.src.tag.as_deref())?;
    let [root] = roots.as_slice() else {
        return Err(image_error(
            image,
            format!("{} images in the layout; name one with :TAG", roots.len()),
        ));
    };
    let digest = Digest::try_from(root.digest())?;
    let top = read_json(dir, &digest, root.size(), image)?;
    let top_type = root.media_type().to_string();
    if top_type != OCI_INDEX && top_type != DOCKER_MANIFEST_LIST {
        if !spec.platforms.is_empty() {
            return Err(Error::option(
                format!("--platform {}", spec.platforms.join(",")),
                format!("{image} is one manifest, not an index of platforms"),
            ));
        }
        return Ok(vec![(None, top)]);
    }
    let entries = top
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if entries.iter().any(|e| {
        e.pointer(&format!(
            "/annotations/{}",
            ANNOTATION_VARIANT.replace('/', "~1")
        ))
        .is_some()
    }) {
        return Err(image_error(
            image,
            "a fallback index, which already has blocks; rechunk takes images without them",
        ));
    }
    let mut chosen: Vec<(Option<String>, Value)> = Vec::new();
    let mut add = |e: &Value, p: &Platform| -> Result<()> {
        let (d, media_type, size) = descriptor_of(e, image)?;
        if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
            return Err(image_error(
                image,
                format!("{d}: a {media_type} in the index; rechunk takes image manifests"),
            ));
        }
        chosen.push((Some(p.to_string()), read_json(dir, &d, size, image)?));
        Ok(())
    };
    if spec.platforms.is_empty() {
        for e in &entries {
            // Attestations and other artifacts have no runnable platform.
            match Platform::of_entry(e) {
                Some(p) if p.os != "unknown" && p.architecture != "unknown" => add(e, &p)?,
                _ => {}
            }
        }
    } else {
        for text in &spec.platforms {
            let wanted = platform_arg(text)?;
            let choice = oci_blocks_core::platform::choose(&entries, &wanted).ok_or_else(|| {
                Error::option(
                    format!("--platform {text}"),
                    format!("{image} has no manifest for it"),
                )
            })?;
            let e = &entries[choice.index];
            let p = Platform::of_entry(e).unwrap_or(wanted);
            add(e, &p)?;
        }
    }
    if chosen.is_empty() {
        return Err(image_error(
            image,
            "the index has no image for any platform",
        ));
    }
    Ok(chosen)
}

/// The number of groups of an earlier rechunk for `platform`, from its
/// blocks manifest's history (`oci-blocks rechunk: group g of G: ...`).
pub(super) fn groups_of_prior(prior: &OciRef, platform: Option<&str>) -> Result<Option<usize>> {
    let image = prior.to_string();
    let dir = OciDir::open(&prior.path)?;
    let roots = dir.resolve(prior.tag.as_deref())?;
    let [root] = roots.as_slice() else {
        return Err(image_error(
            &image,
            format!("{} images in the layout; name one with :TAG", roots.len()),
        ));
    };
    let mut digest = Digest::try_from(root.digest())?;
    let mut size = root.size();
    let mut doc = read_json(&dir, &digest, size, &image)?;
    if doc.get("manifests").is_some() {
        let wanted = wanted_platform(platform)?;
        let entries = doc["manifests"].as_array().cloned().unwrap_or_default();
        let Some(choice) = oci_blocks_core::platform::choose(&entries, &wanted) else {
            return Ok(None);
        };
        (digest, _, size) = descriptor_of(&entries[choice.index], &image)?;
        doc = read_json(&dir, &digest, size, &image)?;
    }
    let Some(config) = doc.get("config") else {
        return Ok(None);
    };
    let (cd, _, cs) = descriptor_of(config, &image)?;
    let config = read_json(&dir, &cd, cs, &image)?;
    let groups = config
        .get("history")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|h| h.get("created_by")?.as_str())
        .filter_map(|c| c.strip_prefix("oci-blocks rechunk: group "))
        .filter_map(|rest| rest.split_once(" of ")?.1.split(':').next()?.parse().ok())
        .next();
    Ok(groups)
}

/// Links (or copies) the blob `digest` of `from` into `to`.
pub(super) fn link_blob(from: &OciDir, to: &OciDir, digest: &Digest, size: u64) -> Result<()> {
    if to.has_blob(digest) {
        return Ok(());
    }
    if fs::hard_link(from.blob_path(digest), to.blob_path(digest)).is_ok() {
        return Ok(());
    }
    let mut blob = from.open_blob(digest, Some(size))?;
    to.write_blob_verified(&mut blob, digest, Some(size))?;
    Ok(())
}

/// A Docker schema 2 manifest as an OCI image manifest in `to`, its blobs
/// linked: the media types renamed, as skopeo converts it.
pub(super) fn docker_manifest(
    from: &OciDir,
    to: &OciDir,
    digest: &Digest,
    size: u64,
    image: &str,
) -> Result<(Digest, u64)> {
    let mut m = read_json(from, digest, size, image)?;
    m["mediaType"] = json!(OCI_MANIFEST);
    let (cd, ct, cs) = descriptor_of(
        m.get("config")
            .ok_or_else(|| image_error(image, format!("{digest}: no config")))?,
        image,
    )?;
    if ct != DOCKER_CONFIG && ct != OCI_CONFIG {
        return Err(image_error(
            image,
            format!("{digest}: config media type {ct}"),
        ));
    }
    m["config"]["mediaType"] = json!(OCI_CONFIG);
    link_blob(from, to, &cd, cs)?;
    let count = m
        .get("layers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    for i in 0..count {
        let (ld, lt, ls) = descriptor_of(&m["layers"][i], image)?;
        let oci = match lt.as_str() {
            DOCKER_LAYER_TAR_GZIP | OCI_LAYER_TAR_GZIP => OCI_LAYER_TAR_GZIP,
            other if tar_compression(other).is_some() => other,
            other => {
                return Err(image_error(
                    image,
                    format!("{digest}: /layers/{i}: layer media type {other} cannot be read"),
                ));
            }
        };
        m["layers"][i]["mediaType"] = json!(oci);
        link_blob(from, to, &ld, ls)?;
    }
    let bytes = serde_json::to_vec(&m).map_err(|e| image_error(image, e.to_string()))?;
    Ok(to.write_blob_bytes(&bytes)?)
}

/// When the source uses Docker's schema 2 media types, the same image with
/// OCI's in a layout of its own (under `scratch`), tagged `source`.
pub(super) fn as_oci(spec: &RechunkSpec, src: &OciDir, scratch: &Path) -> Result<Option<OciDir>> {
    let image = &spec.origin;
    let roots = src.resolve(spec.src.tag.as_deref())?;
    let [root] = roots.as_slice() else {
        return Ok(None);
    };
    let top_type = root.media_type().to_string();
    if top_type != DOCKER_MANIFEST && top_type != DOCKER_MANIFEST_LIST {
        return Ok(None);
    }
    let to = OciDir::create(scratch.join("source"))?;
    let digest = Digest::try_from(root.digest())?;
    let (d, s, t) = if top_type == DOCKER_MANIFEST {
        let (d, s) = docker_manifest(src, &to, &digest, root.size(), image)?;
        (d, s, OCI_MANIFEST)
    } else {
        let mut list = read_json(src, &digest, root.size(), image)?;
        list["mediaType"] = json!(OCI_INDEX);
        let count = list
            .get("manifests")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        for i in 0..count {
            let (ed, et, es) = descriptor_of(&list["manifests"][i], image)?;
            if et != DOCKER_MANIFEST {
                return Err(image_error(
                    image,
                    format!("{digest}: /manifests/{i}: a {et} in a Docker manifest list"),
                ));
            }
            let (nd, ns) = docker_manifest(src, &to, &ed, es, image)?;
            list["manifests"][i]["mediaType"] = json!(OCI_MANIFEST);
            list["manifests"][i]["digest"] = json!(nd.to_string());
            list["manifests"][i]["size"] = json!(ns);
        }
        let bytes = serde_json::to_vec(&list).map_err(|e| image_error(image, e.to_string()))?;
        let (d, s) = to.write_blob_bytes(&bytes)?;
        (d, s, OCI_INDEX)
    };
    let descriptor =
        serde_json::from_value(json!({"mediaType": t, "digest": d.to_string(), "size": s}))
            .map_err(|e| image_error(image, e.to_string()))?;
    to.set_tag("source", descriptor)?;
    Ok(Some(to))
}
