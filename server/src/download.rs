//! Download pages: the global changes after a version, fitted to a device's
//! caps, with the sync's acks and conflicts in front.
//!
//! Entries go out oldest first and are never skipped: a page ends at the
//! first entry that does not fit (`more = true`, `global_version` = the last
//! entry included). A device that asks for no global patterns
//! (`max_globals = 0`) or no trends (`max_trends = 0`) has those entries
//! passed over, and its cursor still moves past them.

use omega_tv_sync::wire::{
    Ack, Caps, Conflict, DownloadHead, FrameWriter, GlobalRemove, GlobalUpsert, ServerState,
    TrendRecord, MAX_DOWNLOAD_FRAME, MIN_DOWNLOAD_FRAME, OVERHEAD,
};
use omega_tv_sync::wire::{Kind, Record};
use omega_tv_sync::{Category, ContentId, Error, PatternId, Region, TrendSignal};

use crate::store::{GlobalChange, Meta, ReadTxn, StoreError, StoreResult};

/// Most changelog entries one sync page looks at (entries passed over by
/// caps of 0 or a foreign codebook count too), so a page costs bounded work.
pub const MAX_VISITED: usize = 65_536;

/// Most changelog entries one page of the public feed
/// (`GET /api/v1/global`) looks at: anyone may ask, uncached, with
/// `limit=0` and any `since`. A page cut by it has `more` set and its
/// `global_version` is the last entry visited: the continue cursor.
pub const FEED_MAX_VISITED: usize = 1024;

/// A per-pattern answer that goes in front of the global records.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Answer {
    /// The update was stored at `revision` (0 after a removal).
    Ack {
        /// Pattern id.
        id: String,
        /// New revision.
        revision: u32,
    },
    /// The update's base was stale; nothing changed.
    Conflict {
        /// Pattern id.
        id: String,
        /// The server's revision (0: none).
        server_rev: u32,
        /// The server's state, absolute coded, when it has one.
        state: Option<ConflictState>,
    },
}

/// The server's state sent with a conflict.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConflictState {
    /// Success rate.
    pub success_rate: f32,
    /// Samples.
    pub sample_count: u32,
    /// Category.
    pub category: String,
    /// Absolute code bytes.
    pub code: Vec<u8>,
}

/// What a page request asks for.
#[derive(Clone, Debug)]
pub struct PageRequest<'a> {
    /// Upload sequence answered (0 for a feed page).
    pub seq: u64,
    /// The device's global version.
    pub since: u64,
    /// Its caps.
    pub caps: Caps,
    /// Codebook id of the frame. A global pattern published in another
    /// codebook is transcoded into this one (decoded, reconstructed,
    /// quantised here) when `codebooks` holds both, so every accepted
    /// codebook gets every global pattern; without them it is passed over.
    pub codebook: u32,
    /// The codebooks to transcode with.
    pub codebooks: Option<&'a crate::codebooks::Codebooks>,
    /// Acks and conflicts, in upload order.
    pub answers: &'a [Answer],
    /// Pacing for a last page.
    pub next_sync_s: u32,
    /// The horizon a snapshot in progress began at.
    pub snapshot_horizon: Option<u64>,
    /// Most changelog entries to visit ([`MAX_VISITED`] for a sync,
    /// [`FEED_MAX_VISITED`] for the feed); beyond it the page ends with
    /// `more` set.
    pub max_visited: usize,
    /// Rebuilding a page already sent (a replay): its `global_version` and
    /// `more`. Entries above that version are left out and the head says
    /// what it said then; `None` for a new page.
    pub until: Option<(u64, bool)>,
}

/// A built page.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    /// The download frame.
    pub frame: Vec<u8>,
    /// Its head's global version.
    pub global_version: u64,
    /// More changes wait.
    pub more: bool,
    /// The page starts a snapshot.
    pub reset: bool,
    /// The horizon the device's snapshot runs under (`None`: not in a snapshot).
    pub snapshot_horizon: Option<u64>,
    /// Global and trend records included.
    pub changes: usize,
    /// Changelog entries visited to build it.
    pub visited: usize,
    /// The visit budget ended it.
    pub cut: bool,
}

/// The response buffer size for `caps`.
pub fn frame_limit(caps: &Caps) -> usize {
    (caps.max_bytes as usize).clamp(MIN_DOWNLOAD_FRAME, MAX_DOWNLOAD_FRAME)
}

/// Encoded size of a record, tag byte included.
fn rec_size(r: &Record<'_>) -> StoreResult<usize> {
    use postcard::experimental::serialized_size as size;
    let n = match r {
        Record::DownloadHead(x) => size(x),
        Record::Ack(x) => size(x),
        Record::Conflict(x) => size(x),
        Record::GlobalUpsert(x) => size(x),
        Record::GlobalRemove(x) => size(x),
        Record::Trend(x) => size(x),
        Record::UploadHead(x) => size(x),
        Record::Pattern(x) => size(x),
        Record::Removal(x) => size(x),
        Record::Snapshot(x) => Ok(x.len()),
    };
    n.map(|n| n + 1)
        .map_err(|_| StoreError::Backend("record size".into()))
}

