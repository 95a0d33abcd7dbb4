//! The device's sync state machine, sans-IO.
//!
//! [`SyncClient`] holds up to `N` local patterns with the integer codes and
//! revisions the server last acknowledged, the device's global version and
//! its sync sequence. Time and bytes come in as arguments:
//!
//! 1. [`upsert`](SyncClient::upsert) / [`remove`](SyncClient::remove) record
//!    what the device learned;
//! 2. [`prepare`](SyncClient::prepare) writes an upload frame of what changed
//!    and passes the quality filter, oldest change first, as much as fits;
//! 3. the caller sends it (any [`Transport`](crate::Transport)) and keeps the bytes;
//! 4. [`apply`](SyncClient::apply) consumes the response: acks, conflicts,
//!    global changes, pacing. On a transport error call
//!    [`transport_failed`](SyncClient::transport_failed) and resend **the same
//!    bytes** at [`next_sync_at`](SyncClient::next_sync_at).
//!
//! [`exchange`](SyncClient::exchange) does 2–4 over a [`Transport`](crate::Transport). The
//! protocol is described in `docs/protocol.md`.
//!
//! ## Memory
//! `size_of::<SyncClient<N>>()` is about `N * 1.6 KB` (two `[i16; 384]` per
//! slot: current and acknowledged codes) plus ~300 bytes. Keep it in a
//! `static` and use the in-place [`reset`](SyncClient::reset) and
//! [`restore_into`](SyncClient::restore_into) on a small stack:
//! [`new`](SyncClient::new) and [`restore`](SyncClient::restore) return the
//! client by value, which may cost a client-sized temporary on the stack.
//! The entry points with large locals (`upsert`, `prepare`, applying a
//! response, `snapshot`, `restore_into`) are `#[inline(never)]`: each has
//! its own frame, so the caller's frame does not grow by all of them at
//! once. Measured on a Cortex-M4F (`examples/cortex-m`, `docs/memory.md`):
//! a whole sync cycle peaks at about 11.3 KB of stack, with or without zstd
//! (`apply`'s `reconstruct` is the deepest point). Encoding uses a
//! [`MAX_CODED_LEN`](crate::codec::MAX_CODED_LEN) scratch on the stack; [`apply`](SyncClient::apply) needs
//! two [`Codes`] (1.5 KB) and one [`Embedding`](crate::Embedding) (1.5 KB) on
//! the stack. The caller provides the request buffer (see
//! [`SyncClient::prepare`]) and the response buffer (`caps.max_bytes`).
//!
//! ## Files
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`Config`], [`SyncClient`], constructors and accessors |
//! | `upload.rs` | `upsert`, `remove`, `prepare` (the upload frame) |
//! | `apply.rs` | `apply`, `apply_zstd` and its `ZstdBuffers`: acks, conflicts, 409/401/429/5xx, backoff |
//! | `feed.rs` | `feed_path`, `apply_feed`, global records and trends to the [`GlobalSink`] |
//! | `exchange.rs` | `exchange` over a [`Transport`](crate::Transport), `authorization`, [`SyncError`] |
//! | `snapshot.rs` | `snapshot`, `restore`, `restore_into` |
//! | `persist.rs` | feature `flash`: the snapshot on NOR flash, power-loss safe |
//! | `backoff.rs`, `filter.rs`, `sink.rs` | [`Backoff`], [`QualityFilter`], the [`GlobalSink`] trait, [`CodedGlobal`] |

mod apply;
mod backoff;
mod exchange;
mod feed;
mod filter;
#[cfg(feature = "flash")]
pub mod persist;
mod sink;
mod snapshot;
mod upload;

#[cfg(feature = "zstd")]
pub use apply::ZstdBuffers;
pub use apply::{MAX_RETRY_AFTER_S, MAX_SEQ_JUMP};
pub use backoff::{Backoff, Jitter};
pub use exchange::{SyncError, SYNC_PATH};
pub use filter::QualityFilter;
pub use sink::{CodedGlobal, GlobalSink};
pub use snapshot::max_snapshot_len;

