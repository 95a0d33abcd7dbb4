//! The store half of a sync. [`predecode`] and [`prebuild`] run in a read
//! transaction ahead of the writer (off the async workers); [`apply`]
//! inside the writer's transaction: idempotency first, then a [`Plan`] per
//! uploaded item (insert, update, remove, or a conflict: decided, deltas
//! decoded, before anything is written, so a bad delta still stores
//! nothing), then the writes and the idempotency record, all in that one
//! transaction.
//!
//! The response page is built by [`prebuild`] from the committed read
//! snapshot, with the answers the writer is expected to give. The writer
//! uses it when its answers and the device's record are what the snapshot
//! showed (always, unless a concurrent request of the same device came in
//! between); only then does it build the page itself. The idempotency
//! record keeps a response of at most [`REPLAY_INLINE`] bytes verbatim;
//! a larger one as a [`Recipe`] (the answers, the request, the head and a
//! SHA-256 of the frame), rebuilt by [`rebuild`] outside the writer for a
//! replay.

use omega_tv_sync::wire::Caps;
use omega_tv_sync::Error;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::plan::{plan, write, Plan};
use super::{Item, Upload};
use crate::codebooks::{CodeSpace, Codebooks, Codes};
use crate::download::{self, Answer, Page, PageRequest};
use crate::error::ApiError;
use crate::store::{DeviceRecord, Meta, ReadTxn, StoreError, StoreResult, WriteTxn};

/// Largest response kept verbatim in the idempotency record; a larger one
/// is kept as a [`Recipe`] and rebuilt for a replay.
pub const REPLAY_INLINE: usize = 16 * 1024;

/// Marks a [`Recipe`] in the idempotency record's response field (a frame
/// starts with the wire magic `OT`).
const RECIPE_TAG: &[u8; 2] = b"RP";

/// What rebuilds a response larger than [`REPLAY_INLINE`] byte for byte:
/// the request, the answers, the head it had and the horizon then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Sequence answered.
    pub seq: u64,
    /// The device's global version then.
    pub since: u64,
    /// Its caps.
    pub caps: (u16, u16, u32),
    /// Codebook of the frame.
    pub codebook: u32,
    /// Pacing in the head.
    pub next_sync_s: u32,
    /// The snapshot horizon the page continued (from the device's record).
    pub snapshot_in: Option<u64>,
    /// Acks and conflicts as sent.
    pub answers: Vec<Answer>,
    /// The head's global version.
    pub global_version: u64,
    /// The head's `more`.
    pub more: bool,
    /// The tombstone horizon when it was built.
    pub horizon: u64,
    /// SHA-256 of the frame.
    pub sha256: [u8; 32],
}

/// A response page built ahead of the writer from a read snapshot.
#[derive(Clone, Debug)]
pub struct Prebuilt {
    answers: Vec<Answer>,
    prev_seq: Option<u64>,
    snapshot_in: Option<u64>,
    horizon: u64,
    page: Page,
    sha256: Option<[u8; 32]>,
}

impl Prebuilt {
    /// The visit budget of [`prebuild`] ended the page before the
    /// changelog did.
    pub fn cut(&self) -> bool {
        self.page.cut
    }
}

/// Decodes the upload's deltas against the stored codes visible in `txn`
/// (a read transaction), outside the writer, so that the single writer
/// thread only checks that the base is unchanged. Failures are left for
/// [`apply`] to decide (the base may yet change into a conflict).
pub fn predecode<T: ReadTxn + ?Sized>(
    txn: &T,
    up: &mut Upload,
    codebooks: &Codebooks,
) -> StoreResult<()> {
    let Some(book) = codebooks.get(up.codebook) else {
        return Ok(());
    };
    for item in &mut up.items {
        if let Item::Update {
            id,
            base_rev,
            code,
            absolute: None,
            predecoded,
            ..
        } = item
        {
            let Some(cur) = txn.pattern(&up.device, id)? else {
                continue;
            };
            if cur.revision != *base_rev || cur.codebook != up.codebook {
                continue;
            }
            let mut out: Codes = [0; omega_tv_sync::DIM];
            if book.decode(code, Some(&cur.codes), &mut out).is_ok() {
                *predecoded = Some(Box::new((*cur.codes, out)));
            }
        }
    }
    Ok(())
}

