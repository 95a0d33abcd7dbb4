//! The writer thread: group commit. It takes the first queued [`Work`],
//! drains what else is queued (up to a bound), runs it all in one
//! transaction and calls each work's [`Finish`] once the group is durable:
//! committed, or, in journal mode ([`journal`](super::journal)), appended
//! to the journal with the transaction kept open for the next groups until
//! it is folded.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redb::{Database, Durability, WriteTransaction};

use super::journal::{self, Journal, Op, Overlay};
use super::txn::{self, RedbWrite};
use super::{be, CommitStats, RedbOptions, Slot, REOPEN_FIRST, REOPEN_MAX};
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
    /// write transaction works. Its journal epoch and salt when it is back.
    fn reopen(&mut self, slot: &Slot, stats: &CommitStats) -> Option<(u64, u64)> {
        if let Some(old) = self.old.take() {
            match Arc::try_unwrap(old) {
                Ok(db) => {
                    let _ = catch_unwind(AssertUnwindSafe(|| drop(db)));
                }
                Err(old) => {
                    // A read still runs on it: try again shortly.
                    self.old = Some(old);
                    self.next_try = Instant::now() + Duration::from_millis(50);
                    return None;
                }
            }
        }
        // redb asserts on some damaged files while opening: a panic there
        // is a failed attempt like an error.
        let opened = unpanicked("redb panicked while opening", || slot.open());
        match opened.and_then(|(db, state)| usable(&db).map(|()| (db, state))) {
            Ok((db, state)) => {
                slot.put(db);
                stats.reopens.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("database reopened after a storage fault; serving again");
                Some(state)
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?self.backoff, "database still unusable");
                self.next_try = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(REOPEN_MAX);
                None
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

/// The write transaction kept open across journaled groups.
struct Open {
    txn: WriteTransaction,
    /// When its first group ran.
    since: Instant,
}

/// The writer's state between groups.
struct Writer {
    slot: Arc<Slot>,
    stats: Arc<CommitStats>,
    overlay: Arc<Overlay>,
    opts: RedbOptions,
    /// The journal, in journal mode.
    journal: Option<Journal>,
    open: Option<Open>,
    fault: Option<Fault>,
}

/// The writer loop: runs until every sender is gone, then folds what is
/// open. After a failed group it checks the database; when redb refuses
/// it (an I/O error), it takes it out of service and reopens it (module
/// docs of [`redb`](super)), and the work queued meanwhile is dropped
/// unrun (its callers see the store unavailable: nothing of it was
/// stored).
pub(super) fn run(
    slot: Arc<Slot>,
    rx: Receiver<Work>,
    depth: Arc<AtomicUsize>,
    stats: Arc<CommitStats>,
    overlay: Arc<Overlay>,
    opts: RedbOptions,
    journal: Option<Journal>,
) {
    let max_batch = opts.max_batch.max(1);
    let mut w = Writer {
        slot,
        stats,
        overlay,
        opts,
        journal,
        open: None,
        fault: None,
    };
    let mut pending: VecDeque<Work> = VecDeque::new();
    loop {
        if pending.is_empty() {
            let deadline = match (&w.fault, &w.open) {
                (Some(f), _) => Some(f.next_try),
                (None, Some(o)) => Some(o.since + w.opts.fold_every),
                (None, None) => None,
            };
            let got = match deadline {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
            };
            match got {
                Ok(work) => pending.push_back(work),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    w.fold_open();
                    if let Some(j) = &mut w.journal {
                        j.clear();
                    }
                    return;
                }
            }
        }
        while pending.len() < max_batch {
            match rx.try_recv() {
                Ok(work) => pending.push_back(work),
                Err(_) => break,
            }
        }
        if let Some(f) = &mut w.fault {
            if Instant::now() >= f.next_try {
                if let Some((epoch, salt)) = f.reopen(&w.slot, &w.stats) {
                    w.fault = None;
                    w.overlay.clear();
                    if let Some(j) = &mut w.journal {
                        j.folded(epoch, salt);
                    }
                }
            }
            if w.fault.is_some() {
                depth.fetch_sub(pending.len(), Ordering::Relaxed);
                pending.clear();
                continue;
            }
        }
        if pending.is_empty() {
            w.fold_if_due();
            continue;
        }
        let db = match w.slot.get() {
            Ok(db) => db,
            Err(_) => {
                w.fault = Some(Fault {
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
        let (finishes, outcome) = w.group(&db, &mut batch, &mut pending);
        if outcome.is_err() && w.open.is_none() && w.fault.is_none() {
            w.check(db);
        }
        // Told only now: a caller that sees the failure finds the database
        // already out of service.
        for f in finishes {
            f(outcome.clone());
        }
        w.fold_if_due();
    }
}

/// Abandons `txn`. redb asserts on an abort after an I/O error inside the
/// transaction: such a panic changes nothing (the transaction is gone).
fn abort(txn: WriteTransaction) {
    let _ = catch_unwind(AssertUnwindSafe(|| txn.abort()));
}

impl Writer {
    /// Takes the database out of service at once (aborting what is open):
    /// reopening it replays the journal, which holds every acknowledged
    /// group the file may lack.
    fn out_of_service(&mut self, why: &str) {
        if let Some(o) = self.open.take() {
            abort(o.txn);
        }
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            retry_in = ?REOPEN_FIRST,
            "{why}: database out of service until it opens again"
        );
        self.fault = Some(Fault {
            old: self.slot.take(),
            next_try: Instant::now() + REOPEN_FIRST,
            backoff: REOPEN_FIRST * 2,
        });
    }

    /// After a failure with no transaction open: takes the database out of
    /// service when redb refuses it.
    fn check(&mut self, db: Arc<Database>) {
        if let Err(e) = usable(&db) {
            tracing::error!(error = %e, "storage fault");
            drop(db);
            self.out_of_service("storage fault");
        }
    }

    /// Folds the open transaction once it is `fold_every` old.
    fn fold_if_due(&mut self) {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.since.elapsed() >= self.opts.fold_every)
        {
            self.fold_open();
        }
    }

    /// Commits the open transaction, if any (a fold).
    fn fold_open(&mut self) {
        let Some(open) = self.open.take() else { return };
        if let Err(e) = self.fold(open.txn) {
            self.fold_failed(&e);
        }
    }

    /// After a failed fold in journal mode the database goes out of service
    /// at once: whether the fold landed is not known (redb may panic after
    /// its durable commit), and reopening settles it from the disk (the
    /// file's salt says which journal records are still to be replayed).
    /// Without the journal the caller checks the database as after any
    /// failed commit.
    fn fold_failed(&mut self, e: &StoreError) {
        tracing::error!(error = %e, "fold failed");
        if self.journal.is_some() {
            self.out_of_service("fold failed");
        }
    }

    /// Commits `txn` durably with the next journal epoch and a new salt;
    /// the journal's records are then in the file, and stale.
    fn fold(&mut self, txn: WriteTransaction) -> StoreResult<()> {
        let next = match self.journal.as_ref() {
            Some(j) => {
                let set = journal::new_salt().and_then(|salt| {
                    unpanicked("redb panicked", || {
                        txn::set_journal_state(&txn, j.epoch + 1, salt)
                    })
                    .map(|()| (j.epoch, salt))
                });
                match set {
                    Ok(x) => Some(x),
                    Err(err) => {
                        abort(txn);
                        return Err(err);
                    }
                }
            }
            None => None,
        };
        // redb asserts on a commit after an I/O error inside the
        // transaction; such a panic is a storage fault like the error.
        unpanicked("commit panicked", || txn.commit().map_err(be))?;
        self.stats.folds.fetch_add(1, Ordering::Relaxed);
        if let (Some(j), Some((e, salt))) = (&mut self.journal, next) {
            j.folded(e + 1, salt);
            self.overlay.retire(e);
        }
        Ok(())
    }

    /// The open transaction, or a new one.
    fn begin(&mut self, db: &Database) -> StoreResult<&WriteTransaction> {
        if self.open.is_none() {
            let mut t = unpanicked("redb panicked", || db.begin_write().map_err(be))?;
            t.set_durability(Durability::Immediate);
            self.open = Some(Open {
                txn: t,
                since: Instant::now(),
            });
        }
        self.open.as_ref().map(|o| &o.txn).ok_or(StoreError::Closed)
    }

    /// Abandons the open transaction (with the group that failed in it) and
    /// writes the journal's acknowledged groups again into a new one; when
    /// that fails, the database goes out of service (reopening it replays
    /// the journal).
    fn abandon(&mut self, db: &Database) {
        if let Some(o) = self.open.take() {
            abort(o.txn);
        }
        let window = match &mut self.journal {
            Some(j) if !j.window.is_empty() => std::mem::take(&mut j.window),
            _ => return,
        };
        let restored = self.begin(db).map(|_| ()).and_then(|()| {
            let txn = &self.open.as_ref().ok_or(StoreError::Closed)?.txn;
            unpanicked("redb panicked", || RedbWrite::open(txn)?.replay(&window))
        });
        if let Some(j) = &mut self.journal {
            j.window = window;
        }
        if let Err(e) = restored {
            tracing::error!(error = %e, "cannot restore the journaled groups after a failure");
            self.out_of_service("restoring the journaled groups failed");
        }
    }

    /// Runs `batch` as one group (module docs) and makes it durable. When
    /// one work fails, the group is abandoned, the works already run are
    /// told so, and the ones not yet run go back to the front of `pending`.
    /// Returns the works' [`Finish`]es, to be called with the outcome.
    fn group(
        &mut self,
        db: &Arc<Database>,
        batch: &mut Vec<Work>,
        pending: &mut VecDeque<Work>,
    ) -> (Vec<Finish>, StoreResult<()>) {
        let journaled = self.journal.is_some();
        let txn = match self.begin(db) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin write transaction");
                // Every work is dropped unrun: its caller sees the writer closed.
                batch.clear();
                return (Vec::new(), Err(e));
            }
        };
        let (finishes, ran) = run_works(txn, journaled, batch, pending);
        let (ops, unjournaled) = match ran {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, items = finishes.len(), "group failed");
                self.recover(db);
                return (finishes, Err(e));
            }
        };
        // The group's record, unless the group is folded: without the
        // journal, after a write the journal does not carry, or when the
        // record would take the journal past `fold_bytes`.
        let rec = match &self.journal {
            Some(j) if !unjournaled => journal::record(j.salt, &ops)
                .map(|r| (j.len + r.len() as u64 <= self.opts.fold_bytes).then_some(r)),
            _ => Ok(None),
        };
        let fold = matches!(rec, Ok(None));
        let outcome = match rec {
            Ok(None) => match self.open.take() {
                Some(o) => self.fold(o.txn),
                None => Err(StoreError::Closed),
            },
            Ok(Some(rec)) => self.append(&rec, ops),
            Err(e) => Err(e),
        };
        match &outcome {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .items
                    .fetch_add(finishes.len() as u64, Ordering::Relaxed);
            }
            Err(e) if fold => {
                tracing::error!(error = %e, items = finishes.len(), "group commit failed");
                self.fold_failed(e);
            }
            Err(e) => {
                // The journal append failed: the group is in the open
                // transaction but not durable.
                tracing::error!(error = %e, items = finishes.len(), "journal append failed");
                self.recover(db);
            }
        }
        (finishes, outcome)
    }

    /// After a failed group or append: the journal's acknowledged groups
    /// into a new transaction ([`abandon`](Self::abandon)), folded at once
    /// (an empty one too), so that a failed record that may be left in the
    /// journal carries a stale salt before anything else is acknowledged,
    /// and a failure cannot postpone the next fold.
    fn recover(&mut self, db: &Database) {
        self.abandon(db);
        if self.journal.is_none() || self.fault.is_some() {
            return;
        }
        if let Err(e) = self.begin(db).map(|_| ()) {
            tracing::error!(error = %e, "cannot begin the recovery fold");
            self.out_of_service("recovery failed");
            return;
        }
        self.fold_open();
    }

    /// Appends the group's record `rec` (of its rows `ops`) to the journal
    /// and, once durable, shows the rows to readers.
    fn append(&mut self, rec: &[u8], ops: Vec<Op>) -> StoreResult<()> {
        let Some(j) = &mut self.journal else {
            return Err(StoreError::Closed);
        };
        j.append(rec).map_err(be)?;
        self.stats
            .journal_bytes
            .fetch_add(rec.len() as u64, Ordering::Relaxed);
        self.overlay.publish(j.epoch, &ops);
        j.window.extend(ops);
        Ok(())
    }
}

