//! Writer threads: each with its own connection, group commit of queued work.

use super::*;

/// One connection with its statements.
#[derive(Clone)]
pub(super) struct Conn {
    pub(super) client: Arc<Client>,
    pub(super) st: Arc<Stmts>,
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
pub(super) struct Shared {
    pub(super) bridge: Bridge,
    pub(super) url: String,
    pub(super) idle: Mutex<Vec<Conn>>,
    /// `seq` of the rows the last [`ReadTxn::device_changes_after`] returned:
    /// what [`WriteTxn::drop_device_changes`] deletes.
    pub(super) consumed: Mutex<Vec<i64>>,
    /// The leadership term this node holds (`None`: not the leader).
    pub(super) term: Mutex<Option<u64>>,
}

impl Shared {
    pub(super) fn connect(&self) -> StoreResult<Conn> {
        self.bridge.run(connect(self.url.clone()))?.map_err(pg_err)
    }

    pub(super) fn take(&self) -> StoreResult<Conn> {
        let idle = self.idle.lock().map_err(|_| StoreError::Closed)?.pop();
        match idle {
            Some(c) if !c.client.is_closed() => Ok(c),
            _ => self.connect(),
        }
    }

    pub(super) fn give_back(&self, c: Conn) {
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
pub(super) fn fail_unrun(w: Work, e: StoreError) -> (Finish, StoreResult<()>) {
    let mut dead = DeadTxn(e);
    match catch_unwind(AssertUnwindSafe(|| w(&mut dead))) {
        Ok(r) => r,
        Err(_) => (Box::new(|_| {}), Err(StoreError::Closed)),
    }
}
