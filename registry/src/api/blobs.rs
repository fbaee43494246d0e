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
        let size = storage.linked_blob_size(&name, &d)?;
        // A HEAD is how a pusher learns it may skip an upload: keep the blob
        // young so that a collection does not take it before the manifest
        // comes, and call it absent if a collection is removing it now.
        if size.is_some() && head && !storage.use_blob(&d)? {
            return Ok(None);
        }
        Ok(size)
    })
    .await?;
    let Some(size) = found else {
        return Err(ApiError::blob_unknown(&digest));
    };
    let Some(fs) = state.storage.fs() else {
        let range = request
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let head = request.method() == Method::HEAD;
        return serve_from_bucket(state, &digest, size, range.as_deref(), head).await;
    };
    let path = fs.blob_path(&digest);
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

/// The byte range a `Range` header asks of a blob of `size` bytes: `None` for
/// the whole blob (no header, several ranges, or one this parser does not
/// read, which RFC 9110 lets a server ignore), `Err` when it cannot be
/// satisfied.
fn requested_range(header: Option<&str>, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let Ok(n) = last.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(());
        }
        size.saturating_sub(n)..size
    } else {
        let Ok(start) = first.parse::<u64>() else {
            return Ok(None);
        };
        let end = if last.is_empty() {
            size
        } else {
            match last.parse::<u64>() {
                Ok(l) if l >= start => l.saturating_add(1).min(size),
                _ => return Ok(None),
            }
        };
        if start >= size {
            return Err(());
        }
        start..end
    };
    Ok(Some(range))
}

/// A blob GET or HEAD from a bucket, streamed, with single ranges.
async fn serve_from_bucket(
    state: &AppState,
    digest: &Digest,
    size: u64,
    range: Option<&str>,
    head: bool,
) -> ApiResult {
    let Some(s3) = state.storage.s3() else {
        return Err(ApiError::internal("no storage backend for blobs"));
    };
    let range = match requested_range(range, size) {
        Ok(r) => r,
        Err(()) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response());
        }
    };
    let (status, length) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.end - r.start),
        None => (StatusCode::OK, size),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", header_value(digest.as_str()))
        .header(header::ETAG, header_value(&format!("\"{digest}\"")));
    if let Some(r) = &range {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", r.start, r.end.saturating_sub(1)),
        );
    }
    let body = if head || length == 0 {
        Body::empty()
    } else {
        match s3
            .get_blob(digest, range)
            .await
            .map_err(ApiError::internal)?
        {
            Some(got) => Body::from_stream(got.into_stream()),
            // Swept between the check and the read.
            None => return Err(ApiError::blob_unknown(digest)),
        }
    };
    builder.body(body).map_err(ApiError::internal)
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

#[cfg(test)]
mod tests {
    use super::requested_range;

    #[test]
    fn ranges_are_read_as_rfc_9110_says_and_odd_ones_fall_back_to_the_whole() {
        let r = |h: &str, size| requested_range(Some(h), size);
        assert_eq!(r("bytes=0-9", 100), Ok(Some(0..10)));
        assert_eq!(r("bytes=90-200", 100), Ok(Some(90..100)));
        assert_eq!(r("bytes=95-", 100), Ok(Some(95..100)));
        assert_eq!(r("bytes=-10", 100), Ok(Some(90..100)));
        assert_eq!(r("bytes=-1000", 100), Ok(Some(0..100)));
        assert_eq!(requested_range(None, 100), Ok(None));
        // Unsatisfiable: past the end, a zero suffix, any range of nothing.
        assert_eq!(r("bytes=100-", 100), Err(()));
        assert_eq!(r("bytes=-0", 100), Err(()));
        assert_eq!(r("bytes=0-0", 0), Err(()));
        // Not read: the whole blob, as a server may answer.
        for odd in [
            "bytes=9-3",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=x-1",
            "bytes=1",
        ] {
            assert_eq!(r(odd, 100), Ok(None), "{odd}");
        }
        assert_eq!(r("bytes=0-18446744073709551615", 100), Ok(Some(0..100)));
    }
}
