//! Lists: the catalog, tags and referrers, with pagination.
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use oci_blocks_core::names::OCI_INDEX;
use oci_spec::distribution::ErrorCode;
use serde_json::{Value, json};

use super::*;
pub(super) fn query_map(uri: &axum::http::Uri) -> HashMap<String, String> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// `n` and `last` of a paginated list: the page, and the `Link` to the next one.
pub(super) fn paginate(
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

pub(super) async fn catalog(State(state): State<Arc<AppState>>, request: Request) -> ApiResult {
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

pub(super) async fn tags(state: &AppState, name: String, request: Request) -> ApiResult {
    let query = query_map(request.uri());
    let storage = state.storage.clone();
    let n = name.clone();
    let found = blocking(move || {
        if storage.repository_exists(&n)? {
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

pub(super) async fn referrers(
    state: &AppState,
    name: String,
    digest: String,
    request: Request,
) -> ApiResult {
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
