//! The sync cycle: record patterns, prepare a request, sign it, apply the
//! response (or a feed page), and the snapshot that survives a reboot.

use core::ffi::c_char;

use omega_tv_sync::sync::{Outcome, Summary, SyncClient};
use omega_tv_sync::transport::auth;
use omega_tv_sync::{Category, Embedding, Method, Pattern, PatternId, Response};

use crate::args::{self, code, Res};
use crate::client::{ots_client_t, with_client};
use crate::error::ots_error_t;
use crate::error::ots_error_t as E;
use crate::sink::{ots_sink_t, CSink};
use crate::{OTS_CATEGORY_MAX, OTS_PATTERN_ID_MAX};

/// A pattern as the application holds it. Read during the call only.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct ots_pattern_t {
    /// Unique per device, NUL-terminated: 1..=`OTS_PATTERN_ID_MAX` bytes of
    /// printable ASCII.
    pub id: *const c_char,
    /// `embedding_len` floats, 4-byte aligned: the all-MiniLM-L6-v2
    /// embedding, finite, L2 norm within `1 +- 1e-3`.
    pub embedding: *const f32,
    /// Must be `OTS_DIM`.
    pub embedding_len: usize,
    /// Fraction of recommendations from this pattern that were watched, in
    /// `[0, 1]`.
    pub success_rate: f32,
    /// How many watch events the pattern was learned from.
    pub sample_count: u32,
    /// Category, NUL-terminated: 1..=`OTS_CATEGORY_MAX` bytes of printable
    /// ASCII.
    pub category: *const c_char,
}

/// Counts of one applied response.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ots_summary_t {
    /// Pattern updates sent in the request.
    pub uploaded: u16,
    /// Acknowledgements received.
    pub acked: u16,
    /// Conflicts received (each merged by the documented rule; the merged
    /// pattern is pending again).
    pub conflicts: u16,
    /// Global upserts and removals received.
    pub globals: u16,
    /// Trend signals received.
    pub trends: u16,
    /// More global changes wait: sync again now (`next_sync_at` says so),
    /// or read the feed (`ots_client_feed_path`).
    pub more: bool,
}

impl From<Summary> for ots_summary_t {
    fn from(s: Summary) -> Self {
        ots_summary_t {
            uploaded: s.uploaded,
            acked: s.acked,
            conflicts: s.conflicts,
            globals: s.globals,
            trends: s.trends,
            more: s.more,
        }
    }
}

/// What an applied response did.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ots_outcome_kind_t {
    /// Applied: the client's state advanced; save a snapshot now.
    OTS_OUTCOME_SYNCED = 0,
    /// Overload, a server error, or a request counter the server was ahead
    /// of: resend the same request bytes (signed anew) at `at_ms`.
    OTS_OUTCOME_RETRY_LATER = 1,
    /// The server's sequence was ahead (409): the request was dropped, the
    /// patterns are still pending; prepare a new one now (`seq`).
    OTS_OUTCOME_RESEQUENCED = 2,
}

/// The result of `ots_client_apply`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ots_outcome_t {
    /// Which of the three.
    pub kind: ots_outcome_kind_t,
    /// Counts (`OTS_OUTCOME_SYNCED` only; zero otherwise).
    pub summary: ots_summary_t,
    /// When to resend, ms on the caller's clock (`OTS_OUTCOME_RETRY_LATER`).
    pub at_ms: u64,
    /// The sequence the next request uses (`OTS_OUTCOME_RESEQUENCED`).
    pub seq: u64,
}

impl From<Outcome> for ots_outcome_t {
    fn from(o: Outcome) -> Self {
        let mut out = ots_outcome_t {
            kind: ots_outcome_kind_t::OTS_OUTCOME_SYNCED,
            summary: ots_summary_t::default(),
            at_ms: 0,
            seq: 0,
        };
        match o {
            Outcome::Synced(s) => out.summary = s.into(),
            Outcome::RetryLater { at_ms } => {
                out.kind = ots_outcome_kind_t::OTS_OUTCOME_RETRY_LATER;
                out.at_ms = at_ms;
            }
            Outcome::Resequenced { seq } => {
                out.kind = ots_outcome_kind_t::OTS_OUTCOME_RESEQUENCED;
                out.seq = seq;
            }
        }
        out
    }
}

