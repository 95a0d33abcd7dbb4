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
//! 3. the caller sends it (any [`Transport`]) and keeps the bytes;
//! 4. [`apply`](SyncClient::apply) consumes the response: acks, conflicts,
//!    global changes, pacing. On a transport error call
//!    [`transport_failed`](SyncClient::transport_failed) and resend **the same
//!    bytes** at [`next_sync_at`](SyncClient::next_sync_at).
//!
//! [`exchange`](SyncClient::exchange) does 2–4 over a [`Transport`]. The
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
//! a whole sync cycle peaks at about 12 KB of stack, 17 KB with zstd. Encoding uses a
//! [`MAX_CODED_LEN`] scratch on the stack; [`apply`](SyncClient::apply) needs
//! two [`Codes`] (1.5 KB) and one [`Embedding`](crate::Embedding) (1.5 KB) on
//! the stack. The caller provides the request buffer (see
//! [`SyncClient::prepare`]) and the response buffer (`caps.max_bytes`).

mod backoff;
mod sink;
mod snapshot;

pub use backoff::{Backoff, Jitter};
pub use sink::GlobalSink;
pub use snapshot::max_snapshot_len;

use crate::codec::{Codebook, Codes, MAX_CODED_LEN};
use crate::types::{Category, DeviceId, GlobalPattern, Pattern, PatternId};
use crate::wire::{
    Caps, Coding, FrameReader, FrameWriter, Kind, PatternRemoval, PatternUpdate, Record,
    UploadHead, MAX_UPLOAD_PATTERNS,
};
use crate::{Error, QualityFilter, Request, Response, Result, Transport};

/// Path of the sync endpoint.
pub const SYNC_PATH: &str = "/api/v1/sync";

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
    /// (`Authorization: OTS1-HMAC-SHA256 ...`, see [`crate::auth`]). The
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
    /// patterns are still dirty; prepare a new one (now).
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

/// An [`exchange`](SyncClient::exchange) failure: the transport's, or the core's.
#[derive(Debug)]
pub enum SyncError<E> {
    /// The request did not complete; it will be resent at `next_sync_at`.
    Transport(E),
    /// Preparing or applying failed (see [`Error`]).
    Core(Error),
}

impl<E> From<Error> for SyncError<E> {
    fn from(e: Error) -> Self {
        SyncError::Core(e)
    }
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
    /// The counter the next signed request uses (see [`crate::auth`]).
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
    /// snapshot with a reserve of [`auth::COUNTER_WINDOW`](crate::auth::COUNTER_WINDOW).
    pub fn auth_counter(&self) -> u64 {
        self.auth_counter
    }

