//! Delta artifacts on the wire (`spec/deltas.md`): finding the ones that
//! refer to a blocks manifest, through the referrers API or the
//! distribution-spec's tag schema when a registry lacks it, or among a
//! layout's untagged entries; pushing one the same way; and, in a pull,
//! rebuilding a block from a patch and a base the destination holds, verified
//! before it is stored. Any failure of a delta falls back to the whole block.

use std::collections::HashMap;
use std::sync::Arc;

use oci_blocks_core::Digest;
use oci_blocks_core::delta::{Artifact, Patch};
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::names::{DELTA_ARTIFACT_TYPE, OCI_INDEX, OCI_MANIFEST};
use serde_json::{Value, json};

use crate::copy::End;
use crate::error::{Error, Result};
use crate::reference::ImageRef;
use crate::registry::{Registry, RegistryOptions};

/// At most this many delta artifacts of one manifest are read: a registry
/// that lists more costs a pull bounded work.
pub const MAX_ARTIFACTS: usize = 16;

/// The tag the distribution-spec's referrers tag schema gives the referrers
/// of `subject` (`sha256-HEX`).
pub fn referrers_tag(subject: &Digest) -> String {
    format!("{}-{}", subject.algorithm().as_str(), subject.hex())
}

/// The delta artifacts that name `subject`, as (digest, size).
pub(crate) async fn find(src: &End, subject: &Digest) -> Result<Vec<(Digest, u64)>> {
    let descriptors: Vec<Value> = match src {
        End::Layout { dir, .. } => dir
            .referrers(subject, DELTA_ARTIFACT_TYPE)?
            .into_iter()
            .map(|d| json!({"digest": d.digest().to_string(), "size": d.size()}))
            .collect(),
        End::Registry { reg, r } => {
            match reg
                .referrers(&r.repository, subject, DELTA_ARTIFACT_TYPE)
                .await?
            {
                Some(list) => list,
                None => tag_schema_list(reg, &r.repository, subject)
                    .await?
                    .into_iter()
                    .filter(|d| d["artifactType"].as_str() == Some(DELTA_ARTIFACT_TYPE))
                    .collect(),
            }
        }
    };
    Ok(descriptors
        .iter()
        .filter_map(|d| {
            Some((
                Digest::parse(d.get("digest")?.as_str()?).ok()?,
                d.get("size")?.as_u64()?,
            ))
        })
        .take(MAX_ARTIFACTS)
        .collect())
}

/// The descriptors of the tag-schema index of `subject` (empty when the tag
/// does not exist).
async fn tag_schema_list(reg: &Registry, repository: &str, subject: &Digest) -> Result<Vec<Value>> {
    match reg.get_manifest(repository, &referrers_tag(subject)).await {
        Ok((bytes, _, _)) => {
            let value: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Document {
                what: format!("{repository}:{}", referrers_tag(subject)),
                reason: format!("not JSON: {e}"),
            })?;
            Ok(value["manifests"].as_array().cloned().unwrap_or_default())
        }
        Err(Error::Status { status: 404, .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Reads and parses one delta artifact.
pub(crate) async fn fetch(src: &End, digest: &Digest, size: u64) -> Result<Artifact> {
    let bytes = match src {
        End::Layout { dir, .. } => dir.read_json_blob(digest, Some(size))?,
        End::Registry { reg, r } => reg.get_manifest(&r.repository, digest.as_str()).await?.0,
    };
    Ok(Artifact::parse(
        &bytes,
        &format!("delta artifact {digest}"),
    )?)
}

/// The patch a pull uses for each block it lacks: from the delta artifacts
/// of its blocks manifests, the smallest patch whose base the destination
/// layout holds (with the declared size). Blocks over `max_size` get none.
pub(crate) async fn plan(
    src: &End,
    dest: &OciDir,
    manifests: &[Digest],
    wanted: &HashMap<Digest, u64>,
    max_size: u64,
) -> HashMap<Digest, Patch> {
    let mut chosen: HashMap<Digest, Patch> = HashMap::new();
    for m in manifests {
        let found = match find(src, m).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(manifest = %m, "no deltas: looking for them failed: {e}");
                continue;
            }
        };
        for (digest, size) in found {
            let artifact = match fetch(src, &digest, size).await {
                Ok(a) if &a.subject.digest == m => a,
                Ok(_) => {
                    tracing::warn!(%digest, "delta artifact names another subject; not used");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%digest, "delta artifact not used: {e}");
                    continue;
                }
            };
            for p in artifact.patches {
                let usable = wanted.get(&p.target) == Some(&p.target_size)
                    && p.target_size <= max_size
                    && p.base_size <= max_size
                    && p.size < p.target_size
                    && std::fs::metadata(dest.blob_path(&p.base))
                        .is_ok_and(|md| md.is_file() && md.len() == p.base_size);
                let smaller = chosen.get(&p.target).is_none_or(|c| p.size < c.size);
                if usable && smaller {
                    chosen.insert(p.target.clone(), p);
                }
            }
        }
    }
    chosen
}

