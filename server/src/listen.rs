//! The accept loop and per-connection limits, for plain and TLS listeners.
//!
//! Each accepted connection runs in its own task with hyper's HTTP/1.1
//! server and a watchdog that closes it when a limit of [`Limits`] is
//! passed:
//!
//! - **header read**: once the first byte of a request head arrives, the
//!   whole head must arrive within `header_read_timeout` (a client trickling
//!   a header byte by byte is closed);
//! - **header size**: a head larger than `max_header_bytes` is refused by
//!   hyper (`431`) and the connection closed;
//! - **idle**: a connection with no request in progress and no byte moving
//!   in either direction for `idle_timeout` is closed (fresh connections
//!   that send nothing, keep-alive connections between requests, clients
//!   that stop reading their answer);
//! - **body**: the sync handler reads a body for at most
//!   `body_read_timeout` (`408 body_timeout`, then the connection closes);
//! - **connections**: at most `max_connections` open at once; a connection
//!   accepted beyond it is closed at once, before any byte is read (shed,
//!   counted in `constellation_connections_shed_total`);
//! - **TLS handshakes**: at most `max_tls_handshakes` in progress, each
//!   bounded by `tls_handshake_timeout`; beyond the cap a connection is
//!   closed at once.
//!
//! On shutdown the loop stops accepting, idle connections close, requests in
//! progress finish (for at most `drain_timeout`), then the rest is dropped.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::{rustls, TlsAcceptor};

/// Connection limits of a listener. The defaults suit a public deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time from the first byte of a request head to its end (default 10 s).
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes (default 16 KiB; at least 8 KiB is
    /// used, hyper's minimum).
    pub max_header_bytes: usize,
    /// Time to read a sync request's body (default 30 s).
    pub body_read_timeout: Duration,
    /// A connection with no request in progress and no traffic is closed
    /// after this long (default 30 s).
    pub idle_timeout: Duration,
    /// Open connections at most (default 4096); beyond, new ones are closed
    /// at once.
    pub max_connections: usize,
    /// TLS handshakes in progress at most (default 256); beyond, new
    /// connections are closed at once.
    pub max_tls_handshakes: usize,
    /// Time a client has to complete its TLS handshake (default 10 s).
    pub tls_handshake_timeout: Duration,
    /// On shutdown, time requests in progress get to finish (default 30 s).
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_tls_handshakes: 256,
            tls_handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Hyper's smallest read buffer; a smaller head limit is raised to it.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Connection counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnMetrics {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub shed: AtomicU64,
    /// Connections closed at once because `max_tls_handshakes` were running.
    pub handshakes_shed: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub handshakes_failed: AtomicU64,
    /// Connections closed for a slow request head.
    pub header_timeouts: AtomicU64,
    /// Connections closed for being idle.
    pub idle_closed: AtomicU64,
}

impl ConnMetrics {
    /// Appends the counters in the Prometheus text format.
    pub fn render(&self, s: &mut String) {
        use std::fmt::Write;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP constellation_connections_open Connections open now.\n# TYPE constellation_connections_open gauge\nconstellation_connections_open {}",
            ld(&self.open)
        );
        for (name, help, v) in [
            (
                "constellation_connections_accepted_total",
                "Connections accepted and served.",
                &self.accepted,
            ),
            (
                "constellation_connections_shed_total",
                "Connections closed at once: max_connections open.",
                &self.shed,
            ),
            (
                "constellation_tls_handshakes_shed_total",
                "Connections closed at once: max_tls_handshakes running.",
                &self.handshakes_shed,
            ),
            (
                "constellation_tls_handshakes_failed_total",
                "TLS handshakes that failed or timed out.",
                &self.handshakes_failed,
            ),
            (
                "constellation_header_timeouts_total",
                "Connections closed: request head not complete within header_read_timeout.",
                &self.header_timeouts,
            ),
            (
                "constellation_idle_closed_total",
                "Connections closed: idle for idle_timeout.",
                &self.idle_closed,
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                ld(v)
            );
        }
    }
}

/// What one connection did lately, shared by its I/O, its requests and its
/// watchdog. Times are milliseconds since `start`.
struct Activity {
    start: Instant,
    last: AtomicU64,
    in_flight: AtomicU32,
    /// When the first byte of a request head arrived, plus one (0: none).
    head_started: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            head_started: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn read(&self) {
        let now = self.now();
        self.last.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_started
                    .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        InFlight(self.clone())
    }

    /// `Some(why)` when a limit is passed now; else the time to check again.
    fn check(&self, limits: &Limits) -> Result<Duration, Closed> {
        let now = self.now();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Ok(limits.idle_timeout.min(limits.header_read_timeout));
        }
        let head = self.head_started.load(Ordering::Acquire);
        let (from, limit, why) = if head > 0 {
            (head - 1, limits.header_read_timeout, Closed::Header)
        } else {
            (
                self.last.load(Ordering::Relaxed),
                limits.idle_timeout,
                Closed::Idle,
            )
        };
        let limit = limit.as_millis() as u64;
        let spent = now.saturating_sub(from);
        if spent >= limit {
            Err(why)
        } else {
            Ok(Duration::from_millis(limit - spent))
        }
    }
}

