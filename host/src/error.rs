//! Errors the client sees, shaped like OpenAI's: `{"error": {"message", "type", "code"}}`.

use bytes::Bytes;
use http::StatusCode;

/// An error response. Messages say what was expected and what was found.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (seconds).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, kind, code, message: message.into(), retry_after_secs: None }
    }

    /// Every key of `upstream`'s pool is cooling down: a 429 saying when the first is back.
    pub fn credentials_cooling(upstream: &str, cooling: &crate::upstream::credentials::AllCooling) -> Self {
        let secs = cooling.retry_after.as_secs_f64().ceil() as u64;
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "credentials_cooling",
            format!(
                "upstream `{upstream}`: all {} of its credentials are cooling down after refusals; the first is available again in {secs} s",
                cooling.count
            ),
        );
        e.retry_after_secs = Some(secs.max(1));
        e
    }

    /// The response headers this error adds besides its content type.
    pub fn add_headers(&self, headers: &mut http::HeaderMap) {
        if let Some(secs) = self.retry_after_secs {
            headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
    }

    pub fn invalid_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", "invalid_api_key", message)
    }

    pub fn model_not_found(model: &str, known: &[&str]) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("the model `{model}` does not exist on this gateway; expected one of {known:?}"),
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", "unknown_url", format!("unknown path {path}"))
    }

    pub fn method_not_allowed(method: &http::Method, path: &str, allowed: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!("{method} is not allowed on {path}; expected {allowed}"),
        )
    }

    pub fn too_large(limit: usize, found: Option<u64>) -> Self {
        let found = found.map_or_else(|| "more".to_owned(), |n| n.to_string());
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("request body too large: expected at most {limit} bytes, found {found}"),
        )
    }

    pub fn headers_too_large(limit: usize, found: usize) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            "headers_too_large",
            format!("request headers too large: expected at most {limit} bytes, found {found}"),
        )
    }

    pub fn unsupported_media_type(found: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            format!("expected content-type application/json, found {found:?}"),
        )
    }

    pub fn timeout(what: &str) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!("timed out reading the {what}"),
        )
    }

    /// A plugin failed (fail-closed). What it said stays in the gateway log: a plugin's error
    /// or panic text can hold anything, so the client only learns where to look.
    pub fn plugin_failed(plugin: &str, hook: &str, code: u32, request_id: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "plugin_error",
            "plugin_failed",
            format!(
                "plugin `{plugin}` failed in {hook} (code {code}); the gateway log has the details under request id {request_id}"
            ),
        )
    }

    pub fn plugin_quarantined(plugin: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin_error",
            "plugin_quarantined",
            format!("plugin `{plugin}` is quarantined after repeated panics and the request cannot run without it"),
        )
    }

    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_error", "upstream_failed", message)
    }

    pub fn upstream_timeout(upstream: &str) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            "upstream_timeout",
            format!("upstream `{upstream}` timed out"),
        )
    }

    pub fn body(&self) -> Bytes {
        let body = serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "code": self.code }
        });
        Bytes::from(body.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}