/// The server's answer to a request, as the application's HTTP code
/// received it. Read during the call only.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct ots_response_t {
    /// HTTP status code.
    pub status: u16,
    /// Non-zero when the response carried `Retry-After` (429/503).
    pub has_retry_after: u8,
    /// `Retry-After` in seconds.
    pub retry_after_s: u32,
    /// The value of the response's `X-OTS-Signature` header as received
    /// (64 hex digits), or NULL when it had none. A client with a key applies
    /// nothing that is not signed for the request it sent
    /// (`OTS_ERROR_UNAUTHENTICATED`).
    pub signature: *const u8,
    /// Bytes of `signature`.
    pub signature_len: usize,
    /// The body: `body_len` bytes (NULL allowed when 0).
    pub body: *const u8,
    /// Bytes of body. The application's receive buffer must hold
    /// `caps.max_bytes`; a larger body is a transport failure
    /// (`ots_client_transport_failed`), never to be cut.
    pub body_len: usize,
}

/// HTTP methods, for `ots_client_authorization`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ots_method_t {
    /// `GET`
    OTS_METHOD_GET = 0,
    /// `POST` (the sync request).
    OTS_METHOD_POST = 1,
}

/// Builds the pattern from its C form and upserts it, in one frame: the
/// embedding is checked where the pattern holds it (one 1.5 KB copy on the
/// stack, not one per conversion step).
#[inline(never)]
fn upsert<const N: usize>(
    c: &mut SyncClient<'static, N>,
    p: &ots_pattern_t,
    now_ms: u64,
) -> Res<()> {
    // SAFETY: the C function's contract covers the pattern's pointers.
    let id = PatternId::new(unsafe { args::str_bounded(p.id, OTS_PATTERN_ID_MAX) }?)?;
    // SAFETY: as above.
    let category = Category::new(unsafe { args::str_bounded(p.category, OTS_CATEGORY_MAX) }?)?;
    // SAFETY: as above.
    let values = unsafe { args::array(p.embedding, p.embedding_len) }?;
    let pattern = Pattern {
        id,
        embedding: Embedding::from_slice(values)?,
        success_rate: p.success_rate,
        sample_count: p.sample_count,
        category,
    };
    // `upsert` validates the rate.
    Ok(c.upsert(&pattern, now_ms)?)
}

/// Records the current state of a pattern (checked, then quantised; about
/// 4.8 KB of stack). A new id takes a free slot (`OTS_ERROR_CAPACITY_EXCEEDED`
/// when all are used); the pattern becomes pending if anything changed.
/// `now_ms` is the caller's monotonic clock (any epoch; used to upload the
/// oldest change first). Errors for the pattern: `OTS_ERROR_NULL_POINTER`,
/// `OTS_ERROR_MISALIGNED` (embedding not 4-aligned), `OTS_ERROR_WRONG_LENGTH`
/// (`embedding_len != OTS_DIM`), `OTS_ERROR_NON_FINITE`,
/// `OTS_ERROR_NOT_UNIT_NORM`, `OTS_ERROR_RATE_OUT_OF_RANGE`, and the string
/// errors of its id and category. On error the client is unchanged.
///
/// # Safety
/// `client` must be NULL or a handle from `ots_client_init`; `pattern` NULL
/// or readable, with its pointers as documented on `ots_pattern_t`.
#[no_mangle]
pub unsafe extern "C" fn ots_client_upsert(
    client: *mut ots_client_t,
    pattern: *const ots_pattern_t,
    now_ms: u64,
) -> ots_error_t {
    code((|| {
        // SAFETY: forwarded contract.
        let p = unsafe { args::get(pattern) }?;
        with_client!(client, |c| upsert(c, p, now_ms))
    })())
}

/// Drops a pattern: a removal is uploaded if the server has it, and the
/// slot is freed once that is acknowledged (at once if the server never
/// had it). `OTS_ERROR_NOT_FOUND` for an unknown id.
///
/// # Safety
/// `client` as in `ots_client_upsert`; `id` NULL or readable up to its NUL
/// (at most `OTS_PATTERN_ID_MAX + 1` bytes are read).
#[no_mangle]
pub unsafe extern "C" fn ots_client_remove(
    client: *mut ots_client_t,
    id: *const c_char,
    now_ms: u64,
) -> ots_error_t {
    code((|| {
        // SAFETY: forwarded contract.
        let id = PatternId::new(unsafe { args::str_bounded(id, OTS_PATTERN_ID_MAX) }?)?;
        with_client!(client, |c| Ok(c.remove(&id, now_ms)?))
    })())
}

