//! Storage: the records the server keeps, and the traits a backend implements.
//!
//! The state is kept as keyed tables: per-device state keyed by device id
//! (`devices`, `patterns` keyed by device id and pattern id), an
//! aggregation-input log of device-pattern changes ordered by commit, and the
//! global changelog ordered by version. The records are in
//! [`records`](self::records); the backend is [`redb`](self::redb), and
//! [`mem`](self::mem) is the in-memory one the tests use.
//!
//! Writes go through [`Store::submit`]: a backend runs each submitted
//! [`Work`] inside a write transaction shared with whatever other work is
//! pending (group commit), makes it durable, and only then calls the work's
//! [`Finish`] with the outcome.

pub mod mem;
pub mod memo;
pub mod postgres;
pub mod records;
pub mod redb;

pub use records::{
    Contribution, DeviceChange, DeviceRecord, Enrolment, GlobalAggregate, GlobalChange,
    StoredPattern,
};

/// A storage failure (I/O, corruption, a full queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The backend failed; the text says how.
    Backend(String),
    /// A stored record does not decode.
    Corrupt(&'static str),
    /// The write queue is full: the server is overloaded.
    Overloaded,
    /// The writer stopped.
    Closed,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Backend(s) => write!(f, "storage: {s}"),
            StoreError::Corrupt(what) => write!(f, "corrupt stored {what}"),
            StoreError::Overloaded => f.write_str("write queue full"),
            StoreError::Closed => f.write_str("writer stopped"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Result alias for storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Keys of the `meta` counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meta {
    /// The current global version (0: nothing published yet).
    GlobalVersion,
    /// Tombstones below this version were dropped; a device whose cursor is
    /// older (and not 0) needs a reset.
    Horizon,
    /// Last sequence number given to a device-pattern change.
    ChangeSeq,
    /// Last device-pattern change the aggregator has consumed.
    AggregateCursor,
    /// Last global pattern id handed out.
    GlobalId,
    /// Last differentially private release epoch (`aggregate::dp`).
    DpEpoch,
    /// Slot `i` (below [`DP_WINDOW_SLOTS`]) of the releases the privacy
    /// accountant counts (`aggregate::accountant::ReleaseLog`): a time
    /// bucket's number and the releases made in it.
    DpWindow(u8),
}

/// Slots of [`Meta::DpWindow`].
pub const DP_WINDOW_SLOTS: usize = 32;

const DP_WINDOW_KEYS: [&str; DP_WINDOW_SLOTS] = [
    "dp_window_00",
    "dp_window_01",
    "dp_window_02",
    "dp_window_03",
    "dp_window_04",
    "dp_window_05",
    "dp_window_06",
    "dp_window_07",
    "dp_window_08",
    "dp_window_09",
    "dp_window_10",
    "dp_window_11",
    "dp_window_12",
    "dp_window_13",
    "dp_window_14",
    "dp_window_15",
    "dp_window_16",
    "dp_window_17",
    "dp_window_18",
    "dp_window_19",
    "dp_window_20",
    "dp_window_21",
    "dp_window_22",
    "dp_window_23",
    "dp_window_24",
    "dp_window_25",
    "dp_window_26",
    "dp_window_27",
    "dp_window_28",
    "dp_window_29",
    "dp_window_30",
    "dp_window_31",
];

impl Meta {
    /// The key it is stored under.
    pub fn key(self) -> &'static str {
        match self {
            Meta::GlobalVersion => "global_version",
            Meta::Horizon => "horizon",
            Meta::ChangeSeq => "change_seq",
            Meta::AggregateCursor => "aggregate_cursor",
            Meta::GlobalId => "global_id",
            Meta::DpEpoch => "dp_epoch",
            // Slot numbers are taken modulo the slot count.
            Meta::DpWindow(i) => DP_WINDOW_KEYS[usize::from(i) % DP_WINDOW_SLOTS],
        }
    }
}

/// Read access, shared by read and write transactions.
pub trait ReadTxn {
    /// A device's idempotency record.
    fn device(&self, id: &str) -> StoreResult<Option<DeviceRecord>>;
    /// One stored pattern.
    fn pattern(&self, device: &str, pattern: &str) -> StoreResult<Option<StoredPattern>>;
    /// Every stored pattern of a device, by pattern id.
    fn device_patterns(&self, device: &str) -> StoreResult<Vec<(String, StoredPattern)>>;
    /// How many patterns a device has stored (its quota, `sync::apply`).
    /// The default reads them all; a backend may count keys only.
    fn device_pattern_count(&self, device: &str) -> StoreResult<u64> {
        Ok(self.device_patterns(device)?.len() as u64)
    }
    /// A device's revision floor (0 when it never removed a pattern): the
    /// highest revision any pattern of the device had when it was removed.
    /// A pattern stored anew (no stored row) gets `floor + 1`, so no
    /// revision of a pattern id is ever handed out twice, whatever was
    /// removed and re-created in between. It only rises, and is never
    /// pruned (one integer per device, however many ids come and go).
    fn revision_floor(&self, device: &str) -> StoreResult<u32>;
    /// A `meta` counter (0 when unset).
    fn meta(&self, key: Meta) -> StoreResult<u64>;
    /// Visits the changelog entries with version `> after` in version order
    /// until `visit` returns `false`.
    fn log_after(
        &self,
        after: u64,
        visit: &mut dyn FnMut(u64, GlobalChange) -> StoreResult<bool>,
    ) -> StoreResult<()>;
    /// Up to `limit` device-pattern changes with sequence `> after`.
    fn device_changes_after(&self, after: u64, limit: usize) -> StoreResult<Vec<DeviceChange>>;
    /// A device pattern's current contribution to a global pattern.
    fn contribution(&self, device: &str, pattern: &str) -> StoreResult<Option<Contribution>>;
    /// Every current contribution of a device, by pattern id.
    fn device_contributions(&self, device: &str) -> StoreResult<Vec<(String, Contribution)>>;
    /// A global pattern's aggregation state.
    fn aggregate(&self, id: u32) -> StoreResult<Option<GlobalAggregate>>;
    /// Every global pattern's aggregation state.
    fn aggregates(&self) -> StoreResult<Vec<(u32, GlobalAggregate)>>;
    /// Number of devices with an idempotency record.
    fn device_count(&self) -> StoreResult<u64>;
    /// A device's enrolment (request signing).
    fn enrolment(&self, device: &str) -> StoreResult<Option<Enrolment>>;
}

/// Write access inside one (group) transaction.
pub trait WriteTxn: ReadTxn {
    /// Stores a device's enrolment.
    fn put_enrolment(&mut self, device: &str, e: &Enrolment) -> StoreResult<()>;
    /// Stores a device's idempotency record.
    fn put_device(&mut self, id: &str, rec: &DeviceRecord) -> StoreResult<()>;
    /// Stores a pattern and records the change for aggregation.
    fn put_pattern(&mut self, device: &str, pattern: &str, p: &StoredPattern) -> StoreResult<()>;
    /// Removes a pattern and records the change for aggregation; raises the
    /// device's [revision floor](ReadTxn::revision_floor) to the removed
    /// pattern's revision, in the same transaction.
    fn remove_pattern(&mut self, device: &str, pattern: &str) -> StoreResult<()>;
    /// Sets a `meta` counter.
    fn set_meta(&mut self, key: Meta, value: u64) -> StoreResult<()>;
    /// Appends `change` to the changelog under the next global version,
    /// dropping the previous entry of the same item; returns the version.
    fn publish(&mut self, change: &GlobalChange) -> StoreResult<u64>;
    /// Drops changelog entry `version`, a tombstone, and its item key
    /// `item` (so a later publication of the item starts afresh).
    fn drop_tombstone(&mut self, version: u64, item: &str) -> StoreResult<()>;
    /// Drops tombstones with a version below `horizon` and raises the
    /// horizon (never lowers it). Written once, over the primitives above.
    fn prune_tombstones(&mut self, horizon: u64) -> StoreResult<()> {
        let mut dead = Vec::new();
        self.log_after(0, &mut |v, c| {
            if v >= horizon {
                return Ok(false);
            }
            if c.is_tombstone() {
                dead.push((v, c.item_key()));
            }
            Ok(true)
        })?;
        for (v, k) in &dead {
            self.drop_tombstone(*v, k)?;
        }
        if horizon > self.meta(Meta::Horizon)? {
            self.set_meta(Meta::Horizon, horizon)?;
        }
        Ok(())
    }
    /// Stores or clears a contribution.
    fn put_contribution(
        &mut self,
        device: &str,
        pattern: &str,
        c: Option<&Contribution>,
    ) -> StoreResult<()>;
    /// Stores or clears a global pattern's aggregation state.
    fn put_aggregate(&mut self, id: u32, a: Option<&GlobalAggregate>) -> StoreResult<()>;
    /// Forgets the device-pattern changes up to `upto` (consumed by aggregation).
    fn drop_device_changes(&mut self, upto: u64) -> StoreResult<()>;
}

/// Called once the transaction a [`Work`] ran in has committed durably
/// (`Ok`), or failed (`Err`; nothing of it was stored).
pub type Finish = Box<dyn FnOnce(StoreResult<()>) + Send>;

/// A unit of work for the writer: runs inside the shared write transaction
/// and returns its [`Finish`], plus `Err` when it failed part-way (the whole
/// transaction is then abandoned).
pub type Work = Box<dyn FnOnce(&mut dyn WriteTxn) -> (Finish, StoreResult<()>) + Send>;

/// A storage backend.
pub trait Store: Send + Sync + 'static {
    /// Queues `work` for the next group commit. `Err(Overloaded)` when the
    /// queue is full (the work is dropped unrun).
    fn submit(&self, work: Work) -> StoreResult<()>;
    /// Runs `f` in a read transaction over the latest committed state.
    fn read(&self, f: &mut dyn FnMut(&dyn ReadTxn) -> StoreResult<()>) -> StoreResult<()>;
    /// Whether a small read is cheap enough to run on an async worker: it
    /// reads local memory or a local file's cache and never waits on a
    /// network round trip. `false` (the default) sends every read to the
    /// blocking pool.
    fn local_reads(&self) -> bool {
        false
    }
    /// Work items queued and not yet committed.
    fn queue_depth(&self) -> usize;
    /// Group commits and work items committed so far.
    fn commit_stats(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Whether this node is the aggregation leader, and its term: `None`
    /// when another node aggregates (skip the pass). When the term changes,
    /// the aggregator reloads its state from the store. A single-process
    /// backend always leads, term 0.
    fn aggregation_term(&self) -> StoreResult<Option<u64>> {
        Ok(Some(0))
    }
}

/// Queues `work` on a writer's bounded channel (both backends' `submit`):
/// `Overloaded` when it is full, `Closed` once the store shut down; `depth`
/// counts what is queued.
pub fn enqueue(
    tx: &std::sync::Mutex<Option<std::sync::mpsc::SyncSender<Work>>>,
    depth: &std::sync::atomic::AtomicUsize,
    work: Work,
) -> StoreResult<()> {
    use std::sync::atomic::Ordering;
    use std::sync::mpsc::TrySendError;
    let tx = tx
        .lock()
        .map_err(|_| StoreError::Closed)?
        .clone()
        .ok_or(StoreError::Closed)?;
    depth.fetch_add(1, Ordering::Relaxed);
    match tx.try_send(work) {
        Ok(()) => Ok(()),
        Err(e) => {
            depth.fetch_sub(1, Ordering::Relaxed);
            Err(match e {
                TrySendError::Full(_) => StoreError::Overloaded,
                TrySendError::Disconnected(_) => StoreError::Closed,
            })
        }
    }
}

/// Runs `f` in the next group commit and returns its result once durable.
pub async fn write<S, R, F>(store: &S, f: F) -> StoreResult<R>
where
    S: Store + ?Sized,
    R: Send + 'static,
    F: FnOnce(&mut dyn WriteTxn) -> StoreResult<R> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<StoreResult<R>>();
    let work: Work = Box::new(move |txn: &mut dyn WriteTxn| {
        let r = f(txn);
        let status = match &r {
            Ok(_) => Ok(()),
            Err(e) => Err(e.clone()),
        };
        let finish: Finish = Box::new(move |committed: StoreResult<()>| {
            let out = match committed {
                Ok(()) => r,
                Err(e) => Err(e),
            };
            let _ = tx.send(out);
        });
        (finish, status)
    });
    store.submit(work)?;
    rx.await.map_err(|_| StoreError::Closed)?
}

/// Runs `f` in a read transaction and returns its value.
pub fn read<S, R>(store: &S, mut f: impl FnMut(&dyn ReadTxn) -> StoreResult<R>) -> StoreResult<R>
where
    S: Store + ?Sized,
{
    let mut out = None;
    store.read(&mut |txn| {
        out = Some(f(txn)?);
        Ok(())
    })?;
    out.ok_or(StoreError::Closed)
}

/// Runs `f` in a read transaction on tokio's blocking pool, off the async
/// workers (a read may visit many entries or wait on the disk).
pub async fn read_blocking<R, F>(store: std::sync::Arc<dyn Store>, f: F) -> StoreResult<R>
where
    R: Send + 'static,
    F: FnMut(&dyn ReadTxn) -> StoreResult<R> + Send + 'static,
{
    tokio::task::spawn_blocking(move || read(&*store, f))
        .await
        .map_err(|_| StoreError::Closed)?
}
