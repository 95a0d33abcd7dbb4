//! What a client can be asked: timing, cursor, counters, acknowledged state.

use core::ffi::c_char;

use omega_tv_sync::sync::{max_snapshot_len, Stats};
use omega_tv_sync::{PatternId, DIM};

use crate::args::{self, code};
use crate::client::{ots_client_t, with_client};
use crate::error::ots_error_t;
use crate::error::ots_error_t as E;
use crate::OTS_PATTERN_ID_MAX;

/// Counters since the client was created (not persisted).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ots_stats_t {
    /// Responses applied (200).
    pub synced: u64,
    /// Pattern updates and removals acknowledged.
    pub acked: u64,
    /// Conflicts received (each merged).
    pub conflicts: u64,
    /// Requests sent again after a failure (same bytes, same sequence).
    pub resends: u64,
    /// 409 answers that moved the sequence forward.
    pub resequenced: u64,
    /// Requests the server refused with another 4xx.
    pub rejected: u64,
    /// `401 replayed_counter` answers that moved the request counter on.
    pub counter_resyncs: u64,
    /// Answers to signed requests that were not signed for them: nothing
    /// of them was applied.
    pub unauthenticated: u64,
}

impl From<Stats> for ots_stats_t {
    fn from(s: Stats) -> Self {
        ots_stats_t {
            synced: s.synced,
            acked: s.acked,
            conflicts: s.conflicts,
            resends: s.resends,
            resequenced: s.resequenced,
            rejected: s.rejected,
            counter_resyncs: s.counter_resyncs,
            unauthenticated: s.unauthenticated,
        }
    }
}

/// Largest snapshot of a client with `slots` slots, in bytes: the same
/// value as `OTS_MAX_SNAPSHOT_LEN(slots)`, for any slot count (saturating).
#[no_mangle]
pub extern "C" fn ots_max_snapshot_len(slots: u32) -> usize {
    let n = slots as usize;
    crate::OTS_SNAPSHOT_BASE_BYTES.saturating_add(n.saturating_mul(crate::OTS_SNAPSHOT_SLOT_BYTES))
}

const _: () = assert!(
    crate::OTS_SNAPSHOT_BASE_BYTES + 8 * crate::OTS_SNAPSHOT_SLOT_BYTES == max_snapshot_len(8)
);
const _: () = assert!(
    crate::OTS_SNAPSHOT_BASE_BYTES + 256 * crate::OTS_SNAPSHOT_SLOT_BYTES == max_snapshot_len(256)
);

/// When the next exchange is due, ms on the caller's clock, in `*out`:
/// the server's pacing after a sync, the backoff after a failure, now
/// after a 409 or when more global changes wait.
///
/// # Safety
/// `client` must be NULL or a handle from `ots_client_init`; `out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_next_sync_at(
    client: *mut ots_client_t,
    out: *mut u64,
) -> ots_error_t {
    code((|| {
        if out.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        let v: u64 = with_client!(client, |c| Ok(c.next_sync_at()))?;
        // SAFETY: forwarded contract.
        unsafe { args::put(out, v) }
    })())
}

/// The sequence number of the request in flight, or of the next new one,
/// in `*out`.
///
/// # Safety
/// `client` must be NULL or a handle from `ots_client_init`; `out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_seq(client: *mut ots_client_t, out: *mut u64) -> ots_error_t {
    code((|| {
        if out.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        let v: u64 = with_client!(client, |c| Ok(c.seq()))?;
        // SAFETY: forwarded contract.
        unsafe { args::put(out, v) }
    })())
}

/// The global version the device has applied, in `*out`: the
/// `X-Sync-Version` header of the next request.
///
/// # Safety
/// `client` must be NULL or a handle from `ots_client_init`; `out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_global_version(
    client: *mut ots_client_t,
    out: *mut u64,
) -> ots_error_t {
    code((|| {
        if out.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        let v: u64 = with_client!(client, |c| Ok(c.global_version()))?;
        // SAFETY: forwarded contract.
        unsafe { args::put(out, v) }
    })())
}