    /// Signs the next request with the configured key, taking the next
    /// counter, and formats the `Authorization` header value into `buf`.
    /// `None` (and no counter used) when the client has no key.
    ///
    /// [`exchange`](Self::exchange) calls it for every request it sends; a
    /// caller with its own transport (after [`prepare`](Self::prepare)) calls
    /// it once per send attempt, resends included, and sends the header
    /// [`auth::HEADER`](crate::auth::HEADER) with the value.
    pub fn authorization<'b>(
        &mut self,
        method: crate::Method,
        path: &str,
        body: &[u8],
        buf: &'b mut [u8; crate::auth::HEADER_MAX],
    ) -> Result<Option<&'b str>> {
        let Some(key) = &self.cfg.auth_key else {
            return Ok(None);
        };
        let counter = self.auth_counter;
        let sig = crate::auth::sign(
            key,
            crate::auth::method_str(method),
            path,
            self.cfg.device_id.as_str(),
            counter,
            body,
        )?;
        self.auth_counter = counter.saturating_add(1);
        Ok(Some(crate::auth::format_header(counter, &sig, buf)))
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

    /// Records the current state of a pattern (validated, then quantised).
    /// A new id takes a free slot ([`Error::CapacityExceeded`] when all `N`
    /// are used). The pattern becomes dirty if anything changed.
    #[inline(never)] // own frame: see "Memory" above
    pub fn upsert(&mut self, p: &Pattern, now_ms: u64) -> Result<()> {
        p.validate()?;
        let codes = self.cb.quantize(&p.embedding);
        match self.slots.iter_mut().find(|s| s.id == p.id) {
            Some(s) => {
                let changed = s.removed
                    || s.current != codes
                    || s.success_rate != p.success_rate
                    || s.sample_count != p.sample_count
                    || s.category != p.category;
                if changed {
                    s.current = codes;
                    s.success_rate = p.success_rate;
                    s.sample_count = p.sample_count;
                    s.category = p.category.clone();
                    s.removed = false;
                    if !s.dirty {
                        s.dirty = true;
                        s.changed_at = now_ms;
                    }
                }
            }
            None => {
                let slot = Slot {
                    id: p.id.clone(),
                    current: codes,
                    acked: [0; crate::DIM],
                    rev: 0,
                    acked_valid: false,
                    success_rate: p.success_rate,
                    sample_count: p.sample_count,
                    category: p.category.clone(),
                    dirty: true,
                    removed: false,
                    changed_at: now_ms,
                };
                self.slots.push(slot).map_err(|_| Error::CapacityExceeded)?;
            }
        }
        Ok(())
    }

    /// Drops a pattern: a removal is uploaded if the server has it, and the
    /// slot is freed once that is acknowledged (at once if the server never
    /// had it). [`Error::NotFound`] for an unknown id.
    pub fn remove(&mut self, id: &PatternId, now_ms: u64) -> Result<()> {
        let i = self
            .slots
            .iter()
            .position(|s| &s.id == id)
            .ok_or(Error::NotFound)?;
        if self.slots[i].rev == 0 && self.inflight.is_none() {
            self.slots.swap_remove(i);
            return Ok(());
        }
        let s = &mut self.slots[i];
        s.removed = true;
        if !s.dirty {
            s.dirty = true;
            s.changed_at = now_ms;
        }
        Ok(())
    }

    fn uploadable(&self, s: &Slot) -> bool {
        s.dirty && (s.removed || self.cfg.filter.accepts(s.success_rate, s.sample_count))
    }

    /// Writes the next upload frame into `buf` and returns its length: the
    /// head, then the uploadable patterns oldest change first, as many as fit
    /// `buf` and [`MAX_UPLOAD_PATTERNS`] (the rest go next time). A frame
    /// with no pattern still asks for global changes.
    ///
    /// `buf` needs at least `OVERHEAD + max_len::UPLOAD_HEAD` (45) bytes;
    /// ~150 bytes per changed pattern is typical, `max_len::PATTERN` the
    /// worst case. Keep the bytes until the exchange is applied: a retry
    /// sends them again. [`Error::Busy`] while a request is in flight.
    #[inline(never)] // own frame: see "Memory" above
    pub fn prepare(&mut self, now_ms: u64, buf: &mut [u8]) -> Result<usize> {
        let _ = now_ms;
        if self.inflight.is_some() {
            return Err(Error::Busy);
        }
        let mut order: heapless::Vec<(u64, u16), N> = heapless::Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if self.uploadable(s) {
                // Cannot fail: at most N slots.
                let _ = order.push((s.changed_at, i as u16));
            }
        }
        order.sort_unstable();

        let mut w = FrameWriter::new(buf, Kind::Upload, self.cb.id())?;
        if self.cfg.accept_zstd {
            w.accept_zstd();
        }
        w.push(&Record::UploadHead(UploadHead {
            seq: self.seq,
            since: self.global_version,
            caps: self.cfg.caps,
        }))?;
        let mut code = [0u8; MAX_CODED_LEN];
        let mut sent = 0usize;
        for &(_, i) in order.iter() {
            if sent >= MAX_UPLOAD_PATTERNS {
                break;
            }
            let Some(s) = self.slots.get(i as usize) else {
                continue;
            };
            let record = if s.removed {
                Record::Removal(PatternRemoval {
                    id: s.id.clone(),
                    base_rev: s.rev,
                })
            } else {
                let delta = s.rev > 0 && s.acked_valid;
                let base = if delta { Some(&s.acked) } else { None };
                let n = self.cb.encode(&s.current, base, &mut code)?;
                Record::Pattern(PatternUpdate {
                    id: s.id.clone(),
                    base_rev: s.rev,
                    success_rate: s.success_rate,
                    sample_count: s.sample_count,
                    category: s.category.clone(),
                    coding: if delta {
                        Coding::Delta
                    } else {
                        Coding::Absolute
                    },
                    code: code.get(..n).ok_or(Error::BufferTooSmall)?,
                })
            };
            match w.push(&record) {
                Ok(()) => sent += 1,
                Err(Error::BufferTooSmall) => break,
                Err(e) => return Err(e),
            }
        }
        let len = w.finish()?.len();
        self.inflight = Some(InFlight { seq: self.seq, len });
        debug!("prepared seq {} with {} patterns", self.seq, sent);
        Ok(len)
    }

    /// The request in flight failed in transit: schedule a resend of the
    /// same bytes with capped exponential backoff and full jitter.
    pub fn transport_failed(&mut self, now_ms: u64) {
        self.fail(now_ms, 0);
    }

    fn fail(&mut self, now_ms: u64, retry_after_ms: u64) -> u64 {
        self.failures = self.failures.saturating_add(1);
        let d = self
            .cfg
            .backoff
            .delay_ms(self.failures, retry_after_ms, &mut self.rng);
        self.next_sync_at = now_ms.saturating_add(d);
        self.next_sync_at
    }

    /// Consumes the server's answer to `sent` (the exact bytes of the request
    /// in flight). On a 200 the whole response is checked first and only then
    /// applied, so a bad response changes nothing (it is an error, and the
    /// same request is resent later).
    ///
    /// Errors: any frame decode error, [`Error::UnknownCodebook`],
    /// [`Error::ProtocolViolation`], [`Error::Rejected`] (another 4xx: the
    /// request is dropped, its patterns stay dirty).
    pub fn apply<S: GlobalSink>(
        &mut self,
        sent: &[u8],
        response: Response,
        body: &[u8],
        now_ms: u64,
        sink: &mut S,
    ) -> Result<Outcome> {
        self.apply_opened(sent, response, body, now_ms, sink, || {
            let f = FrameReader::parse(body)?;
            if f.is_compressed() {
                return Err(Error::BadFlags);
            }
            Ok(f)
        })
    }

    /// [`apply`](Self::apply) for a device that asked for compressed
    /// responses (`Config::accept_zstd`): a compressed body is decompressed
    /// with `zstd` into `scratch`, which must hold `caps.max_bytes`.
    #[cfg(feature = "zstd")]
    #[allow(clippy::too_many_arguments)]
    pub fn apply_zstd<S: GlobalSink>(
        &mut self,
        sent: &[u8],
        response: Response,
        body: &[u8],
        zstd: &mut crate::compress::Decompressor<'_>,
        scratch: &mut [u8],
        now_ms: u64,
        sink: &mut S,
    ) -> Result<Outcome> {
        self.apply_opened(sent, response, body, now_ms, sink, move || {
            FrameReader::parse(body)?.decompress(zstd, scratch)
        })
    }

    fn apply_opened<'x, S: GlobalSink>(
        &mut self,
        sent: &[u8],
        response: Response,
        body: &[u8],
        now_ms: u64,
        sink: &mut S,
        open: impl FnOnce() -> Result<FrameReader<'x>>,
    ) -> Result<Outcome> {
        let Some(inflight) = self.inflight else {
            return Err(Error::ProtocolViolation);
        };
        if sent.len() != inflight.len {
            return Err(Error::WrongLength);
        }
        match response.status {
            200 => match open().and_then(|f| self.apply_frame(sent, inflight, f, now_ms, sink)) {
                Ok(summary) => Ok(Outcome::Synced(summary)),
                Err(e) => {
                    self.fail(now_ms, 0);
                    self.stats.resends += 1;
                    Err(e)
                }
            },
            401 if self.counter_resync(body) => {
                self.next_sync_at = now_ms;
                Ok(Outcome::RetryLater { at_ms: now_ms })
            }
            409 => {
                let last = parse_json_u64(body, b"\"last_seq\"").ok_or(Error::ProtocolViolation)?;
                self.seq = last.saturating_add(1).max(self.seq);
                self.inflight = None;
                self.failures = 0;
                self.next_sync_at = now_ms;
                self.stats.resequenced += 1;
                warn!("sequence conflict; continuing at {}", self.seq);
                Ok(Outcome::Resequenced { seq: self.seq })
            }
            429 | 500..=599 => {
                let ra = u64::from(response.retry_after_s.unwrap_or(0)) * 1000;
                let at_ms = self.fail(now_ms, ra);
                self.stats.resends += 1;
                Ok(Outcome::RetryLater { at_ms })
            }
            _ => {
                self.inflight = None;
                self.stats.rejected += 1;
                self.fail(now_ms, 0);
                Err(Error::Rejected)
            }
        }
    }

    /// A `401 replayed_counter` carries the server's `last_counter`: a device
    /// whose counter fell behind (a restored backup, a cloned box, a lost
    /// snapshot) continues after it and resends the same request, signed
    /// anew. The answer must be consistent with the counter just sent
    /// (`last_counter >= sent`, or the device would loop), and only forward
    /// jumps of at most `MAX_COUNTER_JUMP` are taken.
    fn counter_resync(&mut self, body: &[u8]) -> bool {
        let code = b"\"replayed_counter\"";
        if self.cfg.auth_key.is_none() || !body.windows(code.len()).any(|w| w == code) {
            return false;
        }
        let Some(last) = parse_json_u64(body, b"\"last_counter\"") else {
            return false;
        };
        // The request just refused was signed with the previous counter.
        let sent = self.auth_counter.saturating_sub(1);
        if last < sent {
            return false;
        }
        let next = last.saturating_add(1).max(self.auth_counter);
        if next - self.auth_counter > crate::auth::MAX_COUNTER_JUMP || next == u64::MAX {
            return false;
        }
        warn!(
            "request counter behind the server's; continuing at {}",
            next
        );
        self.auth_counter = next;
        self.stats.counter_resyncs += 1;
        true
    }

    #[inline(never)] // own frame: see "Memory" above
    fn apply_frame<S: GlobalSink>(
        &mut self,
        sent: &[u8],
        inflight: InFlight,
        resp: FrameReader<'_>,
        now_ms: u64,
        sink: &mut S,
    ) -> Result<Summary> {
        let req = FrameReader::parse(sent)?;
        self.check_download(&resp)?;
        let mut scratch: Codes = [0; crate::DIM];

        // Pass 1: check everything, change nothing.
        let mut head = None;
        let mut summary = Summary::default();
        for r in req.records() {
            if let Record::Pattern(_) = r? {
                summary.uploaded = summary.uploaded.saturating_add(1);
            }
        }
        // Request records already answered: each gets one ack or one
        // conflict, never both or two (a second would be applied on top of
        // the first).
        let mut answered: u128 = 0;
        for r in resp.records() {
            match r? {
                Record::DownloadHead(h) => {
                    if h.seq != inflight.seq {
                        return Err(Error::ProtocolViolation);
                    }
                    head = Some(h);
                }
                Record::Ack(a) => {
                    answer(&req, &a.id, &mut answered)?;
                    summary.acked = summary.acked.saturating_add(1);
                }
                Record::Conflict(c) => {
                    answer(&req, &c.id, &mut answered)?;
                    if let Some(st) = &c.state {
                        self.cb.decode(st.code, None, &mut scratch)?;
                    }
                    summary.conflicts = summary.conflicts.saturating_add(1);
                }
                Record::GlobalUpsert(g) => {
                    self.cb.decode(g.code, None, &mut scratch)?;
                    summary.globals = summary.globals.saturating_add(1);
                }
                // A broken server may send more than the caps asked for;
                // the counts are diagnostics and saturate.
                Record::GlobalRemove(_) => summary.globals = summary.globals.saturating_add(1),
                Record::Trend(_) => summary.trends = summary.trends.saturating_add(1),
                _ => return Err(Error::UnknownKind),
            }
        }
        let head = head.ok_or(Error::Truncated)?;
        // Acks decode our own deltas against the acked base: check them too.
        for r in resp.records() {
            if let Ok(Record::Ack(a)) = r {
                if let Some(Record::Pattern(p)) = find_sent(&req, &a.id)? {
                    let slot = self.slots.iter().find(|s| s.id == p.id);
                    let base = match (p.coding, slot) {
                        (Coding::Delta, Some(s)) => Some(&s.acked),
                        (Coding::Delta, None) => return Err(Error::ProtocolViolation),
                        (Coding::Absolute, _) => None,
                    };
                    self.cb.decode(p.code, base, &mut scratch)?;
                }
            }
        }

        // Pass 2: apply.
        for r in resp.records() {
            match r? {
                Record::Ack(a) => {
                    let sent_rec = find_sent(&req, &a.id)?;
                    self.apply_ack(sent_rec, a.revision, &mut scratch)?;
                    self.stats.acked += 1;
                }
                Record::Conflict(c) => {
                    self.resolve_conflict(&c, &mut scratch)?;
                    self.stats.conflicts += 1;
                }
                _ => {}
            }
        }
        self.apply_globals(&resp, head.reset, sink, &mut scratch)?;
        self.global_version = head.global_version;
        self.seq = inflight.seq.saturating_add(1);
        self.inflight = None;
        self.failures = 0;
        self.next_sync_at = if head.more {
            now_ms
        } else {
            now_ms.saturating_add(u64::from(head.next_sync_s) * 1000)
        };
        self.stats.synced += 1;
        summary.more = head.more;
        Ok(summary)
    }

    fn apply_ack(
        &mut self,
        sent: Option<Record<'_>>,
        revision: u32,
        scratch: &mut Codes,
    ) -> Result<()> {
        match sent {
            Some(Record::Pattern(p)) => {
                let Some(i) = self.slots.iter().position(|s| s.id == p.id) else {
                    return Ok(());
                };
                let s = &mut self.slots[i];
                let base = match p.coding {
                    Coding::Delta => Some(&s.acked),
                    Coding::Absolute => None,
                };
                self.cb.decode(p.code, base, scratch)?;
                s.acked = *scratch;
                s.acked_valid = true;
                s.rev = revision;
                let same = s.current == *scratch
                    && s.success_rate == p.success_rate
                    && s.sample_count == p.sample_count
                    && s.category == p.category;
                if same && !s.removed {
                    s.dirty = false;
                }
            }
            Some(Record::Removal(r)) => {
                if let Some(i) = self.slots.iter().position(|s| s.id == r.id) {
                    if self.slots[i].removed {
                        self.slots.swap_remove(i);
                    } else {
                        // Re-added while the removal was in flight: upload it anew.
                        let s = &mut self.slots[i];
                        s.rev = 0;
                        s.acked_valid = false;
                        s.dirty = true;
                    }
                }
            }
            _ => return Err(Error::ProtocolViolation),
        }
        Ok(())
    }

    /// The documented rule (docs/protocol.md): merge by sample weight when the
    /// server's state came along, else adopt its revision and re-send absolute.
    fn resolve_conflict(
        &mut self,
        c: &crate::wire::Conflict<'_>,
        scratch: &mut Codes,
    ) -> Result<()> {
        let Some(s) = self.slots.iter_mut().find(|s| s.id == c.id) else {
            return Ok(());
        };
        s.rev = c.server_rev;
        s.dirty = true;
        match (&c.state, s.removed) {
            (Some(st), false) if c.server_rev > 0 => {
                self.cb.decode(st.code, None, scratch)?;
                let nd = i64::from(s.sample_count.max(1));
                let ns = i64::from(st.sample_count.max(1));
                for (cur, &srv) in s.current.iter_mut().zip(scratch.iter()) {
                    let num = nd * i64::from(*cur) + ns * i64::from(srv);
                    let q = div_round(num, nd + ns);
                    *cur = q.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16;
                }
                let w = (nd + ns) as f32;
                s.success_rate = ((nd as f32) * s.success_rate + (ns as f32) * st.success_rate) / w;
                s.success_rate = s.success_rate.clamp(0.0, 1.0);
                s.sample_count = s.sample_count.max(st.sample_count);
                s.acked = *scratch;
                s.acked_valid = true;
            }
            _ => {
                // No server state (or a removal): re-send ours, absolute,
                // based on the server's revision.
                s.acked_valid = false;
            }
        }
        Ok(())
    }

    /// Path of the `GET` feed page that continues after the device's global
    /// version: `/api/v1/global?since=V&limit=L&max_bytes=B`, at most `limit`
    /// records and `max_bytes` bytes (the caller's response buffer). Use it
    /// for the further pages after a sync whose response said `more`: the
    /// feed is read-only and cacheable, so it costs the server no write, and
    /// its pages may be larger than the sync response's `caps`.
    pub fn feed_path<'b>(&self, limit: u16, max_bytes: u32, buf: &'b mut [u8; 96]) -> &'b str {
        let mut w = 0usize;
        let mut put = |s: &[u8], buf: &mut [u8; 96]| {
            let end = (w + s.len()).min(buf.len());
            buf[w..end].copy_from_slice(&s[..end - w]);
            w = end;
        };
        let mut d = [0u8; 20];
        put(b"/api/v1/global?since=", buf);
        put(fmt_u64(self.global_version, &mut d).as_bytes(), buf);
        put(b"&limit=", buf);
        put(fmt_u64(u64::from(limit.max(1)), &mut d).as_bytes(), buf);
        put(b"&max_bytes=", buf);
        put(fmt_u64(u64::from(max_bytes), &mut d).as_bytes(), buf);
        core::str::from_utf8(&buf[..w]).unwrap_or("/api/v1/global")
    }

    /// Applies one page of the global feed (a download frame with `seq = 0`
    /// holding only global records and trends), checked whole before
    /// anything changes. Moves the cursor to the page's `global_version`.
    /// [`Error::Busy`] while a sync request is in flight (its response will
    /// move the cursor).
    pub fn apply_feed<S: GlobalSink>(&mut self, body: &[u8], sink: &mut S) -> Result<Summary> {
        if self.inflight.is_some() {
            return Err(Error::Busy);
        }
        let resp = FrameReader::parse(body)?;
        if resp.is_compressed() {
            return Err(Error::BadFlags);
        }
        self.check_download(&resp)?;
        let mut scratch: Codes = [0; crate::DIM];
        let mut head = None;
        let mut summary = Summary::default();
        for r in resp.records() {
            match r? {
                Record::DownloadHead(h) if h.seq == 0 => head = Some(h),
                Record::GlobalUpsert(g) => {
                    self.cb.decode(g.code, None, &mut scratch)?;
                    summary.globals += 1;
                }
                Record::GlobalRemove(_) => summary.globals += 1,
                Record::Trend(_) => summary.trends += 1,
                _ => return Err(Error::ProtocolViolation),
            }
        }
        let head = head.ok_or(Error::Truncated)?;
        self.apply_globals(&resp, head.reset, sink, &mut scratch)?;
        self.global_version = head.global_version;
        summary.more = head.more;
        Ok(summary)
    }

    /// A response must be a download frame coded with this client's codebook.
    fn check_download(&self, resp: &FrameReader<'_>) -> Result<()> {
        if resp.kind() != Kind::Download {
            return Err(Error::UnknownKind);
        }
        if resp.codebook_id() != self.cb.id() {
            return Err(Error::UnknownCodebook);
        }
        Ok(())
    }

    /// Pass 2 of a checked download: global records and trends to the sink.
    fn apply_globals<S: GlobalSink>(
        &self,
        resp: &FrameReader<'_>,
        reset: bool,
        sink: &mut S,
        scratch: &mut Codes,
    ) -> Result<()> {
        if reset {
            sink.reset();
        }
        for r in resp.records() {
            match r? {
                Record::GlobalUpsert(g) => {
                    self.cb.decode(g.code, None, scratch)?;
                    let embedding = self.cb.reconstruct(scratch)?;
                    sink.global_upsert(&GlobalPattern {
                        id: g.id,
                        embedding,
                        success_rate: g.success_rate,
                        sample_count: g.sample_count,
                        contributors: g.contributors,
                        category: g.category,
                        version: g.version,
                    });
                }
                Record::GlobalRemove(g) => sink.global_remove(g.id, g.version),
                Record::Trend(t) => sink.trend(&t.signal, t.version),
                _ => {}
            }
        }
        Ok(())
    }

    /// Prepares (or resends) a request, sends it over `transport` and applies
    /// the answer. `tx` must stay untouched between calls while a request is
    /// in flight; `rx` must hold `caps.max_bytes`.
    pub async fn exchange<T: Transport, S: GlobalSink>(
        &mut self,
        transport: &mut T,
        tx: &mut [u8],
        rx: &mut [u8],
        now_ms: u64,
        sink: &mut S,
    ) -> core::result::Result<Outcome, SyncError<T::Error>> {
        let len = match self.inflight {
            Some(f) => f.len,
            None => self.prepare(now_ms, tx)?,
        };
        let body = tx.get(..len).ok_or(Error::BufferTooSmall)?;
        // Every attempt, resends included, is signed with a new counter.
        let mut auth_buf = [0u8; crate::auth::HEADER_MAX];
        let auth = self.authorization(crate::Method::Post, SYNC_PATH, body, &mut auth_buf)?;
        let mut digits = [0u8; 20];
        let version = fmt_u64(self.global_version, &mut digits);
        let all = [
            ("X-Device-ID", self.cfg.device_id.as_str()),
            ("X-Sync-Version", version),
            ("Content-Type", "application/octet-stream"),
            (crate::auth::HEADER, auth.unwrap_or("")),
        ];
        let headers = if auth.is_some() { &all[..] } else { &all[..3] };
        let request = Request {
            method: crate::Method::Post,
            path: SYNC_PATH,
            headers,
            body,
        };
        let response = match transport.send(request, rx).await {
            Ok(r) => r,
            Err(e) => {
                self.transport_failed(now_ms);
                self.stats.resends += 1;
                return Err(SyncError::Transport(e));
            }
        };
        let body = rx.get(..response.body_len).ok_or(Error::BufferTooSmall)?;
        let sent = tx.get(..len).ok_or(Error::BufferTooSmall)?;
        Ok(self.apply(sent, response, body, now_ms, sink)?)
    }
}