/// Writes the next sync request body (an upload frame) into `buf` and its
/// length into `*len`: what changed and passes the quality filter, oldest
/// change first, as many patterns as fit `buf` (the rest go next time); a
/// request with no pattern still asks for global changes.
///
/// `buf` needs at least `OTS_MIN_REQUEST_LEN` (45) bytes
/// (`OTS_ERROR_BUFFER_TOO_SMALL` below that, whatever the request); about 150 bytes
/// per changed pattern is typical. POST it to `OTS_SYNC_PATH` with the
/// headers `X-Device-ID` (the device id), `X-Sync-Version`
/// (`ots_client_global_version`), `Content-Type: application/octet-stream`
/// and, when the client has a key, `Authorization`
/// (`ots_client_authorization`). Keep the bytes untouched until the
/// response is applied: a retry sends them again. `OTS_ERROR_BUSY` while a
/// request is in flight (`ots_client_in_flight` gives its length).
///
/// # Safety
/// `client` as in `ots_client_upsert`; `buf` NULL or writable for `cap`
/// bytes; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_prepare(
    client: *mut ots_client_t,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> ots_error_t {
    code((|| {
        if buf.is_null() || len.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        // The worst-case head, so that the rule does not depend on how
        // many bytes the sequence number happens to take today.
        if cap < crate::OTS_MIN_REQUEST_LEN {
            return Err(E::OTS_ERROR_BUFFER_TOO_SMALL);
        }
        // SAFETY: forwarded contract.
        let out = unsafe { args::bytes_mut(buf, cap) }?;
        let n = with_client!(client, |c| Ok(c.prepare(out)?))?;
        // SAFETY: forwarded contract.
        unsafe { args::put(len, n) }
    })())
}

/// Signs a request with the client's key, taking the next request counter,
/// and writes the `Authorization` header value (NUL-terminated, at most
/// `OTS_AUTH_HEADER_MAX` characters) into `out` and its length into
/// `*out_len`. Call it once per send attempt, resends included (each takes
/// a new counter). A client without a key writes `""` and length 0 and
/// takes no counter: send no `Authorization` header.
///
/// `method`: an `ots_method_t` value (`OTS_ERROR_INVALID_ARGUMENT`
/// otherwise); `path`: NUL-terminated, at most 1024 bytes (e.g.
/// `OTS_SYNC_PATH`); `body`: the exact body sent (NULL allowed when
/// `body_len` is 0); `out`: at least `OTS_AUTH_HEADER_MAX + 1` bytes
/// (`OTS_ERROR_BUFFER_TOO_SMALL`).
///
/// # Safety
/// `client` as in `ots_client_upsert`; `path` NULL or readable up to its
/// NUL; `body` readable for `body_len` bytes; `out` NULL or writable for
/// `out_cap` bytes; `out_len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_authorization(
    client: *mut ots_client_t,
    method: u32,
    path: *const c_char,
    body: *const u8,
    body_len: usize,
    out: *mut c_char,
    out_cap: usize,
    out_len: *mut usize,
) -> ots_error_t {
    code((|| {
        let method = match method {
            0 => Method::Get,
            1 => Method::Post,
            _ => return Err(E::OTS_ERROR_INVALID_ARGUMENT),
        };
        // SAFETY: forwarded contract.
        let path = unsafe { args::str_bounded(path, 1024) }?;
        // SAFETY: forwarded contract.
        let body = unsafe { args::bytes(body, body_len) }?;
        if out.is_null() || out_len.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        if out_cap < auth::HEADER_MAX + 1 {
            return Err(E::OTS_ERROR_BUFFER_TOO_SMALL);
        }
        let mut buf = [0u8; auth::HEADER_MAX];
        let n = with_client!(client, |c| Ok(c
            .authorization(method, path, body, &mut buf)?
            .map_or(0, str::len)))?;
        let value = core::str::from_utf8(buf.get(..n).unwrap_or(&[]))
            .map_err(|_| E::OTS_ERROR_MALFORMED)?;
        // SAFETY: forwarded contract.
        unsafe { args::put_str(value, out, out_cap, out_len) }
    })())
}

