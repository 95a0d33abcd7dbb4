//! One exchange of a session, as the scheduler, the twin and the settle
//! phase run it: the sync itself (measured, counted, recorded in the
//! ledger) and the further pages of the global feed.

use std::sync::Mutex;
use std::time::Instant;

use super::nodes::Nodes as Net;
use omega_tv_sync::sync::{Outcome, SyncError};

use super::config::{Counters, SyncSample};
use super::faults::{Exchange, FaultError, Faulty};
use super::ledger::Ledger;
use super::tv::{Client, Globals};

/// Request buffer per exchange in flight.
pub const TX_BYTES: usize = 8 * 1024;
/// Response buffer (advertised as `caps.max_bytes`).
pub const RX_BYTES: usize = 128 * 1024;
/// Most further pages fetched after one sync.
pub const MAX_PAGES: u32 = 32;

/// Response buffers kept for the next exchange: a TV has one receive
/// buffer for its life, and the simulation needs only as many as it has
/// exchanges in flight. When a zeroed [`RX_BYTES`] vector was allocated
/// per exchange, `memset` was ~10% of the simulated TVs' CPU in `perf` of
/// the 20,000-TV load run, mostly that zeroing. Nothing a previous response
/// left in a buffer is read: the transport writes the body and everything
/// reads `..body_len`.
static RX_POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A response buffer of [`RX_BYTES`] taken from [`RX_POOL`] (or allocated
/// when the pool is empty), given back when dropped.
struct RxBuf(Vec<u8>);

impl RxBuf {
    fn take() -> Self {
        let pooled = RX_POOL.lock().ok().and_then(|mut p| p.pop());
        RxBuf(pooled.unwrap_or_else(|| vec![0u8; RX_BYTES]))
    }
}

impl Drop for RxBuf {
    fn drop(&mut self) {
        if let Ok(mut p) = RX_POOL.lock() {
            p.push(std::mem::take(&mut self.0));
        }
    }
}

/// Outcome of one attempt, for the scheduler.
pub enum Step {
    /// Applied; `more`: the server has further pages.
    Synced {
        /// Further pages of global changes wait in the feed.
        more: bool,
    },
    /// Not applied: try again later.
    Retry,
}

/// One session's side of an exchange: who it is (for `FLEET_DEBUG`), its
/// client, its transport, its request buffer (a retry re-sends it as it is)
/// and the ledger its acks and conflicts go to.
pub struct Session<'a> {
    /// `orig`, `twin` or `settle`.
    pub who: &'a str,
    /// The client that exchanges.
    pub client: &'a mut Client,
    /// Its transport (faults injected or not).
    pub transport: &'a mut Faulty<Net>,
    /// Its request buffer.
    pub tx: &'a mut [u8],
    /// Where its acks and conflicts are recorded.
    pub ledger: &'a mut Ledger,
    /// Where the global patterns it receives go.
    pub globals: &'a mut Globals,
}

impl Session<'_> {
    /// One exchange at virtual time `now_ms`; failures and retries are
    /// counted in `counters`; the sample's time is taken from `t0`.
    pub async fn attempt(
        self,
        counters: &mut Counters,
        now_ms: u64,
        t0: Instant,
    ) -> (Step, SyncSample) {
        let Session {
            who,
            client,
            transport,
            tx,
            ledger,
            globals,
        } = self;
        let mut rx = RxBuf::take();
        let r = client
            .exchange(transport, tx, &mut rx.0, now_ms, globals)
            .await;
        // Left in `transport.last` for the caller (tests read it).
        let ex: Exchange = transport.last.clone();
        if std::env::var_os("FLEET_DEBUG").is_some() {
            let res = match &r {
                Ok(Outcome::Synced(_)) => "synced".to_string(),
                Ok(o) => format!("{o:?}"),
                Err(SyncError::Transport(FaultError::Dropped)) => "dropped".into(),
                Err(SyncError::Transport(FaultError::Inner(e))) => format!("transport {e:?}"),
                Err(SyncError::Core(e)) => format!("core {e:?}"),
            };
            eprintln!(
                "fleet: exchange {} {who} seq={} crc={:08x} status={} up={} acked={:?} revs={:?} conflicts={:?} now={now_ms} res={res} next_seq={}",
                client.config().device_id.as_str(),
                ex.seq,
                ex.body_crc,
                ex.status,
                ex.patterns_up,
                ex.acked,
                ex.acked_revs,
                ex.conflicts,
                client.seq(),
            );
        }
        let mut sample = SyncSample {
            at_s: t0.elapsed().as_secs_f64(),
            up: ex.up as u32,
            down: ex.down as u32,
            patterns_up: ex.patterns_up as u16,
            latency_us: ex.latency_us.min(u64::from(u32::MAX)) as u32,
            applied: false,
            boot: false,
            extra: false,
        };
        let step = match r {
            Ok(Outcome::Synced(summary)) => {
                sample.applied = true;
                ledger.record(&ex, client, tx.get(..ex.up).unwrap_or(&[]));
                Step::Synced { more: summary.more }
            }
            Ok(Outcome::RetryLater { .. }) => {
                counters.retries += 1;
                Step::Retry
            }
            Ok(Outcome::Resequenced { .. }) => {
                counters.resequenced += 1;
                Step::Retry
            }
            Err(SyncError::Transport(FaultError::Dropped)) => {
                counters.dropped += 1;
                counters.retries += 1;
                Step::Retry
            }
            Err(SyncError::Transport(FaultError::Inner(e))) => {
                counters.transport_errors += 1;
                counters.retries += 1;
                tracing_like(&format!("transport error: {e:?}"));
                Step::Retry
            }
            Err(SyncError::Core(omega_tv_sync::Error::Unauthenticated)) => {
                counters.unauthenticated += 1;
                counters.retries += 1;
                Step::Retry
            }
            Err(SyncError::Core(omega_tv_sync::Error::Rejected)) => {
                counters.fatal = Some(format!(
                    "the server refused a request: HTTP {} {}",
                    ex.status, ex.error_body
                ));
                Step::Retry
            }
            Err(SyncError::Core(e)) => {
                counters.retries += 1;
                tracing_like(&format!("sync error: {e}"));
                Step::Retry
            }
        };
        (step, sample)
    }
}

fn tracing_like(msg: &str) {
    if std::env::var_os("FLEET_DEBUG").is_some() {
        eprintln!("fleet: {msg}");
    }
}

/// Fetches the next page of the global feed and applies it, its global
/// patterns going to `globals`; `None` when it failed (the next sync picks
/// up from the same cursor). Feed pages are in the server's primary
/// codebook: a client of another one takes its pages through syncs.
pub async fn feed_page(
    client: &mut Client,
    net: &mut Net,
    globals: &mut Globals,
    t0: Instant,
) -> Option<(bool, SyncSample)> {
    use omega_tv_sync::Transport;
    use omega_tv_sync_testkit::get;
    let mut path = [0u8; 96];
    let path = client
        .feed_path(512, RX_BYTES as u32, &mut path)
        .to_string();
    let mut rx = RxBuf::take();
    let started = Instant::now();
    let r = net.send(get(&path), &mut rx.0).await.ok()?;
    let latency_us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    if r.status != 200 {
        return None;
    }
    let summary = client.apply_feed(rx.0.get(..r.body_len)?, globals).ok()?;
    let s = SyncSample {
        at_s: t0.elapsed().as_secs_f64(),
        up: 0,
        down: r.body_len as u32,
        patterns_up: 0,
        latency_us,
        applied: true,
        boot: false,
        extra: true,
    };
    Some((summary.more, s))
}
