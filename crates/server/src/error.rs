//! One error type for the API, mapped to HTTP status codes in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secondkey_store::StoreError;

/// An API error: a status, a stable machine code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For a refusal by a limit (`429`): when trying again can succeed.
    /// Sent as `Retry-After`; an in-process adapter reads it here.
    pub retry_after: Option<std::time::Duration>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// A refusal by a per-principal limit: `429` with `code` (e.g.
    /// `too_many_pending`, `rate_limited`) and when to retry.
    pub fn limited(
        code: &'static str,
        message: impl Into<String>,
        retry_after: std::time::Duration,
    ) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }
    /// Whether a limit refused this (retrying later can succeed).
    pub fn is_limited(&self) -> bool {
        self.status == StatusCode::TOO_MANY_REQUESTS
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    /// A fault of the gateway itself (500 `internal`).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    /// The log or store could not record the decision: nothing is authorized.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "log_unavailable", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Job(inner) => match inner.downcast::<ApiError>() {
                Ok(api) => *api,
                Err(other) => ApiError::internal(other.to_string()),
            },
            StoreError::Entry(m) if m.contains("2^53") => ApiError::bad_request(
                "unsafe_number",
                format!("this cannot be recorded in the audit log: {m}"),
            ),
            StoreError::Entry(m) => ApiError::bad_request(
                "entry_too_large",
                format!("the action cannot be recorded in the audit log: {m}"),
            ),
            other => {
                tracing::error!(error = %other, "store failure; failing closed");
                ApiError::unavailable(format!(
                    "the audit log could not record this, so nothing was authorized: {other}"
                ))
            }
        }
    }
}

impl From<ApiError> for StoreError {
    fn from(e: ApiError) -> Self {
        StoreError::job(e)
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `self_review`.
    pub code: String,
    pub message: String,
}

impl From<ApiError> for ErrorDetail {
    fn from(e: ApiError) -> ErrorDetail {
        ErrorDetail {
            code: e.code.to_string(),
            message: e.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let retry_after = self.retry_after;
        let body = ErrorBody { error: self.into() };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(d) = retry_after {
            // Whole seconds, rounded up: never "retry now" for a wait left.
            let secs = d.as_millis().div_ceil(1000).max(1);
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            // How to authenticate (RFC 9110 §11.6.1, RFC 6750 §3).
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"secondkey\""),
            );
        }
        if matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::PAYLOAD_TOO_LARGE
        ) {
            // Refused before its body was (fully) read: if the body has not
            // arrived, the server cannot reuse the connection and closes it.
            // Saying so keeps a client from sending its next request on a
            // connection that is about to close (seen as an unexpected EOF).
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}