use crate::codec::{Codebook, Codes};
use crate::types::{Category, DeviceId, PatternId};
use crate::wire::Caps;

/// How a client behaves. Everything but the device id has a default.
#[derive(Clone, Debug)]
pub struct Config {
    /// Sent as `X-Device-ID`.
    pub device_id: DeviceId,
    /// Which patterns are uploaded (default 0.7 / 10).
    pub filter: QualityFilter,
    /// What the device can take in one response (must match the response
    /// buffer the caller passes).
    pub caps: Caps,
    /// Retry timing after failures.
    pub backoff: Backoff,
    /// Seed of the jitter generator: make it differ between devices.
    pub jitter_seed: u64,
    /// Ask for zstd-compressed responses (flag bit 1 of the upload); the
    /// responses must then be applied with `apply_zstd` (feature `zstd`).
    pub accept_zstd: bool,
    /// The device's secret key: when set, every request is signed
    /// (`Authorization: OTS1-HMAC-SHA256 ...`, see [`crate::transport::auth`]). The
    /// server requires it unless it runs with authentication turned off.
    pub auth_key: Option<crate::DeviceKey>,
}

impl Config {
    /// Defaults for `device_id`: the product's quality filter, 64 global
    /// records, 64 trends and a 16 KiB response buffer, 1 s..5 min backoff.
    pub fn new(device_id: DeviceId) -> Self {
        let seed = device_id
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        Config {
            device_id,
            filter: QualityFilter::DEFAULT,
            caps: Caps {
                max_globals: 64,
                max_trends: 64,
                max_bytes: 16 * 1024,
            },
            backoff: Backoff::default(),
            jitter_seed: seed,
            accept_zstd: false,
            auth_key: None,
        }
    }
}

/// One local pattern and what the server acknowledged of it.
#[derive(Clone, Debug)]
struct Slot {
    id: PatternId,
    /// The device's current codes.
    current: Codes,
    /// Codes the server holds at `rev`; meaningful only when `acked_valid`.
    acked: Codes,
    /// Server revision the device's next update is based on (0 = none).
    rev: u32,
    /// `acked` equals the server's codes at `rev`, so a delta is possible.
    acked_valid: bool,
    success_rate: f32,
    sample_count: u32,
    category: Category,
    /// Differs from what the server acknowledged.
    dirty: bool,
    /// The device dropped it; a removal is pending.
    removed: bool,
    /// When the oldest unacknowledged change happened (ms).
    changed_at: u64,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    seq: u64,
    len: usize,
}

/// Counters, for diagnostics and the fleet simulation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stats {
    /// Responses applied (200).
    pub synced: u64,
    /// Pattern updates and removals acknowledged.
    pub acked: u64,
    /// Conflicts received (each resolved by the documented rule).
    pub conflicts: u64,
    /// Requests sent again after a failure (same bytes, same seq).
    pub resends: u64,
    /// 409s that moved the sequence forward.
    pub resequenced: u64,
    /// Requests the server refused with another 4xx.
    pub rejected: u64,
    /// `401 replayed_counter` answers that moved the request counter forward.
    pub counter_resyncs: u64,
    /// Answers to signed requests that were not signed for them (forged or
    /// replayed): nothing of them was applied.
    pub unauthenticated: u64,
}

/// What an applied response did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Outcome {
    /// The response was applied; the client's state advanced.
    Synced(Summary),
    /// Overload or a server error: resend the same request at `at_ms`.
    RetryLater {
        /// When to resend.
        at_ms: u64,
    },
    /// The server's sequence was ahead (409): the request was dropped, the
    /// patterns are still dirty; prepare a new one at
    /// [`next_sync_at`](SyncClient::next_sync_at) (at once after a first
    /// 409, after the backoff when 409s or other failures repeat).
    Resequenced {
        /// The sequence number the next request uses.
        seq: u64,
    },
}

/// Counts of one applied response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Summary {
    /// Pattern updates sent in the request.
    pub uploaded: u16,
    /// Acks received.
    pub acked: u16,
    /// Conflicts received.
    pub conflicts: u16,
    /// Global upserts and removals received.
    pub globals: u16,
    /// Trend signals received.
    pub trends: u16,
    /// More global changes wait (the next sync is due now).
    pub more: bool,
}

