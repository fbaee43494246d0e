//! The spec's error bodies: a status, a distribution-spec code, a message
//! and optional detail.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oci_blocks_core::Digest;
use oci_spec::distribution::ErrorCode;
use serde_json::{Value, json};

/// An error response with a distribution-spec code.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    code: String,
    message: String,
    detail: Option<Value>,
    headers: Vec<(header::HeaderName, String)>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub(super) fn detail(mut self, detail: Value) -> ApiError {
        self.detail = Some(detail);
        self
    }

    pub(super) fn header(mut self, name: header::HeaderName, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    pub(super) fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %message, "internal error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "UNKNOWN".into(),
            message: message.to_string(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub(super) fn blob_unknown(digest: &Digest) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            format!("blob {digest} is not in this repository"),
        )
        .detail(json!({ "digest": digest.as_str() }))
    }

    pub(super) fn upload_unknown(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadUnknown,
            format!("no upload session {id:?} in this repository"),
        )
    }

    pub(super) fn digest_invalid(message: impl Into<String>) -> ApiError {
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
        match e {
            crate::Error::Collecting { digest } => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "UNAVAILABLE".into(),
                message: format!(
                    "{digest} is being removed by a garbage collection; retry the request"
                ),
                detail: Some(json!({ "digest": digest })),
                headers: vec![(header::RETRY_AFTER, "1".into())],
            },
            e => ApiError::internal(e),
        }
    }
}

/// What a handler answers: a response, or an error response.
pub type ApiResult = Result<Response, ApiError>;
