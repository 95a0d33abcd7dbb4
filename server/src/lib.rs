//! # Constellation
//!
//! The server omega-tv-sync devices sync with: it stores each device's
//! patterns exactly once per upload, detects stale bases, aggregates the
//! fleet's patterns into global patterns and trend signals, and serves the
//! global changes, paged to each device's capacity. `docs/protocol.md` is the
//! contract.
//!
//! ```text
//! [tls] -> http (read body, authenticate, count) -> auth (signature, counter)
//!      -> sync (validate -> apply -> respond)
//!      -> store (traits, records; redb backend with group commit)
//! aggregate (off the request path: device changes -> global changelog; trends)
//! error: ApiError, every refusal and its HTTP response
//! ```
//!
//! `docs/architecture.md` has the module map: what each module holds and
//! what it may import.
//!
//! Start it in-process with [`Server::start`], or run the `constellation
//! serve` binary.
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod aggregate;
pub mod auth;
pub mod codebooks;
pub mod download;
pub mod error;
pub mod files;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod tls;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use codebooks::Codebooks;
use metrics::{Gauges, Metrics};
use store::{Meta, Store, StoreError, StoreResult};

pub use aggregate::trends::TrendConfig;
pub use aggregate::AggregateConfig;
pub use auth::{AuthConfig, MasterSecret};
pub use http::admin::AdminToken;
pub use listen::Limits;

/// Default of [`Config::min_sync_interval_s`], seconds.
pub const DEFAULT_MIN_SYNC_INTERVAL_S: u32 = 60;

/// Default of [`Config::max_patterns_per_device`]: far above what a device
/// keeps (the client holds a compile-time number of patterns, tens), small
/// enough that one device cannot grow the store without bound.
pub const DEFAULT_MAX_PATTERNS_PER_DEVICE: u32 = 1024;

/// Everything a server instance is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    /// The redb file; `None` keeps everything in memory (not durable).
    pub db: Option<PathBuf>,
    /// PostgreSQL URLs (`postgres://USER@HOST:PORT/DB`); when given, the
    /// store is PostgreSQL ([`store::postgres`]) and `db` is not used.
    pub postgres: Vec<String>,
    /// Address to listen on (loopback by default; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Codebooks accepted in frames; the first is the one globals are published in.
    pub codebooks: Codebooks,
    /// `next_sync_s` is drawn uniformly from this range (seconds), as a
    /// hash of (`pacing_seed`, device id, sequence): spread evenly over the
    /// fleet, and the same for a retry of the same request.
    pub sync_interval: RangeInclusive<u32>,
    /// Seed of the pacing jitter; `None` draws one at start-up. A fixed seed
    /// makes a simulation's schedule repeatable.
    pub pacing_seed: Option<u64>,
    /// A device whose last applied sync (without `more`) is more recent
    /// than this gets `429` for a new sequence; a retry of an applied
    /// sequence still gets its replay. 0 turns the limit off. Default 60 s,
    /// well under the 300..900 s pacing a device follows.
    pub min_sync_interval_s: u32,
    /// Most pattern ids one device may have stored; an upload that would
    /// exceed it is refused whole with `403 pattern_quota_exceeded`. 0: no
    /// quota. Default [`DEFAULT_MAX_PATTERNS_PER_DEVICE`].
    pub max_patterns_per_device: u32,
    /// Writes queued before new syncs are answered `503`.
    pub queue_limit: usize,
    /// Most syncs in one group commit.
    pub max_batch: usize,
    /// redb: make each group durable in the sync journal and fold it into
    /// the file a few times a second (`store::redb::journal`), instead of
    /// a commit per group. Default on.
    pub journal: bool,
    /// redb, journal mode: the longest a journaled group waits to be
    /// folded into the file (`store::redb::FOLD_EVERY` by default).
    pub fold_every: Duration,
    /// `Retry-After` for `503`, in seconds.
    pub overload_retry_after_s: u32,
    /// `Cache-Control: max-age` of global feed pages, in seconds.
    pub feed_max_age_s: u32,
    /// Address of the admin listener (`GET /metrics`, and the device
    /// read-back when `admin_token` is set); `None`: no admin listener.
    /// Default: loopback, a free port ([`ServerHandle::admin_addr`]).
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token of the admin routes (`GET /api/v1/devices/{id}/patterns`,
    /// raw device state); `None` (the default): those routes are off.
    pub admin_token: Option<http::admin::AdminToken>,
    /// Aggregation into global patterns.
    pub aggregate: AggregateConfig,
    /// Trend signals.
    pub trends: TrendConfig,
    /// Device authentication: on by default, with a fresh random master
    /// secret (see [`auth`]).
    pub auth: AuthConfig,
    /// Serve HTTPS with this certificate and key (`None`: plain HTTP, for
    /// loopback or behind a TLS-terminating proxy).
    pub tls: Option<tls::TlsConfig>,
    /// Connection limits of the listener (timeouts, sizes, caps).
    pub limits: Limits,
    /// Pace of the public read endpoints (feed, version, health).
    pub public_reads: http::pacer::PublicReads,
    /// Where aggregation takes its time from: the wall clock (default), or
    /// the embedder's clock ([`AggregationClock::External`], a simulation).
    pub aggregation_clock: AggregationClock,
}

