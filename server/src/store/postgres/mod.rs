//! The PostgreSQL backend: the same traits as [`redb`](super::redb), on a
//! database any number of stateless nodes share.
//!
//! **Threads.** The store traits are synchronous (the single writer model
//! and the read closures borrow their caller's state), and the async client
//! (`tokio-postgres`) needs a runtime to drive its connections. So the
//! backend owns a small runtime of its own; every statement is spawned onto
//! it and the calling thread waits for the answer on a channel. That works
//! from any thread, inside or outside the server's runtime (a blocking
//! client such as the `postgres` crate would panic there: it starts a runtime
//! of its own on the calling thread). Several statements one call needs are
//! sent together (pipelined) and cost one round trip.
//!
//! **Writes.** [`PgOptions::writers`] writer threads, each with its own
//! connection, take work from one queue. Each takes the first queued
//! [`Work`], drains whatever else is queued (up to `max_batch`), runs it all
//! in one transaction and commits, then calls each [`Finish`]: the same
//! group commit as redb, several of them in flight at once. A sync is
//! therefore one transaction: its idempotency record, its pattern revisions
//! and its aggregation input (`device_changes`) commit together, and it is
//! acknowledged only after the commit.
//!
//! **One device, two nodes.** The first device-keyed access of a write
//! transaction (`enrolment`, `device`, `pattern`, `put_*`) locks the device
//! row (`INSERT .. ON CONFLICT DO NOTHING`, then `SELECT .. FOR UPDATE`).
//! A second session of the same device, on this node or another, waits for
//! the first to commit, then reads what it committed: the retry is a replay,
//! the stale base a conflict, exactly as with one writer. Two transactions
//! that lock two devices in opposite orders deadlock; PostgreSQL aborts one,
//! its syncs get `503` with `Retry-After` and store nothing, and the devices
//! retry.
//!
//! **Aggregation input as a queue.** `device_changes.seq` comes from a
//! sequence, assigned at insert, not at commit: a transaction that draws 10
//! and commits after another drew 11 and committed would be skipped by a
//! cursor that had moved past 11. So this backend ignores the cursor:
//! [`ReadTxn::device_changes_after`] returns the oldest rows *present*, and
//! [`WriteTxn::drop_device_changes`] deletes exactly the rows that call
//! returned (by `seq`, up to `upto`), never a range. A row is deleted only
//! after it was read, so a late commit is simply read by a later pass; it
//! cannot be skipped.
//!
//! **One aggregation leader.** A node aggregates only while its dedicated
//! session holds the advisory lock [`LEADER_LOCK`]
//! ([`Store::aggregation_term`]); the lock dies with the session, so when the
//! leader dies another node takes it on its next pass. Taking it bumps
//! `meta.leader_term`, and every aggregation write (`publish`, `put_*`
//! contributions and aggregates, `set_meta`, `drop_device_changes`,
//! `prune_tombstones`) first reads that row `FOR SHARE` and aborts unless
//! it still holds this node's term. A leader that lost its session without
//! noticing can therefore not write after its successor took over (the
//! successor's bump waits for a transaction that passed the check, and
//! every later one fails it), and global versions stay assigned by one
//! writer at a time, in commit order.

pub mod schema;

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use futures_util::future::{join, join3};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::*;
use crate::codebooks::Codes;
use omega_tv_sync::DIM;

/// Key of the session advisory lock the aggregation leader holds
/// ("constellation leader").
pub const LEADER_LOCK: i64 = 0x0c05_7e11_a710_0002;

/// Settings of the PostgreSQL backend.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Most work items queued before [`Store::submit`] reports overload.
    pub queue_limit: usize,
    /// Most work items in one transaction.
    pub max_batch: usize,
    /// Writer threads (each with its own connection): transactions in flight.
    pub writers: usize,
    /// Threads of the runtime that drives the connections.
    pub io_threads: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            queue_limit: 4096,
            max_batch: 64,
            writers: 4,
            io_threads: 2,
        }
    }
}

type Param = Box<dyn ToSql + Sync + Send>;

fn p<T: ToSql + Sync + Send + 'static>(v: T) -> Param {
    Box::new(v)
}

/// A PostgreSQL error as a store error: a lost connection, a server
/// shutting down, a deadlock or serialization failure, or exhausted
/// resources are [`StoreError::Overloaded`] (retry later: `503`); anything
/// else is a backend failure.
fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let transient = e.is_closed()
        || match e.code() {
            None => true,
            Some(c) => {
                let c = c.code();
                c.starts_with("08")
                    || c.starts_with("57P")
                    || c.starts_with("40")
                    || c.starts_with("53")
            }
        };
    if transient {
        tracing::warn!(error = %e, "database unavailable");
        StoreError::Overloaded
    } else {
        StoreError::Backend(format!("postgres: {e}"))
    }
}

