//! The store half of a sync. [`predecode`] runs in a read transaction
//! ahead of the writer; [`apply`] inside the writer's transaction:
//! idempotency first, then a [`Plan`] per uploaded item (insert, update,
//! remove, or a conflict: decided, deltas decoded, before anything is
//! written, so a bad delta still stores nothing), then the response page,
//! the writes and the idempotency record, all in that one transaction.

use omega_tv_sync::Error;

use super::{Item, Upload};
use crate::codebooks::{CodeSpace, Codebooks, Codes};
use crate::download::{self, Answer, ConflictState, PageRequest};
use crate::error::ApiError;
use crate::store::{DeviceRecord, ReadTxn, StoreResult, StoredPattern, WriteTxn};

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
}

/// What one uploaded item does, decided before anything is written.
enum Plan {
    /// A pattern the device did not have stored: stored one above the
    /// device's revision floor (revision 1 when it never removed one).
    Insert(String, StoredPattern),
    /// A stored pattern's next revision.
    Update(String, StoredPattern),
    /// The stored pattern is dropped.
    Remove(String),
    /// The base revision is not the stored one: answered with a conflict.
    Conflict,
    /// A removal of a pattern that is not stored: acknowledged only.
    Nothing,
}

/// Applies `up` inside a write transaction. The outer `Err` is a storage
/// failure (the transaction is abandoned); the inner one a rejection, for
/// which nothing was written.
pub fn apply(
    txn: &mut dyn WriteTxn,
    up: &Upload,
    codebooks: &Codebooks,
    next_sync_s: u32,
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

    // Phase 2: the response (read before our own writes: they do not touch
    // the changelog), then the writes and the idempotency record.
    let page = download::build(
        &*txn,
        &PageRequest {
            seq: up.seq,
            since: up.since,
            caps: up.caps,
            codebook: up.codebook,
            codebooks: Some(codebooks),
            answers: &answers,
            next_sync_s,
            snapshot_horizon: prev.as_ref().and_then(|r| r.snapshot_horizon),
        },
    )?;
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
            response: page.frame.clone(),
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
    }))
}

