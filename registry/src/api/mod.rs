//! The distribution-spec v1.1 HTTP API on axum. This module routes requests
//! and authenticates them; the endpoints live by concern in [`blobs`],
//! [`uploads`], [`manifests`] and [`listing`], the spec's error bodies in
//! [`error`].
//!
//! Repository names contain slashes, so every `/v2/<name>/...` request goes through
//! one handler that splits the path from the right (the last segment is a digest,
//! tag, or upload id; the one before says which endpoint). Request and response
//! bodies are streamed: an upload is hashed and written as it arrives, and a blob is
//! served from its file (with `Range` support) without being read into memory.

mod blobs;
mod error;
mod listing;
mod manifests;
mod uploads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use oci_blocks_core::Digest;
use oci_blocks_core::digest::Hasher;
use oci_spec::distribution::ErrorCode;
use serde_json::json;

use crate::auth::{Auth, Credentials, REALM};
use crate::names::valid_name;
use crate::storage::Storage;

use self::blobs::*;
pub use self::error::{ApiError, ApiResult};
use self::listing::*;
use self::manifests::*;
use self::uploads::*;

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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use axum::http::{HeaderMap, HeaderValue, StatusCode, header};

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