/// The runtime statements run on.
struct Bridge {
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl Bridge {
    fn new(threads: usize) -> StoreResult<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("constellation-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let handle = rt.handle().clone();
        Ok(Bridge {
            rt: Some(rt),
            handle,
        })
    }

    /// Runs `fut` on the runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> StoreResult<T> {
        let (tx, rx) = sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| StoreError::Closed)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The statements, prepared once per connection.
struct Stmts {
    lock_insert: Statement,
    lock_select: Statement,
    device: Statement,
    put_device: Statement,
    pattern: Statement,
    device_patterns: Statement,
    put_pattern: Statement,
    remove_pattern: Statement,
    meta: Statement,
    set_meta: Statement,
    log_after: Statement,
    changes: Statement,
    drop_changes: Statement,
    contribution: Statement,
    device_contributions: Statement,
    put_contribution: Statement,
    del_contribution: Statement,
    aggregate: Statement,
    aggregates: Statement,
    put_aggregate: Statement,
    del_aggregate: Statement,
    device_count: Statement,
    enrolment: Statement,
    put_enrolment: Statement,
    publish: Statement,
    prune: Statement,
    drop_tombstone: Statement,
    raise_horizon: Statement,
    leader_term: Statement,
}

const DEVICE_COLS: &str = "last_seq, body_sha256, response, snapshot_horizon, syncs";
const PATTERN_COLS: &str = "revision, codebook, success_rate, sample_count, category, codes";

impl Stmts {
    async fn prepare(c: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Stmts {
            lock_insert: c
                .prepare("INSERT INTO devices (device_id) VALUES ($1) ON CONFLICT DO NOTHING")
                .await?,
            lock_select: c
                .prepare(&format!(
                    "SELECT {DEVICE_COLS} FROM devices WHERE device_id = $1 FOR UPDATE"
                ))
                .await?,
            device: c
                .prepare(&format!(
                    "SELECT {DEVICE_COLS} FROM devices WHERE device_id = $1"
                ))
                .await?,
            put_device: c
                .prepare(
                    "INSERT INTO devices (device_id, last_seq, body_sha256, response, \
                     snapshot_horizon, syncs) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (device_id) DO UPDATE SET last_seq = EXCLUDED.last_seq, \
                     body_sha256 = EXCLUDED.body_sha256, response = EXCLUDED.response, \
                     snapshot_horizon = EXCLUDED.snapshot_horizon, syncs = EXCLUDED.syncs",
                )
                .await?,
            pattern: c
                .prepare(&format!(
                    "SELECT {PATTERN_COLS} FROM patterns WHERE device_id = $1 AND pattern_id = $2"
                ))
                .await?,
            device_patterns: c
                .prepare(&format!(
                    "SELECT pattern_id, {PATTERN_COLS} FROM patterns WHERE device_id = $1 \
                     ORDER BY pattern_id"
                ))
                .await?,
            put_pattern: c
                .prepare(
                    "WITH p AS (INSERT INTO patterns (device_id, pattern_id, revision, codebook, \
                     success_rate, sample_count, category, codes) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (device_id, pattern_id) DO UPDATE SET \
                     revision = EXCLUDED.revision, codebook = EXCLUDED.codebook, \
                     success_rate = EXCLUDED.success_rate, sample_count = EXCLUDED.sample_count, \
                     category = EXCLUDED.category, codes = EXCLUDED.codes) \
                     INSERT INTO device_changes (device_id, pattern_id) VALUES ($1, $2)",
                )
                .await?,
            remove_pattern: c
                .prepare(
                    "WITH d AS (DELETE FROM patterns WHERE device_id = $1 AND pattern_id = $2) \
                     INSERT INTO device_changes (device_id, pattern_id) VALUES ($1, $2)",
                )
                .await?,
            meta: c.prepare("SELECT value FROM meta WHERE key = $1").await?,
            set_meta: c
                .prepare(
                    "INSERT INTO meta (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                )
                .await?,
            log_after: c
                .prepare(
                    "SELECT version, entry FROM global_log WHERE version > $1 \
                     ORDER BY version LIMIT $2",
                )
                .await?,
            changes: c
                .prepare(
                    "SELECT seq, device_id, pattern_id FROM device_changes ORDER BY seq LIMIT $1",
                )
                .await?,
            drop_changes: c
                .prepare("DELETE FROM device_changes WHERE seq = ANY($1)")
                .await?,
            contribution: c
                .prepare("SELECT data FROM contributions WHERE device_id = $1 AND pattern_id = $2")
                .await?,
            device_contributions: c
                .prepare(
                    "SELECT pattern_id, data FROM contributions WHERE device_id = $1 \
                     ORDER BY pattern_id",
                )
                .await?,
            put_contribution: c
                .prepare(
                    "INSERT INTO contributions (device_id, pattern_id, data) VALUES ($1, $2, $3) \
                     ON CONFLICT (device_id, pattern_id) DO UPDATE SET data = EXCLUDED.data",
                )
                .await?,
            del_contribution: c
                .prepare("DELETE FROM contributions WHERE device_id = $1 AND pattern_id = $2")
                .await?,
            aggregate: c
                .prepare("SELECT data FROM aggregates WHERE id = $1")
                .await?,
            aggregates: c
                .prepare("SELECT id, data FROM aggregates ORDER BY id")
                .await?,
            put_aggregate: c
                .prepare(
                    "INSERT INTO aggregates (id, data) VALUES ($1, $2) \
                     ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data",
                )
                .await?,
            del_aggregate: c.prepare("DELETE FROM aggregates WHERE id = $1").await?,
            device_count: c
                .prepare("SELECT count(*) FROM devices WHERE last_seq IS NOT NULL")
                .await?,
            enrolment: c
                .prepare(
                    "SELECT generation, enrolled_at, revoked, last_counter FROM enrolments \
                     WHERE device_id = $1",
                )
                .await?,
            put_enrolment: c
                .prepare(
                    "INSERT INTO enrolments (device_id, generation, enrolled_at, revoked, \
                     last_counter) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id) DO UPDATE \
                     SET generation = EXCLUDED.generation, enrolled_at = EXCLUDED.enrolled_at, \
                     revoked = EXCLUDED.revoked, last_counter = EXCLUDED.last_counter",
                )
                .await?,
            publish: c
                .prepare(
                    "WITH v AS (UPDATE meta SET value = value + 1 WHERE key = 'global_version' \
                     RETURNING value) \
                     INSERT INTO global_log (version, item_key, tombstone, entry) \
                     SELECT value, $1, $2, $3 FROM v \
                     ON CONFLICT (item_key) DO UPDATE SET version = EXCLUDED.version, \
                     tombstone = EXCLUDED.tombstone, entry = EXCLUDED.entry \
                     RETURNING version",
                )
                .await?,
            prune: c
                .prepare("DELETE FROM global_log WHERE version < $1 AND tombstone")
                .await?,
            drop_tombstone: c
                .prepare("DELETE FROM global_log WHERE version = $1 AND tombstone")
                .await?,
            leader_term: c
                .prepare("SELECT value FROM meta WHERE key = 'leader_term' FOR SHARE")
                .await?,
            raise_horizon: c
                .prepare(
                    "INSERT INTO meta (key, value) VALUES ('horizon', $1) ON CONFLICT (key) \
                     DO UPDATE SET value = GREATEST(meta.value, EXCLUDED.value)",
                )
                .await?,
        })
    }
}

/// One connection with its statements.
#[derive(Clone)]
struct Conn {
    client: Arc<Client>,
    st: Arc<Stmts>,
}

async fn connect(url: String) -> Result<Conn, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection closed");
        }
    });
    let st = Stmts::prepare(&client).await?;
    Ok(Conn {
        client: Arc::new(client),
        st: Arc::new(st),
    })
}

