//! The writer thread: group commit. It takes the first queued [`Work`],
//! drains what else is queued (up to a bound), runs it all in one
//! transaction and calls each work's [`Finish`] once the commit is durable.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use ::redb::{Database, Durability};

use super::txn::RedbWrite;
use super::{be, CommitStats};
use crate::store::{Finish, StoreError, Work};

/// The writer loop: runs until every sender is gone.
pub(super) fn run(
    db: Arc<Database>,
    rx: Receiver<Work>,
    depth: Arc<AtomicUsize>,
    stats: Arc<CommitStats>,
    max_batch: usize,
) {
    let mut pending: VecDeque<Work> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(w) => pending.push_back(w),
                Err(_) => return,
            }
        }
        while pending.len() < max_batch {
            match rx.try_recv() {
                Ok(w) => pending.push_back(w),
                Err(_) => break,
            }
        }
        let n = pending.len().min(max_batch);
        let mut batch: Vec<Work> = pending.drain(..n).collect();
        depth.fetch_sub(n, Ordering::Relaxed);
        run_batch(&db, &mut batch, &mut pending, &stats);
    }
}

/// Runs `batch` in one transaction. When one work fails, the transaction is
/// abandoned, the works already run are told so, and the ones not yet run go
/// back to the front of `pending` for the next transaction.
fn run_batch(
    db: &Database,
    batch: &mut Vec<Work>,
    pending: &mut VecDeque<Work>,
    stats: &CommitStats,
) {
    let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
    let txn = match db.begin_write() {
        Ok(mut t) => {
            t.set_durability(Durability::Immediate);
            t
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot begin write transaction");
            // Every work is dropped unrun: its caller sees the writer closed.
            batch.clear();
            return;
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
    drop(tables);
    let unrun: Vec<Work> = rest.collect();
    for w in unrun.into_iter().rev() {
        pending.push_front(w);
    }
    let outcome = match failure {
        Some(e) => {
            let _ = txn.abort();
            Err(e)
        }
        None => txn.commit().map_err(be),
    };
    if outcome.is_ok() {
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .items
            .fetch_add(finishes.len() as u64, Ordering::Relaxed);
    } else if let Err(e) = &outcome {
        tracing::error!(error = %e, items = finishes.len(), "group commit failed");
    }
    for f in finishes {
        f(outcome.clone());
    }
}