/// Applies the server's answer to the request in flight. `sent`/`sent_len`
/// are the exact bytes of that request (the application's buffer, as
/// `ots_client_prepare` wrote them). On a 200 the whole response is checked
/// first and only then applied and handed to `sink` (NULL: discard globals
/// and trends): a bad response changes nothing but the retry time, returns
/// its error (e.g. `OTS_ERROR_CHECKSUM`, `OTS_ERROR_TRUNCATED`), and the
/// same request is resent at `ots_client_next_sync_at`. Uses about 11 KB of
/// stack.
///
/// Statuses: 200 applies; 401 with `replayed_counter` moves the request
/// counter on (`OTS_OUTCOME_RETRY_LATER` now); 409 resequences (at once the
/// first time, after the backoff when it repeats); 429 and 5xx retry later;
/// any other status is `OTS_ERROR_REJECTED` (the request is dropped, its
/// patterns stay pending). With a key, a 200, 409 or 401 that is not signed
/// for the request (`signature`) is `OTS_ERROR_UNAUTHENTICATED` and changes
/// nothing, and an unsigned `Retry-After` counts for at most the backoff
/// cap. `OTS_ERROR_PROTOCOL_VIOLATION` when
/// no request is in flight, `OTS_ERROR_WRONG_LENGTH` when `sent_len` is not
/// its length.
///
/// # Safety
/// `client` as in `ots_client_upsert`; `sent` readable for `sent_len`
/// bytes; `response` NULL or readable with `body` readable for `body_len`
/// bytes and `signature` NULL or readable for `signature_len`; `sink` NULL or readable with valid callbacks; `outcome` NULL or
/// writable. None of the buffers may be written during the call.
#[no_mangle]
pub unsafe extern "C" fn ots_client_apply(
    client: *mut ots_client_t,
    sent: *const u8,
    sent_len: usize,
    response: *const ots_response_t,
    now_ms: u64,
    sink: *const ots_sink_t,
    outcome: *mut ots_outcome_t,
) -> ots_error_t {
    code((|| {
        if sent.is_null() || outcome.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        // SAFETY: forwarded contract.
        let sent = unsafe { args::bytes(sent, sent_len) }?;
        // SAFETY: forwarded contract.
        let r = unsafe { args::get(response) }?;
        // SAFETY: forwarded contract.
        let body = unsafe { args::bytes(r.body, r.body_len) }?;
        // SAFETY: forwarded contract (NULL with length 0 is no header).
        let sig = unsafe { args::bytes(r.signature, r.signature_len) }?;
        let resp = Response {
            status: r.status,
            body_len: body.len(),
            retry_after_s: (r.has_retry_after != 0).then_some(r.retry_after_s),
            signature: omega_tv_sync::transport::auth::parse_response_header(sig),
        };
        // SAFETY: forwarded contract (NULL is no sink).
        let mut sink = CSink(unsafe { sink_from(sink) }?);
        let o = with_client!(client, |c| Ok(apply(
            c, sent, resp, body, now_ms, &mut sink
        )?))?;
        // SAFETY: forwarded contract.
        unsafe { args::put(outcome, o.into()) }
    })())
}

/// The sink behind a C pointer: NULL is none; otherwise checked like any
/// other struct pointer (alignment).
///
/// # Safety
/// A non-NULL `p` must point to a valid `ots_sink_t`.
unsafe fn sink_from<'a>(p: *const ots_sink_t) -> Res<Option<&'a ots_sink_t>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract.
    unsafe { args::get(p) }.map(Some)
}

/// Kept out of line: the one place that monomorphises `apply` per slot count.
#[inline(never)]
fn apply<const N: usize>(
    c: &mut SyncClient<'static, N>,
    sent: &[u8],
    resp: Response,
    body: &[u8],
    now_ms: u64,
    sink: &mut CSink<'_>,
) -> omega_tv_sync::Result<Outcome> {
    c.apply(sent, resp, body, now_ms, sink)
}

/// The request in flight failed in transit (no connection, timeout, a
/// response larger than the buffer): schedules a resend of the same bytes
/// with capped exponential backoff and full jitter (`ots_client_next_sync_at`).
///
/// # Safety
/// `client` as in `ots_client_upsert`.
#[no_mangle]
pub unsafe extern "C" fn ots_client_transport_failed(
    client: *mut ots_client_t,
    now_ms: u64,
) -> ots_error_t {
    code((|| {
        with_client!(client, |c| {
            c.transport_failed(now_ms);
            Ok(())
        })
    })())
}

