//! Routes of the sync listener: the sync endpoint (here), the cacheable
//! global feed, health and version ([`public`], paced by [`pacer`]).
//! Metrics and the admin read-back are on the admin listener ([`admin`]),
//! never here.

pub mod admin;
pub mod pacer;
mod public;

pub use public::FeedQuery;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use omega_tv_sync::wire::MAX_UPLOAD_FRAME;

use crate::download;
use crate::error::{self, ApiError};
use crate::store::{self, StoreError};
use crate::sync;
use crate::AppState;

type St = State<Arc<AppState>>;

/// The router of a server.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/sync", post(sync_handler))
        .route("/api/v1/sync/version", get(public::version))
        .route("/api/v1/health", get(public::health))
        .route("/api/v1/global", get(public::feed))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

pub(super) fn octet(resp_body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(resp_body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

fn is_octet_stream(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|m| m.eq_ignore_ascii_case("application/octet-stream"))
}

async fn sync_handler(State(st): St, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let mut signer = None;
    let r = sync_inner(&st, &headers, body, &mut signer).await;
    st.metrics.observe_latency(started.elapsed());
    // Every answer to a request whose signature verified is signed for its
    // counter (X-OTS-Signature), errors included: the device applies
    // nothing that is not. The signature is taken over the body before the
    // body moves into the response (no copy of it).
    let sign = |status: u16, bytes: &[u8]| {
        signer
            .as_ref()
            .and_then(|s| s.header(status, bytes))
            .and_then(|v| HeaderValue::from_str(&v).ok())
    };
    let (sig, mut resp) = match r {
        Ok(synced) => {
            let sig = sign(200, &synced.response);
            let mut resp = octet(synced.response);
            if synced.replayed {
                resp.headers_mut()
                    .insert("x-replayed", HeaderValue::from_static("true"));
            }
            (sig, resp)
        }
        Err(e) => {
            count_rejected(&st, &e);
            let body = e.json();
            (sign(e.status, &body), e.response_with(body))
        }
    };
    if let Some(v) = sig {
        resp.headers_mut()
            .insert(omega_tv_sync::transport::auth::RESPONSE_HEADER, v);
    }
    resp
}

/// A sync's answer before it becomes an HTTP response.
struct Synced {
    /// The response body as sent (compressed when the device asked).
    response: Vec<u8>,
    /// Answered from the idempotency record.
    replayed: bool,
}

/// One sync, in order: headers, authentication header, enrolment, body, signature,
/// validation, rate limit, pre-decoding, the write, the response. `signer`
/// is set once the request's signature verified.
/// Most records of an upload prepared on the async worker (each may be a
/// delta to decode, ~10 µs); larger uploads go to the blocking pool.
const INLINE_MAX_ITEMS: usize = 8;

/// Most changelog entries a response page prepared on the async worker
/// looks at (each may be a global pattern to transcode into the device's
/// codebook, ~40 µs); a page that needs more is built on the blocking pool.
pub(super) const INLINE_MAX_VISITED: usize = 8;

async fn sync_inner(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
    signer: &mut Option<crate::auth::Signer>,
) -> Result<Synced, ApiError> {
    let device = sync::check_device_id(headers.get("x-device-id").map(|v| v.as_bytes()))?;
    // Authentication first (crate::auth): nothing is decoded or stored for
    // a request that does not carry a well-formed signature header.
    let presented = match st.config.auth.required {
        true => Some(crate::auth::presented(
            headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        )?),
        false => None,
    };
    let version = sync::check_sync_version(headers.get("x-sync-version").map(|v| v.as_bytes()))?;
    if !is_octet_stream(headers) {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "Content-Type must be application/octet-stream",
        ));
    }
    // The enrolment before the body: an unknown or revoked id is refused
    // without the server reading (or waiting for) its body.
    if let (Some(p), Some(master)) = (presented.as_ref(), &st.config.auth.master) {
        match store::read(&*st.store, |t| crate::auth::precheck(t, master, &device, p)) {
            Ok(r) => r?,
            Err(e) => return Err(unavailable_or_internal(st, e)),
        }
    }
    let bytes = read_body(headers, body, st.config.limits.body_read_timeout).await?;
    st.metrics
        .bytes_in
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let counter = authenticate(st, &device, presented.as_ref(), &bytes, signer)?;
    let up = sync::validate(device, version, &bytes, &st.config.codebooks)?;
    if let Some(wait) = st.rate_limited(&up.device, up.seq) {
        return Err(error::rate_limited(wait));
    }
    // From a read snapshot, deltas decoded and the response page built, so
    // that the writer only checks and writes. A small upload from a device
    // close to the current global version (the steady state) is prepared
    // right here: the work is bounded (INLINE_MAX_ITEMS decodes,
    // INLINE_MAX_VISITED changelog entries) and a hop to the blocking pool
    // costs more than it. Anything larger, or a page the small budget cut,
    // is prepared on the blocking pool, off the async workers.
    let next = st.pace(&up.device, up.seq);
    let books = st.config.codebooks.clone();
    let mut up = up;
    // `Some(page or none)` once settled here; `None`: go to the blocking pool.
    let mut settled: Option<Option<sync::Prebuilt>> = None;
    let mut decoded = false;
    if up.items.len() <= INLINE_MAX_ITEMS && st.store.local_reads() {
        let inline = store::read(&*st.store, |t| {
            // Each uploaded pattern read once for both (store::memo).
            let t = store::memo::Memo::new(t);
            sync::predecode(&t, &mut up, &books)?;
            let pre = sync::prebuild(&t, &up, &books, next, INLINE_MAX_VISITED)?;
            Ok(match pre {
                Some(p) if p.cut() => None,
                other => Some(other),
            })
        });
        match inline {
            Ok(pre) => {
                decoded = true;
                settled = pre;
            }
            Err(e) => return Err(unavailable_or_internal(st, e)),
        }
    }
    let (up, prebuilt) = match settled {
        Some(pre) => (up, pre),
        None => {
            let mut slot = Some(up);
            let prepared = store::read_blocking(st.store.clone(), move |t| {
                let mut up = slot.take().ok_or(StoreError::Closed)?;
                let t = store::memo::Memo::new(t);
                if !decoded {
                    sync::predecode(&t, &mut up, &books)?;
                }
                let pre = sync::prebuild(&t, &up, &books, next, download::MAX_VISITED)?;
                Ok((up, pre))
            })
            .await;
            match prepared {
                Ok(x) => x,
                Err(e) => return Err(unavailable_or_internal(st, e)),
            }
        }
    };
    let (device, seq) = (up.device.clone(), up.seq);
    let accept_zstd = up.accept_zstd;
    let mut applied = write(st, up, counter, next, prebuilt).await?;
    count_applied(st, &device, seq, &applied);
    if let Some(recipe) = applied.rebuild.take() {
        let books = st.config.codebooks.clone();
        let built =
            store::read_blocking(st.store.clone(), move |t| sync::rebuild(t, &recipe, &books))
                .await;
        match built {
            Ok((frame, same)) => {
                if !same {
                    tracing::info!(device = %device, "replay rebuilt over a changed changelog");
                }
                applied.response = frame;
            }
            Err(e) => return Err(unavailable_or_internal(st, e)),
        }
    }
    let response = if accept_zstd {
        sync::compress_response(&applied.response)
    } else {
        applied.response
    };
    st.metrics
        .bytes_out
        .fetch_add(response.len() as u64, Ordering::Relaxed);
    Ok(Synced {
        response,
        replayed: applied.replayed,
    })
}