/// What [`apply`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The response frame.
    pub response: Vec<u8>,
    /// True when this was a retry answered from the idempotency record.
    pub replayed: bool,
    /// Updates stored.
    pub acked: usize,
    /// Conflicts returned.
    pub conflicts: usize,
    /// Global/trend records in the response.
    pub changes: usize,
    /// The response asks the device to come back at once.
    pub more: bool,
    /// A replay whose response is to be rebuilt ([`rebuild`]); `response`
    /// is then empty.
    pub rebuild: Option<Box<Recipe>>,
    /// The writer built the page itself (the snapshot's was out of date).
    pub built_in_writer: bool,
}

/// Applies `up` inside a write transaction, building the page there. The outer `Err` is a storage
/// failure (the transaction is abandoned); the inner one a rejection, for
/// which nothing was written. `max_patterns` is the device's quota of
/// stored pattern ids (0: none): an upload that would leave more stored is
/// refused whole ([`quota_exceeded`]); updates, removals and uploads that
/// do not grow the count are never refused by it.
pub fn apply(
    txn: &mut dyn WriteTxn,
    up: &Upload,
    codebooks: &Codebooks,
    next_sync_s: u32,
    max_patterns: u32,
) -> StoreResult<Result<Applied, ApiError>> {
    apply_with(txn, up, codebooks, next_sync_s, max_patterns, None)
}

/// The answers `up` gets against the state in `txn`; `None` when it would
/// be refused.
fn answers_for(
    txn: &dyn ReadTxn,
    up: &Upload,
    book: &dyn CodeSpace,
) -> StoreResult<Option<Vec<Answer>>> {
    let mut answers: Vec<Answer> = Vec::with_capacity(up.items.len());
    for item in &up.items {
        match plan(txn, up, book, item)? {
            Ok((_, a)) => answers.push(a),
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(answers))
}

fn page_request<'a>(
    up: &Upload,
    codebooks: &'a Codebooks,
    answers: &'a [Answer],
    next_sync_s: u32,
    snapshot_in: Option<u64>,
    max_visited: usize,
) -> PageRequest<'a> {
    PageRequest {
        seq: up.seq,
        since: up.since,
        caps: up.caps,
        codebook: up.codebook,
        codebooks: Some(codebooks),
        answers,
        next_sync_s,
        snapshot_horizon: snapshot_in,
        max_visited,
        until: None,
    }
}

/// Builds the response page of `up` from the read snapshot `txn`, with the
/// answers the writer will give if nothing changes meanwhile. `None` when
/// the upload is a replay or would be refused (the writer decides).
/// `max_visited` bounds the changelog entries the page looks at
/// ([`download::MAX_VISITED`] for a whole page; a smaller budget gives a
/// page with [`download::Page::cut`] set when it ran out, which the caller
/// may use or build again with the whole budget).
pub fn prebuild(
    txn: &dyn ReadTxn,
    up: &Upload,
    codebooks: &Codebooks,
    next_sync_s: u32,
    max_visited: usize,
) -> StoreResult<Option<Prebuilt>> {
    let prev = txn.device(&up.device)?;
    if prev.as_ref().is_some_and(|r| replay(r, up).is_some()) {
        return Ok(None);
    }
    let Some(book) = codebooks.get(up.codebook) else {
        return Ok(None);
    };
    let Some(answers) = answers_for(txn, up, &**book)? else {
        return Ok(None);
    };
    let snapshot_in = prev.as_ref().and_then(|r| r.snapshot_horizon);
    let page = download::build(
        txn,
        &page_request(
            up,
            codebooks,
            &answers,
            next_sync_s,
            snapshot_in,
            max_visited,
        ),
    )?;
    let sha256 = (page.frame.len() > REPLAY_INLINE).then(|| Sha256::digest(&page.frame).into());
    Ok(Some(Prebuilt {
        answers,
        prev_seq: prev.map(|r| r.last_seq),
        snapshot_in,
        horizon: txn.meta(Meta::Horizon)?,
        page,
        sha256,
    }))
}

