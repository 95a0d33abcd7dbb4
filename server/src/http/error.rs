//! Errors as HTTP responses: JSON `{"error", "detail"}` plus the status and
//! extras of `docs/protocol.md`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::sync::ApiError;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "error": self.code,
            "detail": self.detail,
        });
        if let (Some(n), Some(obj)) = (self.last_seq, body.as_object_mut()) {
            obj.insert("last_seq".into(), n.into());
        }
        if let (Some(n), Some(obj)) = (self.last_counter, body.as_object_mut()) {
            obj.insert("last_counter".into(), n.into());
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == 401 {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(omega_tv_sync::transport::auth::SCHEME),
            );
        }
        resp
    }
}

/// `503 overloaded` with `Retry-After`.
pub fn overloaded(retry_after_s: u32) -> ApiError {
    let mut e = ApiError::new(503, "overloaded", "the write queue is full; retry later");
    e.retry_after_s = Some(retry_after_s);
    e
}

/// `429 rate_limited` with `Retry-After`.
pub fn rate_limited(retry_after_s: u32) -> ApiError {
    let mut e = ApiError::new(429, "rate_limited", "syncing faster than allowed");
    e.retry_after_s = Some(retry_after_s);
    e
}

/// `500 internal` (storage failure; nothing was stored).
pub fn internal(detail: impl Into<String>) -> ApiError {
    ApiError::new(500, "internal", detail)
}