/// Runs the works of `batch` in `txn` (recording their rows when
/// `journaled`) and stores the group's change block. When one work fails,
/// the ones not yet run go back to the front of `pending`. Returns the
/// [`Finish`]es of the works run, and the group's rows and whether it wrote
/// a table the journal does not carry.
type Ran = StoreResult<(Vec<Op>, bool)>;

fn run_works(
    txn: &WriteTransaction,
    journaled: bool,
    batch: &mut Vec<Work>,
    pending: &mut VecDeque<Work>,
) -> (Vec<Finish>, Ran) {
    let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
    let mut failure: Option<StoreError> = None;
    let mut rest = batch.drain(..);
    let mut tables = match unpanicked("redb panicked", || RedbWrite::open(txn)) {
        Ok(t) => Some(t),
        Err(e) => {
            failure = Some(e);
            None
        }
    };
    if let (Some(t), true) = (tables.as_mut(), journaled) {
        t.record();
    }
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
    let mut out = (Vec::new(), false);
    if failure.is_none() {
        if let Some(t) = tables.as_mut() {
            match unpanicked("redb panicked", || t.store_changes()) {
                Ok(()) => out = t.take_ops(),
                Err(e) => failure = Some(e),
            }
        }
    }
    drop(tables);
    let unrun: Vec<Work> = rest.collect();
    for w in unrun.into_iter().rev() {
        pending.push_front(w);
    }
    match failure {
        Some(e) => (finishes, Err(e)),
        None => (finishes, Ok(out)),
    }
}
