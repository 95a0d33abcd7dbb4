//! The public read endpoints of the sync listener: the cacheable global
//! feed (`GET /api/v1/global`), `GET /api/v1/sync/version` and
//! `GET /api/v1/health`. Anyone may call them; each first waits its turn of
//! the shared pace ([`super::pacer`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use omega_tv_sync::wire::{Caps, MAX_DOWNLOAD_FRAME};
use serde::Deserialize;

use super::{octet, pacer, INLINE_MAX_VISITED};
use crate::download::{self, PageRequest};
use crate::error::{self, ApiError};
use crate::store::{self, Meta};
use crate::AppState;

type St = State<Arc<AppState>>;

/// Waits for a public read's turn ([`pacer`]); `Err`: the `429` to send.
async fn public_turn(st: &AppState) -> Result<(), Response> {
    match st.public_reads.turn(Instant::now()) {
        pacer::Turn::After(w) if w.is_zero() => Ok(()),
        pacer::Turn::After(w) => {
            st.metrics
                .public_reads_delayed
                .fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(w).await;
            Ok(())
        }
        pacer::Turn::Refused(r) => {
            st.metrics
                .public_reads_refused
                .fetch_add(1, Ordering::Relaxed);
            let secs = r.as_secs_f64().ceil().max(1.0) as u32;
            let mut e = ApiError::new(429, "rate_limited", "public reads over the server's pace");
            e.retry_after_s = Some(secs);
            Err(e.into_response())
        }
    }
}

pub(super) async fn version(State(st): St) -> Response {
    if let Err(r) = public_turn(&st).await {
        return r;
    }
    match store::read_blocking(st.store.clone(), |t| t.meta(Meta::GlobalVersion)).await {
        Ok(v) => Json(serde_json::json!({ "version": v })).into_response(),
        Err(e) => {
            error::storage_unavailable(e, st.config.overload_retry_after_s.max(1)).into_response()
        }
    }
}

pub(super) async fn health(State(st): St) -> Response {
    if let Err(r) = public_turn(&st).await {
        return r;
    }
    check_health(&st).await
}

/// The health answer: `200` with the authentication mode when the store
/// reads, `503` (no error text) when it does not. The admin listener
/// serves it unpaced for probes ([`super::admin`]).
pub(crate) async fn check_health(st: &Arc<AppState>) -> Response {
    match store::read_blocking(st.store.clone(), |t| t.meta(Meta::GlobalVersion)).await {
        Ok(_) => Json(serde_json::json!({
            "status": "ok",
            "auth": if st.config.auth.required { "required" } else { "DISABLED" },
        }))
        .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, {
            tracing::error!(cause = %e, "health: storage failure");
            Json(serde_json::json!({ "status": "error", "detail": "storage unavailable" }))
        })
            .into_response(),
    }
}

/// Query of `GET /api/v1/global`.
#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    /// Changes after this version (default 0).
    pub since: Option<u64>,
    /// Most records per page, globals and trends each (default 256).
    pub limit: Option<u16>,
    /// Frame size limit (default and most: `MAX_DOWNLOAD_FRAME`).
    pub max_bytes: Option<u32>,
    /// The horizon a snapshot in progress began at (from `X-Snapshot-Horizon`).
    pub horizon: Option<u64>,
}

pub(super) async fn feed(
    State(st): St,
    q: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    use Ordering::Relaxed;
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => {
            st.metrics.error("invalid_query");
            return ApiError::new(400, "invalid_query", e.body_text()).into_response();
        }
    };
    if let Err(r) = public_turn(&st).await {
        return r;
    }
    let since = q.since.unwrap_or(0);
    let limit = q.limit.unwrap_or(256);
    let max_bytes = q.max_bytes.unwrap_or(MAX_DOWNLOAD_FRAME as u32);
    let Some(book) = st.config.codebooks.primary() else {
        return ApiError::new(503, "unknown_codebook", "no codebook configured").into_response();
    };
    let codebook = book.id();
    let caps = Caps {
        max_globals: limit,
        max_trends: limit,
        max_bytes,
    };
    let cache = format!("public, max-age={}", st.config.feed_max_age_s);
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let next = *st.config.sync_interval.start();
    // One read transaction: the ETag from the current version and horizon,
    // then (unless it matches) the page with a visit budget: anyone may ask
    // for any `since`, uncached. As for a sync, a page that needs at most
    // INLINE_MAX_VISITED changelog entries is built right here (a hop to the
    // blocking pool costs more than it); one the small budget cut is built
    // again on the blocking pool with the feed's budget.
    let books = st.config.codebooks.clone();
    let snap = q.horizon;
    let read = move |t: &dyn store::ReadTxn, max_visited: usize| {
        let (current, horizon) = (t.meta(Meta::GlobalVersion)?, t.meta(Meta::Horizon)?);
        // The page is a pure function of these; the changelog only grows past `current`.
        let etag = format!(
            "\"{current}-{horizon}-{since}-{limit}-{}-{}-{codebook:08x}\"",
            download::frame_limit(&caps),
            snap.map_or(String::from("n"), |h| h.to_string()),
        );
        let matches = if_none_match
            .as_deref()
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        if matches {
            return Ok((etag, None));
        }
        let page = download::build(
            t,
            &PageRequest {
                seq: 0,
                since,
                caps,
                codebook,
                codebooks: Some(&books),
                answers: &[],
                next_sync_s: next,
                snapshot_horizon: snap,
                max_visited,
                until: None,
            },
        )?;
        Ok((etag, Some(page)))
    };
    // `None`: build it on the blocking pool.
    let inline = match st.store.local_reads() {
        true => match store::read(&*st.store, |t| read(t, INLINE_MAX_VISITED)) {
            Ok((_, Some(page))) if page.cut => None,
            other => Some(other),
        },
        false => None,
    };
    let built = match inline {
        Some(done) => done,
        None => {
            store::read_blocking(st.store.clone(), move |t| {
                read(t, download::FEED_MAX_VISITED)
            })
            .await
        }
    };
    let (etag, page) = match built {
        Ok(x) => x,
        Err(e) => {
            return error::storage_unavailable(e, st.config.overload_retry_after_s.max(1))
                .into_response()
        }
    };
    let Some(page) = page else {
        st.metrics.feed_not_modified.fetch_add(1, Relaxed);
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        caching(r.headers_mut(), &etag, &cache);
        return r;
    };
    st.metrics.feed_pages.fetch_add(1, Relaxed);
    let m = &st.metrics;
    m.feed_entries_visited
        .fetch_add(page.visited as u64, Relaxed);
    m.feed_visited_max.fetch_max(page.visited as u64, Relaxed);
    if page.cut {
        m.feed_visit_cut.fetch_add(1, Relaxed);
    }
    st.metrics
        .bytes_out
        .fetch_add(page.frame.len() as u64, Relaxed);
    let mut r = octet(page.frame);
    let h = r.headers_mut();
    caching(h, &etag, &cache);
    if let Some(hz) = page.snapshot_horizon {
        if let Ok(v) = HeaderValue::from_str(&hz.to_string()) {
            h.insert("x-snapshot-horizon", v);
        }
    }
    r
}

/// The feed's `ETag` and `Cache-Control`, on a page and on a `304` alike.
fn caching(h: &mut HeaderMap, etag: &str, cache: &str) {
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(cache) {
        h.insert(header::CACHE_CONTROL, v);
    }
}
