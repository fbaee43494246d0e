//! Manifests by tag and digest: GET and HEAD, PUT after the schema, rules
//! and existence checks, DELETE.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oci_blocks_core::Digest;
use oci_blocks_core::digest::{Algorithm, Hasher};
use oci_blocks_core::names::MAX_MANIFEST_SIZE;
use oci_spec::distribution::ErrorCode;
use serde_json::json;

use crate::manifest;
use crate::names::valid_tag;
use crate::storage::ManifestCommit;

use super::*;
/// A manifest reference: a digest, or a tag resolved to one.
pub(super) async fn resolve(
    state: &AppState,
    name: &str,
    reference: &str,
) -> Result<Digest, ApiError> {
    if reference.contains(':') {
        return parse_digest(reference);
    }
    if !valid_tag(reference) {
        // Neither a digest nor a tag: no such manifest (as distribution and
        // the distribution-spec conformance suite have it).
        return Err(manifest_unknown(name, reference));
    }
    let storage = state.storage.clone();
    let (n, t) = (name.to_string(), reference.to_string());
    blocking(move || storage.resolve_tag(&n, &t))
        .await?
        .ok_or_else(|| manifest_unknown(name, reference))
}

pub(super) fn manifest_unknown(name: &str, reference: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::ManifestUnknown,
        format!("manifest {reference} is not in {name}"),
    )
    .detail(json!({ "reference": reference }))
}

pub(super) async fn get_manifest(
    state: &AppState,
    name: String,
    reference: String,
    method: &Method,
) -> ApiResult {
    let digest = resolve(state, &name, &reference).await?;
    let storage = state.storage.clone();
    let (n, d) = (name.clone(), digest.clone());
    let Some((bytes, media_type)) = blocking(move || storage.read_manifest(&n, &d)).await? else {
        return Err(manifest_unknown(&name, &reference));
    };
    let length = bytes.len();
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(&media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(
        header::HeaderName::from_static("docker-content-digest"),
        header_value(digest.as_str()),
    );
    h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
    Ok(response)
}

pub(super) async fn put_manifest(
    state: &AppState,
    name: String,
    reference: String,
    request: Request,
) -> ApiResult {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (tag, by_digest) = if reference.contains(':') {
        (None, Some(parse_digest(&reference)?))
    } else if valid_tag(&reference) {
        (Some(reference.clone()), None)
    } else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ManifestInvalid,
            format!("invalid tag {reference:?}"),
        ));
    };
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::SizeInvalid,
            format!("manifest is larger than {MAX_MANIFEST_SIZE} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|l| l > MAX_MANIFEST_SIZE) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(request.into_body(), MAX_MANIFEST_SIZE as usize)
        .await
        .map_err(|_| too_large())?;
    let checked = manifest::check(&bytes, content_type.as_deref()).map_err(|reason| {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid, reason)
    })?;
    let algorithm = by_digest
        .as_ref()
        .map(Digest::algorithm)
        .unwrap_or(Algorithm::Sha256);
    let mut hasher = Hasher::new(algorithm);
    hasher.update(&bytes);
    let digest = hasher.finish();
    if let Some(expected) = &by_digest
        && expected != &digest
    {
        return Err(ApiError::digest_invalid(format!(
            "manifest hashes to {digest}, not {expected}"
        ))
        .detail(json!({ "digest": expected.as_str(), "actual": digest.as_str() })));
    }
    let storage = state.storage.clone();
    let (n, d) = (name.clone(), digest.clone());
    let subject = checked.subject.clone();
    let stored: Result<(), ApiError> = blocking(move || {
        // Held from the existence checks to the commit: a collection either
        // sees this manifest or runs before the checks (or, on a bucket, sees
        // what it names in use).
        let named: Vec<Digest> = std::iter::once(d.clone())
            .chain(checked.blobs.iter().map(|r| r.digest.clone()))
            .chain(checked.children.iter().cloned())
            .collect();
        let _put = storage.begin_manifest_put(&n, &named)?;
        for r in &checked.blobs {
            match storage.blob_size(&r.digest)? {
                None => {
                    return Ok(Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::ManifestBlobUnknown,
                        format!(
                            "{} names blob {}, which is not in the registry",
                            r.pointer, r.digest
                        ),
                    )
                    .detail(json!({ "digest": r.digest.as_str(), "pointer": r.pointer }))));
                }
                Some(actual) if r.size.is_some_and(|s| s != actual) => {
                    return Ok(Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::ManifestInvalid,
                        format!(
                            "{} gives blob {} a size of {}, but it has {actual} bytes",
                            r.pointer,
                            r.digest,
                            r.size.unwrap_or_default()
                        ),
                    )
                    .detail(json!({ "digest": r.digest.as_str(), "pointer": r.pointer }))));
                }
                Some(_) => {}
            }
        }
        for (i, child) in checked.children.iter().enumerate() {
            if storage.manifest_media_type(&n, child)?.is_none() {
                return Ok(Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::ManifestBlobUnknown,
                    format!(
                        "/manifests/{i} names manifest {child}, which is not in this repository"
                    ),
                )
                .detail(
                    json!({ "digest": child.as_str(), "pointer": format!("/manifests/{i}") }),
                )));
            }
        }
        if !checked.children.is_empty() {
            let read = |d: &Digest| storage.read_manifest(&n, d).ok().flatten().map(|(b, _)| b);
            if let Err(reason) = manifest::check_bindings(&bytes, read) {
                return Ok(Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::ManifestInvalid,
                    reason,
                )));
            }
        }
        let blobs: Vec<Digest> = checked.blobs.iter().map(|r| r.digest.clone()).collect();
        storage.put_manifest(
            &n,
            &ManifestCommit {
                digest: &d,
                bytes: &bytes,
                media_type: &checked.media_type,
                blobs: &blobs,
                subject: checked.subject.as_ref(),
                tag: tag.as_deref(),
            },
        )?;
        Ok(Ok(()))
    })
    .await?;
    stored?;
    let mut response = (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{name}/manifests/{digest}")),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest.to_string(),
            ),
        ],
    )
        .into_response();
    if let Some(subject) = subject {
        response.headers_mut().insert(
            header::HeaderName::from_static("oci-subject"),
            header_value(subject.as_str()),
        );
    }
    Ok(response)
}

pub(super) async fn delete_manifest(
    state: &AppState,
    name: String,
    reference: String,
) -> ApiResult {
    let storage = state.storage.clone();
    let (n, r) = (name.clone(), reference.clone());
    let deleted = if reference.contains(':') {
        let digest = parse_digest(&reference)?;
        blocking(move || storage.delete_manifest(&n, &digest)).await?
    } else {
        blocking(move || storage.delete_tag(&n, &r)).await?
    };
    if deleted {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(manifest_unknown(&name, &reference))
    }
}
