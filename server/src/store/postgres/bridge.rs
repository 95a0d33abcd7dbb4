//! The blocking bridge: statements run on the backend's own runtime, the caller waits.

use super::*;

pub(super) type Param = Box<dyn ToSql + Sync + Send>;

pub(super) fn p<T: ToSql + Sync + Send + 'static>(v: T) -> Param {
    Box::new(v)
}

/// A PostgreSQL error as a store error: a lost connection, a server
/// shutting down, a deadlock or serialization failure, a lock wait past
/// `lock_timeout`, or exhausted
/// resources are [`StoreError::Overloaded`] (retry later: `503`); anything
/// else is a backend failure.
pub(super) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let transient = e.is_closed()
        || match e.code() {
            None => true,
            Some(c) => {
                let c = c.code();
                c.starts_with("08")
                    || c.starts_with("57P")
                    || c.starts_with("40")
                    || c.starts_with("53")
                    || c == "55P03"
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
pub(super) struct Bridge {
    pub(super) rt: Option<tokio::runtime::Runtime>,
    pub(super) handle: tokio::runtime::Handle,
}

impl Bridge {
    pub(super) fn new(threads: usize) -> StoreResult<Self> {
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
    pub(super) fn run<T: Send + 'static>(
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