/// What every transaction needs from the store.
struct Shared {
    bridge: Bridge,
    url: String,
    idle: Mutex<Vec<Conn>>,
    /// `seq` of the rows the last [`ReadTxn::device_changes_after`] returned:
    /// what [`WriteTxn::drop_device_changes`] deletes.
    consumed: Mutex<Vec<i64>>,
    /// The leadership term this node holds (`None`: not the leader).
    term: Mutex<Option<u64>>,
}

impl Shared {
    fn connect(&self) -> StoreResult<Conn> {
        self.bridge.run(connect(self.url.clone()))?.map_err(pg_err)
    }

    fn take(&self) -> StoreResult<Conn> {
        let idle = self.idle.lock().map_err(|_| StoreError::Closed)?.pop();
        match idle {
            Some(c) if !c.client.is_closed() => Ok(c),
            _ => self.connect(),
        }
    }

    fn give_back(&self, c: Conn) {
        if c.client.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < 16 {
                idle.push(c);
            }
        }
    }
}

/// Group-commit statistics.
#[derive(Debug, Default)]
struct Stats {
    commits: AtomicU64,
    items: AtomicU64,
}

/// The PostgreSQL [`Store`].
pub struct PgStore {
    shared: Arc<Shared>,
    tx: Mutex<Option<SyncSender<Work>>>,
    depth: Arc<AtomicUsize>,
    stats: Arc<Stats>,
    writers: Mutex<Vec<JoinHandle<()>>>,
    /// The session that holds (or tries for) [`LEADER_LOCK`].
    leader: Mutex<Option<Conn>>,
}