/// Where aggregation passes and differentially private releases take their
/// time from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AggregationClock {
    /// The wall clock: a background task runs a pass every
    /// `aggregate.interval` and releases when a new epoch begins (the
    /// served binary).
    #[default]
    Wall,
    /// The embedder's clock: no background task; a pass (and the release of
    /// an epoch that began) runs only when the embedder calls
    /// [`ServerHandle::aggregate_at`] or [`ServerHandle::release_at`] with
    /// its own time, e.g. a simulation on virtual time, so that what is
    /// published does not depend on how fast the machine runs it. Trend
    /// decay, release epochs and the accountant's window follow that time.
    External,
}

impl Config {
    /// Defaults: in memory, `127.0.0.1:8080`, no codebook, 300..=900 s.
    pub fn new() -> Self {
        Config {
            db: None,
            postgres: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            codebooks: Codebooks::empty(),
            sync_interval: 300..=900,
            pacing_seed: None,
            min_sync_interval_s: DEFAULT_MIN_SYNC_INTERVAL_S,
            max_patterns_per_device: DEFAULT_MAX_PATTERNS_PER_DEVICE,
            queue_limit: 4096,
            max_batch: 1024,
            journal: true,
            fold_every: store::redb::FOLD_EVERY,
            overload_retry_after_s: 5,
            feed_max_age_s: 10,
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            admin_token: None,
            aggregate: AggregateConfig::default(),
            trends: TrendConfig::default(),
            auth: AuthConfig::new(),
            tls: None,
            limits: Limits::default(),
            public_reads: http::pacer::PublicReads::default(),
            aggregation_clock: AggregationClock::Wall,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

/// A failure to start.
#[derive(Debug)]
pub enum StartError {
    /// The store could not be opened.
    Store(StoreError),
    /// The listener could not be bound.
    Io(std::io::Error),
    /// Authentication is required but no master secret is configured.
    NoMasterSecret,
    /// The differential-privacy configuration exceeds its budget or is invalid.
    Privacy(aggregate::accountant::BudgetError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Store(e) => write!(f, "{e}"),
            StartError::Io(e) => write!(f, "{e}"),
            StartError::NoMasterSecret => {
                f.write_str("authentication is on but no master secret is configured")
            }
            StartError::Privacy(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Shared state of a running server.
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The configuration.
    pub config: Config,
    /// Metrics.
    pub metrics: Metrics,
    rng: AtomicU64,
    pace_seed: u64,
    pub(crate) aggregator: tokio::sync::Mutex<aggregate::Aggregator>,
    /// Noise source and privacy accountant of the releases.
    pub(crate) dp: Mutex<aggregate::DpState>,
    /// With [`AggregationClock::External`]: the embedder's time of the
    /// current (or last) pass, milliseconds since the Unix epoch.
    pub(crate) external_ms: AtomicU64,
    /// Per device: when its last sync was applied, whether it asked for
    /// more, and its sequence.
    limiter: Mutex<std::collections::HashMap<String, (Instant, bool, u64)>>,
    /// The pace of the public read endpoints.
    pub(crate) public_reads: http::pacer::Pacer,
}

impl AppState {
    fn new(store: Arc<dyn Store>, config: Config, dp: aggregate::DpState) -> Self {
        let seed = config.pacing_seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x5eed, |d| d.as_nanos() as u64)
        });
        AppState {
            store,
            metrics: Metrics::default(),
            rng: AtomicU64::new(seed),
            pace_seed: seed,
            aggregator: Default::default(),
            dp: Mutex::new(dp),
            external_ms: AtomicU64::new(0),
            limiter: Mutex::new(Default::default()),
            public_reads: http::pacer::Pacer::new(config.public_reads.clone()),
            config,
        }
    }

    /// A uniform random number in `range` (splitmix64; not cryptographic).
    pub fn random_in(&self, range: &RangeInclusive<u32>) -> u32 {
        let (lo, hi) = (*range.start(), *range.end());
        if hi <= lo {
            return lo;
        }
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + (z % (u64::from(hi - lo) + 1)) as u32
    }

    /// The pacing of one request: uniform in `config.sync_interval`, a
    /// function of the seed, the device and the sequence only.
    pub fn pace(&self, device: &str, seq: u64) -> u32 {
        let range = &self.config.sync_interval;
        let (lo, hi) = (*range.start(), *range.end());
        if hi <= lo {
            return lo;
        }
        // FNV-1a over the device id, then splitmix64 over (seed, hash, seq).
        let h = device.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let mut z = self
            .pace_seed
            .wrapping_add(h.rotate_left(17))
            .wrapping_add(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + (z % (u64::from(hi - lo) + 1)) as u32
    }

    /// Seconds the device must still wait, when it syncs too often. A
    /// request for a sequence at or below the last one applied is never
    /// limited: it is a retry, answered from the idempotency record (or
    /// refused as stale) by the writer.
    pub(crate) fn rate_limited(&self, device: &str, seq: u64) -> Option<u32> {
        let min = self.config.min_sync_interval_s;
        if min == 0 {
            return None;
        }
        let map = self.limiter.lock().ok()?;
        let (at, more, last_seq) = map.get(device)?;
        if seq <= *last_seq {
            return None;
        }
        let elapsed = at.elapsed();
        let min = Duration::from_secs(u64::from(min));
        (!more && elapsed < min).then(|| (min - elapsed).as_secs().max(1) as u32)
    }

    pub(crate) fn note_sync(&self, device: &str, more: bool, seq: u64) {
        if self.config.min_sync_interval_s == 0 {
            return;
        }
        if let Ok(mut map) = self.limiter.lock() {
            if map.len() > 1_000_000 {
                map.clear();
            }
            map.insert(device.to_string(), (Instant::now(), more, seq));
        }
    }

    /// Current gauges.
    pub fn gauges(&self) -> Gauges {
        let (commits, commit_items) = self.store.commit_stats();
        let now = aggregate::now(self).as_secs_f64();
        // The releases of the deployment, as the store records them (every
        // node reports the same; a restarted node continues the count).
        let window = self.config.aggregate.dp.window;
        let persisted = self
            .config
            .aggregate
            .dp
            .enabled
            .then(|| store::read(&*self.store, aggregate::accountant::ReleaseLog::read).ok())
            .flatten();
        let privacy = self.dp.lock().ok().and_then(|mut d| {
            let a = d.accountant.as_mut()?;
            let here = a.releases_in_window(now);
            let k = persisted
                .as_ref()
                .map_or(here, |p| p.releases_in_window(now, window).max(here));
            Some(metrics::PrivacyGauges {
                epsilon_release: a.epsilon_release(),
                epsilon_window: a.epsilon_window(),
                epsilon_spent: a.epsilon_of(k),
                rho_release: a.rho_release(),
                rho_window: a.rho_window(),
                delta: a.conversion_delta(),
                window_s: window.as_secs_f64(),
                releases_in_window: k,
            })
        });
        Gauges {
            global_version: store::read(&*self.store, |t| t.meta(Meta::GlobalVersion)).unwrap_or(0),
            queue_depth: self.store.queue_depth() as u64,
            commits,
            commit_items,
            privacy,
        }
    }
}

/// A device pattern as the server stores it (admin read-back).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DevicePattern {
    /// Pattern id.
    pub id: String,
    /// Revision.
    pub revision: u32,
    /// Codebook id of `codes`.
    pub codebook: u32,
    /// Success rate.
    pub success_rate: f32,
    /// Samples.
    pub sample_count: u32,
    /// Category.
    pub category: String,
    /// Absolute integer codes.
    pub codes: Vec<i16>,
}

/// A device's stored state (admin read-back).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceState {
    /// Device id.
    pub device: String,
    /// Last applied sequence (`None`: the device never synced).
    pub last_seq: Option<u64>,
    /// Uploads applied.
    pub syncs: u64,
    /// Its patterns, by id.
    pub patterns: Vec<DevicePattern>,
}

/// Reads back one device's stored state.
pub fn device_state(store: &dyn Store, device: &str) -> StoreResult<DeviceState> {
    store::read(store, |t| device_state_in(t, device))
}

/// Reads back one device's stored state in read transaction `t`.
pub fn device_state_in(t: &dyn store::ReadTxn, device: &str) -> StoreResult<DeviceState> {
    {
        let rec = t.device(device)?;
        let patterns = t
            .device_patterns(device)?
            .into_iter()
            .map(|(id, p)| DevicePattern {
                id,
                revision: p.revision,
                codebook: p.codebook,
                success_rate: p.success_rate,
                sample_count: p.sample_count,
                category: p.category,
                codes: p.codes.to_vec(),
            })
            .collect();
        Ok(DeviceState {
            device: device.to_string(),
            last_seq: rec.as_ref().map(|r| r.last_seq),
            syncs: rec.as_ref().map_or(0, |r| r.syncs),
            patterns,
        })
    }
}

/// The server, as a library.
pub struct Server;

impl Server {
    /// Opens the store, binds the listener and starts serving and
    /// aggregating. Must be called inside a tokio runtime.
    pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
        if config.auth.required && config.auth.master.is_none() {
            return Err(StartError::NoMasterSecret);
        }
        let dp = config.aggregate.dp.clone();
        let accountant = if dp.enabled {
            Some(aggregate::accountant::Accountant::new(&dp).map_err(StartError::Privacy)?)
        } else {
            tracing::warn!(
                "DIFFERENTIAL PRIVACY IS OFF: global patterns are exact aggregates of k devices \
                 (no protection against Sybil or differencing attacks). Closed test fleets only."
            );
            None
        };
        let noise = aggregate::dp::Noise::new(dp.seed).map_err(StartError::Io)?;
        if dp.seed.is_some() {
            tracing::warn!("privacy noise from a fixed seed: tests and simulations only");
        }
        let dp_state = aggregate::DpState { noise, accountant };
        let tls = match &config.tls {
            Some(t) => Some(tls::server_config(t).map_err(StartError::Io)?),
            None => None,
        };
        let mut pg = None;
        let (store, redb): (Arc<dyn Store>, Option<Arc<store::redb::RedbStore>>) = match &config.db
        {
            _ if !config.postgres.is_empty() => {
                let s = Arc::new(
                    store::postgres::PgStore::open_all(
                        &config.postgres,
                        store::postgres::PgOptions {
                            queue_limit: config.queue_limit,
                            max_batch: config.max_batch,
                            ..Default::default()
                        },
                    )
                    .map_err(StartError::Store)?,
                );
                pg = Some(s.clone());
                (s, None)
            }
            Some(path) => {
                files::prepare_db(path).map_err(StartError::Io)?;
                let s = Arc::new(
                    store::redb::RedbStore::open(
                        path,
                        store::redb::RedbOptions {
                            queue_limit: config.queue_limit,
                            max_batch: config.max_batch,
                            journal: config.journal,
                            fold_every: config.fold_every,
                            ..Default::default()
                        },
                    )
                    .map_err(StartError::Store)?,
                );
                (s.clone(), Some(s))
            }
            None => (Arc::new(store::mem::MemStore::new()), None),
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(StartError::Io)?;
        let local_addr = listener.local_addr().map_err(StartError::Io)?;
        let admin_listener = match config.admin_listen {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(StartError::Io)?,
            ),
            None => None,
        };
        let admin_addr = match &admin_listener {
            Some(l) => Some(l.local_addr().map_err(StartError::Io)?),
            None => None,
        };
        let state = Arc::new(AppState::new(store, config, dp_state));
        if !state.config.auth.required {
            state.metrics.auth.set_disabled(true);
            tracing::warn!(
                "AUTHENTICATION IS OFF: any client that knows a device id can write its \
                 patterns. Development only; never expose this server."
            );
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let app = http::router(state.clone());
        let serve = tokio::spawn(listen::serve(
            listener,
            tls,
            app,
            state.config.limits.clone(),
            state.metrics.conns.clone(),
            stop_rx.clone(),
        ));
        let mut tasks = vec![serve];
        if let Some(l) = admin_listener {
            // Plain HTTP under the same limits; its own connection counters,
            // so the sync listener's cap never locks out metrics scrapes.
            tasks.push(tokio::spawn(listen::serve(
                l,
                None,
                http::admin::router(state.clone()),
                state.config.limits.clone(),
                Arc::new(listen::ConnMetrics::default()),
                stop_rx.clone(),
            )));
        }
        if state.config.aggregation_clock == AggregationClock::Wall {
            tasks.push(tokio::spawn(aggregate::run(state.clone(), stop_rx)));
        }
        tracing::info!(addr = %local_addr, db = ?state.config.db, "constellation listening");
        if let Some(a) = admin_addr {
            tracing::info!(
                addr = %a,
                device_routes = state.config.admin_token.is_some(),
                "admin listener (metrics; device read-back with the bearer token)"
            );
        }
        Ok(ServerHandle {
            local_addr,
            admin_addr,
            state,
            redb,
            pg,
            stop: stop_tx,
            tasks,
        })
    }
}

/// A running server.
pub struct ServerHandle {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    state: Arc<AppState>,
    redb: Option<Arc<store::redb::RedbStore>>,
    pg: Option<Arc<store::postgres::PgStore>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the admin listener (`GET /metrics`, device
    /// read-back), when it has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Base URL, e.g. `http://127.0.0.1:40123` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.state.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.local_addr)
    }