enum Closed {
    Header,
    Idle,
}

/// A request in progress; ends (and counts as traffic) when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.wrote();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An I/O stream that reports its traffic to an [`Activity`].
struct Tracked<T> {
    inner: T,
    act: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.act.read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.act.wrote();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.act.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `app` on `tcp` (over TLS when `tls` is set) under `limits` until
/// `stop` turns true, then drains.
pub async fn serve(
    tcp: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
    metrics: Arc<ConnMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = Arc::new(limits);
    let acceptor = tls.map(TlsAcceptor::from);
    let handshakes = Arc::new(Semaphore::new(limits.max_tls_handshakes.max(1)));
    let mut conns = JoinSet::new();
    loop {
        let (sock, peer) = tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off a little.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if conns.len() >= limits.max_connections {
            metrics.shed.fetch_add(1, Ordering::Relaxed);
            drop(sock);
            continue;
        }
        let _ = sock.set_nodelay(true);
        let handshake = match &acceptor {
            Some(a) => match handshakes.clone().try_acquire_owned() {
                Ok(permit) => Some((a.clone(), permit)),
                Err(_) => {
                    metrics.handshakes_shed.fetch_add(1, Ordering::Relaxed);
                    drop(sock);
                    continue;
                }
            },
            None => None,
        };
        metrics.accepted.fetch_add(1, Ordering::Relaxed);
        let (app, limits, metrics, stop) =
            (app.clone(), limits.clone(), metrics.clone(), stop.clone());
        conns.spawn(async move {
            metrics.open.fetch_add(1, Ordering::Relaxed);
            match handshake {
                None => connection(sock, app, &limits, &metrics, stop).await,
                Some((acceptor, permit)) => {
                    let r =
                        tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(sock))
                            .await;
                    drop(permit);
                    match r {
                        Ok(Ok(s)) => connection(s, app, &limits, &metrics, stop).await,
                        Ok(Err(e)) => {
                            metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            metrics.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(tcp);
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = conns.len(),
            "connections still busy after the drain timeout; closing them"
        );
    }
    conns.shutdown().await;
}

/// Serves one connection until it ends, a limit closes it or shutdown
/// drains it.
async fn connection<T>(
    io: T,
    app: Router,
    limits: &Limits,
    metrics: &ConnMetrics,
    mut stop: watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let act = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: io,
        act: act.clone(),
    });
    let req_act = act.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let guard = req_act.begin();
        let mut app = app.clone();
        async move {
            let r = tower_service::Service::call(&mut app, req).await;
            drop(guard);
            r
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
        .keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut draining = *stop.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    let mut wait = Duration::ZERO;
    loop {
        let watchdog = tokio::time::sleep(wait);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; }, if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = watchdog => match act.check(limits) {
                Ok(next) => wait = next.max(Duration::from_millis(10)),
                Err(Closed::Header) => {
                    metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(Closed::Idle) => {
                    metrics.idle_closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        }
    }
}

/// The `serve` flags of [`Limits`] (defaults as in [`Limits::default`]).
#[derive(clap::Args, Clone, Debug)]
pub struct LimitArgs {
    /// Seconds from the first byte of a request head to its end.
    #[arg(long, default_value_t = 10)]
    pub header_read_timeout_s: u64,
    /// Largest request head in bytes (at least 8192 is used).
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Seconds to read a sync request's body (408 body_timeout after).
    #[arg(long, default_value_t = 30)]
    pub body_read_timeout_s: u64,
    /// Seconds a connection may sit idle (no request, no traffic).
    #[arg(long, default_value_t = 30)]
    pub idle_timeout_s: u64,
    /// Open connections at most; more are closed at once.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// TLS handshakes in progress at most; more are closed at once.
    #[arg(long, default_value_t = 256)]
    pub max_tls_handshakes: usize,
    /// Seconds a client has to complete its TLS handshake.
    #[arg(long, default_value_t = 10)]
    pub tls_handshake_timeout_s: u64,
    /// Seconds requests in progress get to finish on shutdown.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_s: u64,
}

impl LimitArgs {
    /// The limits these flags give (a zero time is raised to one second, a
    /// zero cap to one).
    pub fn limits(&self) -> Limits {
        let s = |v: u64| Duration::from_secs(v.max(1));
        Limits {
            header_read_timeout: s(self.header_read_timeout_s),
            max_header_bytes: self.max_header_bytes.max(MIN_HEADER_BYTES),
            body_read_timeout: s(self.body_read_timeout_s),
            idle_timeout: s(self.idle_timeout_s),
            max_connections: self.max_connections.max(1),
            max_tls_handshakes: self.max_tls_handshakes.max(1),
            tls_handshake_timeout: s(self.tls_handshake_timeout_s),
            drain_timeout: s(self.drain_timeout_s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        limits: LimitArgs,
    }

    #[test]
    fn flag_defaults_are_the_library_defaults() {
        use clap::Parser;
        assert_eq!(
            Flags::parse_from(["serve"]).limits.limits(),
            Limits::default()
        );
    }
}