impl PgStore {
    /// Connects to `url` (`postgres://USER@HOST:PORT/DB`), brings the schema
    /// up to date ([`schema::MIGRATIONS`]) and starts the writers.
    pub fn open(url: &str, opts: PgOptions) -> StoreResult<Self> {
        let shared = Arc::new(Shared {
            bridge: Bridge::new(opts.io_threads)?,
            url: url.to_string(),
            idle: Mutex::new(Vec::new()),
            consumed: Mutex::new(Vec::new()),
            term: Mutex::new(None),
        });
        migrate(&shared.bridge, url, schema::MIGRATIONS)?;
        let (tx, rx) = sync_channel::<Work>(opts.queue_limit.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(Stats::default());
        let mut writers = Vec::new();
        for i in 0..opts.writers.max(1) {
            let (shared, rx, depth, stats) =
                (shared.clone(), rx.clone(), depth.clone(), stats.clone());
            let max_batch = opts.max_batch.max(1);
            let h = std::thread::Builder::new()
                .name(format!("constellation-pg-writer-{i}"))
                .spawn(move || writer(&shared, &rx, &depth, &stats, max_batch))
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            writers.push(h);
        }
        Ok(PgStore {
            shared,
            tx: Mutex::new(Some(tx)),
            depth,
            stats,
            writers: Mutex::new(writers),
            leader: Mutex::new(None),
        })
    }

    /// [`open`](Self::open) on the one database of `urls`. Several
    /// databases (devices partitioned across them) are not built yet: more
    /// than one URL is refused.
    pub fn open_all(urls: &[String], opts: PgOptions) -> StoreResult<Self> {
        match urls {
            [url] => Self::open(url, opts),
            [] => Err(StoreError::Backend("no PostgreSQL URL".into())),
            _ => Err(StoreError::Backend(
                "several PostgreSQL databases are not supported yet: give one --db".into(),
            )),
        }
    }

    /// Stops the writers after the queued work is committed. Later submits
    /// fail with [`StoreError::Closed`].
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handles: Vec<JoinHandle<()>> = match self.writers.lock() {
            Ok(mut w) => w.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for h in handles {
            let _ = h.join();
        }
        // Ends the leader's session: its lock goes with it.
        if let Ok(mut l) = self.leader.lock() {
            l.take();
        }
        if let Ok(mut t) = self.shared.term.lock() {
            t.take();
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Connects to `url` once and applies `migrations` (see [`schema::migrate`]);
/// returns the schema version the database is at.
pub fn migrate_url(url: &str, migrations: &'static [schema::Migration]) -> StoreResult<i32> {
    let bridge = Bridge::new(1)?;
    migrate(&bridge, url, migrations)
}

fn migrate(
    bridge: &Bridge,
    url: &str,
    migrations: &'static [schema::Migration],
) -> StoreResult<i32> {
    let url = url.to_string();
    bridge.run(async move {
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .map_err(|e| StoreError::Backend(format!("connecting to the database: {e}")))?;
        let conn = tokio::spawn(connection);
        let r = schema::migrate(&client, migrations).await;
        drop(client);
        let _ = conn.await;
        r.map_err(StoreError::Backend)
    })?
}

impl Store for PgStore {
    fn submit(&self, work: Work) -> StoreResult<()> {
        let tx = self
            .tx
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)?;
        self.depth.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(work) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => StoreError::Overloaded,
                    TrySendError::Disconnected(_) => StoreError::Closed,
                })
            }
        }
    }

    fn read(&self, f: &mut dyn FnMut(&dyn ReadTxn) -> StoreResult<()>) -> StoreResult<()> {
        let conn = self.shared.take()?;
        let txn = PgTxn::new(&self.shared, conn, false);
        let r = f(&txn);
        let ended = txn.end(true);
        r?;
        ended
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

    fn aggregation_term(&self) -> StoreResult<Option<u64>> {
        let mut leader = self.leader.lock().map_err(|_| StoreError::Closed)?;
        let held = *self.shared.term.lock().map_err(|_| StoreError::Closed)?;
        if let (Some(c), Some(t)) = (&*leader, held) {
            if !c.client.is_closed() {
                return Ok(Some(t));
            }
        }
        *self.shared.term.lock().map_err(|_| StoreError::Closed)? = None;
        let conn = match leader.take() {
            Some(c) if !c.client.is_closed() => c,
            _ => self.shared.connect()?,
        };
        let client = conn.client.clone();
        let term = self
            .shared
            .bridge
            .run(async move {
                let r = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                    .await?;
                if !r.get::<_, bool>(0) {
                    return Ok(None);
                }
                let r = client
                    .query_one(
                        "INSERT INTO meta (key, value) VALUES ('leader_term', 1) \
                         ON CONFLICT (key) DO UPDATE SET value = meta.value + 1 RETURNING value",
                        &[],
                    )
                    .await?;
                Ok::<_, tokio_postgres::Error>(Some(r.get::<_, i64>(0) as u64))
            })?
            .map_err(pg_err)?;
        *leader = Some(conn);
        *self.shared.term.lock().map_err(|_| StoreError::Closed)? = term;
        if let Some(t) = term {
            tracing::info!(term = t, "this node is the aggregation leader");
        }
        Ok(term)
    }
}

fn writer(
    shared: &Shared,
    rx: &Mutex<Receiver<Work>>,
    depth: &AtomicUsize,
    stats: &Stats,
    max_batch: usize,
) {
    let mut pending: VecDeque<Work> = VecDeque::new();
    loop {
        if pending.is_empty() {
            let Ok(rx) = rx.lock() else { return };
            match rx.recv() {
                Ok(w) => pending.push_back(w),
                Err(_) => return,
            }
            while pending.len() < max_batch {
                match rx.try_recv() {
                    Ok(w) => pending.push_back(w),
                    Err(_) => break,
                }
            }
        }
        let n = pending.len().min(max_batch);
        let mut batch: Vec<Work> = pending.drain(..n).collect();
        depth.fetch_sub(n, Ordering::Relaxed);
        run_batch(shared, &mut batch, &mut pending, stats);
    }
}