/// Reads the body of a sync (its `Content-Type` checked before): at most
/// `MAX_UPLOAD_FRAME` bytes (refused by `Content-Length` before reading,
/// else while reading), within `deadline` (`408 body_timeout`; the
/// connection is closed after the answer, the rest of the body unread).
async fn read_body(headers: &HeaderMap, body: Body, deadline: Duration) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            "body_too_large",
            format!("body exceeds {MAX_UPLOAD_FRAME} bytes"),
        )
    };
    if let Some(n) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if n > MAX_UPLOAD_FRAME as u64 {
            return Err(too_large());
        }
    }
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, MAX_UPLOAD_FRAME)).await;
    let Ok(read) = read else {
        return Err(ApiError::new(
            408,
            "body_timeout",
            format!("the body did not arrive within {} s", deadline.as_secs()),
        ));
    };
    read.map_err(|e| {
        let mut src: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = src {
            if s.to_string().contains("length limit") {
                return too_large();
            }
            src = s.source();
        }
        ApiError::new(400, "truncated", format!("reading the body: {e}"))
    })
}

/// Verifies the signature `presented` over `body` for `device` (a read
/// transaction); returns the counter and key generation the writer re-checks, `None` when
/// authentication is off.
fn authenticate(
    st: &AppState,
    device: &str,
    presented: Option<&crate::auth::Presented>,
    body: &[u8],
    signer: &mut Option<crate::auth::Signer>,
) -> Result<Option<crate::auth::Verified>, ApiError> {
    match (presented, &st.config.auth.master) {
        (Some(p), Some(master)) => {
            let hash = omega_tv_sync::transport::auth::body_hash(body);
            match store::read(&*st.store, |t| {
                crate::auth::verify(t, master, device, p, &hash, signer)
            }) {
                Ok(Ok(c)) => Ok(Some(c)),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(unavailable_or_internal(st, e)),
            }
        }
        (Some(_), None) => Err(error::internal("no master secret")),
        (None, _) => Ok(None),
    }
}

