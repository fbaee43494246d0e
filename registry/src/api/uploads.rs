//! Upload sessions: start (monolithic, or a mount), chunks with
//! `Content-Range`, status, commit with digest verification, cancel.
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use oci_blocks_core::Digest;
use oci_blocks_core::digest::{Algorithm, Hasher};
use oci_spec::distribution::ErrorCode;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::names::valid_name;

use super::*;
pub(super) fn upload_accepted(status: StatusCode, name: &str, id: &str, size: u64) -> Response {
    (
        status,
        [
            (header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}")),
            (header::RANGE, format!("0-{}", size.saturating_sub(1))),
            (
                header::HeaderName::from_static("docker-upload-uuid"),
                id.to_string(),
            ),
        ],
    )
        .into_response()
}

pub(super) async fn start_upload(state: &AppState, name: String, request: Request) -> ApiResult {
    let query = query_map(request.uri());
    if let Some(mount) = query.get("mount") {
        let digest = parse_digest(mount)?;
        let from = query.get("from").cloned();
        if let Some(from) = &from
            && !valid_name(from)
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::NameInvalid,
                format!("invalid repository name {from:?} in from="),
            ));
        }
        let storage = state.storage.clone();
        let (n, d) = (name.clone(), digest.clone());
        let mounted = blocking(move || {
            let there = match &from {
                Some(from) => storage.linked_blob_size(from, &d)?.is_some(),
                // Without `from`, any stored blob may be linked (one tenant).
                None => storage.blob_size(&d)?.is_some(),
            };
            // The use first: a collection removing the blob either sees it
            // or is seen, and then the client uploads the blob instead.
            let usable = there && storage.use_blob(&d)?;
            if usable {
                storage.link_blob(&n, &d)?;
            }
            Ok(usable)
        })
        .await?;
        if mounted {
            return Ok(blob_created(&name, &digest));
        }
        // Not there: fall back to an upload session, as the spec asks.
    }
    let storage = state.storage.clone();
    let n = name.clone();
    let id = blocking(move || storage.new_upload(&n)).await?;
    let upload = Arc::new(tokio::sync::Mutex::new(Upload {
        size: 0,
        hasher: Some(Hasher::new(Algorithm::Sha256)),
    }));
    if let Ok(mut map) = state.uploads.lock() {
        map.insert(id.clone(), upload.clone());
    }
    if !query.contains_key("mount")
        && let Some(digest) = query.get("digest")
    {
        // Monolithic: the whole blob in the POST.
        let digest = parse_digest(digest)?;
        let mut u = upload.lock().await;
        let result = async {
            append(state, &id, &mut u, request.into_body(), None).await?;
            finish(state, &name, &id, &mut u, &digest).await
        }
        .await;
        if result.is_err() {
            discard(state, &id).await;
        }
        return result;
    }
    Ok(upload_accepted(StatusCode::ACCEPTED, &name, &id, 0))
}

/// The session `id` of repository `name`, known to this process or found on disk
/// (after a restart, without a hash state).
pub(super) async fn session(
    state: &AppState,
    name: &str,
    id: &str,
) -> Result<Arc<tokio::sync::Mutex<Upload>>, ApiError> {
    let storage = state.storage.clone();
    let key = id.to_string();
    let found = blocking(move || storage.upload(&key)).await?;
    match found {
        Some((repo, size)) if repo == name => {
            let entry = {
                let mut map = state
                    .uploads
                    .lock()
                    .map_err(|_| ApiError::internal("upload table poisoned"))?;
                map.entry(id.to_string())
                    .or_insert_with(|| {
                        Arc::new(tokio::sync::Mutex::new(Upload { size, hasher: None }))
                    })
                    .clone()
            };
            if state.storage.s3().is_some() {
                // Another replica may have taken the session further: the
                // bucket's size wins, and this process's hash state is stale.
                let mut u = entry.lock().await;
                let storage = state.storage.clone();
                let key = id.to_string();
                let now = blocking(move || storage.upload(&key)).await?;
                match now {
                    Some((_, size)) if size != u.size => {
                        u.size = size;
                        u.hasher = None;
                    }
                    Some(_) => {}
                    None => return Err(ApiError::upload_unknown(id)),
                }
            }
            Ok(entry)
        }
        _ => Err(ApiError::upload_unknown(id)),
    }
}

