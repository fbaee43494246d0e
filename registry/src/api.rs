//! The distribution-spec v1.1 HTTP API on axum: routing, request handling and the
//! spec's error bodies.
//!
//! Repository names contain slashes, so every `/v2/<name>/...` request goes through
//! one handler that splits the path from the right (the last segment is a digest,
//! tag, or upload id; the one before says which endpoint). Request and response
//! bodies are streamed: an upload is hashed and written as it arrives, and a blob is
//! served from its file (with `Range` support) without being read into memory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use oci_blocks_core::Digest;
use oci_blocks_core::digest::{Algorithm, Hasher};
use oci_blocks_core::names::{MAX_MANIFEST_SIZE, OCI_INDEX};
use oci_spec::distribution::ErrorCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

use crate::auth::{Auth, Credentials, REALM};
use crate::manifest;
use crate::names::{valid_name, valid_tag};
use crate::storage::{ManifestCommit, Storage};

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    storage: Arc<Storage>,
    auth: Option<Auth>,
    uploads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Upload>>>>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over a storage root, with optional authentication.
    pub fn new(storage: Arc<Storage>, auth: Option<Auth>) -> Arc<AppState> {
        Arc::new(AppState {
            storage,
            auth,
            uploads: Mutex::new(HashMap::new()),
        })
    }
}

/// An open upload session as this process knows it.
struct Upload {
    /// Bytes received so far.
    size: u64,
    /// SHA-256 of those bytes, when this process saw all of them.
    hasher: Option<Hasher>,
}

/// An error response with a distribution-spec code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
    detail: Option<Value>,
    headers: Vec<(header::HeaderName, String)>,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    fn detail(mut self, detail: Value) -> ApiError {
        self.detail = Some(detail);
        self
    }

    fn header(mut self, name: header::HeaderName, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %message, "internal error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "UNKNOWN".into(),
            message: message.to_string(),
            detail: None,
            headers: Vec::new(),
        }
    }

    fn blob_unknown(digest: &Digest) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            format!("blob {digest} is not in this repository"),
        )
        .detail(json!({ "digest": digest.as_str() }))
    }

    fn upload_unknown(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadUnknown,
            format!("no upload session {id:?} in this repository"),
        )
    }

    fn digest_invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(detail) = self.detail {
            error["detail"] = detail;
        }
        let body = json!({ "errors": [error] }).to_string();
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                response.headers_mut().append(name, v);
            }
        }
        response
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> ApiError {
        ApiError::internal(e)
    }
}

type ApiResult = Result<Response, ApiError>;

/// Runs storage work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

/// The API's router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2/", get(base))
        .route("/v2", get(base))
        .route("/v2/_catalog", get(catalog))
        .fallback(dispatch)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(auth) = &state.auth else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let base = path == "/v2/" || path == "/v2";
    let write = !matches!(*request.method(), Method::GET | Method::HEAD);
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let credentials = match header {
        // bcrypt is slow by design; keep it off the async threads.
        Some(h) => {
            let state = state.clone();
            tokio::task::spawn_blocking(move || state.auth.as_ref().map(|a| a.check(Some(&h))))
                .await
                .ok()
                .flatten()
                .unwrap_or(Credentials::Invalid)
        }
        None => Credentials::Anonymous,
    };
    let allowed = match credentials {
        Credentials::Valid(_) => true,
        Credentials::Invalid => false,
        // The base endpoint answers 401 so that clients learn the scheme and send
        // credentials with their writes.
        Credentials::Anonymous => !(base || write || auth.auth_pull),
    };
    if allowed {
        next.run(request).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "authentication required",
        )
        .header(header::WWW_AUTHENTICATE, format!("Basic realm=\"{REALM}\""))
        .into_response()
    }
}

async fn base() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::HeaderName::from_static("docker-distribution-api-version"),
                "registry/2.0",
            ),
        ],
        "{}",
    )
        .into_response()
}

fn query_map(uri: &axum::http::Uri) -> HashMap<String, String> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// `n` and `last` of a paginated list: the page, and the `Link` to the next one.
fn paginate(
    items: Vec<String>,
    query: &HashMap<String, String>,
    path: &str,
) -> Result<(Vec<String>, Option<String>), ApiError> {
    let n = match query.get("n") {
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("n={n:?} is not a number"),
            )
        })?),
        None => None,
    };
    let after: Vec<String> = match query.get("last") {
        Some(last) => items.into_iter().filter(|t| t > last).collect(),
        None => items,
    };
    match n {
        Some(n) if after.len() > n => {
            let page: Vec<String> = after.into_iter().take(n).collect();
            let link = page
                .last()
                .map(|last| format!("<{path}?n={n}&last={last}>; rel=\"next\""));
            Ok((page, link))
        }
        _ => Ok((after, None)),
    }
}

