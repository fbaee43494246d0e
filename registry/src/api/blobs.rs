//! Blob GET, HEAD and DELETE.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oci_blocks_core::Digest;
use oci_spec::distribution::ErrorCode;
use serde_json::json;
use tower::ServiceExt;

use super::*;
pub(super) async fn get_blob(
    state: &AppState,
    name: String,
    digest: String,
    request: Request,
) -> ApiResult {
    let digest = parse_digest(&digest)?;
    let storage = state.storage.clone();
    let head = request.method() == Method::HEAD;
    let d = digest.clone();
    let found = blocking(move || {
        let size = storage.linked_blob_size(&name, &d);
        if size.is_some() && head {
            // A HEAD is how a pusher learns it may skip an upload: keep the blob
            // young so that a collection does not take it before the manifest comes.
            storage.touch_blob(&d);
        }
        Ok(size)
    })
    .await?;
    if found.is_none() {
        return Err(ApiError::blob_unknown(&digest));
    }
    let path = state.storage.blob_path(&digest);
    // Several ranges in one request: the whole blob (200), which
    // RFC 9110 allows a server to answer instead of a multipart body.
    let mut request = request;
    let multi = request
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|r| r.contains(','));
    if multi {
        request.headers_mut().remove(header::RANGE);
    }
    let served = tower_http::services::ServeFile::new(&path)
        .oneshot(request)
        .await
        .map_err(ApiError::internal)?;
    if served.status() == StatusCode::NOT_FOUND {
        // Swept between the check and the open.
        return Err(ApiError::blob_unknown(&digest));
    }
    let (mut parts, body) = served.into_parts();
    parts.headers.insert(
        header::HeaderName::from_static("docker-content-digest"),
        header_value(digest.as_str()),
    );
    parts
        .headers
        .insert(header::ETAG, header_value(&format!("\"{digest}\"")));
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(Response::from_parts(parts, Body::new(body)))
}

pub(super) fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub(super) async fn delete_blob(state: &AppState, name: String, digest: String) -> ApiResult {
    let digest = parse_digest(&digest)?;
    let storage = state.storage.clone();
    let d = digest.clone();
    // Under the lock manifest commits take (shared) and GC takes: a commit
    // that names the blob either finished, and is seen here, or starts after
    // the link is gone, and links it again.
    let outcome = blocking(move || {
        let _lock = storage.lock_exclusive()?;
        if let Some(m) = storage.manifest_referencing(&name, &d)? {
            return Ok(Err(m));
        }
        Ok(Ok(storage.unlink_blob(&name, &d)?))
    })
    .await?;
    match outcome {
        Ok(true) => Ok(StatusCode::ACCEPTED.into_response()),
        Ok(false) => Err(ApiError::blob_unknown(&digest)),
        Err(manifest) => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Denied,
            format!(
                "blob {digest} is referenced by manifest {manifest} of this repository; delete the manifest first"
            ),
        )
        .detail(json!({ "digest": digest.as_str(), "manifest": manifest.as_str() }))),
    }
}

pub(super) fn blob_created(name: &str, digest: &Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{name}/blobs/{digest}")),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest.to_string(),
            ),
        ],
    )
        .into_response()
}
