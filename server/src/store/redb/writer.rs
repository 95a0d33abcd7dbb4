//! The writer thread: group commit. It takes the first queued [`Work`],
//! drains what else is queued (up to a bound), runs it all in one
//! transaction and calls each work's [`Finish`] once the commit is durable.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redb::{Database, Durability};

use super::txn::RedbWrite;
use super::{be, CommitStats, Slot, REOPEN_FIRST, REOPEN_MAX};
use crate::store::{Finish, ReadTxn, StoreError, StoreResult, Work};

/// The database out of service after a storage fault.
struct Fault {
    /// The failed database, until every reader let go of it.
    old: Option<Arc<Database>>,
    /// When to try opening it again.
    next_try: Instant,
    /// The wait after that attempt, should it fail.
    backoff: Duration,
}

impl Fault {
    /// Tries to put the database back in service: drops the failed one
    /// (once no reader holds it), opens the file again and checks that a
    /// write transaction works. `true` when it is back.
    fn reopen(&mut self, slot: &Slot, stats: &CommitStats) -> bool {
        if let Some(old) = self.old.take() {
            match Arc::try_unwrap(old) {
                Ok(db) => {
                    let _ = catch_unwind(AssertUnwindSafe(|| drop(db)));
                }
                Err(old) => {
                    // A read still runs on it: try again shortly.
                    self.old = Some(old);
                    self.next_try = Instant::now() + Duration::from_millis(50);
                    return false;
                }
            }
        }
        // redb asserts on some damaged files while opening: a panic there
        // is a failed attempt like an error.
        let opened = unpanicked("redb panicked while opening", || slot.open());
        match opened.and_then(|db| usable(&db).map(|()| db)) {
            Ok(db) => {
                slot.put(db);
                stats.reopens.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("database reopened after a storage fault; serving again");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?self.backoff, "database still unusable");
                self.next_try = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(REOPEN_MAX);
                false
            }
        }
    }
}

/// Whether a write transaction can begin and read on `db` (redb refuses
/// every transaction after an I/O error: "Previous I/O error").
/// A panic in redb (it asserts after some I/O errors) counts as unusable.
fn usable(db: &Database) -> StoreResult<()> {
    unpanicked("redb panicked", || {
        let txn = db.begin_write().map_err(be)?;
        let r = RedbWrite::open(&txn).and_then(|t| t.meta(crate::store::Meta::GlobalVersion));
        txn.abort().map_err(be)?;
        r.map(|_| ())
    })
}

/// `f`'s result, or [`StoreError::Backend`] with `what` when it panicked
/// (redb asserts after some I/O errors: such a panic is a storage fault
/// like the error itself).
fn unpanicked<T>(what: &str, f: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err(StoreError::Backend(what.into())))
}

/// The writer loop: runs until every sender is gone. After a failed
/// transaction it checks the database; when redb refuses it (an I/O
/// error), it takes it out of service and reopens it (module docs), and
/// the work queued meanwhile is dropped unrun (its callers see the store
/// unavailable: nothing of it was stored).
pub(super) fn run(
    slot: Arc<Slot>,
    rx: Receiver<Work>,
    depth: Arc<AtomicUsize>,
    stats: Arc<CommitStats>,
    max_batch: usize,
) {
    let mut pending: VecDeque<Work> = VecDeque::new();
    let mut fault: Option<Fault> = None;
    loop {
        if pending.is_empty() {
            let got = match &fault {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(f) => rx.recv_timeout(f.next_try.saturating_duration_since(Instant::now())),
            };
            match got {
                Ok(w) => pending.push_back(w),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        while pending.len() < max_batch {
            match rx.try_recv() {
                Ok(w) => pending.push_back(w),
                Err(_) => break,
            }
        }
        if let Some(f) = &mut fault {
            if Instant::now() >= f.next_try && f.reopen(&slot, &stats) {
                fault = None;
            } else {
                depth.fetch_sub(pending.len(), Ordering::Relaxed);
                pending.clear();
                continue;
            }
        }
        if pending.is_empty() {
            continue;
        }
        let db = match slot.get() {
            Ok(db) => db,
            Err(_) => {
                fault = Some(Fault {
                    old: None,
                    next_try: Instant::now(),
                    backoff: REOPEN_FIRST,
                });
                continue;
            }
        };
        let n = pending.len().min(max_batch);
        let mut batch: Vec<Work> = pending.drain(..n).collect();
        depth.fetch_sub(n, Ordering::Relaxed);
        let (finishes, outcome) = run_batch(&db, &mut batch, &mut pending, &stats);
        if outcome.is_err() {
            if let Err(e) = usable(&db) {
                stats.faults.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    error = %e,
                    retry_in = ?REOPEN_FIRST,
                    "storage fault: database out of service until it opens again"
                );
                drop(db);
                fault = Some(Fault {
                    old: slot.take(),
                    next_try: Instant::now() + REOPEN_FIRST,
                    backoff: REOPEN_FIRST * 2,
                });
            }
        }
        // Told only now: a caller that sees the failure finds the database
        // already out of service.
        for f in finishes {
            f(outcome.clone());
        }
    }
}

/// Runs `batch` in one transaction. When one work fails, the transaction is
/// abandoned, the works already run are told so, and the ones not yet run go
/// back to the front of `pending` for the next transaction. Returns the
/// works' [`Finish`]es, to be called with the outcome.
fn run_batch(
    db: &Database,
    batch: &mut Vec<Work>,
    pending: &mut VecDeque<Work>,
    stats: &CommitStats,
) -> (Vec<Finish>, StoreResult<()>) {
    let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
    let begun = unpanicked("redb panicked", || db.begin_write().map_err(be));
    let txn = match begun {
        Ok(mut t) => {
            t.set_durability(Durability::Immediate);
            t
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot begin write transaction");
            // Every work is dropped unrun: its caller sees the writer closed.
            batch.clear();
            return (Vec::new(), Err(e));
        }
    };
    let mut failure: Option<StoreError> = None;
    let mut rest = batch.drain(..);
    let mut tables = match RedbWrite::open(&txn) {
        Ok(t) => Some(t),
        Err(e) => {
            failure = Some(e);
            None
        }
    };
    while let Some(w) = tables.as_mut() {
        let Some(work) = rest.next() else { break };
        match catch_unwind(AssertUnwindSafe(|| work(w))) {
            Ok((finish, status)) => {
                finishes.push(finish);
                if let Err(e) = status {
                    failure = Some(e);
                    break;
                }
            }
            Err(_) => {
                tracing::error!("a write work item panicked; transaction abandoned");
                failure = Some(StoreError::Backend("work panicked".into()));
                break;
            }
        }
    }
    if failure.is_none() {
        if let Some(t) = tables.as_mut() {
            if let Err(e) = t.store_changes() {
                failure = Some(e);
            }
        }
    }
    drop(tables);
    let unrun: Vec<Work> = rest.collect();
    for w in unrun.into_iter().rev() {
        pending.push_front(w);
    }
    // redb asserts on an abort or commit after an I/O error inside the
    // transaction; such a panic is a storage fault like the error itself.
    let outcome = match failure {
        Some(e) => {
            let _ = catch_unwind(AssertUnwindSafe(|| txn.abort()));
            Err(e)
        }
        None => unpanicked("commit panicked", || txn.commit().map_err(be)),
    };
    if outcome.is_ok() {
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .items
            .fetch_add(finishes.len() as u64, Ordering::Relaxed);
    } else if let Err(e) = &outcome {
        tracing::error!(error = %e, items = finishes.len(), "group commit failed");
    }
    (finishes, outcome)
}