pub(super) async fn discard(state: &AppState, id: &str) {
    if let Ok(mut map) = state.uploads.lock() {
        map.remove(id);
    }
    let storage = state.storage.clone();
    let id = id.to_string();
    let _ = blocking(move || storage.remove_upload(&id)).await;
}

/// `Content-Range: START-END` (also `bytes START-END` and `bytes=START-END`).
pub(super) fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text
        .strip_prefix("bytes=")
        .or_else(|| text.strip_prefix("bytes "))
        .unwrap_or(text);
    let bad = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            format!("malformed Content-Range {text:?}"),
        )
    };
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let end = end.split('/').next().unwrap_or(end);
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

pub(super) fn check_range(
    headers: &HeaderMap,
    name: &str,
    id: &str,
    size: u64,
) -> Result<Option<u64>, ApiError> {
    let Some((start, end)) = content_range(headers).map_err(|e| {
        e.header(header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
            .header(header::RANGE, format!("0-{}", size.saturating_sub(1)))
    })?
    else {
        return Ok(None);
    };
    let length = end - start + 1;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let problem = if start != size {
        Some(format!(
            "chunk starts at {start}, but the upload has {size} bytes; the next chunk must start at {size}"
        ))
    } else if declared.is_some_and(|l| l != length) {
        Some(format!(
            "Content-Range {start}-{end} is {length} bytes, but Content-Length says {}",
            declared.unwrap_or_default()
        ))
    } else {
        None
    };
    match problem {
        Some(message) => Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            message,
        )
        .header(header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
        .header(header::RANGE, format!("0-{}", size.saturating_sub(1)))),
        None => Ok(Some(length)),
    }
}

/// Appends a request body to a session, hashing as it goes. A body that breaks
/// off (or is longer or shorter than `expected`) leaves the session as it was.
pub(super) async fn append(
    state: &AppState,
    id: &str,
    upload: &mut Upload,
    body: Body,
    expected: Option<u64>,
) -> Result<u64, ApiError> {
    let Some(fs) = state.storage.fs() else {
        return append_to_bucket(state, id, upload, body, expected).await;
    };
    let path = fs.upload_data(id);
    let file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .await
        .map_err(|_| ApiError::upload_unknown(id))?;
    let mut writer = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let saved = upload.hasher.clone();
    let mut written: u64 = 0;
    let mut stream = body.into_data_stream();
    let mut failure: Option<ApiError> = None;
    while let Some(chunk) = stream.next().await {
        let bytes = match chunk {
            Ok(b) => b,
            Err(e) => {
                failure = Some(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BlobUploadInvalid,
                    format!("request body broke off after {written} bytes: {e}"),
                ));
                break;
            }
        };
        if let Some(h) = upload.hasher.as_mut() {
            h.update(&bytes);
        }
        if let Err(e) = writer.write_all(&bytes).await {
            failure = Some(ApiError::internal(format!("{}: {e}", path.display())));
            break;
        }
        written += bytes.len() as u64;
    }
    if failure.is_none()
        && let Err(e) = writer.flush().await
    {
        failure = Some(ApiError::internal(format!("{}: {e}", path.display())));
    }
    if failure.is_none()
        && let Some(expected) = expected
        && expected != written
    {
        failure = Some(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::SizeInvalid,
            format!("chunk declared {expected} bytes, body had {written}"),
        ));
    }
    if let Some(failure) = failure {
        drop(writer);
        upload.hasher = saved;
        let size = upload.size;
        let _ = truncate(&path, size).await;
        return Err(failure);
    }
    upload.size += written;
    Ok(written)
}

