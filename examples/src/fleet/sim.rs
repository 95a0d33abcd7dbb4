//! The simulation: TVs on a virtual clock, syncing when the server says.

use std::cmp::Reverse;
use std::collections::{btree_map, BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use omega_tv_sync::codec::Codebook;
use omega_tv_sync::sync::{Config, Outcome, SyncClient, SyncError};
use omega_tv_sync::types::{DeviceId, PatternId};
use omega_tv_sync_http::HttpTransport as Net;

use super::faults::{Exchange, FaultError, Faulty};
use super::model::{initial_patterns, watch, Catalog, TvPattern};
use super::rng::Rng;

/// Pattern slots per simulated TV.
pub const CAPACITY: usize = 24;
/// Request buffer per exchange in flight.
const TX_BYTES: usize = 8 * 1024;
/// Response buffer (advertised as `caps.max_bytes`).
const RX_BYTES: usize = 128 * 1024;

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
    /// Not one of a TV's scheduled syncs: a further page of global changes
    /// fetched right after a sync whose response said `more`, or an exchange
    /// of a stale twin.
    pub extra: bool,
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
    /// A copy of the persisted state taken after sync `.1`: a stale twin
    /// box restored from it syncs before this TV's sync `.1 + 2`.
    twin: Option<(Vec<u8>, u32)>,
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
    // Sync responses stay small (the server stores each for replay); the
    // rest comes from the feed in pages of up to RX_BYTES.
    c.caps.max_bytes = 16 * 1024;
    c.caps.max_globals = 32;
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
            twin: None,
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
///
/// Every application of an update gives the pattern the next revision on
/// the server, so an application is identified by (pattern, revision), not
/// by an acknowledgement: one application can be acknowledged to two
/// sessions. That happens when a stale twin and its original, restored from
/// the same snapshot and sharing the device id and sequence numbers, send
/// byte-identical requests under one sequence number (both made the same
/// change): the server cannot tell the second from a retry of the first and
/// replays the first's response, which acknowledges to the second exactly
/// the state it asked for. (Patterns are never removed in the simulation,
/// so a pattern's revisions only grow.)
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Per pattern id: each revision acknowledged to a session, with a
    /// fingerprint of the state acknowledged at it (codes, rate, samples,
    /// category).
    pub acks: HashMap<String, BTreeMap<u32, u64>>,
    /// Acknowledgements of a revision already acknowledged to a session with
    /// the same state (one application, two sessions told).
    pub shared_acks: u64,
    /// Acknowledgements of a revision already acknowledged with a different
    /// state: two applications were given one revision, so the server lost
    /// one of them (each is a lost update).
    pub reused_revisions: u64,
    /// Patterns with a conflict not yet followed by an ack.
    pub unresolved: HashMap<String, u32>,
    /// Conflicts received.
    pub conflicts: u64,
    /// Conflicts followed by an ack of the resolution.
    pub resolved: u64,
}