/// Writes the path of the `GET` that reads the next page of the global
/// feed after the device's global version
/// (`/api/v1/global?since=V&limit=L&max_bytes=B`), NUL-terminated, into
/// `buf` (at least `OTS_FEED_PATH_MAX + 1` bytes) and its length into
/// `*len`. Use it after a sync whose summary said `more`; `max_bytes` is
/// the receive buffer for the page.
///
/// # Safety
/// `client` as in `ots_client_upsert`; `buf` NULL or writable for `cap`
/// bytes; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_feed_path(
    client: *mut ots_client_t,
    limit: u16,
    max_bytes: u32,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> ots_error_t {
    code((|| {
        if buf.is_null() || len.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        if cap < crate::OTS_FEED_PATH_MAX + 1 {
            return Err(E::OTS_ERROR_BUFFER_TOO_SMALL);
        }
        let mut path = [0u8; crate::OTS_FEED_PATH_MAX];
        let n = with_client!(client, |c| Ok(c
            .feed_path(limit, max_bytes, &mut path)
            .len()))?;
        let s = core::str::from_utf8(path.get(..n).unwrap_or(&[]))
            .map_err(|_| E::OTS_ERROR_MALFORMED)?;
        // SAFETY: forwarded contract.
        unsafe { args::put_str(s, buf, cap, len) }
    })())
}

/// Applies one page of the global feed (the 200 body of the feed `GET`),
/// checked whole before anything changes, and moves the global version to
/// the page's. `OTS_ERROR_BUSY` while a sync request is in flight.
/// `summary` receives the counts (`more`: read the next page).
///
/// # Safety
/// `client` as in `ots_client_upsert`; `body` readable for `len` bytes;
/// `sink` NULL or readable with valid callbacks; `summary` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_apply_feed(
    client: *mut ots_client_t,
    body: *const u8,
    len: usize,
    sink: *const ots_sink_t,
    summary: *mut ots_summary_t,
) -> ots_error_t {
    code((|| {
        if body.is_null() || summary.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        // SAFETY: forwarded contract.
        let body = unsafe { args::bytes(body, len) }?;
        // SAFETY: forwarded contract (NULL is no sink).
        let mut sink = CSink(unsafe { sink_from(sink) }?);
        let s = with_client!(client, |c| Ok(c.apply_feed(body, &mut sink)?))?;
        // SAFETY: forwarded contract.
        unsafe { args::put(summary, s.into()) }
    })())
}

/// Writes the state that must survive a reboot (what the server
/// acknowledged, sequence, global version, request counter) into `buf` and
/// its length into `*len`. At most `OTS_MAX_SNAPSHOT_LEN(slots)` bytes
/// (`OTS_ERROR_BUFFER_TOO_SMALL` when `cap` cannot hold this one). Save it
/// after every `OTS_OUTCOME_SYNCED`, before the next request, atomically
/// (write a new file and rename it, or a flash double buffer).
///
/// # Safety
/// `client` as in `ots_client_upsert`; `buf` NULL or writable for `cap`
/// bytes; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_snapshot(
    client: *mut ots_client_t,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> ots_error_t {
    code((|| {
        if buf.is_null() || len.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        // SAFETY: forwarded contract.
        let out = unsafe { args::bytes_mut(buf, cap) }?;
        let n = with_client!(client, |c| Ok(c.snapshot(out)?))?;
        // SAFETY: forwarded contract.
        unsafe { args::put(len, n) }
    })())
}

/// Replaces the client's state with a snapshot's, in place (no stack
/// temporary of the client's size). The snapshot's device id and codebook
/// must be the client's (`OTS_ERROR_PROTOCOL_VIOLATION`,
/// `OTS_ERROR_UNKNOWN_CODEBOOK`); it is checked completely first, so a
/// corrupt or truncated one (`OTS_ERROR_CHECKSUM`, `OTS_ERROR_TRUNCATED`,
/// ...) or one with more patterns than slots (`OTS_ERROR_CAPACITY_EXCEEDED`)
/// leaves the client as it was. Then upsert the application's current
/// patterns again: changes made after the snapshot are uploaded as deltas.
///
/// # Safety
/// `client` as in `ots_client_upsert`; `bytes` readable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ots_client_restore(
    client: *mut ots_client_t,
    bytes: *const u8,
    len: usize,
) -> ots_error_t {
    code((|| {
        if bytes.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        // SAFETY: forwarded contract.
        let b = unsafe { args::bytes(bytes, len) }?;
        with_client!(client, |c| Ok(c.restore_into(b)?))
    })())
}