/// Runs `batch` in one transaction, as the redb writer does: when one work
/// fails, the transaction is rolled back, the works already run are told
/// so, and the ones not yet run go back to the front of `pending`.
fn run_batch(shared: &Shared, batch: &mut Vec<Work>, pending: &mut VecDeque<Work>, stats: &Stats) {
    let conn = match shared.take() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no database connection");
            // Unrun: each caller sees the error through its Finish.
            for w in batch.drain(..) {
                let (finish, _) = fail_unrun(w, e.clone());
                finish(Err(e.clone()));
            }
            return;
        }
    };
    let mut txn = PgTxn::new(shared, conn, true);
    let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
    let mut failure: Option<StoreError> = None;
    let mut rest = batch.drain(..);
    for work in rest.by_ref() {
        match catch_unwind(AssertUnwindSafe(|| work(&mut txn))) {
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
    let unrun: Vec<Work> = rest.collect();
    for w in unrun.into_iter().rev() {
        pending.push_front(w);
    }
    let outcome = match failure {
        Some(e) => {
            let _ = txn.end(false);
            Err(e)
        }
        None => txn.end(true),
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

/// Runs `w` against a transaction that fails every call, to get its
/// [`Finish`] (a work's caller learns the outcome only through it).
fn fail_unrun(w: Work, e: StoreError) -> (Finish, StoreResult<()>) {
    let mut dead = DeadTxn(e);
    match catch_unwind(AssertUnwindSafe(|| w(&mut dead))) {
        Ok(r) => r,
        Err(_) => (Box::new(|_| {}), Err(StoreError::Closed)),
    }
}

/// One transaction: a read snapshot (`REPEATABLE READ READ ONLY`) or a write
/// transaction (`READ COMMITTED` with a row lock per device it touches).
struct PgTxn<'s> {
    shared: &'s Shared,
    conn: Conn,
    write: bool,
    began: Cell<bool>,
    locked: RefCell<HashSet<String>>,
    fenced: Cell<bool>,
}

impl<'s> PgTxn<'s> {
    fn new(shared: &'s Shared, conn: Conn, write: bool) -> Self {
        PgTxn {
            shared,
            conn,
            write,
            began: Cell::new(false),
            locked: RefCell::new(HashSet::new()),
            fenced: Cell::new(false),
        }
    }

    /// Checks, once per transaction and holding the row until commit, that
    /// `meta.leader_term` is still this node's term (see the module docs).
    fn fence(&self) -> StoreResult<()> {
        if self.fenced.get() {
            return Ok(());
        }
        let mine = *self.shared.term.lock().map_err(|_| StoreError::Closed)?;
        let rows = self.rows(None, |s| &s.leader_term, Vec::new())?;
        let stored = match rows.first() {
            Some(r) => Some(get::<i64>(r, 0, "meta leader_term")? as u64),
            None => None,
        };
        if mine.is_none() || stored != mine {
            return Err(StoreError::Backend(
                "not the aggregation leader (another node took over)".into(),
            ));
        }
        self.fenced.set(true);
        Ok(())
    }

    /// Commits (`true`) or rolls back, and returns the connection.
    fn end(self, commit: bool) -> StoreResult<()> {
        if !self.began.get() {
            self.shared.give_back(self.conn);
            return Ok(());
        }
        let client = self.conn.client.clone();
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        let r = self
            .shared
            .bridge
            .run(async move { client.batch_execute(sql).await })?
            .map_err(pg_err);
        if r.is_ok() || !commit {
            self.shared.give_back(self.conn);
        }
        r
    }

    /// Runs `stmt` with `params`. Sent in one pipeline with it, when needed:
    /// the `BEGIN` of the transaction, and (writes) the lock of `device`'s
    /// row, whose row is returned first.
    fn query(
        &self,
        device: Option<&str>,
        stmt: Option<fn(&Stmts) -> &Statement>,
        params: Vec<Param>,
    ) -> StoreResult<(Option<Row>, Vec<Row>)> {
        let begin = (!self.began.get()).then_some(if self.write {
            "BEGIN ISOLATION LEVEL READ COMMITTED"
        } else {
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        });
        let lock = match device {
            Some(d) if self.write && !self.locked.borrow().contains(d) => Some(d.to_string()),
            _ => None,
        };
        let conn = self.conn.clone();
        let has_stmt = stmt.is_some();
        let fut = async move {
            let c = &conn.client;
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect();
            let b = async {
                match begin {
                    Some(sql) => c.batch_execute(sql).await,
                    None => Ok(()),
                }
            };
            let l = async {
                match &lock {
                    Some(d) => {
                        let (i, s) = join(
                            c.execute(&conn.st.lock_insert, &[d]),
                            c.query_opt(&conn.st.lock_select, &[d]),
                        )
                        .await;
                        i?;
                        s
                    }
                    None => Ok(None),
                }
            };
            let q = async {
                match stmt {
                    Some(s) => c.query(s(&conn.st), &refs).await,
                    None => Ok(Vec::new()),
                }
            };
            let (b, l, q) = join3(b, l, q).await;
            b?;
            let l = l?;
            Ok::<_, tokio_postgres::Error>((lock, l, q?))
        };
        self.began.set(true);
        let (lock, row, rows) = self.shared.bridge.run(fut)?.map_err(pg_err)?;
        if let Some(d) = lock {
            self.locked.borrow_mut().insert(d);
        }
        let _ = has_stmt;
        Ok((row, rows))
    }

    fn rows(
        &self,
        device: Option<&str>,
        stmt: fn(&Stmts) -> &Statement,
        params: Vec<Param>,
    ) -> StoreResult<Vec<Row>> {
        Ok(self.query(device, Some(stmt), params)?.1)
    }

    fn exec(
        &self,
        device: Option<&str>,
        stmt: fn(&Stmts) -> &Statement,
        params: Vec<Param>,
    ) -> StoreResult<()> {
        self.query(device, Some(stmt), params).map(|_| ())
    }
}

fn get<'r, T: tokio_postgres::types::FromSql<'r>>(
    row: &'r Row,
    i: usize,
    what: &'static str,
) -> StoreResult<T> {
    row.try_get(i).map_err(|_| StoreError::Corrupt(what))
}

fn device_record(row: &Row) -> StoreResult<Option<DeviceRecord>> {
    let Some(last_seq) = get::<Option<i64>>(row, 0, "device")? else {
        return Ok(None);
    };
    let sha: Vec<u8> = get::<Option<Vec<u8>>>(row, 1, "device")?.unwrap_or_default();
    let body_sha256: [u8; 32] = sha.try_into().map_err(|_| StoreError::Corrupt("device"))?;
    Ok(Some(DeviceRecord {
        last_seq: last_seq as u64,
        body_sha256,
        response: get::<Option<Vec<u8>>>(row, 2, "device")?.unwrap_or_default(),
        snapshot_horizon: get::<Option<i64>>(row, 3, "device")?.map(|h| h as u64),
        syncs: get::<i64>(row, 4, "device")? as u64,
    }))
}

/// A pattern row from column `at` on (the [`PATTERN_COLS`] order).
fn pattern_row(row: &Row, at: usize) -> StoreResult<StoredPattern> {
    let w = "pattern";
    let codes: &[u8] = get(row, at + 5, w)?;
    Ok(StoredPattern {
        revision: u32::try_from(get::<i64>(row, at, w)?).map_err(|_| StoreError::Corrupt(w))?,
        codebook: u32::try_from(get::<i64>(row, at + 1, w)?).map_err(|_| StoreError::Corrupt(w))?,
        success_rate: get(row, at + 2, w)?,
        sample_count: u32::try_from(get::<i64>(row, at + 3, w)?)
            .map_err(|_| StoreError::Corrupt(w))?,
        category: get(row, at + 4, w)?,
        codes: decode_codes(codes)?,
    })
}

/// Codes as stored: each `i16` zigzag-mapped and written as a LEB128
/// varint (most codes are small: one byte each instead of two).
pub fn encode_codes(codes: &Codes) -> Vec<u8> {
    let mut out = Vec::with_capacity(DIM + DIM / 4);
    for &c in codes.iter() {
        let mut z = ((c << 1) ^ (c >> 15)) as u16;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
    out
}

/// Reads what [`encode_codes`] wrote.
pub fn decode_codes(b: &[u8]) -> StoreResult<Box<Codes>> {
    let bad = || StoreError::Corrupt("pattern codes");
    let mut codes: Box<Codes> = Box::new([0; DIM]);
    let mut it = b.iter();
    for c in codes.iter_mut() {
        let mut z: u32 = 0;
        let mut shift = 0;
        loop {
            let &byte = it.next().ok_or_else(bad)?;
            z |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 14 {
                return Err(bad());
            }
        }
        let z = u16::try_from(z).map_err(|_| bad())?;
        *c = ((z >> 1) as i16) ^ -((z & 1) as i16);
    }
    if it.next().is_some() {
        return Err(bad());
    }
    Ok(codes)
}

fn i(v: u64) -> i64 {
    v as i64
}

impl ReadTxn for PgTxn<'_> {
    fn device(&self, id: &str) -> StoreResult<Option<DeviceRecord>> {
        if self.write && !self.locked.borrow().contains(id) {
            let (row, _) = self.query(Some(id), None, Vec::new())?;
            return row
                .as_ref()
                .map(device_record)
                .transpose()
                .map(Option::flatten);
        }
        let rows = self.rows(None, |s| &s.device, vec![p(id.to_string())])?;
        rows.first()
            .map(device_record)
            .transpose()
            .map(Option::flatten)
    }

    fn pattern(&self, device: &str, pattern: &str) -> StoreResult<Option<StoredPattern>> {
        let rows = self.rows(
            Some(device),
            |s| &s.pattern,
            vec![p(device.to_string()), p(pattern.to_string())],
        )?;
        rows.first().map(|r| pattern_row(r, 0)).transpose()
    }

    fn device_patterns(&self, device: &str) -> StoreResult<Vec<(String, StoredPattern)>> {
        let rows = self.rows(
            Some(device),
            |s| &s.device_patterns,
            vec![p(device.to_string())],
        )?;
        rows.iter()
            .map(|r| Ok((get::<String>(r, 0, "pattern")?, pattern_row(r, 1)?)))
            .collect()
    }

    fn meta(&self, key: Meta) -> StoreResult<u64> {
        let rows = self.rows(None, |s| &s.meta, vec![p(key.key())])?;
        Ok(match rows.first() {
            Some(r) => get::<i64>(r, 0, "meta")? as u64,
            None => 0,
        })
    }

    fn log_after(
        &self,
        after: u64,
        visit: &mut dyn FnMut(u64, GlobalChange) -> StoreResult<bool>,
    ) -> StoreResult<()> {
        const CHUNK: i64 = 256;
        let mut from = after;
        loop {
            let rows = self.rows(None, |s| &s.log_after, vec![p(i(from)), p(CHUNK)])?;
            for r in &rows {
                let v = get::<i64>(r, 0, "changelog entry")? as u64;
                let c = GlobalChange::from_bytes(get(r, 1, "changelog entry")?)?;
                if !visit(v, c)? {
                    return Ok(());
                }
                from = v;
            }
            if (rows.len() as i64) < CHUNK {
                return Ok(());
            }
        }
    }

    fn device_changes_after(&self, _after: u64, limit: usize) -> StoreResult<Vec<DeviceChange>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.rows(None, |s| &s.changes, vec![p(limit)])?;
        let mut out = Vec::with_capacity(rows.len());
        let mut seqs = Vec::with_capacity(rows.len());
        for r in &rows {
            let seq: i64 = get(r, 0, "device change")?;
            seqs.push(seq);
            out.push(DeviceChange {
                seq: seq as u64,
                device: get(r, 1, "device change")?,
                pattern: get(r, 2, "device change")?,
            });
        }
        *self
            .shared
            .consumed
            .lock()
            .map_err(|_| StoreError::Closed)? = seqs;
        Ok(out)
    }

    fn contribution(&self, device: &str, pattern: &str) -> StoreResult<Option<Contribution>> {
        let rows = self.rows(
            None,
            |s| &s.contribution,
            vec![p(device.to_string()), p(pattern.to_string())],
        )?;
        rows.first()
            .map(|r| Contribution::from_bytes(get(r, 0, "contribution")?))
            .transpose()
    }

    fn device_contributions(&self, device: &str) -> StoreResult<Vec<(String, Contribution)>> {
        let rows = self.rows(
            None,
            |s| &s.device_contributions,
            vec![p(device.to_string())],
        )?;
        rows.iter()
            .map(|r| {
                Ok((
                    get::<String>(r, 0, "contribution")?,
                    Contribution::from_bytes(get(r, 1, "contribution")?)?,
                ))
            })
            .collect()
    }

    fn aggregate(&self, id: u32) -> StoreResult<Option<GlobalAggregate>> {
        let rows = self.rows(None, |s| &s.aggregate, vec![p(i64::from(id))])?;
        rows.first()
            .map(|r| {
                postcard::from_bytes(get(r, 0, "aggregate")?)
                    .map_err(|_| StoreError::Corrupt("aggregate"))
            })
            .transpose()
    }

    fn aggregates(&self) -> StoreResult<Vec<(u32, GlobalAggregate)>> {
        let rows = self.rows(None, |s| &s.aggregates, Vec::new())?;
        rows.iter()
            .map(|r| {
                let id = u32::try_from(get::<i64>(r, 0, "aggregate")?)
                    .map_err(|_| StoreError::Corrupt("aggregate"))?;
                let a = postcard::from_bytes(get(r, 1, "aggregate")?)
                    .map_err(|_| StoreError::Corrupt("aggregate"))?;
                Ok((id, a))
            })
            .collect()
    }

    fn device_count(&self) -> StoreResult<u64> {
        let rows = self.rows(None, |s| &s.device_count, Vec::new())?;
        Ok(match rows.first() {
            Some(r) => get::<i64>(r, 0, "device count")? as u64,
            None => 0,
        })
    }

    fn enrolment(&self, device: &str) -> StoreResult<Option<Enrolment>> {
        let rows = self.rows(Some(device), |s| &s.enrolment, vec![p(device.to_string())])?;
        rows.first()
            .map(|r| {
                let w = "enrolment";
                Ok(Enrolment {
                    generation: u32::try_from(get::<i64>(r, 0, w)?)
                        .map_err(|_| StoreError::Corrupt(w))?,
                    enrolled_at: get::<i64>(r, 1, w)? as u64,
                    revoked: get(r, 2, w)?,
                    last_counter: get::<i64>(r, 3, w)? as u64,
                })
            })
            .transpose()
    }
}

impl WriteTxn for PgTxn<'_> {
    fn put_enrolment(&mut self, device: &str, e: &Enrolment) -> StoreResult<()> {
        self.exec(
            Some(device),
            |s| &s.put_enrolment,
            vec![
                p(device.to_string()),
                p(i64::from(e.generation)),
                p(i(e.enrolled_at)),
                p(e.revoked),
                p(i(e.last_counter)),
            ],
        )
    }

    fn put_device(&mut self, id: &str, rec: &DeviceRecord) -> StoreResult<()> {
        self.exec(
            Some(id),
            |s| &s.put_device,
            vec![
                p(id.to_string()),
                p(i(rec.last_seq)),
                p(rec.body_sha256.to_vec()),
                p(rec.response.clone()),
                p(rec.snapshot_horizon.map(i)),
                p(i(rec.syncs)),
            ],
        )
    }

    fn put_pattern(&mut self, device: &str, pattern: &str, s: &StoredPattern) -> StoreResult<()> {
        self.exec(
            Some(device),
            |st| &st.put_pattern,
            vec![
                p(device.to_string()),
                p(pattern.to_string()),
                p(i64::from(s.revision)),
                p(i64::from(s.codebook)),
                p(s.success_rate),
                p(i64::from(s.sample_count)),
                p(s.category.clone()),
                p(encode_codes(&s.codes)),
            ],
        )
    }

    fn remove_pattern(&mut self, device: &str, pattern: &str) -> StoreResult<()> {
        self.exec(
            Some(device),
            |s| &s.remove_pattern,
            vec![p(device.to_string()), p(pattern.to_string())],
        )
    }

    fn set_meta(&mut self, key: Meta, value: u64) -> StoreResult<()> {
        self.fence()?;
        self.exec(None, |s| &s.set_meta, vec![p(key.key()), p(i(value))])
    }

    fn publish(&mut self, change: &GlobalChange) -> StoreResult<u64> {
        self.fence()?;
        let rows = self.rows(
            None,
            |s| &s.publish,
            vec![
                p(change.item_key()),
                p(change.is_tombstone()),
                p(change.to_bytes()),
            ],
        )?;
        match rows.first() {
            Some(r) => Ok(get::<i64>(r, 0, "changelog entry")? as u64),
            None => Err(StoreError::Corrupt("meta global_version")),
        }
    }

    fn drop_tombstone(&mut self, version: u64, _item: &str) -> StoreResult<()> {
        // The row is the item's key too (`item_key` is its primary key).
        self.fence()?;
        self.exec(None, |s| &s.drop_tombstone, vec![p(i(version))])
    }

    /// One statement instead of the default's scan: every tombstone below
    /// the horizon, then the horizon.
    fn prune_tombstones(&mut self, horizon: u64) -> StoreResult<()> {
        self.fence()?;
        self.exec(None, |s| &s.prune, vec![p(i(horizon))])?;
        self.exec(None, |s| &s.raise_horizon, vec![p(i(horizon))])
    }

    fn put_contribution(
        &mut self,
        device: &str,
        pattern: &str,
        c: Option<&Contribution>,
    ) -> StoreResult<()> {
        self.fence()?;
        match c {
            Some(c) => self.exec(
                None,
                |s| &s.put_contribution,
                vec![
                    p(device.to_string()),
                    p(pattern.to_string()),
                    p(c.to_bytes()?),
                ],
            ),
            None => self.exec(
                None,
                |s| &s.del_contribution,
                vec![p(device.to_string()), p(pattern.to_string())],
            ),
        }
    }

    fn put_aggregate(&mut self, id: u32, a: Option<&GlobalAggregate>) -> StoreResult<()> {
        self.fence()?;
        match a {
            Some(a) => {
                let bytes =
                    postcard::to_stdvec(a).map_err(|e| StoreError::Backend(e.to_string()))?;
                self.exec(None, |s| &s.put_aggregate, vec![p(i64::from(id)), p(bytes)])
            }
            None => self.exec(None, |s| &s.del_aggregate, vec![p(i64::from(id))]),
        }
    }

    fn drop_device_changes(&mut self, upto: u64) -> StoreResult<()> {
        self.fence()?;
        let seqs: Vec<i64> = {
            let mut consumed = self
                .shared
                .consumed
                .lock()
                .map_err(|_| StoreError::Closed)?;
            let (done, keep): (Vec<i64>, Vec<i64>) =
                consumed.iter().partition(|&&s| s as u64 <= upto);
            *consumed = keep;
            done
        };
        if seqs.is_empty() {
            return Ok(());
        }
        self.exec(None, |s| &s.drop_changes, vec![p(seqs)])
    }
}

