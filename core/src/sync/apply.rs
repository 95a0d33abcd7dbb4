//! Consuming the server's answer to an upload: the whole response is
//! checked, then acks, conflicts and global changes are applied; 409
//! resequencing, `401 replayed_counter` resync and backoff after failures.

use super::{GlobalSink, InFlight, Outcome, Summary, SyncClient};
use crate::codec::Codes;
use crate::types::PatternId;
#[cfg(feature = "zstd")]
use crate::wire::zstd::Decompressor;
use crate::wire::{Coding, FrameReader, Record};
use crate::{Error, Response, Result};

/// The caller's memory for [`SyncClient::apply_zstd`], built once at
/// start-up and kept for every response (as embassy-net's
/// `StackResources` or minimq's `Buffers` are).
///
/// | buffer | must hold | size |
/// |---|---|---|
/// | `workspace` (given to [`new`](Self::new)) | zstd's decompression context (`ZSTD_DCtx` and its literal buffer) | [`DCTX_WORKSPACE_WORDS`] `u64`s: 31,288 B on a Cortex-M4 with this repository's zstd C flags, 95,800 B with the stock ones (`docs/memory.md`); `new` checks it against the linked library |
/// | `scratch` | the decompressed records of one response body | at least `Config::caps.max_bytes`, the response buffer's size: the server keeps the uncompressed frame within it. A body that decompresses to more is [`Error::Decompression`] and changes nothing |
///
/// Neither needs to be zeroed or keeps anything between responses.
///
/// ```ignore
/// static DCTX: StaticCell<[u64; DCTX_WORKSPACE_WORDS]> = StaticCell::new();
/// static SCRATCH: StaticCell<[u8; RX]> = StaticCell::new();
/// let mut z = ZstdBuffers::new(DCTX.init([0; DCTX_WORKSPACE_WORDS]), SCRATCH.init([0; RX]))?;
/// client.apply_zstd(sent, response, body, &mut z, now_ms, &mut sink)?;
/// ```
///
/// [`DCTX_WORKSPACE_WORDS`]: crate::wire::zstd::DCTX_WORKSPACE_WORDS
#[cfg(feature = "zstd")]
pub struct ZstdBuffers<'a> {
    decompressor: Decompressor<'a>,
    scratch: &'a mut [u8],
}

#[cfg(feature = "zstd")]
impl<'a> ZstdBuffers<'a> {
    /// Sets up the decompressor in `workspace` and keeps `scratch` for the
    /// decompressed records (sizes in the table above).
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] when `workspace` is smaller than the linked
    /// zstd library needs; [`Error::Decompression`] when zstd refuses it.
    pub fn new(workspace: &'a mut [u64], scratch: &'a mut [u8]) -> Result<Self> {
        Ok(ZstdBuffers {
            decompressor: Decompressor::new(workspace)?,
            scratch,
        })
    }
}

/// Largest forward jump of the upload sequence a client takes from a `409`
/// (`last_seq + 1`): as with the request counter, an answer must not be able
/// to run the sequence to its end.
pub const MAX_SEQ_JUMP: u64 = 1 << 32;

/// Longest `Retry-After` a client honours from a signed answer: one day.
/// (An unsigned one counts for at most the backoff cap.)
pub const MAX_RETRY_AFTER_S: u64 = 86_400;