/// Applies `up` inside a write transaction, with the page [`prebuild`]
/// made when it still holds. The outer `Err` is a storage failure (the
/// transaction is abandoned); the inner one a rejection, for which nothing
/// was written. `max_patterns` as for [`apply`].
pub fn apply_with(
    txn: &mut dyn WriteTxn,
    up: &Upload,
    codebooks: &Codebooks,
    next_sync_s: u32,
    max_patterns: u32,
    prebuilt: Option<Prebuilt>,
) -> StoreResult<Result<Applied, ApiError>> {
    let prev = txn.device(&up.device)?;
    if let Some(rec) = &prev {
        if let Some(r) = replay(rec, up) {
            return Ok(r);
        }
    }
    let Some(book) = codebooks.get(up.codebook) else {
        return Ok(Err(ApiError::new(
            422,
            Error::UnknownCodebook.code(),
            "unknown codebook",
        )));
    };

    // Phase 1: decide everything, write nothing.
    let mut plans: Vec<Plan> = Vec::with_capacity(up.items.len());
    let mut answers: Vec<Answer> = Vec::with_capacity(up.items.len());
    for item in &up.items {
        match plan(&*txn, up, &**book, item)? {
            Ok((p, a)) => {
                plans.push(p);
                answers.push(a);
            }
            Err(e) => return Ok(Err(e)),
        }
    }

    // The quota: counted (keys only) when the upload adds pattern ids.
    let inserts = plans
        .iter()
        .filter(|p| matches!(p, Plan::Insert(..)))
        .count() as u64;
    if max_patterns > 0 && inserts > 0 {
        let removes = plans
            .iter()
            .filter(|p| matches!(p, Plan::Remove(_)))
            .count() as u64;
        let stored = txn.device_pattern_count(&up.device)?;
        let after = (stored + inserts).saturating_sub(removes);
        if after > u64::from(max_patterns) {
            return Ok(Err(quota_exceeded(stored, inserts, max_patterns)));
        }
    }

    // Phase 2: the response, from the snapshot when the writer's view is
    // the one it was built on (the sync's own writes do not touch the
    // changelog), then the writes and the idempotency record.
    let snapshot_in = prev.as_ref().and_then(|r| r.snapshot_horizon);
    let horizon = txn.meta(Meta::Horizon)?;
    let usable = prebuilt.filter(|p| {
        p.answers == answers
            && p.prev_seq == prev.as_ref().map(|r| r.last_seq)
            && p.snapshot_in == snapshot_in
            && p.horizon == horizon
    });
    let built_in_writer = usable.is_none();
    let (page, sha256) = match usable {
        Some(p) => (p.page, p.sha256),
        None => {
            let page = download::build(
                &*txn,
                &page_request(
                    up,
                    codebooks,
                    &answers,
                    next_sync_s,
                    snapshot_in,
                    download::MAX_VISITED,
                ),
            )?;
            let sha =
                (page.frame.len() > REPLAY_INLINE).then(|| Sha256::digest(&page.frame).into());
            (page, sha)
        }
    };
    let stored = match sha256 {
        Some(sha256) if page.frame.len() > REPLAY_INLINE => {
            let recipe = Recipe {
                seq: up.seq,
                since: up.since,
                caps: (up.caps.max_globals, up.caps.max_trends, up.caps.max_bytes),
                codebook: up.codebook,
                next_sync_s,
                snapshot_in,
                answers: answers.clone(),
                global_version: page.global_version,
                more: page.more,
                horizon,
                sha256,
            };
            let mut v = RECIPE_TAG.to_vec();
            v.extend(postcard::to_stdvec(&recipe).map_err(|_| StoreError::Corrupt("recipe"))?);
            v
        }
        _ => page.frame.clone(),
    };
    let acked = write(txn, &up.device, &plans)?;
    let conflicts = answers
        .iter()
        .filter(|a| matches!(a, Answer::Conflict { .. }))
        .count();
    txn.put_device(
        &up.device,
        &DeviceRecord {
            last_seq: up.seq,
            body_sha256: up.sha256,
            response: stored,
            // Remembered only while the snapshot continues: a finished
            // snapshot must not let a later stale cursor skip a reset.
            snapshot_horizon: if page.more {
                page.snapshot_horizon
            } else {
                None
            },
            syncs: prev.as_ref().map_or(0, |r| r.syncs) + 1,
        },
    )?;
    Ok(Ok(Applied {
        response: page.frame,
        replayed: false,
        acked,
        conflicts,
        changes: page.changes,
        more: page.more,
        rebuild: None,
        built_in_writer,
    }))
}