/// A transaction whose every call fails with the same error.
struct DeadTxn(StoreError);

impl ReadTxn for DeadTxn {
    fn device(&self, _: &str) -> StoreResult<Option<DeviceRecord>> {
        Err(self.0.clone())
    }
    fn pattern(&self, _: &str, _: &str) -> StoreResult<Option<StoredPattern>> {
        Err(self.0.clone())
    }
    fn device_patterns(&self, _: &str) -> StoreResult<Vec<(String, StoredPattern)>> {
        Err(self.0.clone())
    }
    fn meta(&self, _: Meta) -> StoreResult<u64> {
        Err(self.0.clone())
    }
    fn log_after(
        &self,
        _: u64,
        _: &mut dyn FnMut(u64, GlobalChange) -> StoreResult<bool>,
    ) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn device_changes_after(&self, _: u64, _: usize) -> StoreResult<Vec<DeviceChange>> {
        Err(self.0.clone())
    }
    fn contribution(&self, _: &str, _: &str) -> StoreResult<Option<Contribution>> {
        Err(self.0.clone())
    }
    fn device_contributions(&self, _: &str) -> StoreResult<Vec<(String, Contribution)>> {
        Err(self.0.clone())
    }
    fn aggregate(&self, _: u32) -> StoreResult<Option<GlobalAggregate>> {
        Err(self.0.clone())
    }
    fn aggregates(&self) -> StoreResult<Vec<(u32, GlobalAggregate)>> {
        Err(self.0.clone())
    }
    fn device_count(&self) -> StoreResult<u64> {
        Err(self.0.clone())
    }
    fn enrolment(&self, _: &str) -> StoreResult<Option<Enrolment>> {
        Err(self.0.clone())
    }
}