/// Idempotency: the last applied sequence again is answered from the
/// record (same body) or refused (`sequence_reused`); an older one is
/// `stale_sequence`. `None`: a new sequence, to apply.
fn replay(rec: &DeviceRecord, up: &Upload) -> Option<Result<Applied, ApiError>> {
    if up.seq == rec.last_seq {
        if up.sha256 == rec.body_sha256 {
            return Some(Ok(Applied {
                response: rec.response.clone(),
                replayed: true,
                acked: 0,
                conflicts: 0,
                changes: 0,
                more: false,
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

/// Largest step above the last applied sequence the server accepts (the
/// device's own cap on a 409 jump, `omega_tv_sync::sync::MAX_SEQ_JUMP`).
pub const MAX_SEQ_JUMP: u64 = omega_tv_sync::sync::MAX_SEQ_JUMP;

/// Decides one uploaded item against the stored pattern: its [`Plan`] and
/// the answer the device gets for it. A delta that does not decode (or has
/// no stored base) refuses the whole upload.
fn plan(
    txn: &dyn ReadTxn,
    up: &Upload,
    book: &dyn CodeSpace,
    item: &Item,
) -> StoreResult<Result<(Plan, Answer), ApiError>> {
    let cur = txn.pattern(&up.device, item.id())?;
    let cur_rev = cur.as_ref().map_or(0, |p| p.revision);
    let base_rev = match item {
        Item::Update { base_rev, .. } | Item::Removal { base_rev, .. } => *base_rev,
    };
    // A pattern stored in another codebook than the frame's cannot take a
    // delta (its base codes mean something else): a conflict without state,
    // after which the device re-sends absolute on `server_rev`. An absolute
    // update or a removal on the current revision applies whatever the
    // stored codebook (the absolute codes are the frame's own), so a device
    // that changed codebook gets out after one conflict.
    let same_book = cur.as_ref().is_none_or(|p| p.codebook == up.codebook);
    let is_delta = matches!(item, Item::Update { absolute: None, .. });
    if base_rev != cur_rev || (!same_book && is_delta) {
        let answer = Answer::Conflict {
            id: item.id().to_string(),
            server_rev: cur_rev,
            state: cur.as_ref().and_then(|p| conflict_state(book, up, p)),
        };
        return Ok(Ok((Plan::Conflict, answer)));
    }
    match item {
        Item::Update {
            id,
            success_rate,
            sample_count,
            category,
            code,
            absolute,
            predecoded,
            ..
        } => {
            let delta = Delta {
                code,
                predecoded: predecoded.as_deref(),
            };
            let codes = match absolute {
                Some(a) => a.clone(),
                None => match delta.decode(book, up.codebook, id, cur.as_ref()) {
                    Ok(c) => c,
                    Err(e) => return Ok(Err(e)),
                },
            };
            // The next revision: one above the stored one, or, for a pattern
            // stored anew, one above the device's revision floor (the highest
            // revision any removed pattern of it had), so that a revision is
            // never handed out twice for a pattern id: a stale session's
            // delta on an old revision then conflicts instead of being
            // decoded against other codes.
            let last = match cur {
                Some(_) => cur_rev,
                None => txn.revision_floor(&up.device)?,
            };
            let Some(revision) = last.checked_add(1) else {
                return Ok(Err(ApiError::new(
                    422,
                    "revision_exhausted",
                    format!("pattern {id}: no revision left above {last}"),
                )));
            };
            let answer = Answer::Ack {
                id: id.clone(),
                revision,
            };
            let stored = StoredPattern {
                revision,
                codebook: up.codebook,
                success_rate: *success_rate,
                sample_count: *sample_count,
                category: category.clone(),
                codes,
            };
            let plan = match cur {
                None => Plan::Insert(id.clone(), stored),
                Some(_) => Plan::Update(id.clone(), stored),
            };
            Ok(Ok((plan, answer)))
        }
        Item::Removal { id, .. } => {
            let answer = Answer::Ack {
                id: id.clone(),
                revision: 0,
            };
            let plan = match cur {
                Some(_) => Plan::Remove(id.clone()),
                None => Plan::Nothing,
            };
            Ok(Ok((plan, answer)))
        }
    }
}

/// The stored state a conflict carries: the server's pattern coded in the
/// upload's codebook (`None` in another codebook, or when it does not encode).
fn conflict_state(book: &dyn CodeSpace, up: &Upload, p: &StoredPattern) -> Option<ConflictState> {
    if p.codebook != up.codebook {
        return None;
    }
    let mut buf = vec![0u8; omega_tv_sync::wire::MAX_CODE_LEN];
    let n = book.encode(&p.codes, &mut buf).ok()?;
    buf.truncate(n);
    Some(ConflictState {
        success_rate: p.success_rate,
        sample_count: p.sample_count,
        category: p.category.clone(),
        code: buf,
    })
}

/// The delta of an update and, when [`predecode`] could decode it, its
/// `(base, result)`.
struct Delta<'a> {
    code: &'a [u8],
    predecoded: Option<&'a (Codes, Codes)>,
}

impl Delta<'_> {
    /// The absolute codes this delta makes of the stored pattern `cur`
    /// (in `codebook`): pre-decoded when the stored codes are still the
    /// base [`predecode`] saw, decoded now otherwise.
    fn decode(
        &self,
        book: &dyn CodeSpace,
        codebook: u32,
        id: &str,
        cur: Option<&StoredPattern>,
    ) -> Result<Box<Codes>, ApiError> {
        let Some(c) = cur else {
            return Err(ApiError::new(
                400,
                Error::Malformed.code(),
                format!("pattern {id}: delta without a stored base"),
            ));
        };
        if let Some(pd) = self
            .predecoded
            .filter(|pd| pd.0 == *c.codes && c.codebook == codebook)
        {
            return Ok(Box::new(pd.1));
        }
        let mut out: Box<Codes> = Box::new([0; omega_tv_sync::DIM]);
        book.decode(self.code, Some(&c.codes), &mut out)
            .map_err(|e| ApiError::core(e, &format!("pattern {id} delta")))?;
        Ok(out)
    }
}

/// Carries out the plans; returns the patterns stored or removed.
fn write(txn: &mut dyn WriteTxn, device: &str, plans: &[Plan]) -> StoreResult<usize> {
    let mut acked = 0;
    for plan in plans {
        match plan {
            Plan::Insert(id, p) | Plan::Update(id, p) => txn.put_pattern(device, id, p)?,
            Plan::Remove(id) => txn.remove_pattern(device, id)?,
            Plan::Conflict | Plan::Nothing => continue,
        }
        acked += 1;
    }
    Ok(acked)
}
