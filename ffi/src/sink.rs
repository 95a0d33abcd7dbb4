//! Where a response's global patterns and trends go: C callbacks with a
//! user pointer.

use core::ffi::{c_char, c_void};

use omega_tv_sync::sync::GlobalSink;
use omega_tv_sync::{GlobalPattern, TrendSignal};

use crate::args;
use crate::{OTS_CATEGORY_SIZE, OTS_CONTENT_ID_SIZE, OTS_REGION_SIZE};

/// A global pattern as a response delivers it, valid only during the
/// callback (copy what you keep).
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct ots_global_pattern_t {
    /// Server-assigned id, stable for the pattern's life.
    pub id: u32,
    /// The reconstructed direction: `OTS_DIM` floats, unit norm. Points into
    /// the library's stack: valid until the callback returns.
    pub embedding: *const f32,
    /// Sample-weighted success rate of the contributors, in `[0, 1]`.
    pub success_rate: f32,
    /// Samples behind it (saturating).
    pub sample_count: u32,
    /// Distinct devices that contributed (at least the server's k).
    pub contributors: u32,
    /// Category, NUL-terminated.
    pub category: [c_char; OTS_CATEGORY_SIZE],
    /// Global version at which this state was published.
    pub version: u64,
}

/// A trend signal: content gaining momentum in a region and category.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct ots_trend_t {
    /// Content id, NUL-terminated.
    pub content_id: [c_char; OTS_CONTENT_ID_SIZE],
    /// Momentum against baseline (1.0 = as usual), finite, in `[0, 1e6]`.
    pub score: f32,
    /// ISO 3166-1 alpha-2 region (`"ZZ"` = every region), NUL-terminated.
    pub region: [c_char; OTS_REGION_SIZE],
    /// Category, NUL-terminated.
    pub category: [c_char; OTS_CATEGORY_SIZE],
    /// Server Unix time (seconds) at which it was computed.
    pub calculated_at: u64,
}

/// Receives what a response brings down, in frame order, through the
/// callbacks (each may be NULL: that kind is discarded) with `user` as the
/// first argument. Calls are idempotent by id and version: after a reboot
/// before the snapshot was saved, the same changes may arrive again.
/// Callbacks must not call into the client that runs them
/// (`OTS_ERROR_REENTRANT`), and they run only after the whole response was
/// checked: a bad response calls none of them.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct ots_sink_t {
    /// Passed to every callback.
    pub user: *mut c_void,
    /// The server's changelog no longer reaches back to the device's
    /// version: drop every global pattern and trend; the records that follow
    /// rebuild them.
    pub reset: Option<unsafe extern "C" fn(user: *mut c_void)>,
    /// A global pattern was published or changed.
    pub global_upsert:
        Option<unsafe extern "C" fn(user: *mut c_void, pattern: *const ots_global_pattern_t)>,
    /// A global pattern was withdrawn at global `version`.
    pub global_remove: Option<unsafe extern "C" fn(user: *mut c_void, id: u32, version: u64)>,
    /// A trend signal, published at global `version`.
    pub trend:
        Option<unsafe extern "C" fn(user: *mut c_void, trend: *const ots_trend_t, version: u64)>,
}

/// A C sink as the core's [`GlobalSink`]; `None` discards everything.
pub(crate) struct CSink<'a>(pub Option<&'a ots_sink_t>);

impl GlobalSink for CSink<'_> {
    fn reset(&mut self) {
        if let Some(f) = self.0.and_then(|s| s.reset.map(|f| (f, s.user))) {
            // SAFETY: a callback the application registered, called with
            // its own user pointer, as documented on `ots_sink_t`.
            unsafe { (f.0)(f.1) }
        }
    }

    fn global_upsert(&mut self, p: &GlobalPattern) {
        let Some((f, user)) = self.0.and_then(|s| s.global_upsert.map(|f| (f, s.user))) else {
            return;
        };
        let mut g = ots_global_pattern_t {
            id: p.id,
            embedding: p.embedding.as_array().as_ptr(),
            success_rate: p.success_rate,
            sample_count: p.sample_count,
            contributors: p.contributors,
            category: [0; OTS_CATEGORY_SIZE],
            version: p.version,
        };
        // Cannot fail: a category holds at most OTS_CATEGORY_MAX bytes.
        let _ = args::copy_to_array(p.category.as_str(), &mut g.category);
        // SAFETY: as in `reset`; `g` and the embedding it points to live
        // until the call returns.
        unsafe { f(user, &g) }
    }

    fn global_remove(&mut self, id: u32, version: u64) {
        if let Some(f) = self.0.and_then(|s| s.global_remove.map(|f| (f, s.user))) {
            // SAFETY: as in `reset`.
            unsafe { (f.0)(f.1, id, version) }
        }
    }

    fn trend(&mut self, t: &TrendSignal, version: u64) {
        let Some((f, user)) = self.0.and_then(|s| s.trend.map(|f| (f, s.user))) else {
            return;
        };
        let mut c = ots_trend_t {
            content_id: [0; OTS_CONTENT_ID_SIZE],
            score: t.score,
            region: [0; OTS_REGION_SIZE],
            category: [0; OTS_CATEGORY_SIZE],
            calculated_at: t.calculated_at,
        };
        // Cannot fail: each field is within its array's bound.
        let _ = args::copy_to_array(t.content_id.as_str(), &mut c.content_id);
        let _ = args::copy_to_array(t.region.as_str(), &mut c.region);
        let _ = args::copy_to_array(t.category.as_str(), &mut c.category);
        // SAFETY: as in `reset`; `c` lives until the call returns.
        unsafe { f(user, &c, version) }
    }
}
