//! The embedded default backend: one redb file, ACID, with group commit.
//!
//! One writer thread owns every write transaction. It takes the first queued
//! [`Work`], drains everything else queued at that moment (up to a bound),
//! runs all of it in one transaction with `Durability::Immediate`, commits
//! (one fsync for the whole group) and only then calls each work's
//! [`Finish`]. Throughput therefore does not stop at one fsync per sync.
//! Reads use MVCC read transactions and never wait for the writer.
//!
//! In journal mode ([`RedbOptions::journal`], [`journal`]) a group of syncs
//! is made durable by one small append to a journal beside the file
//! instead of a commit, and the transaction stays open for the next groups
//! until it is folded (committed) a few times a second; readers see the
//! journaled rows through an in-memory overlay, and opening the file
//! replays the journal's records that were not folded.
//!
//! Storage faults: redb refuses every later transaction ("Previous I/O
//! error") once a write failed (disk full, file size limit, EIO). The writer
//! then takes the database out of service (reads and writes answer
//! [`StoreError::Backend`] meanwhile, which the server answers
//! `503 storage_unavailable`), drops it and opens the file again after
//! [`REOPEN_FIRST`], doubling the wait up to [`REOPEN_MAX`] while opening
//! or the first transaction keeps failing. A commit that failed stored
//! nothing and was never acknowledged, so nothing acknowledged is lost.

mod changes;
pub mod journal;
#[cfg(test)]
mod tests;
mod txn;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use journal::{Journal, Overlay};

use ::redb::Database;

use super::{ReadTxn, Store, StoreError, StoreResult, Work};

/// A backend failure, as text.
fn be<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// First wait before the database is opened again after a storage fault.
pub const REOPEN_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to open the database again.
pub const REOPEN_MAX: Duration = Duration::from_secs(8);

/// Group-commit statistics.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Work items committed.
    pub items: AtomicU64,
    /// Storage faults after which the database was taken out of service.
    pub faults: AtomicU64,
    /// Times the database was opened again after a fault.
    pub reopens: AtomicU64,
    /// Write transactions committed (in journal mode, folds; otherwise one
    /// per group, as `commits`).
    pub folds: AtomicU64,
    /// Bytes appended to the journal.
    pub journal_bytes: AtomicU64,
}

/// The open database, shared by the readers and the writer: `None` while
/// the writer reopens it after a storage fault.
pub(super) struct Slot {
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
}

impl Slot {
    /// The database in service.
    fn get(&self) -> StoreResult<Arc<Database>> {
        self.db
            .read()
            .ok()
            .and_then(|g| g.clone())
            .ok_or_else(|| StoreError::Backend("database out of service after a fault".into()))
    }

    /// Takes the database out of service; reads fail until [`put`](Self::put).
    fn take(&self) -> Option<Arc<Database>> {
        self.db.write().ok().and_then(|mut g| g.take())
    }

    /// Puts `db` in service.
    fn put(&self, db: Database) {
        if let Ok(mut g) = self.db.write() {
            *g = Some(Arc::new(db));
        }
    }

    /// Opens the file (repairing it when a write was cut off) with every
    /// table, and folds into it the journal's records not yet folded
    /// ([`journal`]); returns it with its journal epoch and salt.
    fn open(&self) -> StoreResult<(Database, (u64, u64))> {
        let db = Database::create(&self.path).map_err(be)?;
        txn::create_tables(&db)?;
        let state = self.replay(&db)?;
        Ok((db, state))
    }

    /// Writes the journal's records of the database's salt into it and
    /// commits them with the next epoch and a new salt (at every open:
    /// whatever is in the journal is then stale); then empties the journal.
    fn replay(&self, db: &Database) -> StoreResult<(u64, u64)> {
        let bytes = Journal::read_all(&self.path).map_err(be)?;
        let txn = db.begin_write().map_err(be)?;
        let (epoch, salt) = txn::journal_state(&txn)?;
        let ops = if salt == 0 {
            Vec::new()
        } else {
            journal::parse(&bytes, salt)
        };
        txn::RedbWrite::open(&txn)?.replay(&ops)?;
        let next = (epoch + 1, journal::new_salt()?);
        txn::set_journal_state(&txn, next.0, next.1)?;
        txn.commit().map_err(be)?;
        if !ops.is_empty() {
            tracing::info!(rows = ops.len(), "journal replayed into the database");
        }
        if !bytes.is_empty() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(journal::journal_path(&self.path))
                .map_err(be)?;
            f.set_len(0).and_then(|()| f.sync_data()).map_err(be)?;
        }
        Ok(next)
    }
}

/// Settings of the redb backend.
#[derive(Clone, Debug)]
pub struct RedbOptions {
    /// Most work items queued before [`Store::submit`] reports overload.
    pub queue_limit: usize,
    /// Most work items in one group.
    pub max_batch: usize,
    /// Journal mode ([`journal`]): a group of syncs is made durable by an
    /// append to `<db>.journal` and folded into the file later, instead of
    /// a commit per group.
    pub journal: bool,
    /// Longest a journaled group waits to be folded into the file.
    pub fold_every: Duration,
    /// Most journal bytes between two folds.
    pub fold_bytes: u64,
}

/// Default [`RedbOptions::fold_every`].
pub const FOLD_EVERY: Duration = Duration::from_millis(500);
/// Default [`RedbOptions::fold_bytes`]: 16 MiB, what a restart replays at most.
pub const FOLD_BYTES: u64 = 16 << 20;

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            queue_limit: 4096,
            max_batch: 1024,
            journal: true,
            fold_every: FOLD_EVERY,
            fold_bytes: FOLD_BYTES,
        }
    }
}

/// The redb [`Store`].
pub struct RedbStore {
    slot: Arc<Slot>,
    overlay: Arc<Overlay>,
    /// Tests: fails the journal's next append ([`Journal::fail_next`]).
    #[cfg(test)]
    fail_append: Arc<std::sync::atomic::AtomicBool>,
    tx: Mutex<Option<SyncSender<Work>>>,
    depth: Arc<AtomicUsize>,
    stats: Arc<CommitStats>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl RedbStore {
    /// Opens (or creates) the database at `path` and starts the writer.
    pub fn open(path: &Path, opts: RedbOptions) -> StoreResult<Self> {
        let slot = Slot {
            db: RwLock::new(None),
            path: path.to_path_buf(),
        };
        let (db, (epoch, salt)) = slot.open()?;
        slot.put(db);
        let journal = if opts.journal {
            Some(Journal::open(path, epoch, salt).map_err(be)?)
        } else {
            None
        };
        #[cfg(test)]
        let fail_append = journal
            .as_ref()
            .map(|j| j.fail_next.clone())
            .unwrap_or_default();
        let slot = Arc::new(slot);
        let overlay = Arc::new(Overlay::default());
        let (tx, rx) = sync_channel::<Work>(opts.queue_limit.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(CommitStats::default());
        let writer = {
            let (slot, depth, stats, overlay) =
                (slot.clone(), depth.clone(), stats.clone(), overlay.clone());
            std::thread::Builder::new()
                .name("constellation-writer".into())
                .spawn(move || writer::run(slot, rx, depth, stats, overlay, opts, journal))
                .map_err(be)?
        };
        Ok(RedbStore {
            slot,
            overlay,
            #[cfg(test)]
            fail_append,
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
        let (txn, gens) = self
            .overlay
            .pair(|| self.slot.get()?.begin_read().map_err(be))?;
        f(&txn::RedbRead::new(txn, gens)?)
    }

    /// A local file read through redb's page cache.
    fn local_reads(&self) -> bool {
        true
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
