//! The signals that stop `constellation serve` gracefully: SIGINT (Ctrl-C)
//! and SIGTERM (what service managers send). Both stop accepting, let the
//! requests in progress and the queued writes finish, and close the store.

/// Waits for SIGINT or SIGTERM; returns the signal's name.
pub async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot catch SIGTERM; only SIGINT drains");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
