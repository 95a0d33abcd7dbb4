//! One uploaded item against the stored pattern: its [`Plan`] (insert,
//! update, remove, conflict or nothing, deltas decoded) decided before
//! anything is written, and the writes of a whole upload's plans.

use omega_tv_sync::Error;

use super::{Item, Upload};
use crate::codebooks::{CodeSpace, Codes};
use crate::download::{Answer, ConflictState};
use crate::error::ApiError;
use crate::store::{ReadTxn, StoreResult, StoredPattern, WriteTxn};

/// What one uploaded item does, decided before anything is written.
pub(super) enum Plan {
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

/// Decides one uploaded item against the stored pattern: its [`Plan`] and
/// the answer the device gets for it. A delta that does not decode (or has
/// no stored base) refuses the whole upload.
pub(super) fn plan(
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
pub(super) fn write(txn: &mut dyn WriteTxn, device: &str, plans: &[Plan]) -> StoreResult<usize> {
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
