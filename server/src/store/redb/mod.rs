//! The embedded default backend: one redb file, ACID, with group commit.
//!
//! One writer thread owns every write transaction. It takes the first queued
//! [`Work`], drains everything else queued at that moment (up to a bound),
//! runs all of it in one transaction with `Durability::Immediate`, commits
//! (one fsync for the whole group) and only then calls each work's
//! [`Finish`]. Throughput therefore does not stop at one fsync per sync.
//! Reads use MVCC read transactions and never wait for the writer.

mod txn;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ::redb::Database;

use super::{ReadTxn, Store, StoreError, StoreResult, Work};

/// A backend failure, as text.
fn be<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Group-commit statistics.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Work items committed.
    pub items: AtomicU64,
}

/// Settings of the redb backend.
#[derive(Clone, Debug)]
pub struct RedbOptions {
    /// Most work items queued before [`Store::submit`] reports overload.
    pub queue_limit: usize,
    /// Most work items in one transaction.
    pub max_batch: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            queue_limit: 4096,
            max_batch: 1024,
        }
    }
}

/// The redb [`Store`].
pub struct RedbStore {
    db: Arc<Database>,
    tx: Mutex<Option<SyncSender<Work>>>,
    depth: Arc<AtomicUsize>,
    stats: Arc<CommitStats>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl RedbStore {
    /// Opens (or creates) the database at `path` and starts the writer.
    pub fn open(path: &Path, opts: RedbOptions) -> StoreResult<Self> {
        let db = Database::create(path).map_err(be)?;
        txn::create_tables(&db)?;
        let db = Arc::new(db);
        let (tx, rx) = sync_channel::<Work>(opts.queue_limit.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(CommitStats::default());
        let writer = {
            let (db, depth, stats) = (db.clone(), depth.clone(), stats.clone());
            std::thread::Builder::new()
                .name("constellation-writer".into())
                .spawn(move || writer::run(db, rx, depth, stats, opts.max_batch.max(1)))
                .map_err(be)?
        };
        Ok(RedbStore {
            db,
            tx: Mutex::new(Some(tx)),
            depth,
            stats,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Group-commit statistics.
    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Stops the writer after the queued work is committed. Later submits
    /// fail with [`StoreError::Closed`].
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut w) = self.writer.lock() {
            if let Some(h) = w.take() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store for RedbStore {
    fn submit(&self, work: Work) -> StoreResult<()> {
        super::enqueue(&self.tx, &self.depth, work)
    }

    fn read(&self, f: &mut dyn FnMut(&dyn ReadTxn) -> StoreResult<()>) -> StoreResult<()> {
        let txn = self.db.begin_read().map_err(be)?;
        f(&txn::RedbRead::new(txn))
    }

    fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    fn commit_stats(&self) -> (u64, u64) {
        (
            self.stats.commits.load(Ordering::Relaxed),
            self.stats.items.load(Ordering::Relaxed),
        )
    }
}