async fn catalog(State(state): State<Arc<AppState>>, request: Request) -> ApiResult {
    let query = query_map(request.uri());
    let storage = state.storage.clone();
    let repositories = blocking(move || storage.repositories()).await?;
    let (page, link) = paginate(repositories, &query, "/v2/_catalog")?;
    let mut response = axum::Json(json!({ "repositories": page })).into_response();
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// Which endpoint a `/v2/<name>/...` path is.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    UploadStart(&'a str),
    Upload(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

fn route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/v2/")?;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    for suffix in ["/blobs/uploads/", "/blobs/uploads"] {
        if let Some(name) = rest.strip_suffix(suffix) {
            return Some(Route::UploadStart(name));
        }
    }
    let (head, last) = rest.rsplit_once('/')?;
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return Some(Route::Upload(name, last));
    }
    if let Some(name) = head.strip_suffix("/blobs") {
        return Some(Route::Blob(name, last));
    }
    if let Some(name) = head.strip_suffix("/manifests") {
        return Some(Route::Manifest(name, last));
    }
    if let Some(name) = head.strip_suffix("/referrers") {
        return Some(Route::Referrers(name, last));
    }
    None
}

fn route_name<'a>(route: &Route<'a>) -> &'a str {
    match route {
        Route::Tags(n)
        | Route::Manifest(n, _)
        | Route::Blob(n, _)
        | Route::UploadStart(n)
        | Route::Upload(n, _)
        | Route::Referrers(n, _) => n,
    }
}

async fn dispatch(State(state): State<Arc<AppState>>, request: Request) -> ApiResult {
    let path = request.uri().path().to_string();
    let Some(route) = route(&path) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            format!("no endpoint {path}"),
        ));
    };
    let name = route_name(&route).to_string();
    if !valid_name(&name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            format!("invalid repository name {name:?}"),
        )
        .detail(json!({ "name": name })));
    }
    let method = request.method().clone();
    let unsupported = || {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!("{method} is not supported on {path}"),
        )
    };
    match (route, &method) {
        (Route::Tags(_), &Method::GET) => tags(&state, name, request).await,
        (Route::Manifest(_, r), &Method::GET | &Method::HEAD) => {
            get_manifest(&state, name, r.to_string(), &method).await
        }
        (Route::Manifest(_, r), &Method::PUT) => {
            put_manifest(&state, name, r.to_string(), request).await
        }
        (Route::Manifest(_, r), &Method::DELETE) => {
            delete_manifest(&state, name, r.to_string()).await
        }
        (Route::Blob(_, d), &Method::GET | &Method::HEAD) => {
            get_blob(&state, name, d.to_string(), request).await
        }
        (Route::Blob(_, d), &Method::DELETE) => delete_blob(&state, name, d.to_string()).await,
        (Route::UploadStart(_), &Method::POST) => start_upload(&state, name, request).await,
        (Route::Upload(_, id), &Method::GET) => upload_status(&state, name, id.to_string()).await,
        (Route::Upload(_, id), &Method::PATCH) => {
            patch_upload(&state, name, id.to_string(), request).await
        }
        (Route::Upload(_, id), &Method::PUT) => {
            put_upload(&state, name, id.to_string(), request).await
        }
        (Route::Upload(_, id), &Method::DELETE) => {
            cancel_upload(&state, name, id.to_string()).await
        }
        (Route::Referrers(_, d), &Method::GET) => {
            referrers(&state, name, d.to_string(), request).await
        }
        _ => Err(unsupported()),
    }
}

fn parse_digest(text: &str) -> Result<Digest, ApiError> {
    Digest::parse(text)
        .map_err(|e| ApiError::digest_invalid(e.to_string()).detail(json!({ "digest": text })))
}

// ---- blobs -----------------------------------------------------------------