/// The device side of the sync protocol for up to `N` patterns.
pub struct SyncClient<'cb, const N: usize> {
    cb: Codebook<'cb>,
    cfg: Config,
    slots: heapless::Vec<Slot, N>,
    seq: u64,
    global_version: u64,
    inflight: Option<InFlight>,
    failures: u32,
    next_sync_at: u64,
    rng: Jitter,
    stats: Stats,
    /// The counter the next signed request uses (see [`crate::transport::auth`]).
    auth_counter: u64,
    /// The counter stored in the snapshot this client was restored from
    /// (it resumed at that plus the window): written back unchanged while
    /// nothing was signed since, so a snapshot restores to itself.
    auth_restored: Option<u64>,
}

impl<'cb, const N: usize> SyncClient<'cb, N> {
    /// A client with no patterns, sequence 1 and global version 0.
    pub fn new(codebook: Codebook<'cb>, config: Config) -> Self {
        let rng = Jitter::new(config.jitter_seed);
        SyncClient {
            cb: codebook,
            cfg: config,
            slots: heapless::Vec::new(),
            seq: 1,
            global_version: 0,
            inflight: None,
            failures: 0,
            next_sync_at: 0,
            rng,
            stats: Stats::default(),
            auth_counter: 1,
            auth_restored: None,
        }
    }

    /// Puts the client back into the state [`new`](Self::new) gives, with
    /// `codebook` and `config`, in place: unlike `*client = SyncClient::new(..)`
    /// it needs no client-sized temporary on the stack (`N * 1.6 KB`).
    pub fn reset(&mut self, codebook: Codebook<'cb>, config: Config) {
        self.rng = Jitter::new(config.jitter_seed);
        self.cb = codebook;
        self.cfg = config;
        self.slots.clear();
        self.seq = 1;
        self.global_version = 0;
        self.inflight = None;
        self.failures = 0;
        self.next_sync_at = 0;
        self.stats = Stats::default();
        self.auth_counter = 1;
        self.auth_restored = None;
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The codebook.
    pub fn codebook(&self) -> &Codebook<'cb> {
        &self.cb
    }

    /// Sequence number of the next new request (the one in flight, if any).
    pub fn seq(&self) -> u64 {
        self.inflight.map_or(self.seq, |f| f.seq)
    }

    /// The global version the device has applied.
    pub fn global_version(&self) -> u64 {
        self.global_version
    }

    /// When the next exchange is due (ms, on the caller's clock).
    pub fn next_sync_at(&self) -> u64 {
        self.next_sync_at
    }

    /// Length of the request in flight (to resend from the caller's buffer).
    pub fn in_flight(&self) -> Option<usize> {
        self.inflight.map(|f| f.len)
    }

    /// The request counter the next signed request uses. It grows by one
    /// with every request sent (resends included) and is persisted in the
    /// snapshot with a reserve of [`auth::COUNTER_WINDOW`](crate::transport::auth::COUNTER_WINDOW).
    pub fn auth_counter(&self) -> u64 {
        self.auth_counter
    }

    /// Counters since creation (not persisted).
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Number of local patterns (removed ones count until acknowledged).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when the client holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Patterns waiting to be uploaded (dirty and passing the filter).
    pub fn pending(&self) -> usize {
        self.slots.iter().filter(|s| self.uploadable(s)).count()
    }

    /// The acknowledged state of a pattern: revision and codes, when the
    /// server holds them (what a checker compares with the server).
    pub fn acked(&self, id: &PatternId) -> Option<(u32, &Codes)> {
        self.slots
            .iter()
            .find(|s| &s.id == id && s.rev > 0 && s.acked_valid)
            .map(|s| (s.rev, &s.acked))
    }

    /// Ids of all local patterns.
    pub fn ids(&self) -> impl Iterator<Item = &PatternId> {
        self.slots.iter().map(|s| &s.id)
    }
}

#[cfg(test)]
mod tests;
