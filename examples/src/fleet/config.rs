//! The fleet's settings and what a run produces: fault rates, the run's
//! configuration, the samples and counters of exchanges, the result.

use std::sync::Arc;
use std::time::Instant;

use omega_tv_sync::codec::Codebook;
use omega_tv_sync::sync::Config;
use omega_tv_sync::types::DeviceId;

use super::model::Catalog;
use super::tv::Tv;

/// Fault rates (per sync).
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// A response is lost after the server applied the request.
    pub drop: f64,
    /// The TV goes offline for 1–4 virtual hours.
    pub offline: f64,
    /// A second box restored from this TV's state syncs stale changes.
    pub twin: f64,
}

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of TVs.
    pub devices: usize,
    /// Successful syncs each TV makes (at least).
    pub rounds: u32,
    /// Run seed.
    pub seed: u64,
    /// Exchanges in flight at once.
    pub concurrency: usize,
    /// Fault rates.
    pub faults: Faults,
    /// Mean watch events per TV per 10 virtual minutes.
    pub watch_rate: f64,
    /// Patterns per TV: a range.
    pub patterns: (usize, usize),
    /// Each TV's signing key, by device id (`None`: requests go unsigned,
    /// for a server run with `--insecure-no-auth`).
    pub keys: Option<Arc<std::collections::HashMap<String, omega_tv_sync::DeviceKey>>>,
    /// Share of TVs on the small-flash codebook (`minilm-small-v1`), in
    /// `[0, 1]`; the others use `minilm-v1`. See [`small_profile`].
    pub small_profile_share: f64,
}

/// Whether TV number `index` uses the small-flash codebook: exactly
/// `floor(devices * share)` TVs do, spread evenly over the indices (TV `i`
/// is one when `floor((i + 1) * share)` exceeds `floor(i * share)`), so the
/// choice depends on nothing random and a small fleet gets its share.
pub fn small_profile(cfg: &SimConfig, index: usize) -> bool {
    let share = cfg.small_profile_share.clamp(0.0, 1.0);
    ((index + 1) as f64 * share).floor() > (index as f64 * share).floor()
}

/// The id of TV number `index`.
pub fn device_id(index: usize) -> String {
    format!("tv-{index:06}")
}

/// One exchange, as measured.
#[derive(Clone, Debug)]
pub struct SyncSample {
    /// Wall-clock seconds since the run started, at completion.
    pub at_s: f64,
    /// Request body bytes.
    pub up: u32,
    /// Response body bytes.
    pub down: u32,
    /// Pattern updates uploaded.
    pub patterns_up: u16,
    /// Exchange latency, µs.
    pub latency_us: u32,
    /// The exchange completed with a 200 that the TV applied.
    pub applied: bool,
    /// Part of the TV's first sync after boot, which uploads every pattern
    /// it starts with (absolute codes); reported apart from steady state.
    pub boot: bool,
    /// Not one of a TV's scheduled syncs: a further page of global changes
    /// fetched right after a sync whose response said `more`, or an exchange
    /// of a stale twin.
    pub extra: bool,
}

/// Run-wide counters.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Responses dropped by fault injection (each retried with the same seq).
    pub dropped: u64,
    /// Exchanges that failed and were retried (drops, 429/503, transport errors).
    pub retries: u64,
    /// 409s that moved a sequence forward.
    pub resequenced: u64,
    /// Offline periods started.
    pub offline_periods: u64,
    /// Twins that synced stale state.
    pub twins: u64,
    /// Transport errors other than injected drops.
    pub transport_errors: u64,
    /// Answers refused because they were not signed for the request
    /// (forged or replayed on the way): nothing of them was applied.
    pub unauthenticated: u64,
    /// A request the server refused (a 4xx that retrying cannot fix): the
    /// run stops and reports it.
    pub fatal: Option<String>,
    /// TVs that gave up after too many exchanges without success.
    pub stuck: u64,
}

impl Counters {
    /// Adds `b`'s counts to these; the first fatal refusal is kept.
    pub fn add(&mut self, b: &Counters) {
        self.dropped += b.dropped;
        self.retries += b.retries;
        self.resequenced += b.resequenced;
        self.offline_periods += b.offline_periods;
        self.twins += b.twins;
        self.transport_errors += b.transport_errors;
        self.unauthenticated += b.unauthenticated;
        self.stuck += b.stuck;
        if self.fatal.is_none() {
            self.fatal.clone_from(&b.fatal);
        }
    }
}

/// What exchanges measured: every sample, in completion order, and the
/// counters.
#[derive(Debug, Default)]
pub struct Tally {
    /// Every exchange.
    pub samples: Vec<SyncSample>,
    /// Counters.
    pub counters: Counters,
}

/// What the run produced, before checking.
pub struct SimResult {
    /// The TVs at the end.
    pub tvs: Vec<Tv>,
    /// Every exchange.
    pub samples: Vec<SyncSample>,
    /// Counters.
    pub counters: Counters,
    /// Wall-clock seconds of the run (not the settle phase).
    pub wall_s: f64,
    /// Virtual seconds simulated.
    pub virtual_s: f64,
    /// Aggregation passes run on the simulation's clock (0 when the server
    /// aggregates on its own wall clock).
    pub passes: u64,
    /// With passes on the simulation's clock: the virtual time (ms) of the
    /// next pass, the first after every step of the run.
    pub next_pass_ms: Option<u64>,
}

/// The sync client configuration of TV `index` (device `id`) in a run
/// with `cfg`.
pub fn device_config(id: DeviceId, cfg: &SimConfig, index: usize) -> Config {
    let seed = cfg.seed;
    let key = cfg.keys.as_ref().and_then(|k| k.get(id.as_str()).cloned());
    let mut c = Config::new(id);
    c.auth_key = key;
    // Sync responses stay small (the server stores each for replay); the
    // rest comes from the feed in pages of up to RX_BYTES.
    c.caps.max_bytes = 16 * 1024;
    c.caps.max_globals = 32;
    c.caps.max_trends = 32;
    c.jitter_seed = seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407) | 1;
    c
}

impl RunContext {
    /// The codebook of TV number `index`.
    pub fn codebook(&self, index: usize) -> Codebook<'static> {
        if small_profile(&self.cfg, index) {
            self.small
        } else {
            self.cb
        }
    }
}

/// What every step of a run shares: the catalogue, the codebook, the
/// settings and the run's wall-clock start (samples are timed from it).
#[derive(Clone)]
pub struct RunContext {
    /// The catalogue and seed patterns.
    pub cat: Arc<Catalog>,
    /// The codebook of most TVs (`minilm-v1`), the server's primary one:
    /// the one feed pages are in.
    pub cb: Codebook<'static>,
    /// The small-flash codebook (`minilm-small-v1`) of the TVs for which
    /// [`small_profile`] holds; they take global patterns through the sync
    /// endpoint only (feed pages are in the primary codebook).
    pub small: Codebook<'static>,
    /// The run's settings.
    pub cfg: SimConfig,
    /// When the run started.
    pub t0: Instant,
}
