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

mod bridge;
mod read;
pub mod schema;
pub mod shard;
mod stmts;
mod txn;
mod write;
mod writer;

use bridge::*;
use stmts::*;
use txn::*;
use writer::*;

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
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
        Self::open_all(&[url.to_string()], opts)
    }

    /// Opens a deployment on the databases `urls` (`--db` in the order
    /// given; every node of one deployment gets the same list). Devices
    /// are partitioned across them by [`shard::database_of`]; the first
    /// also holds the global tables and the leader lock. Each database's
    /// schema is brought up to date, and each records its place in the
    /// list (`meta.shard_index`, `meta.shard_count`) the first time: a
    /// list in another order or of another length is refused.
    pub fn open_all(urls: &[String], opts: PgOptions) -> StoreResult<Self> {
        if urls.is_empty() {
            return Err(StoreError::Backend("no PostgreSQL URL".into()));
        }
        let shared = Arc::new(Shared {
            bridge: Bridge::new(opts.io_threads)?,
            urls: urls.to_vec(),
            idle: urls.iter().map(|_| Mutex::new(Vec::new())).collect(),
            consumed: Mutex::new(Vec::new()),
            term: Mutex::new(None),
        });
        for url in urls {
            migrate(&shared.bridge, url, schema::MIGRATIONS)?;
        }
        if urls.len() > 1 {
            for db in 0..urls.len() {
                check_place(&shared, db)?;
            }
        }
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

    /// The number of databases devices are partitioned across.
    pub fn databases(&self) -> usize {
        self.shared.urls.len()
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

/// Records database `db`'s place in the list (index and count) in its
/// `meta`, or checks it against what is recorded there.
fn check_place(shared: &Shared, db: usize) -> StoreResult<()> {
    let conn = shared.take(db)?;
    let client = conn.client.clone();
    let n = shared.urls.len() as i64;
    let me = db as i64;
    let (index, count) = shared
        .bridge
        .run(async move {
            client
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('shard_index', $1), ('shard_count', $2) \
                     ON CONFLICT (key) DO NOTHING",
                    &[&me, &n],
                )
                .await?;
            let i = client
                .query_one("SELECT value FROM meta WHERE key = 'shard_index'", &[])
                .await?;
            let c = client
                .query_one("SELECT value FROM meta WHERE key = 'shard_count'", &[])
                .await?;
            Ok::<_, tokio_postgres::Error>((i.get::<_, i64>(0), c.get::<_, i64>(0)))
        })?
        .map_err(pg_err)?;
    shared.give_back(db, conn);
    if index != me || count != n {
        return Err(StoreError::Backend(format!(
            "database {} of {} in --db was set up as database {} of {}: give every node \
             the same --db list, in the same order",
            db + 1,
            n,
            index + 1,
            count
        )));
    }
    Ok(())
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
        super::enqueue(&self.tx, &self.depth, work)
    }

    fn read(&self, f: &mut dyn FnMut(&dyn ReadTxn) -> StoreResult<()>) -> StoreResult<()> {
        let txn = PgTxn::new(&self.shared, false);
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
            _ => self.shared.connect(0)?,
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