/// The request counter the next signed request uses, in `*out`.
///
/// # Safety
/// `client` must be NULL or a handle from `ots_client_init`; `out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_auth_counter(
    client: *mut ots_client_t,
    out: *mut u64,
) -> ots_error_t {
    code((|| {
        if out.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        let v: u64 = with_client!(client, |c| Ok(c.auth_counter()))?;
        // SAFETY: forwarded contract.
        unsafe { args::put(out, v) }
    })())
}

/// Length of the request in flight (to resend from the application's
/// buffer) in `*out`, or 0 when none is.
///
/// # Safety
/// `client` must be NULL or a handle from `ots_client_init`; `out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_in_flight(
    client: *mut ots_client_t,
    out: *mut usize,
) -> ots_error_t {
    code((|| {
        if out.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        let v: usize = with_client!(client, |c| Ok(c.in_flight().unwrap_or(0)))?;
        // SAFETY: forwarded contract.
        unsafe { args::put(out, v) }
    })())
}

/// Patterns held, in `*out` (removed ones count until the removal is
/// acknowledged).
///
/// # Safety
/// `client` must be NULL or a handle from `ots_client_init`; `out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_len(client: *mut ots_client_t, out: *mut usize) -> ots_error_t {
    code((|| {
        if out.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        let v: usize = with_client!(client, |c| Ok(c.len()))?;
        // SAFETY: forwarded contract.
        unsafe { args::put(out, v) }
    })())
}

/// Patterns waiting to be uploaded (changed and passing the filter), in
/// `*out`.
///
/// # Safety
/// `client` must be NULL or a handle from `ots_client_init`; `out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_pending(
    client: *mut ots_client_t,
    out: *mut usize,
) -> ots_error_t {
    code((|| {
        if out.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        let v: usize = with_client!(client, |c| Ok(c.pending()))?;
        // SAFETY: forwarded contract.
        unsafe { args::put(out, v) }
    })())
}

/// Counters since creation, in `*out`.
///
/// # Safety
/// `client` must be NULL or a handle from `ots_client_init`; `out` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_stats(
    client: *mut ots_client_t,
    out: *mut ots_stats_t,
) -> ots_error_t {
    code((|| {
        if out.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        let v: ots_stats_t = with_client!(client, |c| Ok(c.stats().into()))?;
        // SAFETY: forwarded contract.
        unsafe { args::put(out, v) }
    })())
}

/// The acknowledged state of a pattern: the server's revision in `*revision`
/// and the integer codes the server holds (`OTS_DIM` `int16_t`s) in `codes`
/// (`codes_len >= OTS_DIM`, 2-byte aligned). `OTS_ERROR_NOT_FOUND` when the
/// id is unknown or not acknowledged yet. What a checker compares with the
/// server's state.
///
/// # Safety
/// `client` must be NULL or a handle from `ots_client_init`; `id` NULL or
/// readable up to its NUL; `revision` NULL or writable; `codes` NULL or
/// writable for `codes_len` values.
#[no_mangle]
pub unsafe extern "C" fn ots_client_acked(
    client: *mut ots_client_t,
    id: *const c_char,
    revision: *mut u32,
    codes: *mut i16,
    codes_len: usize,
) -> ots_error_t {
    code((|| {
        // SAFETY: forwarded contract.
        let id = PatternId::new(unsafe { args::str_bounded(id, OTS_PATTERN_ID_MAX) }?)?;
        if revision.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        // SAFETY: forwarded contract.
        let out = unsafe { args::array_mut(codes, codes_len) }?;
        let out = out.get_mut(..DIM).ok_or(E::OTS_ERROR_BUFFER_TOO_SMALL)?;
        let rev = with_client!(client, |c| match c.acked(&id) {
            Some((rev, q)) => {
                out.copy_from_slice(q);
                Ok(rev)
            }
            None => Err(E::OTS_ERROR_NOT_FOUND),
        })?;
        // SAFETY: forwarded contract.
        unsafe { args::put(revision, rev) }
    })())
}