/// Rebuilds `patch.target` in `dest` from the patch (fetched from `src`)
/// and its base; verified, digest and size, before the block is stored.
/// Returns the patch bytes moved.
pub(crate) async fn rebuild(src: &End, dest: &OciDir, patch: &Patch) -> Result<u64> {
    let bytes = match src {
        End::Layout { dir, .. } => dir.read_blob(&patch.digest, Some(patch.size), patch.size)?,
        End::Registry { reg, r } => {
            let mut resp = reg.get_blob(&r.repository, &patch.digest).await?;
            if let Some(n) = resp.content_length().filter(|n| *n > patch.size) {
                return Err(Error::Limit {
                    what: format!("patch {}", patch.digest),
                    reason: format!("the registry announces {n} bytes"),
                    limit: format!("its descriptor's size, {} bytes", patch.size),
                });
            }
            let mut out = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| Error::Http {
                method: "GET".into(),
                url: format!("patch {}", patch.digest),
                message: e.to_string(),
            })? {
                if (out.len() + chunk.len()) as u64 > patch.size {
                    return Err(Error::Limit {
                        what: format!("patch {}", patch.digest),
                        reason: "the registry sent more".into(),
                        limit: format!("its descriptor's size, {} bytes", patch.size),
                    });
                }
                out.extend_from_slice(&chunk);
            }
            reg.bytes_received
                .fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let mut hasher = oci_blocks_core::digest::Hasher::new(patch.digest.algorithm());
            hasher.update(&out);
            let found = hasher.finish();
            if found != patch.digest {
                return Err(Error::Mismatch {
                    what: format!("patch {}", patch.digest),
                    expected: patch.digest.to_string(),
                    found: found.to_string(),
                });
            }
            out
        }
    };
    let moved = bytes.len() as u64;
    let (layout, patch) = (dest.clone(), patch.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        // The base is read by its declared size, not hashed again: a base
        // that is not what its name says cannot rebuild a block with the
        // target's digest, which is verified below.
        let path = layout.blob_path(&patch.base);
        let base = std::fs::read(&path).map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
        let mut writer = layout.blob_writer_for(patch.target.algorithm())?;
        patch.apply(&base, &bytes[..], &mut writer)?;
        writer.commit_verified(&patch.target, patch.target_size)?;
        Ok(())
    })
    .await
    .map_err(|e| Error::Document {
        what: "applying a patch".into(),
        reason: e.to_string(),
    })??;
    Ok(moved)
}

/// Writes a delta artifact and its patches (blobs of `blobs`) into `dest`,
/// where its subject is: a layout records it as an untagged referrer; a
/// registry gets its blobs, then the manifest by digest, and, when the
/// registry does not say it indexed the subject (no `OCI-Subject`), the
/// artifact is added to the subject's tag-schema index. Returns the
/// artifact's digest.
pub async fn push(
    dest: &ImageRef,
    options: &RegistryOptions,
    artifact: &Artifact,
    blobs: &OciDir,
) -> Result<Digest> {
    let bytes = artifact.to_bytes();
    let digest = Digest::sha256(&bytes);
    let empty = oci_blocks_core::names::OCI_EMPTY_DIGEST;
    match dest {
        ImageRef::Layout(r) => {
            let dir = OciDir::open(&r.path)?;
            dir.write_blob_verified(&b"{}"[..], &Digest::parse(empty)?, Some(2))?;
            for p in &artifact.patches {
                let file =
                    std::fs::File::open(blobs.blob_path(&p.digest)).map_err(|e| Error::Io {
                        path: blobs.blob_path(&p.digest),
                        source: e,
                    })?;
                dir.write_blob_verified(file, &p.digest, Some(p.size))?;
            }
            dir.write_blob_verified(&bytes[..], &digest, Some(bytes.len() as u64))?;
            let descriptor = serde_json::from_value(json!({
                "mediaType": OCI_MANIFEST,
                "digest": digest.as_str(),
                "size": bytes.len(),
                "artifactType": DELTA_ARTIFACT_TYPE,
            }))
            .map_err(|e| Error::Document {
                what: digest.to_string(),
                reason: e.to_string(),
            })?;
            dir.add_referrer(descriptor)?;
        }
        ImageRef::Registry(r) => {
            let reg = Arc::new(Registry::connect(&r.host, options.clone()).await?);
            let repo = &r.repository;
            let empty_digest = Digest::parse(empty)?;
            if !reg.has_blob(repo, &empty_digest).await? {
                let tmp = tempfile::tempdir().map_err(|e| Error::Io {
                    path: std::env::temp_dir(),
                    source: e,
                })?;
                let path = tmp.path().join("empty");
                std::fs::write(&path, b"{}").map_err(|e| Error::Io {
                    path: path.clone(),
                    source: e,
                })?;
                reg.upload_file(repo, &empty_digest, &path, 2).await?;
            }
            for p in &artifact.patches {
                if !reg.has_blob(repo, &p.digest).await? {
                    reg.upload_file(repo, &p.digest, &blobs.blob_path(&p.digest), p.size)
                        .await?;
                }
            }
            let indexed = reg
                .put_manifest(repo, digest.as_str(), &bytes, OCI_MANIFEST)
                .await?;
            if indexed.is_none() {
                let subject = &artifact.subject.digest;
                let mut list = tag_schema_list(&reg, repo, subject).await?;
                if !list
                    .iter()
                    .any(|d| d["digest"].as_str() == Some(digest.as_str()))
                {
                    list.push(json!({
                        "mediaType": OCI_MANIFEST,
                        "digest": digest.as_str(),
                        "size": bytes.len(),
                        "artifactType": DELTA_ARTIFACT_TYPE,
                        "annotations": {
                            oci_blocks_core::names::ANNOTATION_DELTA_FROM: artifact.from.as_str(),
                        },
                    }));
                }
                let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list});
                reg.put_manifest(
                    repo,
                    &referrers_tag(subject),
                    index.to_string().as_bytes(),
                    OCI_INDEX,
                )
                .await?;
            }
        }
    }
    Ok(digest)
}