impl WriteTxn for DeadTxn {
    fn put_enrolment(&mut self, _: &str, _: &Enrolment) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn put_device(&mut self, _: &str, _: &DeviceRecord) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn put_pattern(&mut self, _: &str, _: &str, _: &StoredPattern) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn remove_pattern(&mut self, _: &str, _: &str) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn set_meta(&mut self, _: Meta, _: u64) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn publish(&mut self, _: &GlobalChange) -> StoreResult<u64> {
        Err(self.0.clone())
    }
    fn drop_tombstone(&mut self, _: u64, _: &str) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn prune_tombstones(&mut self, _: u64) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn put_contribution(&mut self, _: &str, _: &str, _: Option<&Contribution>) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn put_aggregate(&mut self, _: u32, _: Option<&GlobalAggregate>) -> StoreResult<()> {
        Err(self.0.clone())
    }
    fn drop_device_changes(&mut self, _: u64) -> StoreResult<()> {
        Err(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_compactly() {
        let mut c: Box<Codes> = Box::new([0; DIM]);
        for (k, x) in c.iter_mut().enumerate() {
            *x = match k % 5 {
                0 => 0,
                1 => -1,
                2 => 63,
                3 => -64,
                _ => (k as i16) * 40 - 7000,
            };
        }
        c[0] = i16::MIN;
        c[1] = i16::MAX;
        let b = encode_codes(&c);
        assert_eq!(*decode_codes(&b).unwrap(), *c);
        // Small codes take one byte each.
        let small: Box<Codes> = Box::new([5; DIM]);
        assert_eq!(encode_codes(&small).len(), DIM);
        // Truncated, overlong or trailing bytes do not read.
        assert!(decode_codes(&b[..b.len() - 1]).is_err());
        let mut long = b.clone();
        long.push(0);
        assert!(decode_codes(&long).is_err());
        assert!(decode_codes(&[0xff; 4 * DIM]).is_err());
    }
}