impl<'cb, const N: usize> SyncClient<'cb, N> {
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
    /// through `buffers` (built once, see [`ZstdBuffers`]); a plain body is
    /// applied as [`apply`](Self::apply) would.
    #[cfg(feature = "zstd")]
    pub fn apply_zstd<S: GlobalSink>(
        &mut self,
        sent: &[u8],
        response: Response,
        body: &[u8],
        buffers: &mut ZstdBuffers<'_>,
        now_ms: u64,
        sink: &mut S,
    ) -> Result<Outcome> {
        let ZstdBuffers {
            decompressor,
            scratch,
        } = buffers;
        self.apply_opened(sent, response, body, now_ms, sink, move || {
            FrameReader::parse(body)?.decompress(decompressor, scratch)
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
        // A client with a key trusts only answers signed for the request it
        // sent (the counter it signed it with is the one before the next).
        let authentic = match &self.cfg.auth_key {
            None => true,
            Some(key) => response.signature.is_some_and(|sig| {
                crate::transport::auth::verify_response(
                    key,
                    self.auth_counter.saturating_sub(1),
                    response.status,
                    body,
                    &sig,
                )
            }),
        };
        match response.status {
            // A frame that does not even parse is refused for that (an input
            // error, whatever its signature); one that parses is applied only
            // when signed for this request. Either way nothing changes and the
            // same request is resent later.
            200 => match open().and_then(|f| match authentic {
                true => self.apply_frame(sent, inflight, f, now_ms, sink),
                false => Err(Error::Unauthenticated),
            }) {
                Ok(summary) => Ok(Outcome::Synced(summary)),
                Err(e) => {
                    self.fail(now_ms, 0);
                    self.stats.resends += 1;
                    if e == Error::Unauthenticated {
                        self.stats.unauthenticated += 1;
                    }
                    Err(e)
                }
            },

            401 if authentic && self.counter_resync(body) => {
                self.next_sync_at = now_ms;
                Ok(Outcome::RetryLater { at_ms: now_ms })
            }
            409 => {
                let last = crate::ascii::parse_json_u64(body, b"\"last_seq\"")
                    .ok_or(Error::ProtocolViolation)?;
                if !authentic {
                    // Forged or replayed: keep the sequence, resend later.
                    self.fail(now_ms, 0);
                    self.stats.resends += 1;
                    self.stats.unauthenticated += 1;
                    return Err(Error::Unauthenticated);
                }
                let next = last.saturating_add(1).max(self.seq);
                if next - self.seq > MAX_SEQ_JUMP || next == u64::MAX {
                    // No real server is that far ahead: keep the sequence.
                    self.fail(now_ms, 0);
                    return Err(Error::ProtocolViolation);
                }
                self.seq = next;
                self.inflight = None;
                // The first 409 is answered at once; a 409 after another
                // failure (409s in a row included) waits the backoff.
                if self.failures == 0 {
                    self.failures = 1;
                    self.next_sync_at = now_ms;
                } else {
                    self.fail(now_ms, 0);
                }
                self.stats.resequenced += 1;
                warn!("sequence conflict; continuing at {}", self.seq);
                Ok(Outcome::Resequenced { seq: self.seq })
            }
            429 | 500..=599 => {
                // An unsigned `Retry-After` cannot ask for more than the
                // backoff cap; a signed one for at most a day.
                let limit_s = match authentic {
                    true => MAX_RETRY_AFTER_S,
                    false => self.cfg.backoff.cap_ms / 1000,
                };
                let ra = u64::from(response.retry_after_s.unwrap_or(0)).min(limit_s) * 1000;
                let at_ms = self.fail(now_ms, ra);
                self.stats.resends += 1;
                Ok(Outcome::RetryLater { at_ms })
            }
            // The server's quota of stored pattern ids, in an answer signed
            // for this request: a resource error, not something a resend
            // fixes, so the next attempt waits at least the backoff cap.
            403 if authentic && json_has(body, b"\"pattern_quota_exceeded\"") => {
                self.inflight = None;
                self.stats.rejected += 1;
                self.fail(now_ms, self.cfg.backoff.cap_ms);
                warn!("the server's pattern quota is full; remove patterns");
                Err(Error::QuotaExceeded)
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
        if self.cfg.auth_key.is_none() || !json_has(body, b"\"replayed_counter\"") {
            return false;
        }
        let Some(last) = crate::ascii::parse_json_u64(body, b"\"last_counter\"") else {
            return false;
        };
        // The request just refused was signed with the previous counter.
        let sent = self.auth_counter.saturating_sub(1);
        if last < sent {
            return false;
        }
        let next = last.saturating_add(1).max(self.auth_counter);
        if next - self.auth_counter > crate::transport::auth::MAX_COUNTER_JUMP || next == u64::MAX {
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
        // Request records whose code decodes to the slot's current codes
        // (the pattern did not change while the upload was in flight, the
        // usual case): pass 2 takes those codes instead of decoding again.
        let mut decoded_current: u128 = 0;
        for r in resp.records() {
            if let Ok(Record::Ack(a)) = r {
                if let Record::Pattern(p) = find_sent(&req, &a.id)? {
                    let slot = self.slots.iter().find(|s| s.id == p.id);
                    let base = match (p.coding, slot) {
                        (Coding::Delta, Some(s)) => Some(&s.acked),
                        (Coding::Delta, None) => return Err(Error::ProtocolViolation),
                        (Coding::Absolute, _) => None,
                    };
                    self.cb.decode(p.code, base, &mut scratch)?;
                    if slot.is_some_and(|s| s.current == scratch) {
                        decoded_current |= record_bit(&req, &a.id)?;
                    }
                }
            }
        }

        // Pass 2: apply.
        for r in resp.records() {
            match r? {
                Record::Ack(a) => {
                    let sent_rec = find_sent(&req, &a.id)?;
                    let current = decoded_current & record_bit(&req, &a.id)? != 0;
                    self.apply_ack(sent_rec, a.revision, current, &mut scratch)?;
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

    /// Applies one ack of `sent`. `decoded_current`: pass 1 found that the
    /// sent code decodes to the slot's current codes, so they are taken
    /// as the acknowledged codes without decoding it again.
    fn apply_ack(
        &mut self,
        sent: Record<'_>,
        revision: u32,
        decoded_current: bool,
        scratch: &mut Codes,
    ) -> Result<()> {
        match sent {
            Record::Pattern(p) => {
                let Some(i) = self.slots.iter().position(|s| s.id == p.id) else {
                    return Ok(());
                };
                let s = &mut self.slots[i];
                if decoded_current {
                    *scratch = s.current;
                } else {
                    let base = match p.coding {
                        Coding::Delta => Some(&s.acked),
                        Coding::Absolute => None,
                    };
                    self.cb.decode(p.code, base, scratch)?;
                }
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
            Record::Removal(r) => {
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
}

/// The record of the request that carried `id`, or a protocol violation.
fn find_sent<'a>(req: &FrameReader<'a>, id: &PatternId) -> Result<Record<'a>> {
    for r in req.records() {
        match r? {
            Record::Pattern(p) if &p.id == id => return Ok(Record::Pattern(p)),
            Record::Removal(x) if &x.id == id => return Ok(Record::Removal(x)),
            _ => {}
        }
    }
    Err(Error::ProtocolViolation)
}

/// The bit of the request record that carried `id` (records by position);
/// an id the request does not carry is a protocol violation.
fn record_bit(req: &FrameReader<'_>, id: &PatternId) -> Result<u128> {
    let i = req
        .records()
        .position(|r| match r {
            Ok(Record::Pattern(p)) => &p.id == id,
            Ok(Record::Removal(x)) => &x.id == id,
            _ => false,
        })
        .ok_or(Error::ProtocolViolation)?;
    // An upload holds at most 1 + MAX_UPLOAD_PATTERNS records.
    u32::try_from(i)
        .ok()
        .and_then(|i| 1u128.checked_shl(i))
        .ok_or(Error::ProtocolViolation)
}

/// Marks the request record that carried `id` as answered; an id the
/// request does not carry, or one already answered, is a protocol
/// violation. `req`'s records were checked before.
fn answer(req: &FrameReader<'_>, id: &PatternId, answered: &mut u128) -> Result<()> {
    let bit = record_bit(req, id)?;
    if *answered & bit != 0 {
        return Err(Error::ProtocolViolation);
    }
    *answered |= bit;
    Ok(())
}

/// True when `body` holds the bytes `needle` (an error code in quotes).
fn json_has(body: &[u8], needle: &[u8]) -> bool {
    body.windows(needle.len()).any(|w| w == needle)
}

/// Round-half-away-from-zero integer division (`d > 0`).
pub(super) fn div_round(n: i64, d: i64) -> i64 {
    if n >= 0 {
        (n + d / 2) / d
    } else {
        -((-n + d / 2) / d)
    }
}