    /// Shared state (store, metrics, config).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// A device's stored patterns, revisions and sequence.
    pub fn device_state(&self, device: &str) -> StoreResult<DeviceState> {
        device_state(&*self.state.store, device)
    }

    /// The current global version.
    pub fn global_version(&self) -> StoreResult<u64> {
        store::read(&*self.state.store, |t| t.meta(Meta::GlobalVersion))
    }

    /// Enrols `device` (again: a new key) and returns its key; fails when
    /// the server has no master secret (authentication off).
    pub async fn enrol(&self, device: &str) -> StoreResult<omega_tv_sync::DeviceKey> {
        auth::enrol(&*self.state.store, self.master()?, device).await
    }

    /// Enrols many devices in one transaction; keys in the order of `devices`.
    pub async fn enrol_many(
        &self,
        devices: &[String],
    ) -> StoreResult<Vec<omega_tv_sync::DeviceKey>> {
        auth::enrol_many(&*self.state.store, self.master()?, devices).await
    }

    /// The master secret keys are derived from; an error when there is none
    /// (authentication off).
    fn master(&self) -> StoreResult<&MasterSecret> {
        let master = self.state.config.auth.master.as_ref();
        master.ok_or_else(|| StoreError::Backend("no master secret configured".into()))
    }

    /// Revokes `device` (`Ok(false)`: it was not enrolled).
    pub async fn revoke(&self, device: &str) -> StoreResult<bool> {
        auth::revoke(&*self.state.store, device).await
    }