impl Ledger {
    /// Records the acks and conflicts of an exchange `client` applied;
    /// `sent` is its request.
    fn record(&mut self, ex: &Exchange, client: &Client, sent: &[u8]) {
        for (id, &rev) in ex.acked.iter().zip(&ex.acked_revs) {
            let state = fingerprint(client, sent, id);
            match self.acks.entry(id.clone()).or_default().entry(rev) {
                btree_map::Entry::Vacant(v) => {
                    v.insert(state);
                }
                btree_map::Entry::Occupied(o) if *o.get() == state => self.shared_acks += 1,
                btree_map::Entry::Occupied(_) => self.reused_revisions += 1,
            }
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

/// The state acknowledged for pattern `id`: the client's acknowledged codes
/// (what it sent, decoded) and the rate, samples and category of the
/// request's record.
fn fingerprint(client: &Client, sent: &[u8], id: &str) -> u64 {
    use omega_tv_sync::wire::{FrameReader, Record};
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let pid = PatternId::new(id).ok();
    if let Some((_, codes)) = pid.as_ref().and_then(|p| client.acked(p)) {
        codes.hash(&mut h);
    }
    if let Ok(f) = FrameReader::parse(sent) {
        for r in f.records().flatten() {
            if let Record::Pattern(p) = r {
                if p.id.as_str() == id {
                    p.success_rate.to_bits().hash(&mut h);
                    p.sample_count.hash(&mut h);
                    p.category.as_str().hash(&mut h);
                }
            }
        }
    }
    h.finish()
}

/// Outcome of one attempt, for the scheduler.
enum Step {
    Synced { more: bool },
    Retry,
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    who: &str,
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
    synced: bool,
}

/// Most further pages fetched after one sync.
const MAX_PAGES: u32 = 32;

/// One scheduled step of one TV: a pending stale twin syncs first, then the
/// TV lives until `due`, syncs (or resends its request in flight), and
/// fetches further pages while the server says `more`.
///
/// Everything random here comes from the TV's own streams, so a TV's
/// behaviour depends on the seed and the server's answers, not on how the
/// scheduler interleaves TVs.
#[allow(clippy::too_many_arguments)]
async fn step(
    mut tv: Box<Tv>,
    i: usize,
    due: u64,
    cat: Arc<Catalog>,
    cb: Codebook<'static>,
    cfg: SimConfig,
    net: Net,
    t0: Instant,
) -> Done {
    let mut c = Counters::default();
    let mut smp = Vec::new();
    let idle = tv.client.in_flight().is_none();
    if idle && tv.twin.as_ref().is_some_and(|t| tv.synced >= t.1 + 2) {
        if let Some((snap, _)) = tv.twin.take() {
            run_twin(
                &cat,
                cb,
                &cfg,
                &mut tv,
                &snap,
                due,
                net.clone(),
                &mut c,
                &mut smp,
                t0,
            )
            .await;
        }
    }
    if idle {
        tv.live_until(&cat, due, cfg.watch_rate);
    }
    let mut tx = tv.tx.take().unwrap_or_else(|| vec![0u8; TX_BYTES]);
    tv.attempts += 1;
    let mut t = Faulty {
        inner: net,
        drop_p: cfg.faults.drop,
        rng: Rng::new(cfg.seed ^ 0xD0D0, (i as u64) << 32 | u64::from(tv.attempts)),
        last: Exchange::default(),
    };
    let boot = tv.synced == 0;
    let tvr = &mut *tv;
    let (first, mut s) = attempt(
        "orig",
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
    let synced = matches!(first, Step::Synced { .. });
    if let Step::Synced { mut more } = first {
        // Further pages come from the read-only, cacheable feed: no write on
        // the server, and not faulted, so their number (which depends on what
        // the server published meanwhile) cannot shift the TV's fault stream.
        let mut pages = 0;
        while more && pages < MAX_PAGES {
            pages += 1;
            match feed_page(&mut tvr.client, &mut t.inner, t0).await {
                Some((m, s)) => {
                    more = m;
                    smp.push(s);
                }
                None => break,
            }
        }
        tv.synced += 1;
        let offline = tv.rng.chance(cfg.faults.offline);
        let offline_len = tv.rng.range(3_600_000, 4 * 3_600_000);
        let twin = tv.rng.chance(cfg.faults.twin);
        if offline {
            tv.offline_until = tv.client.next_sync_at() + offline_len;
            c.offline_periods += 1;
        }
        if twin && tv.twin.is_none() {
            let mut snap = vec![0u8; Client::MAX_SNAPSHOT_LEN];
            if let Ok(n) = tv.client.snapshot(&mut snap) {
                snap.truncate(n);
                tv.twin = Some((snap, tv.synced));
                c.twins += 1;
            }
        }
    }
    if tv.client.in_flight().is_some() {
        tv.tx = Some(tx);
    }
    Done {
        index: i,
        tv,
        samples: smp,
        counters: c,
        synced,
    }
}

/// Fetches the next page of the global feed and applies it; `None` when it
/// failed (the next sync picks up from the same cursor).
async fn feed_page(client: &mut Client, net: &mut Net, t0: Instant) -> Option<(bool, SyncSample)> {
    use omega_tv_sync::{Method, Request, Transport};
    let mut path = [0u8; 96];
    let path = client
        .feed_path(512, RX_BYTES as u32, &mut path)
        .to_string();
    let mut rx = vec![0u8; RX_BYTES];
    let started = Instant::now();
    let r = net
        .send(
            Request {
                method: Method::Get,
                path: &path,
                headers: &[],
                body: &[],
            },
            &mut rx,
        )
        .await
        .ok()?;
    let latency_us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    if r.status != 200 {
        return None;
    }
    let summary = client.apply_feed(&rx[..r.body_len], &mut ()).ok()?;
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

/// Runs the fleet. `transport` makes the transport of each step (clones of
/// one HTTP client share its connection pool). `progress` is called with the
/// number of scheduled syncs applied so far.
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
    let mut samples = Vec::new();
    let mut counters = Counters::default();
    let mut synced_total = 0u64;
    let mut virtual_now = 0u64;
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < cfg.concurrency {
            let Some(Reverse((due, i))) = queue.pop() else {
                break;
            };
            virtual_now = virtual_now.max(due);
            let Some(tv) = tvs[i].take() else {
                continue;
            };
            if tv.offline_until > due {
                queue.push(Reverse((tv.offline_until, i)));
                tvs[i] = Some(tv);
                continue;
            }
            running.spawn(step(
                tv,
                i,
                due,
                cat.clone(),
                cb,
                cfg.clone(),
                transport(),
                t0,
            ));
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let done = done.expect("sync task panicked");
        let i = done.index;
        if done.synced {
            synced_total += 1;
            progress(synced_total);
        }
        samples.extend(done.samples);
        add(&mut counters, &done.counters);
        let tv = done.tv;
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
        } else if !done_rounds && !stuck {
            queue.push(Reverse((next, i)));
        }
    }
    // Twins still pending sync now, before the settle phase, so every
    // original syncs after its twin.
    let net = transport();
    for tv in tvs.iter_mut().flatten() {
        if let Some((snap, _)) = tv.twin.take() {
            let at = tv.client.next_sync_at();
            run_twin(
                &cat,
                cb,
                &cfg,
                tv,
                &snap,
                at,
                net.clone(),
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
async fn run_twin(
    cat: &Arc<Catalog>,
    cb: Codebook<'static>,
    cfg: &SimConfig,
    tv: &mut Tv,
    snap: &[u8],
    at: u64,
    net: Net,
    counters: &mut Counters,
    samples: &mut Vec<SyncSample>,
    t0: Instant,
) {
    let index: usize = tv.id.as_str()[3..].parse().unwrap_or(0);
    let Ok(mut client) = Client::restore(cb, device_config(tv.id.clone(), cfg, index), snap) else {
        return;
    };
    let mut rng = Rng::new(
        cfg.seed ^ 0x7717,
        (index as u64) << 32 | u64::from(tv.synced),
    );
    let mut patterns = tv.patterns.clone();
    for _ in 0..3 {
        watch(cat, &mut rng, &mut patterns);
    }
    for p in patterns.iter().filter(|p| p.changed) {
        let _ = client.upsert(&p.to_pattern(), at);
    }
    let mut t = Faulty {
        inner: net,
        drop_p: 0.0,
        rng,
        last: Exchange::default(),
    };
    let mut tx = vec![0u8; TX_BYTES];
    let mut now = at;
    // Eight answered exchanges at most. A request lost in transit (the
    // server may have applied it) is re-sent until the server answers, as a
    // real box would: giving it up would leave an application no session
    // was told about. At most 1,000 exchanges in all, 5 ms of wall time
    // apart after a transport error (at least 5 s of outage).
    let (mut answered, mut total) = (0, 0);
    while answered < 8 && total < 1000 {
        total += 1;
        let transport_errors = counters.transport_errors;
        let (step, s) = attempt(
            "twin",
            &mut client,
            &mut t,
            &mut tx,
            &mut tv.ledger,
            counters,
            now,
            t0,
        )
        .await;
        samples.push(SyncSample { extra: true, ..s });
        let in_transit =
            counters.transport_errors > transport_errors && client.in_flight().is_some();
        if in_transit {
            // Virtual time does not pass for the server: give a restarting
            // one a moment of wall time, so 1,000 tries cover an outage.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        } else {
            answered += 1;
        }
        if matches!(step, Step::Synced { more: false }) && client.pending() == 0 {
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
                "settle",
                &mut tv.client,
                &mut t,
                &mut tx,
                &mut tv.ledger,
                &mut result.counters,
                now,
                t0,
            )
            .await;
            let mut synced = matches!(step, Step::Synced { .. });
            let mut more = matches!(step, Step::Synced { more: true });
            for _ in 0..MAX_PAGES {
                if !more {
                    break;
                }
                match feed_page(&mut tv.client, &mut t.inner, t0).await {
                    Some((m, _)) => more = m,
                    None => {
                        synced = false;
                        break;
                    }
                }
            }
            if synced && !more && tv.client.pending() == 0 && tv.client.in_flight().is_none() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::check;

    /// One exchange of `client` until the server applies it (a restored
    /// twin's counter is ahead of the original's: the original's first
    /// signed request gets `401 replayed_counter` and is re-sent).
    async fn sync(
        who: &str,
        client: &mut Client,
        net: &Net,
        ledger: &mut Ledger,
        now: u64,
    ) -> Exchange {
        let mut t = Faulty {
            inner: net.clone(),
            drop_p: 0.0,
            rng: Rng::new(1, 1),
            last: Exchange::default(),
        };
        let mut tx = vec![0u8; TX_BYTES];
        let mut c = Counters::default();
        for _ in 0..4 {
            let t0 = Instant::now();
            let (step, _) = attempt(who, client, &mut t, &mut tx, ledger, &mut c, now, t0).await;
            assert!(c.fatal.is_none(), "{:?}", c.fatal);
            if matches!(step, Step::Synced { .. }) {
                return t.last;
            }
        }
        panic!("{who} did not sync");
    }

    /// A stale twin and its original, restored from one snapshot, make the
    /// same change (a watch that did not complete: one more sample, same
    /// direction) and send byte-identical requests under one sequence
    /// number. The server cannot tell the second from a retry of the first
    /// and replays the first's response: one application, acknowledged to
    /// both sessions, with the state each of them sent. Counting acks as
    /// applications (the ledger before) made that a lost update; it is one
    /// revision acknowledged twice, and the checker finds nothing lost. The
    /// same ledger with an acknowledged revision the server does not hold,
    /// a revision no session was told about, or one revision acknowledged
    /// with two different states is caught.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_application_acknowledged_to_two_sessions_is_not_a_lost_update() {
        let server = crate::fleet::start_embedded(5).await.unwrap();
        let id = device_id(0);
        let keys = server
            .handle
            .enrol_many(std::slice::from_ref(&id))
            .await
            .unwrap();
        let cat = Arc::new(Catalog::load().unwrap());
        let cb = omega_tv_sync::codec::minilm_v1().unwrap();
        let mut cfg = crate::fleet::Args::default().sim;
        cfg.devices = 1;
        cfg.keys = Some(Arc::new([(id.clone(), keys[0].clone())].into()));
        let net = Net::new(&server.handle.url()).unwrap();
        let mut tv = Tv::new(&cat, cb, &cfg, 0);
        for p in tv.patterns.iter_mut() {
            // Every pattern passes the quality filter.
            (p.samples, p.hits) = (20, 18);
            p.changed = true;
        }
        tv.hand_over(0);
        let mut ledger = Ledger::default();
        sync("orig", &mut tv.client, &net, &mut ledger, 0).await;
        let mut snap = vec![0u8; Client::MAX_SNAPSHOT_LEN];
        let n = tv.client.snapshot(&mut snap).unwrap();
        let mut twin =
            Client::restore(cb, device_config(tv.id.clone(), &cfg, 0), &snap[..n]).unwrap();
        assert_eq!(twin.seq(), tv.client.seq());

        // The same change on both boxes.
        tv.patterns[0].samples += 1;
        let changed = tv.patterns[0].to_pattern();
        twin.upsert(&changed, 1_000).unwrap();
        tv.client.upsert(&changed, 1_000).unwrap();
        let a = sync("twin", &mut twin, &net, &mut ledger, 1_000).await;
        let b = sync("orig", &mut tv.client, &net, &mut ledger, 1_000).await;
        let pid = tv.patterns[0].id.as_str().to_string();
        assert_eq!(
            (a.seq, a.body_crc),
            (b.seq, b.body_crc),
            "byte-identical requests"
        );
        assert_eq!(a.acked, vec![pid.clone()]);
        assert_eq!(
            (a.acked_revs.clone(), b.acked_revs.clone()),
            (vec![2], vec![2]),
            "one revision, told twice"
        );
        assert_eq!(ledger.shared_acks, 1);
        assert_eq!(ledger.reused_revisions, 0);

        let mut t = net.clone();
        let srv = check::read_device(&mut t, &id).await.unwrap();
        let srv_rev = srv.patterns.iter().find(|p| p.id == pid).unwrap().revision;
        assert_eq!(srv_rev, 2, "applied once");
        assert_eq!(tv.client.acked(&tv.patterns[0].id).unwrap().0, 2);
        // Three acks for two applications: counting acks called this lost.
        let acks: usize = ledger.acks[&pid].len() + ledger.shared_acks as usize;
        assert_eq!(acks, 3);

        let verdict = |tv: &Tv| {
            let mut v = check::Verdict::default();
            check::check_device(&cb, tv, &srv, &mut v, &mut 0.0);
            (v.lost_updates, v.duplicates_applied, v.shared_acks)
        };
        tv.ledger = ledger.clone();
        assert_eq!(verdict(&tv), (0, 0, 1));
        // The checker still fails what it must.
        let mut l = ledger.clone();
        l.acks.get_mut(&pid).unwrap().insert(3, 0);
        tv.ledger = l;
        assert_eq!(
            verdict(&tv).0,
            1,
            "an acknowledged revision the server does not hold"
        );
        let mut l = ledger.clone();
        l.acks.get_mut(&pid).unwrap().remove(&2);
        tv.ledger = l;
        assert_eq!(
            verdict(&tv).1,
            1,
            "an application no session was told about"
        );
        // The second ack recorded again without the request's rate, samples
        // and category: the same revision with another state.
        let mut l = ledger.clone();
        l.record(&b, &twin, &[]);
        tv.ledger = l;
        assert_eq!(
            verdict(&tv).0,
            1,
            "one revision acknowledged with two states"
        );
        server.handle.shutdown().await;
    }
}