/// [`append`] for a bucket: the body becomes one chunk object, hashed as it
/// streams, and nothing of it is kept unless it arrived whole.
async fn append_to_bucket(
    state: &AppState,
    id: &str,
    upload: &mut Upload,
    body: Body,
    expected: Option<u64>,
) -> Result<u64, ApiError> {
    let Some(s3) = state.storage.s3() else {
        return Err(ApiError::internal("no storage backend for uploads"));
    };
    let saved = upload.hasher.clone();
    let offset = upload.size;
    let hasher = &mut upload.hasher;
    let stream = body.into_data_stream().inspect(|chunk| {
        if let (Ok(bytes), Some(h)) = (chunk, hasher.as_mut()) {
            h.update(bytes);
        }
    });
    let outcome = s3
        .append_chunk(id, offset, Box::pin(stream), expected)
        .await;
    let failure = match outcome {
        Ok(crate::storage::s3::AppendOutcome::Done(written)) => {
            upload.size += written;
            return Ok(written);
        }
        Ok(crate::storage::s3::AppendOutcome::WrongLength(written)) => ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::SizeInvalid,
            format!(
                "chunk declared {} bytes, body had {written}",
                expected.unwrap_or_default()
            ),
        ),
        Ok(crate::storage::s3::AppendOutcome::TooManyChunks(held)) => ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BlobUploadInvalid,
            format!(
                "upload {id} already has {held} chunks, the limit of object storage (MAX_CHUNKS = {}); send larger chunks",
                crate::storage::s3::MAX_CHUNKS
            ),
        ),
        Ok(crate::storage::s3::AppendOutcome::BodyFailed(e, written)) => ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BlobUploadInvalid,
            format!("request body broke off after {written} bytes: {e}"),
        ),
        Err(e) => ApiError::internal(e),
    };
    upload.hasher = saved;
    Err(failure)
}

pub(super) async fn truncate(path: &Path, size: u64) -> std::io::Result<()> {
    let f = tokio::fs::OpenOptions::new().write(true).open(path).await?;
    f.set_len(size).await
}

/// Verifies a session's bytes against `digest` and commits them as the blob.
pub(super) async fn finish(
    state: &AppState,
    name: &str,
    id: &str,
    upload: &mut Upload,
    digest: &Digest,
) -> ApiResult {
    let actual = match (&upload.hasher, digest.algorithm()) {
        (Some(h), Algorithm::Sha256) => h.clone().finish(),
        _ => {
            let storage = state.storage.clone();
            let (key, algorithm) = (id.to_string(), digest.algorithm());
            blocking(move || storage.hash_upload(&key, algorithm)).await?
        }
    };
    if &actual != digest {
        return Err(ApiError::digest_invalid(format!(
            "uploaded content hashes to {actual}, not {digest}"
        ))
        .detail(json!({ "digest": digest.as_str(), "actual": actual.as_str() })));
    }
    let storage = state.storage.clone();
    let (key, d, n) = (id.to_string(), digest.clone(), name.to_string());
    blocking(move || storage.commit_upload(&key, &d, &n)).await?;
    if let Ok(mut map) = state.uploads.lock() {
        map.remove(id);
    }
    Ok(blob_created(name, digest))
}

pub(super) async fn upload_status(state: &AppState, name: String, id: String) -> ApiResult {
    let upload = session(state, &name, &id).await?;
    let size = upload.lock().await.size;
    Ok(upload_accepted(StatusCode::NO_CONTENT, &name, &id, size))
}

pub(super) async fn patch_upload(
    state: &AppState,
    name: String,
    id: String,
    request: Request,
) -> ApiResult {
    let upload = session(state, &name, &id).await?;
    let mut u = upload.lock().await;
    let expected = check_range(request.headers(), &name, &id, u.size)?;
    append(state, &id, &mut u, request.into_body(), expected).await?;
    Ok(upload_accepted(StatusCode::ACCEPTED, &name, &id, u.size))
}

pub(super) async fn put_upload(
    state: &AppState,
    name: String,
    id: String,
    request: Request,
) -> ApiResult {
    let query = query_map(request.uri());
    let upload = session(state, &name, &id).await?;
    let Some(digest) = query.get("digest") else {
        return Err(ApiError::digest_invalid(
            "the final PUT of an upload needs ?digest=",
        ));
    };
    let digest = parse_digest(digest)?;
    let mut u = upload.lock().await;
    let expected = check_range(request.headers(), &name, &id, u.size)?;
    append(state, &id, &mut u, request.into_body(), expected).await?;
    let result = finish(state, &name, &id, &mut u, &digest).await;
    if result.is_err() {
        discard(state, &id).await;
    }
    result
}

pub(super) async fn cancel_upload(state: &AppState, name: String, id: String) -> ApiResult {
    let upload = session(state, &name, &id).await?;
    let _held = upload.lock().await;
    discard(state, &id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
