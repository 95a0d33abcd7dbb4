//! The simulation: TVs on a virtual clock, syncing when the server says.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use omega_tv_sync::codec::Codebook;
use omega_tv_sync::sync::{Config, Outcome, SyncClient, SyncError};
use omega_tv_sync::types::DeviceId;
use omega_tv_sync_http::HttpTransport as Net;

use super::faults::{Exchange, FaultError, Faulty};
use super::model::{initial_patterns, watch, Catalog, TvPattern};
use super::rng::Rng;

/// Pattern slots per simulated TV.
pub const CAPACITY: usize = 24;
/// Request buffer per exchange in flight.
const TX_BYTES: usize = 8 * 1024;
/// Response buffer (advertised as `caps.max_bytes`).
const RX_BYTES: usize = 32 * 1024;

/// A simulated TV's sync client.
pub type Client = SyncClient<'static, CAPACITY>;

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
}

/// A simulated TV.
pub struct Tv {
    /// Device id (`tv-000042`).
    pub id: DeviceId,
    /// What it has learned, in floats.
    pub patterns: Vec<TvPattern>,
    /// Its sync client.
    pub client: Client,
    rng: Rng,
    /// Successful syncs.
    pub synced: u32,
    /// Exchanges attempted.
    pub attempts: u32,
    offline_until: u64,
    last_watch_at: u64,
    /// Acks and conflicts seen by this TV and any twin of it.
    pub ledger: Ledger,
    snapshot: Vec<u8>,
    tx: Option<Vec<u8>>,
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
    /// A request the server refused (a 4xx that retrying cannot fix): the
    /// run stops and reports it.
    pub fatal: Option<String>,
    /// TVs that gave up after too many exchanges without success.
    pub stuck: u64,
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
}

fn device_config(id: DeviceId, cfg: &SimConfig, index: usize) -> Config {
    let seed = cfg.seed;
    let key = cfg.keys.as_ref().and_then(|k| k.get(id.as_str()).cloned());
    let mut c = Config::new(id);
    c.auth_key = key;
    c.caps.max_bytes = RX_BYTES as u32;
    c.caps.max_globals = 64;
    c.caps.max_trends = 32;
    c.jitter_seed = seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407) | 1;
    c
}

impl Tv {
    fn new(cat: &Catalog, cb: Codebook<'static>, cfg: &SimConfig, index: usize) -> Tv {
        let mut rng = Rng::new(cfg.seed, index as u64);
        let n = rng.range(cfg.patterns.0 as u64, cfg.patterns.1 as u64) as usize;
        let patterns = initial_patterns(cat, &mut rng, n.min(CAPACITY));
        let id = DeviceId::new(&device_id(index)).expect("short id");
        let client = SyncClient::new(cb, device_config(id.clone(), cfg, index));
        Tv {
            id,
            patterns,
            client,
            rng,
            synced: 0,
            attempts: 0,
            offline_until: 0,
            last_watch_at: 0,
            ledger: Ledger::default(),
            snapshot: Vec::new(),
            tx: None,
        }
    }

    /// Lets the TV watch for the virtual time since it last did, then hands
    /// changed patterns to the client.
    fn live_until(&mut self, cat: &Arc<Catalog>, now_ms: u64, watch_rate: f64) {
        let minutes = now_ms.saturating_sub(self.last_watch_at) as f64 / 60_000.0;
        self.last_watch_at = now_ms;
        let events = self.rng.poisson((watch_rate * minutes / 10.0).min(50.0));
        for _ in 0..events {
            watch(cat, &mut self.rng, &mut self.patterns);
        }
        self.hand_over(now_ms);
    }

    fn hand_over(&mut self, now_ms: u64) {
        for p in self.patterns.iter_mut().filter(|p| p.changed) {
            self.client
                .upsert(&p.to_pattern(), now_ms)
                .expect("capacity covers every pattern");
            p.changed = false;
        }
    }
}