fn core_err(e: Error) -> StoreError {
    StoreError::Backend(format!("building download: {}", e.code()))
}

enum Owned {
    Upsert(u32, u64, f32, u32, u32, Category, Vec<u8>),
    Remove(u32, u64),
    Trend(u64, TrendSignal),
}

impl Owned {
    fn record(&self) -> Record<'_> {
        match self {
            Owned::Upsert(id, version, rate, n, c, cat, code) => {
                Record::GlobalUpsert(GlobalUpsert {
                    id: *id,
                    version: *version,
                    success_rate: *rate,
                    sample_count: *n,
                    contributors: *c,
                    category: cat.clone(),
                    code,
                })
            }
            Owned::Remove(id, version) => Record::GlobalRemove(GlobalRemove {
                id: *id,
                version: *version,
            }),
            Owned::Trend(version, signal) => Record::Trend(TrendRecord {
                version: *version,
                signal: signal.clone(),
            }),
        }
    }
}

/// A global pattern's code, published in codebook `from`, in codebook `to`:
/// decoded, reconstructed to its embedding and quantised again. `None` when
/// either codebook is unknown or the code does not decode.
fn transcode(
    books: &crate::codebooks::Codebooks,
    from: u32,
    to: u32,
    code: &[u8],
) -> Option<Vec<u8>> {
    let (src, dst) = (books.get(from)?, books.get(to)?);
    let mut codes = [0i16; omega_tv_sync::DIM];
    src.decode(code, None, &mut codes).ok()?;
    let e = src.reconstruct(&codes).ok()?;
    let q = dst.quantize(&e);
    let mut out = vec![0u8; omega_tv_sync::codec::MAX_CODED_LEN];
    let n = dst.encode(&q, &mut out).ok()?;
    out.truncate(n);
    Some(out)
}

fn owned(
    version: u64,
    change: GlobalChange,
    codebook: u32,
    books: Option<&crate::codebooks::Codebooks>,
) -> Option<Owned> {
    Some(match change {
        GlobalChange::Upsert {
            id,
            success_rate,
            sample_count,
            contributors,
            category,
            codebook: cb,
            code,
        } => {
            let code = match cb == codebook {
                true => code,
                false => transcode(books?, cb, codebook, &code)?,
            };
            Owned::Upsert(
                id,
                version,
                success_rate,
                sample_count,
                contributors,
                Category::new(&category).ok()?,
                code,
            )
        }
        GlobalChange::Remove { id } => Owned::Remove(id, version),
        GlobalChange::Trend {
            content_id,
            score,
            region,
            category,
            calculated_at,
        } => Owned::Trend(
            version,
            TrendSignal::new(
                ContentId::new(&content_id).ok()?,
                score,
                Region::from_bytes(region).ok()?,
                Category::new(&category).ok()?,
                calculated_at,
            )
            .ok()?,
        ),
    })
}

fn answer_records<'a>(
    answers: &'a [Answer],
    with_state: &[bool],
) -> StoreResult<Vec<AnswerRec<'a>>> {
    answers
        .iter()
        .zip(with_state)
        .map(|(a, &ws)| {
            Ok(match a {
                Answer::Ack { id, revision } => AnswerRec::Ack(Ack {
                    id: PatternId::new(id).map_err(core_err)?,
                    revision: *revision,
                }),
                Answer::Conflict {
                    id,
                    server_rev,
                    state,
                } => AnswerRec::Conflict {
                    id: PatternId::new(id).map_err(core_err)?,
                    server_rev: *server_rev,
                    state: match state {
                        Some(s) if ws => Some((
                            s.success_rate,
                            s.sample_count,
                            Category::new(&s.category).map_err(core_err)?,
                            s.code.as_slice(),
                        )),
                        _ => None,
                    },
                },
            })
        })
        .collect()
}

enum AnswerRec<'a> {
    Ack(Ack),
    Conflict {
        id: PatternId,
        server_rev: u32,
        state: Option<(f32, u32, Category, &'a [u8])>,
    },
}

impl AnswerRec<'_> {
    fn record(&self) -> Record<'_> {
        match self {
            AnswerRec::Ack(a) => Record::Ack(a.clone()),
            AnswerRec::Conflict {
                id,
                server_rev,
                state,
            } => Record::Conflict(Conflict {
                id: id.clone(),
                server_rev: *server_rev,
                state: state.as_ref().map(|(r, n, c, code)| ServerState {
                    success_rate: *r,
                    sample_count: *n,
                    category: c.clone(),
                    code,
                }),
            }),
        }
    }
}