async fn get_blob(state: &AppState, name: String, digest: String, request: Request) -> ApiResult {
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

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn delete_blob(state: &AppState, name: String, digest: String) -> ApiResult {
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

fn blob_created(name: &str, digest: &Digest) -> Response {
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

fn upload_accepted(status: StatusCode, name: &str, id: &str, size: u64) -> Response {
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

async fn start_upload(state: &AppState, name: String, request: Request) -> ApiResult {
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
                Some(from) => storage.linked_blob_size(from, &d).is_some(),
                // Without `from`, any stored blob may be linked (one tenant).
                None => storage.blob_size(&d).is_some(),
            };
            if there {
                storage.link_blob(&n, &d)?;
                storage.touch_blob(&d);
            }
            Ok(there)
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
async fn session(
    state: &AppState,
    name: &str,
    id: &str,
) -> Result<Arc<tokio::sync::Mutex<Upload>>, ApiError> {
    let storage = state.storage.clone();
    let key = id.to_string();
    let found = blocking(move || Ok(storage.upload(&key))).await?;
    match found {
        Some((repo, size)) if repo == name => {
            let mut map = state
                .uploads
                .lock()
                .map_err(|_| ApiError::internal("upload table poisoned"))?;
            Ok(map
                .entry(id.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Upload { size, hasher: None })))
                .clone())
        }
        _ => Err(ApiError::upload_unknown(id)),
    }
}

async fn discard(state: &AppState, id: &str) {
    if let Ok(mut map) = state.uploads.lock() {
        map.remove(id);
    }
    let storage = state.storage.clone();
    let id = id.to_string();
    let _ = blocking(move || storage.remove_upload(&id)).await;
}

/// `Content-Range: START-END` (also `bytes START-END` and `bytes=START-END`).
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, ApiError> {
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

fn check_range(
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
async fn append(
    state: &AppState,
    id: &str,
    upload: &mut Upload,
    body: Body,
    expected: Option<u64>,
) -> Result<u64, ApiError> {
    let path = state.storage.upload_data(id);
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

async fn truncate(path: &Path, size: u64) -> std::io::Result<()> {
    let f = tokio::fs::OpenOptions::new().write(true).open(path).await?;
    f.set_len(size).await
}

/// Verifies a session's bytes against `digest` and commits them as the blob.
async fn finish(
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

async fn upload_status(state: &AppState, name: String, id: String) -> ApiResult {
    let upload = session(state, &name, &id).await?;
    let size = upload.lock().await.size;
    Ok(upload_accepted(StatusCode::NO_CONTENT, &name, &id, size))
}

async fn patch_upload(state: &AppState, name: String, id: String, request: Request) -> ApiResult {
    let upload = session(state, &name, &id).await?;
    let mut u = upload.lock().await;
    let expected = check_range(request.headers(), &name, &id, u.size)?;
    append(state, &id, &mut u, request.into_body(), expected).await?;
    Ok(upload_accepted(StatusCode::ACCEPTED, &name, &id, u.size))
}

async fn put_upload(state: &AppState, name: String, id: String, request: Request) -> ApiResult {
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

async fn cancel_upload(state: &AppState, name: String, id: String) -> ApiResult {
    let upload = session(state, &name, &id).await?;
    let _held = upload.lock().await;
    discard(state, &id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- manifests ---------------------------------------------------------------

/// A manifest reference: a digest, or a tag resolved to one.
async fn resolve(state: &AppState, name: &str, reference: &str) -> Result<Digest, ApiError> {
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
    blocking(move || Ok(storage.resolve_tag(&n, &t)))
        .await?
        .ok_or_else(|| manifest_unknown(name, reference))
}

fn manifest_unknown(name: &str, reference: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::ManifestUnknown,
        format!("manifest {reference} is not in {name}"),
    )
    .detail(json!({ "reference": reference }))
}

async fn get_manifest(
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

async fn put_manifest(
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
        // Held from the existence checks to the commit: a collection either sees
        // this manifest or runs before the checks.
        let _lock = storage.lock_shared()?;
        for r in &checked.blobs {
            match storage.blob_size(&r.digest) {
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
            if storage.manifest_media_type(&n, child).is_none() {
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

async fn delete_manifest(state: &AppState, name: String, reference: String) -> ApiResult {
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

// ---- tags and referrers -------------------------------------------------------

async fn tags(state: &AppState, name: String, request: Request) -> ApiResult {
    let query = query_map(request.uri());
    let storage = state.storage.clone();
    let n = name.clone();
    let found = blocking(move || {
        if storage.repository_exists(&n) {
            storage.tags(&n).map(Some)
        } else {
            Ok(None)
        }
    })
    .await?;
    let Some(all) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
            format!("repository {name} is not known"),
        )
        .detail(json!({ "name": name })));
    };
    let (page, link) = paginate(all, &query, &format!("/v2/{name}/tags/list"))?;
    let mut response = axum::Json(json!({ "name": name, "tags": page })).into_response();
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

async fn referrers(state: &AppState, name: String, digest: String, request: Request) -> ApiResult {
    let subject = parse_digest(&digest)?;
    let query = query_map(request.uri());
    let filter = query.get("artifactType").cloned();
    let storage = state.storage.clone();
    let f = filter.clone();
    let manifests = blocking(move || {
        let mut out = Vec::new();
        for d in storage.referrers(&name, &subject)? {
            let Some((bytes, media_type)) = storage.read_manifest(&name, &d)? else {
                continue;
            };
            let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            let artifact_type = value
                .get("artifactType")
                .and_then(Value::as_str)
                .or_else(|| value.get("config")?.get("mediaType")?.as_str())
                .map(str::to_string);
            if f.as_ref()
                .is_some_and(|f| Some(f) != artifact_type.as_ref())
            {
                continue;
            }
            let mut descriptor = json!({
                "mediaType": media_type,
                "digest": d.as_str(),
                "size": bytes.len(),
            });
            if let Some(t) = artifact_type {
                descriptor["artifactType"] = Value::String(t);
            }
            if let Some(a) = value.get("annotations") {
                descriptor["annotations"] = a.clone();
            }
            out.push(descriptor);
        }
        Ok(out)
    })
    .await?;
    let body = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let mut response = ([(header::CONTENT_TYPE, OCI_INDEX)], body.to_string()).into_response();
    if filter.is_some() {
        response.headers_mut().insert(
            header::HeaderName::from_static("oci-filters-applied"),
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_from_the_right() {
        assert_eq!(route("/v2/a/b/tags/list"), Some(Route::Tags("a/b")));
        assert_eq!(
            route("/v2/a/manifests/latest"),
            Some(Route::Manifest("a", "latest"))
        );
        // A repository may itself be called "blobs" or "manifests".
        assert_eq!(
            route("/v2/x/blobs/blobs/sha256:00"),
            Some(Route::Blob("x/blobs", "sha256:00"))
        );
        assert_eq!(route("/v2/a/blobs/uploads/"), Some(Route::UploadStart("a")));
        assert_eq!(
            route("/v2/a/blobs/uploads/u1"),
            Some(Route::Upload("a", "u1"))
        );
        assert_eq!(
            route("/v2/a/referrers/sha256:00"),
            Some(Route::Referrers("a", "sha256:00"))
        );
        assert_eq!(route("/v2/a/other/x"), None);
    }

    #[test]
    fn pagination() {
        let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let q = |n: &str, last: Option<&str>| {
            let mut m = HashMap::new();
            m.insert("n".to_string(), n.to_string());
            if let Some(l) = last {
                m.insert("last".to_string(), l.to_string());
            }
            m
        };
        let (page, link) = paginate(items.clone(), &q("2", None), "/p").expect("page");
        assert_eq!(page, ["a", "b"]);
        assert_eq!(link.as_deref(), Some("</p?n=2&last=b>; rel=\"next\""));
        let (page, link) = paginate(items.clone(), &q("2", Some("b")), "/p").expect("page");
        assert_eq!(page, ["c", "d"]);
        assert_eq!(link, None);
        assert!(paginate(items, &q("x", None), "/p").is_err());
    }

    #[test]
    fn content_ranges() {
        let mut h = HeaderMap::new();
        assert_eq!(content_range(&h).ok().flatten(), None);
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("0-99"));
        assert_eq!(content_range(&h).ok().flatten(), Some((0, 99)));
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 10-19/*"),
        );
        assert_eq!(content_range(&h).ok().flatten(), Some((10, 19)));
        for bad in ["9-1", "x-2", "12"] {
            h.insert(header::CONTENT_RANGE, HeaderValue::from_static(bad));
            let err = content_range(&h).expect_err(bad);
            assert_eq!(err.status, StatusCode::RANGE_NOT_SATISFIABLE);
        }
    }

    #[test]
    fn query_decoding() {
        let uri: axum::http::Uri = "/x?mount=sha256%3Aab&from=a%2Fb".parse().expect("uri");
        let q = query_map(&uri);
        assert_eq!(q["mount"], "sha256:ab");
        assert_eq!(q["from"], "a/b");
    }
}
