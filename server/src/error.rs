//! The server's one request error, [`ApiError`], and its HTTP response:
//! JSON `{"error", "detail"}` plus the status and extras of
//! `docs/protocol.md` ("Errors"). Every refusal, from the header checks to
//! the store, is built here and answered through [`IntoResponse`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use omega_tv_sync::Error;

/// A rejected request: status, machine-readable code and detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code (`docs/protocol.md`, "Errors").
    pub code: &'static str,
    /// Human-readable detail.
    pub detail: String,
    /// For `sequence_reused` / `stale_sequence`: the last applied sequence.
    pub last_seq: Option<u64>,
    /// For 429/503: seconds to wait.
    pub retry_after_s: Option<u32>,
    /// For `401 replayed_counter`: the last accepted request counter.
    pub last_counter: Option<u64>,
    /// For `401 unauthorized`: the specific reason (`unknown_device`,
    /// `revoked`, `bad_signature`, `key_replaced`), for logs and metrics
    /// only; never sent to the client.
    pub reason: Option<&'static str>,
}

impl ApiError {
    /// A new error without extras.
    pub fn new(status: u16, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            last_seq: None,
            retry_after_s: None,
            last_counter: None,
            reason: None,
        }
    }

    /// A 400 from a core decoding error.
    pub fn core(e: Error, what: &str) -> Self {
        let status = if e == Error::UnknownCodebook {
            422
        } else {
            400
        };
        ApiError::new(status, e.code(), format!("{what}: {}", e.code()))
    }
}

impl ApiError {
    /// The JSON body: `{"error", "detail"}` and the extras that apply.
    pub fn json(&self) -> Vec<u8> {
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
        body.to_string().into_bytes()
    }

    /// The HTTP response with `body` (from [`json`](Self::json)) as its
    /// content, the status and the headers that apply.
    pub fn response_with(&self, body: Vec<u8>) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.json();
        self.response_with(body)
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

/// `500 internal`: an unexpected failure; nothing was stored. `cause` is
/// logged, never sent (it may be storage error text).
pub fn internal(cause: impl std::fmt::Display) -> ApiError {
    tracing::error!(cause = %cause, "internal error");
    ApiError::new(500, "internal", "internal error; nothing was stored")
}

/// `503 storage_unavailable` with `Retry-After`: the store could not read
/// or commit; nothing of this request was stored, retry the same bytes.
/// `cause` is logged, never sent.
pub fn storage_unavailable(cause: impl std::fmt::Display, retry_after_s: u32) -> ApiError {
    tracing::error!(cause = %cause, "storage failure");
    let mut e = ApiError::new(
        503,
        "storage_unavailable",
        "the server cannot store this now; nothing was stored, retry later",
    );
    e.retry_after_s = Some(retry_after_s);
    e
}