/// What a device id's sessions were told, for the checker.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Acks received per pattern id (each is one application on the server).
    pub acks: HashMap<String, u32>,
    /// Patterns with a conflict not yet followed by an ack.
    pub unresolved: HashMap<String, u32>,
    /// Conflicts received.
    pub conflicts: u64,
    /// Conflicts followed by an ack of the resolution.
    pub resolved: u64,
}

impl Ledger {
    fn record(&mut self, ex: &Exchange) {
        for id in &ex.acked {
            *self.acks.entry(id.clone()).or_default() += 1;
            if let Some(n) = self.unresolved.remove(id) {
                self.resolved += u64::from(n);
            }
        }
        for id in &ex.conflicts {
            self.conflicts += 1;
            *self.unresolved.entry(id.clone()).or_default() += 1;
        }
    }
}

/// Outcome of one attempt, for the scheduler.
enum Step {
    Synced,
    Retry,
}

async fn attempt(
    client: &mut Client,
    transport: &mut Faulty<Net>,
    tx: &mut [u8],
    ledger: &mut Ledger,
    counters: &mut Counters,
    now_ms: u64,
    t0: Instant,
) -> (Step, SyncSample) {
    let mut rx = vec![0u8; RX_BYTES];
    let r = client
        .exchange(transport, tx, &mut rx, now_ms, &mut ())
        .await;
    let ex: Exchange = std::mem::take(&mut transport.last);
    let mut sample = SyncSample {
        at_s: t0.elapsed().as_secs_f64(),
        up: ex.up as u32,
        down: ex.down as u32,
        patterns_up: ex.patterns_up as u16,
        latency_us: ex.latency_us.min(u64::from(u32::MAX)) as u32,
        applied: false,
        boot: false,
    };
    let step = match r {
        Ok(Outcome::Synced(_)) => {
            sample.applied = true;
            ledger.record(&ex);
            Step::Synced
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

fn tracing_like(msg: &str) {
    if std::env::var_os("FLEET_DEBUG").is_some() {
        eprintln!("fleet: {msg}");
    }
}

/// Per-task result.
struct Done {
    index: usize,
    tv: Box<Tv>,
    samples: Vec<SyncSample>,
    counters: Counters,
    twin: Option<Vec<u8>>,
}

/// Runs the fleet. `transport` makes one transport per exchange in flight
/// (they may share a connection pool). `progress` is called with the number
/// of successful syncs so far.
pub async fn run<F>(
    cat: Arc<Catalog>,
    cb: Codebook<'static>,
    cfg: SimConfig,
    transport: F,
    progress: &(dyn Fn(u64) + Sync),
) -> SimResult
where
    F: Fn() -> Net,
{
    let t0 = Instant::now();
    let mut tvs: Vec<Option<Box<Tv>>> = (0..cfg.devices)
        .map(|i| Some(Box::new(Tv::new(&cat, cb, &cfg, i))))
        .collect();
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut start_rng = Rng::new(cfg.seed, u64::MAX);
    for i in 0..cfg.devices {
        // Boxes boot over the first five virtual minutes.
        queue.push(Reverse((start_rng.range(0, 300_000), i)));
    }
    let mut twins: Vec<(u64, usize, Vec<u8>)> = Vec::new();
    let mut samples = Vec::new();
    let mut counters = Counters::default();
    let mut synced_total = 0u64;
    let mut virtual_now = 0u64;
    let mut running = tokio::task::JoinSet::new();
    let mut in_flight = 0usize;
    let mut fault_rng = Rng::new(cfg.seed, u64::MAX - 1);

    loop {
        // Launch due TVs while there is room.
        while in_flight < cfg.concurrency {
            let Some(Reverse((due, i))) = queue.pop() else {
                break;
            };
            virtual_now = virtual_now.max(due);
            let Some(mut tv) = tvs[i].take() else {
                continue;
            };
            if tv.synced >= cfg.rounds && tv.client.in_flight().is_none() {
                tvs[i] = Some(tv);
                continue;
            }
            if tv.offline_until > due {
                queue.push(Reverse((tv.offline_until, i)));
                tvs[i] = Some(tv);
                continue;
            }
            let cat2 = cat.clone();
            let faults = cfg.faults;
            let watch_rate = cfg.watch_rate;
            let mut t = Faulty {
                inner: transport(),
                drop_p: faults.drop,
                rng: Rng::new(cfg.seed ^ 0xD0D0, (i as u64) << 32 | u64::from(tv.attempts)),
                last: Exchange::default(),
            };
            let twin_roll = fault_rng.f64();
            let offline_roll = fault_rng.f64();
            let offline_len = fault_rng.range(3_600_000, 4 * 3_600_000);
            in_flight += 1;
            running.spawn(async move {
                let mut c = Counters::default();
                let mut smp = Vec::new();
                if tv.client.in_flight().is_none() {
                    tv.live_until(&cat2, due, watch_rate);
                }
                let mut tx = tv.tx.take().unwrap_or_else(|| vec![0u8; TX_BYTES]);
                tv.attempts += 1;
                let tvr = &mut *tv;
                let boot = tvr.synced == 0;
                let (step, mut s) = attempt(
                    &mut tvr.client,
                    &mut t,
                    &mut tx,
                    &mut tvr.ledger,
                    &mut c,
                    due,
                    t0,
                )
                .await;
                s.boot = boot;
                smp.push(s);
                let mut twin = None;
                match step {
                    Step::Synced => {
                        tv.synced += 1;
                        let mut snap = vec![0u8; Client::MAX_SNAPSHOT_LEN];
                        if let Ok(n) = tv.client.snapshot(&mut snap) {
                            snap.truncate(n);
                            tv.snapshot = snap;
                        }
                        if offline_roll < faults.offline {
                            tv.offline_until = tv.client.next_sync_at() + offline_len;
                            c.offline_periods += 1;
                        }
                        if twin_roll < faults.twin && !tv.snapshot.is_empty() {
                            twin = Some(tv.snapshot.clone());
                        }
                    }
                    Step::Retry => {
                        if tv.client.in_flight().is_some() {
                            tv.tx = Some(tx);
                        }
                    }
                }
                Done {
                    index: i,
                    tv,
                    samples: smp,
                    counters: c,
                    twin,
                }
            });
        }
        // Twins whose time has come run inline (rare).
        if let Some(pos) = twins.iter().position(|t| t.0 <= virtual_now) {
            let (at, i, snap) = twins.swap_remove(pos);
            // Only while the original has nothing in flight: a twin that
            // moved the sequence under a pending retry would leave that
            // retry's application unacknowledged to every session.
            match tvs[i].as_mut() {
                Some(tv) if tv.client.in_flight().is_none() => {
                    run_twin(
                        &cat,
                        cb,
                        &cfg,
                        tv,
                        &snap,
                        at,
                        &transport,
                        &mut counters,
                        &mut samples,
                        t0,
                    )
                    .await;
                }
                _ => twins.push((at + 1_000, i, snap)),
            }
        }
        let Some(done) = running.join_next().await else {
            if queue.is_empty() {
                break;
            }
            continue;
        };
        in_flight -= 1;
        let done = done.expect("sync task panicked");
        let i = done.index;
        if let Some(s) = done.samples.iter().find(|s| s.applied) {
            let _ = s;
            synced_total += 1;
            progress(synced_total);
        }
        samples.extend(done.samples);
        add(&mut counters, &done.counters);
        let tv = done.tv;
        if let Some(snap) = done.twin {
            // The stale twin appears after the original has moved on.
            twins.push((tv.client.next_sync_at() + 60_000, i, snap));
            counters.twins += 1;
        }
        let next = tv.client.next_sync_at().max(tv.offline_until);
        let done_rounds = tv.synced >= cfg.rounds && tv.client.in_flight().is_none();
        // A TV that needs 20 exchanges per applied sync is stuck: stop it
        // (the report says how many) rather than loop.
        let stuck = tv.attempts > cfg.rounds.saturating_mul(20) + 50;
        if stuck && !done_rounds {
            counters.stuck += 1;
        }
        tvs[i] = Some(tv);
        if counters.fatal.is_some() {
            queue.clear();
            twins.clear();
        } else if !done_rounds && !stuck {
            queue.push(Reverse((next, i)));
        }
    }
    // Twins still pending run now, so every original syncs after them.
    for (at, i, snap) in std::mem::take(&mut twins) {
        if let Some(tv) = tvs[i].as_mut() {
            run_twin(
                &cat,
                cb,
                &cfg,
                tv,
                &snap,
                at,
                &transport,
                &mut counters,
                &mut samples,
                t0,
            )
            .await;
        }
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let tvs: Vec<Tv> = tvs
        .into_iter()
        .map(|t| *t.expect("every TV returned"))
        .collect();
    SimResult {
        tvs,
        samples,
        counters,
        wall_s,
        virtual_s: virtual_now as f64 / 1000.0,
    }
}

/// A second box restored from `tv`'s older state: it learns a little on its
/// own and syncs, on stale bases, until the server has taken it.
#[allow(clippy::too_many_arguments)]
async fn run_twin<F>(
    cat: &Arc<Catalog>,
    cb: Codebook<'static>,
    cfg: &SimConfig,
    tv: &mut Tv,
    snap: &[u8],
    at: u64,
    transport: &F,
    counters: &mut Counters,
    samples: &mut Vec<SyncSample>,
    t0: Instant,
) where
    F: Fn() -> Net,
{
    let index: usize = tv.id.as_str()[3..].parse().unwrap_or(0);
    let Ok(mut client) = Client::restore(cb, device_config(tv.id.clone(), cfg, index), snap) else {
        return;
    };
    let mut rng = Rng::new(cfg.seed ^ 0x7717, at);
    let mut patterns = tv.patterns.clone();
    for _ in 0..3 {
        watch(cat, &mut rng, &mut patterns);
    }
    for p in patterns.iter().filter(|p| p.changed) {
        let _ = client.upsert(&p.to_pattern(), at);
    }
    let mut t = Faulty {
        inner: transport(),
        drop_p: 0.0,
        rng,
        last: Exchange::default(),
    };
    let mut tx = vec![0u8; TX_BYTES];
    let mut now = at;
    for _ in 0..8 {
        let (step, s) = attempt(
            &mut client,
            &mut t,
            &mut tx,
            &mut tv.ledger,
            counters,
            now,
            t0,
        )
        .await;
        samples.push(s);
        if matches!(step, Step::Synced) && client.pending() == 0 {
            break;
        }
        now = client.next_sync_at().max(now + 1);
    }
}

fn add(a: &mut Counters, b: &Counters) {
    a.dropped += b.dropped;
    a.retries += b.retries;
    a.resequenced += b.resequenced;
    a.offline_periods += b.offline_periods;
    a.twins += b.twins;
    a.transport_errors += b.transport_errors;
    a.stuck += b.stuck;
    if a.fatal.is_none() {
        a.fatal.clone_from(&b.fatal);
    }
}

/// After the run: every TV syncs, without new watching or faults, until it
/// has nothing left to upload and its last exchange was applied (at most
/// `max_attempts` exchanges each). Returns how many TVs did not settle.
pub async fn settle<F>(result: &mut SimResult, transport: F, max_attempts: u32) -> usize
where
    F: Fn() -> Net,
{
    let t0 = Instant::now();
    let mut unsettled = 0;
    for tv in result.tvs.iter_mut() {
        let mut t = Faulty {
            inner: transport(),
            drop_p: 0.0,
            rng: Rng::new(1, 1),
            last: Exchange::default(),
        };
        let mut tx = tv.tx.take().unwrap_or_else(|| vec![0u8; TX_BYTES]);
        let mut now = tv.client.next_sync_at();
        let mut ok = false;
        for _ in 0..max_attempts {
            tv.hand_over(now);
            let (step, _) = attempt(
                &mut tv.client,
                &mut t,
                &mut tx,
                &mut tv.ledger,
                &mut result.counters,
                now,
                t0,
            )
            .await;
            if matches!(step, Step::Synced)
                && tv.client.pending() == 0
                && tv.client.in_flight().is_none()
            {
                ok = true;
                break;
            }
            now = tv.client.next_sync_at().max(now + 1);
        }
        if !ok {
            unsettled += 1;
        }
    }
    unsettled
}