/// Rebuilds the response of a replay from its [`Recipe`] over the read
/// snapshot `txn`: the same request bounded at the head's global version.
/// Byte for byte the first response unless changelog entries it carried
/// were replaced or dropped since (then `false`: the entries now there,
/// under the same head; when the tombstone horizon moved, a page built
/// afresh for the same request, so that a reset is not skipped).
pub fn rebuild(
    txn: &dyn ReadTxn,
    r: &Recipe,
    codebooks: &Codebooks,
) -> StoreResult<(Vec<u8>, bool)> {
    let horizon = txn.meta(Meta::Horizon)?;
    let (g, t, b) = r.caps;
    let req = PageRequest {
        seq: r.seq,
        since: r.since,
        caps: Caps {
            max_globals: g,
            max_trends: t,
            max_bytes: b,
        },
        codebook: r.codebook,
        codebooks: Some(codebooks),
        answers: &r.answers,
        next_sync_s: r.next_sync_s,
        snapshot_horizon: r.snapshot_in,
        max_visited: download::MAX_VISITED,
        until: (horizon == r.horizon).then_some((r.global_version, r.more)),
    };
    let page = download::build(txn, &req)?;
    let same = <[u8; 32]>::from(Sha256::digest(&page.frame)) == r.sha256;
    Ok((page.frame, same))
}

/// Idempotency: the last applied sequence again is answered from the
/// record (same body) or refused (`sequence_reused`); an older one is
/// `stale_sequence`. `None`: a new sequence, to apply.
fn replay(rec: &DeviceRecord, up: &Upload) -> Option<Result<Applied, ApiError>> {
    if up.seq == rec.last_seq {
        if up.sha256 == rec.body_sha256 {
            let recipe = rec
                .response
                .strip_prefix(RECIPE_TAG)
                .and_then(|b| postcard::from_bytes::<Recipe>(b).ok());
            let response = match recipe {
                Some(_) => Vec::new(),
                None => rec.response.clone(),
            };
            return Some(Ok(Applied {
                response,
                replayed: true,
                acked: 0,
                conflicts: 0,
                changes: 0,
                more: false,
                rebuild: recipe.map(Box::new),
                built_in_writer: false,
            }));
        }
        let mut e = ApiError::new(
            409,
            "sequence_reused",
            format!("sequence {} was applied with a different body", up.seq),
        );
        e.last_seq = Some(rec.last_seq);
        return Some(Err(e));
    }
    if up.seq < rec.last_seq {
        let mut e = ApiError::new(
            409,
            "stale_sequence",
            format!("sequence {} is older than {}", up.seq, rec.last_seq),
        );
        e.last_seq = Some(rec.last_seq);
        return Some(Err(e));
    }
    if up.seq - rec.last_seq > MAX_SEQ_JUMP {
        // No device moves that far: one that follows the protocol advances
        // by one per sync and by at most MAX_SEQ_JUMP on a 409.
        let mut e = ApiError::new(
            400,
            "sequence_jump",
            format!(
                "sequence {} is more than 2^32 above the last applied {}",
                up.seq, rec.last_seq
            ),
        );
        e.last_seq = Some(rec.last_seq);
        return Some(Err(e));
    }
    None
}

/// `403 pattern_quota_exceeded`: the upload would leave the device more
/// stored pattern ids than `max`. Nothing of it is stored; the device must
/// remove patterns (or stop adding new ones) before new ids are accepted.
pub fn quota_exceeded(stored: u64, inserts: u64, max: u32) -> ApiError {
    ApiError::new(
        403,
        QUOTA_EXCEEDED,
        format!("{stored} pattern ids stored, {inserts} new in this upload: the quota is {max}"),
    )
}

/// The code of [`quota_exceeded`].
pub const QUOTA_EXCEEDED: &str = "pattern_quota_exceeded";

/// Largest step above the last applied sequence the server accepts (the
/// device's own cap on a 409 jump, `omega_tv_sync::sync::MAX_SEQ_JUMP`).
pub const MAX_SEQ_JUMP: u64 = omega_tv_sync::sync::MAX_SEQ_JUMP;