    /// Runs one aggregation pass now (aggregation also runs on its own every
    /// `aggregate.interval`; with [`AggregationClock::External`], at the
    /// time of the last [`ServerHandle::aggregate_at`]); returns the
    /// changelog entries published.
    pub async fn aggregate_now(&self) -> StoreResult<usize> {
        aggregate::run_once(&self.state).await
    }

    /// Runs an aggregation pass and a differentially private release now,
    /// whatever the epoch schedule (counted by the accountant like any
    /// release); returns the changelog entries published. For tests and
    /// simulations whose clock does not follow the schedule.
    pub async fn release_now(&self) -> StoreResult<usize> {
        aggregate::release_now(&self.state).await
    }

    /// With [`AggregationClock::External`]: runs one aggregation pass at
    /// time `at` (since the Unix epoch), and the differentially private
    /// release of the epoch `at` falls in when it was not released yet;
    /// returns the changelog entries published. Everything of the pass
    /// (trend decay, `calculated_at`, the release epoch, the accountant's
    /// window) is at `at`; a time before the last one given counts as the
    /// last one. With the wall clock, `at` is ignored (a pass now).
    pub async fn aggregate_at(&self, at: Duration) -> StoreResult<usize> {
        aggregate::run_at(&self.state, at, false).await
    }

    /// [`ServerHandle::aggregate_at`] followed by a release at `at` whatever
    /// the schedule (counted by the accountant like any release).
    pub async fn release_at(&self, at: Duration) -> StoreResult<usize> {
        aggregate::run_at(&self.state, at, true).await
    }

    /// Metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.state.metrics.render(self.state.gauges())
    }

    /// Stops serving, waits for in-flight work and closes the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(r) = &self.redb {
            r.close();
        }
        if let Some(p) = &self.pg {
            p.close();
        }
    }
}
