//! The gateway's one error type for answers given before a stream starts.
//!
//! Every error is a JSON body with a stable shape:
//!
//! ```json
//! {"status": 406, "error": "not_acceptable", "message": "…", …extra fields}
//! ```
//!
//! `error` is a stable, machine-readable code; `message` is for people.
//! Errors that happen after the first byte cannot change the status any more:
//! they become in-band `gateway.error` events instead (see [`crate::encode`]).

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backends::{BackendError, ErrorKind};
use serde_json::{Map, Value};

/// An error answered with a status and a JSON body. (Boxed: errors are
/// rare, and a small `Result` keeps the request path cheap.)
#[derive(Debug)]
pub struct ApiError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Map<String, Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with a status, a stable code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
            headers: Vec::new(),
        }))
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// Adds a field to the JSON body.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.extra.insert(key.into(), value.into());
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.push((name, value));
        self
    }

    /// The status the error is answered with.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// What the error says, for people.
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

impl From<BackendError> for ApiError {
    /// A backend's refusal to open, before any byte was sent: its kind
    /// decides the status (client errors 4xx, upstream 502/504, ours 500).
    fn from(error: BackendError) -> Self {
        let status = match error.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Finished => StatusCode::NO_CONTENT,
            ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unavailable | ErrorKind::Lagged => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.kind.as_str(), error.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = *self.0;
        // 204 tells EventSource to stop reconnecting; it has no body.
        let mut response = if error.status == StatusCode::NO_CONTENT {
            StatusCode::NO_CONTENT.into_response()
        } else {
            let mut body = Map::new();
            body.insert("status".into(), error.status.as_u16().into());
            body.insert("error".into(), error.code.into());
            body.insert("message".into(), error.message.into());
            body.extend(error.extra);
            (error.status, Json(Value::Object(body))).into_response()
        };
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in error.headers {
            headers.insert(name, value);
        }
        response
    }
}
