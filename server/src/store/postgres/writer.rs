//! Writer threads: each with its own connection, group commit of queued work.

use super::*;

/// One connection with its statements.
#[derive(Clone)]
pub(super) struct Conn {
    pub(super) client: Arc<Client>,
    pub(super) st: Arc<Stmts>,
}

async fn connect(url: String, sharded: bool) -> Result<Conn, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection closed");
        }
    });
    if sharded {
        // A batch of syncs locks device rows on several databases; two
        // such transactions can wait for each other across databases,
        // which no single server detects. A lock wait this long fails
        // (`503`, the devices retry) instead of hanging.
        client.batch_execute("SET lock_timeout = '5s'").await?;
    }
    let st = Stmts::prepare(&client).await?;
    Ok(Conn {
        client: Arc::new(client),
        st: Arc::new(st),
    })
}

/// What every transaction needs from the store.
pub(super) struct Shared {
    pub(super) bridge: Bridge,
    /// The databases, in `--db` order (database 0 holds the global tables).
    pub(super) urls: Vec<String>,
    /// Idle connections, per database.
    pub(super) idle: Vec<Mutex<Vec<Conn>>>,
    /// The rows the last [`ReadTxn::device_changes_after`] returned, as
    /// (the `seq` it reported, database, `seq` in that database's
    /// `device_changes`): what [`WriteTxn::drop_device_changes`] deletes.
    pub(super) consumed: Mutex<Vec<(u64, usize, i64)>>,
    /// The leadership term this node holds (`None`: not the leader).
    pub(super) term: Mutex<Option<u64>>,
}

impl Shared {
    /// A new connection to database `db`.
    pub(super) fn connect(&self, db: usize) -> StoreResult<Conn> {
        let url = self
            .urls
            .get(db)
            .ok_or(StoreError::Corrupt("database index"))?
            .clone();
        self.bridge
            .run(connect(url, self.urls.len() > 1))?
            .map_err(pg_err)
    }

    /// An idle connection to database `db`, or a new one.
    pub(super) fn take(&self, db: usize) -> StoreResult<Conn> {
        let pool = self
            .idle
            .get(db)
            .ok_or(StoreError::Corrupt("database index"))?;
        let idle = pool.lock().map_err(|_| StoreError::Closed)?.pop();
        match idle {
            Some(c) if !c.client.is_closed() => Ok(c),
            _ => self.connect(db),
        }
    }

    pub(super) fn give_back(&self, db: usize, c: Conn) {
        if c.client.is_closed() {
            return;
        }
        let Some(pool) = self.idle.get(db) else {
            return;
        };
        if let Ok(mut idle) = pool.lock() {
            if idle.len() < 16 {
                idle.push(c);
            }
        }
    }
}

/// Group-commit statistics.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) commits: AtomicU64,
    pub(super) items: AtomicU64,
}

pub(super) fn writer(
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
pub(super) fn run_batch(
    shared: &Shared,
    batch: &mut Vec<Work>,
    pending: &mut VecDeque<Work>,
    stats: &Stats,
) {
    // Connections are taken on first use, per database: one that cannot
    // be had fails the work that needed it, and the transaction with it.
    let mut txn = PgTxn::new(shared, true);
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