/// The record of the request that carried `id`, or a protocol violation.
fn find_sent<'a>(req: &FrameReader<'a>, id: &PatternId) -> Result<Option<Record<'a>>> {
    for r in req.records() {
        match r? {
            Record::Pattern(p) if &p.id == id => return Ok(Some(Record::Pattern(p))),
            Record::Removal(x) if &x.id == id => return Ok(Some(Record::Removal(x))),
            _ => {}
        }
    }
    Err(Error::ProtocolViolation)
}

/// Marks the request record that carried `id` as answered; an id the
/// request does not carry, or one already answered, is a protocol
/// violation. `req`'s records were checked before.
fn answer(req: &FrameReader<'_>, id: &PatternId, answered: &mut u128) -> Result<()> {
    let i = req
        .records()
        .position(|r| match r {
            Ok(Record::Pattern(p)) => &p.id == id,
            Ok(Record::Removal(x)) => &x.id == id,
            _ => false,
        })
        .ok_or(Error::ProtocolViolation)?;
    // An upload holds at most 1 + MAX_UPLOAD_PATTERNS records.
    let bit = u32::try_from(i)
        .ok()
        .and_then(|i| 1u128.checked_shl(i))
        .ok_or(Error::ProtocolViolation)?;
    if *answered & bit != 0 {
        return Err(Error::ProtocolViolation);
    }
    *answered |= bit;
    Ok(())
}

/// Round-half-away-from-zero integer division (`d > 0`).
fn div_round(n: i64, d: i64) -> i64 {
    if n >= 0 {
        (n + d / 2) / d
    } else {
        -((-n + d / 2) / d)
    }
}

/// Formats `v` in decimal into `buf`, returning the digits.
pub fn fmt_u64(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    core::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Finds `"<key>": N` in an error's JSON body (`key` with its quotes).
fn parse_json_u64(body: &[u8], key: &[u8]) -> Option<u64> {
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = body.get(at..)?;
    let rest = &rest[rest.iter().position(|&b| b != b' ' && b != b':')?..];
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    let digits = core::str::from_utf8(rest.get(..end)?).ok()?;
    digits.parse().ok()
}

#[cfg(test)]
mod tests;