/// Builds one download page from the changelog visible in `txn`.
pub fn build<T: ReadTxn + ?Sized>(txn: &T, req: &PageRequest<'_>) -> StoreResult<Page> {
    let limit = frame_limit(&req.caps);
    let current = match req.until {
        Some((until, _)) => txn.meta(Meta::GlobalVersion)?.min(until),
        None => txn.meta(Meta::GlobalVersion)?,
    };
    let horizon = txn.meta(Meta::Horizon)?;
    let since = req.since;
    let stale = since > current || (since != 0 && since < horizon);
    let continuing = req.snapshot_horizon == Some(horizon) && since < horizon;
    let reset = stale && !continuing;
    let snapshot_horizon = if reset || continuing {
        Some(horizon)
    } else {
        None
    };
    let from = if reset { 0 } else { since };

    // Pass 1: sizes only (no buffers), with the largest possible head.
    let head_max = rec_size(&Record::DownloadHead(DownloadHead {
        seq: u64::MAX,
        global_version: u64::MAX,
        more: true,
        reset: true,
        next_sync_s: u32::MAX,
    }))?;
    let mut used = OVERHEAD + head_max;
    let mut with_state = vec![true; req.answers.len()];
    for (i, a) in req.answers.iter().enumerate() {
        for ws in [true, false] {
            let recs = answer_records(std::slice::from_ref(a), &[ws])?;
            let Some(r) = recs.first() else { break };
            let n = rec_size(&r.record())?;
            if used + n <= limit || !ws {
                // Acks and state-less conflicts always fit: MIN_DOWNLOAD_FRAME
                // holds one for every pattern of the largest upload.
                used += n;
                with_state[i] = ws;
                break;
            }
        }
    }
    let (mut globals, mut trends) = (0u32, 0u32);
    let mut included: Vec<Owned> = Vec::new();
    let mut last = since.min(current);
    if reset {
        last = 0;
    }
    let mut more = false;
    let mut visited = 0usize;
    let mut cut = false;
    // A request that takes neither global patterns nor trends passes over
    // every entry: its page (no records, the current version) needs no
    // visit at all, whatever its `since`.
    let takes_nothing = req.caps.max_globals == 0 && req.caps.max_trends == 0;
    if takes_nothing {
        last = current;
    }
    let mut visit = |version: u64, change: GlobalChange| -> StoreResult<bool> {
        if req.until.is_some_and(|(until, _)| version > until) {
            return Ok(false);
        }
        if visited >= req.max_visited {
            more = true;
            cut = true;
            return Ok(false);
        }
        visited += 1;
        if reset && change.is_tombstone() {
            last = version;
            return Ok(true);
        }
        let is_trend = matches!(change, GlobalChange::Trend { .. });
        let (count, cap) = if is_trend {
            (&mut trends, req.caps.max_trends)
        } else {
            (&mut globals, req.caps.max_globals)
        };
        if cap == 0 {
            last = version;
            return Ok(true);
        }
        if *count >= u32::from(cap) {
            more = true;
            return Ok(false);
        }
        let Some(o) = owned(version, change, req.codebook, req.codebooks) else {
            last = version;
            return Ok(true);
        };
        let n = rec_size(&o.record())?;
        if used + n <= limit {
            used += n;
            *count += 1;
            included.push(o);
            last = version;
            Ok(true)
        } else if included.is_empty() && req.answers.is_empty() {
            // Cannot fit even alone: pass over it rather than stall forever.
            tracing::warn!(version, "changelog entry larger than the device's frame");
            last = version;
            Ok(true)
        } else {
            more = true;
            Ok(false)
        }
    };
    if !takes_nothing {
        txn.log_after(from, &mut visit)?;
    }
    let global_version = match req.until {
        Some((until, was_more)) => {
            more = was_more;
            until
        }
        None if more => last,
        None => current,
    };

    // Pass 2: the real frame with the same records (its head is no larger).
    let mut out = vec![0u8; used];
    let mut w = FrameWriter::new(&mut out, Kind::Download, req.codebook).map_err(core_err)?;
    w.push(&Record::DownloadHead(DownloadHead {
        seq: req.seq,
        global_version,
        more,
        reset,
        next_sync_s: if more { 0 } else { req.next_sync_s },
    }))
    .map_err(core_err)?;
    for r in answer_records(req.answers, &with_state)? {
        w.push(&r.record()).map_err(core_err)?;
    }
    for o in &included {
        w.push(&o.record()).map_err(core_err)?;
    }
    let n = w.finish().map_err(core_err)?.len();
    out.truncate(n);
    Ok(Page {
        frame: out,
        global_version,
        more,
        reset,
        // Every snapshot page names its horizon, the last one too (a
        // one-page snapshot included), as docs/protocol.md says.
        snapshot_horizon,
        changes: included.len(),
        visited,
        cut,
    })
}