/// Queues the sync for the writer (guarded by the verification) and
/// waits until it is durable; a full queue is `503 overloaded`.
async fn write(
    st: &AppState,
    up: sync::Upload,
    counter: Option<crate::auth::Verified>,
    next: u32,
    prebuilt: Option<sync::Prebuilt>,
) -> Result<sync::Applied, ApiError> {
    let codebooks = st.config.codebooks.clone();
    let quota = st.config.max_patterns_per_device;
    let result = store::write(&*st.store, move |txn| {
        let dev = up.device.clone();
        crate::auth::guarded(txn, &dev, counter, |txn| {
            sync::apply_with(txn, &up, &codebooks, next, quota, prebuilt)
        })
    })
    .await;
    match result {
        Ok(r) => r,
        Err(StoreError::Overloaded) => {
            let wait = st.random_in(&(1..=st.config.overload_retry_after_s.max(1)));
            Err(error::overloaded(wait))
        }
        Err(e) => Err(error::storage_unavailable(
            e,
            st.config.overload_retry_after_s.max(1),
        )),
    }
}

/// Counts a refused sync (by code; authentication failures also by their
/// own code) and logs it.
fn count_rejected(st: &AppState, e: &ApiError) {
    st.metrics.syncs_rejected.fetch_add(1, Ordering::Relaxed);
    st.metrics.error(e.code);
    if e.status == 401 {
        st.metrics.auth.failure(e.reason.unwrap_or(e.code));
    }
    if e.status >= 500 {
        tracing::warn!(code = e.code, detail = %e.detail, "sync failed");
    } else {
        tracing::debug!(code = e.code, reason = e.reason, detail = %e.detail, "sync rejected");
    }
}

/// Counts an answered sync (a replay, or an applied one with its acks and
/// conflicts, noted for the rate limit) and logs it.
fn count_applied(st: &AppState, device: &str, seq: u64, applied: &sync::Applied) {
    use Ordering::Relaxed;
    if applied.replayed {
        st.metrics.retries_replayed.fetch_add(1, Relaxed);
    } else {
        st.metrics.syncs_applied.fetch_add(1, Relaxed);
        st.metrics.acks.fetch_add(applied.acked as u64, Relaxed);
        st.metrics
            .conflicts
            .fetch_add(applied.conflicts as u64, Relaxed);
        st.note_sync(device, applied.more, seq);
    }
    tracing::debug!(
        device = %device,
        replayed = applied.replayed,
        acked = applied.acked,
        conflicts = applied.conflicts,
        changes = applied.changes,
        "sync"
    );
}

/// A store error before the write: the database unavailable (a shared
/// database that is down or restarting: [`StoreError::Overloaded`]) is
/// `503 overloaded` with `Retry-After`, like a full queue; anything else
/// `503 storage_unavailable` (the cause logged, never sent).
fn unavailable_or_internal(st: &AppState, e: StoreError) -> ApiError {
    match e {
        StoreError::Overloaded => {
            let wait = st.random_in(&(1..=st.config.overload_retry_after_s.max(1)));
            error::overloaded(wait)
        }
        e => error::storage_unavailable(e, st.config.overload_retry_after_s.max(1)),
    }
}
