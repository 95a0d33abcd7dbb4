//! The admin listener's routes: `GET /metrics` (Prometheus text, no
//! credentials), `GET /api/v1/health` (the same answer as the sync
//! listener's, never paced: for probes) and, when an admin token is configured,
//! `GET /api/v1/devices/{id}/patterns` (raw device state) behind
//! `Authorization: Bearer <token>`. Nothing here is mounted on the sync
//! listener.

use std::io;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sha2::{Digest, Sha256};

use crate::error::{self, ApiError};
use crate::sync;
use crate::AppState;

/// Shortest admin token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// The bearer token of the admin routes. `Debug` does not print it; it is
/// compared in constant time (through its SHA-256).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token from its text: at least [`MIN_TOKEN_LEN`] printable ASCII
    /// bytes (no spaces).
    pub fn new(token: &str) -> io::Result<Self> {
        if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the admin token must be at least {MIN_TOKEN_LEN} printable ASCII \
                     characters without spaces"
                ),
            ));
        }
        Ok(AdminToken(Sha256::digest(token.as_bytes()).into()))
    }

    /// Reads the token (one line; surrounding white space ignored) from
    /// `path`, which group and others must not be able to access (like
    /// the master secret; `PermissionDenied` otherwise).
    pub fn load(path: &Path) -> io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        crate::files::check_secret(path)?;
        Self::new(text.trim())
    }

    /// True when `presented` is the token (constant time in its content).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let h: [u8; 32] = Sha256::digest(presented).into();
        h.iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The admin router: `/metrics` and the health check always, the device
/// read-back when `config.admin_token` is set (behind the bearer token).
pub fn router(state: Arc<AppState>) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/health", get(health));
    if state.config.admin_token.is_some() {
        let devices = Router::new()
            .route("/api/v1/devices/{id}/patterns", get(device_patterns))
            .route_layer(middleware::from_fn_with_state(state.clone(), bearer));
        r = r.merge(devices);
    }
    r.with_state(state)
}

/// The health check without the public reads' pace: a flood of public
/// reads cannot make a probe wait or fail, and so cannot get a healthy
/// node restarted.
async fn health(State(st): State<Arc<AppState>>) -> Response {
    super::public::check_health(&st).await
}

/// `401 unauthorized` (with `WWW-Authenticate: Bearer`) unless the request
/// carries `Authorization: Bearer <the admin token>`.
async fn bearer(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let ok = st.config.admin_token.as_ref().is_some_and(|t| {
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|p| t.matches(p))
    });
    if ok {
        return next.run(req).await;
    }
    st.metrics.error("admin_unauthorized");
    let mut r = ApiError::new(401, "unauthorized", "the request is not authorized").into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let mut r = Response::new(Body::from(st.metrics.render(st.gauges())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn device_patterns(
    State(st): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Err(e) = sync::check_device_id(Some(id.as_bytes())) {
        return e.into_response();
    }
    // On the blocking pool, like the feed's reads: a device's patterns are
    // up to `max_patterns_per_device` records read from the disk.
    let read =
        crate::store::read_blocking(st.store.clone(), move |t| crate::device_state_in(t, &id))
            .await;
    match read {
        Ok(s) => Json(s).into_response(),
        Err(e) => {
            error::storage_unavailable(e, st.config.overload_retry_after_s.max(1)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matches_only_itself_and_is_refused_short_or_world_readable() {
        let t = AdminToken::new("0123456789abcdef").unwrap();
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdeF"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "AdminToken(..)");
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("0123456789 abcdef").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("token");
            std::fs::write(&p, "0123456789abcdef\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(AdminToken::load(&p).unwrap(), t);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = AdminToken::load(&p).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        }
    }
}
