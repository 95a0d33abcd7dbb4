//! Aggregation of device patterns into global patterns, off the request path.
//!
//! A background task reads the device-pattern changes committed since its
//! cursor, and for each changed pattern:
//! 1. takes back its previous contribution, if any;
//! 2. if the pattern still exists and passes the quality filter
//!    (`success_rate >= min_success_rate`, `sample_count >= min_samples`),
//!    reconstructs its embedding from the stored codes and merges it into the
//!    most similar global pattern of its category (cosine of the weighted
//!    centroid `>= similarity`), or starts a new one. Its weight is
//!    `min(sample_count, max_weight_samples) * success_rate`: clipped. Its
//!    samples count toward the global's published sample count and toward
//!    trend activity clipped the same way (`min(sample_count,
//!    max_weight_samples)`).
//! 3. caps each device's total in a global pattern: however many pattern
//!    ids it spreads over one global pattern, a device counts there for at
//!    most `max_weight_samples` samples together (each contribution scaled
//!    by `max_weight_samples / total` when its clipped samples sum to more),
//!    so weight at most `max_weight_samples`: no single device dominates a
//!    centroid or its rate. Settled at the end of the pass for every
//!    (device, global) pair the pass touched, over the device's current
//!    contributions, so the result does not depend on the order of changes.
//!
//! In the exact mode the most similar centroid is found through
//! [`index::CentroidIndex`] (sign buckets of the leading PCA coefficients,
//! multi-probe), not a scan of the category; a device holds at most
//! `max_lone_per_device` aggregates alone (the oldest evicted past it); and
//! only the `max_globals_per_category` best supported aggregates of a
//! category are published (the others withdrawn).
//!
//! Trend activity is counted only from contributions to a global pattern
//! that has at least `k` distinct devices, so no trend signal stems from
//! fewer than `k` households.
//!
//! A global pattern is published (a changelog upsert) once at least `k`
//! distinct devices contribute, republished when its quantised codes,
//! contributor count, rate (to 0.01) or samples (to a quarter octave)
//! change, and withdrawn (a tombstone) when
//! it drops below `k`. Everything of a pass (contributions, aggregates,
//! changelog entries with their versions, the cursor) is committed in one
//! transaction by the single writer, so versions are commit-ordered.

pub mod accountant;
pub mod dp;
mod exact;
pub mod index;
mod model;
mod pass;
mod release;
pub mod trends;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::store::{self, GlobalAggregate, Meta, StoreError, StoreResult};
use crate::AppState;
use model::unit;
use trends::TrendTracker;

/// Aggregation settings.
#[derive(Clone, Debug)]
pub struct AggregateConfig {
    /// Distinct devices needed before a global pattern is published.
    pub k: u32,
    /// Cosine similarity at or above which a pattern joins a global one.
    pub similarity: f32,
    /// Quality filter: least success rate.
    pub min_success_rate: f32,
    /// Quality filter: least samples.
    pub min_samples: u32,
    /// Samples above this count no further in a contribution's weight; and
    /// the most samples one device counts for in one global pattern, over
    /// all its pattern ids together (so its weight there is at most this).
    pub max_weight_samples: u32,
    /// Pause between passes. A pass that read a full `batch` is followed
    /// at once by the next, so a backlog drains as fast as the pass runs,
    /// not at `batch` changes per `interval`.
    pub interval: Duration,
    /// Most device-pattern changes per pass.
    pub batch: usize,
    /// Tombstones more than this many versions old are dropped (devices
    /// behind them get a snapshot); 0 keeps every tombstone.
    pub retention_versions: u64,
    /// A published global pattern is republished only when its direction
    /// turned by more than this (1 - cosine), its contributor count crossed
    /// a power of two, or its success rate moved by 0.02
    /// (`GlobalAggregate::material_change`). Default 2e-4, about three times
    /// the codec's own error.
    pub republish_turn: f32,
    /// Exact mode: a published global pattern is republished at most once
    /// per this much aggregation time; a material change that comes sooner
    /// is held and published once the time has passed (the latest state
    /// then). A first publication and a withdrawal are never held. Devices
    /// sync every 5-15 minutes and download only a global's latest state,
    /// so republishing more often than they sync sends the same global to
    /// the same device again for little news. Zero: no limit. Default
    /// [`DEFAULT_REPUBLISH_INTERVAL`]. Kept in memory: a restarted node or
    /// a new leader may republish each global once at once.
    pub republish_interval: Duration,
    /// Exact mode: most aggregates one device may hold alone (no second
    /// device in them); past it the oldest (smallest id) are evicted: the
    /// device's contributions to them are dropped until those patterns
    /// change again. 0: no bound. Default [`DEFAULT_MAX_LONE_PER_DEVICE`].
    pub max_lone_per_device: u32,
    /// Exact mode: most global patterns published per category, the best
    /// supported ones (most contributors, then most weight, then the
    /// older); one falling out of them is withdrawn. 0: no bound. Default
    /// [`DEFAULT_MAX_GLOBALS_PER_CATEGORY`].
    pub max_globals_per_category: u32,
    /// Differential privacy of what is published (on by default; see
    /// [`dp`]). When on, `k`, `similarity` and `max_weight_samples` give way
    /// to the cohort keys, the noisy threshold and `full_weight_samples`.
    pub dp: dp::DpConfig,
}

/// Default of [`AggregateConfig::republish_interval`]: 5 minutes, the
/// shortest sync interval of a device.
pub const DEFAULT_REPUBLISH_INTERVAL: Duration = Duration::from_secs(300);

/// Default of [`AggregateConfig::max_lone_per_device`]: above the tens of
/// patterns a device keeps, so an honest device's patterns all stay in
/// aggregation, while a device flooding fresh patterns holds at most this
/// many aggregates (about 1.6 KB each in memory and on disk).
pub const DEFAULT_MAX_LONE_PER_DEVICE: u32 = 64;

/// Default of [`AggregateConfig::max_globals_per_category`]: a new device's
/// catch-up is at most this many absolute-coded globals per category
/// (about 41 KB per category at ~322 B each, `docs/server.md`): two
/// download pages of the default 64 globals, where a fleet of 1,000 to
/// 20,000 devices publishes ~600 to ~1,600 without the bound.
pub const DEFAULT_MAX_GLOBALS_PER_CATEGORY: u32 = 128;

impl AggregateConfig {
    /// The most samples one device counts for in one global pattern.
    pub fn clip(&self) -> u32 {
        if self.dp.enabled {
            self.dp.full_weight_samples.max(1)
        } else {
            self.max_weight_samples.max(1)
        }
    }
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            k: 5,
            similarity: 0.92,
            min_success_rate: 0.7,
            min_samples: 10,
            max_weight_samples: 1000,
            interval: Duration::from_secs(1),
            batch: 4096,
            retention_versions: 0,
            republish_turn: 2e-4,
            republish_interval: DEFAULT_REPUBLISH_INTERVAL,
            max_lone_per_device: DEFAULT_MAX_LONE_PER_DEVICE,
            max_globals_per_category: DEFAULT_MAX_GLOBALS_PER_CATEGORY,
            dp: dp::DpConfig::default(),
        }
    }
}

/// In-memory mirror of the aggregation state (reloaded after a failed write).
#[derive(Debug, Default)]
pub struct Aggregator {
    loaded: bool,
    aggs: HashMap<u32, GlobalAggregate>,
    /// Unit centroids of the aggregates with weight, per category: the
    /// candidates a changed pattern is compared with (exact mode).
    index: index::CentroidIndex,
    next_id: u32,
    trends: TrendTracker,
    /// The leadership term this state was loaded in (`Store::aggregation_term`).
    term: u64,
    /// The aggregation cursor as of the last pass.
    cursor: u64,
    /// The last pass read a full `batch` of changes: more may be waiting,
    /// so [`run`] passes again at once instead of waiting `interval`.
    full_batch: bool,
    /// The last release epoch written (`Meta::DpEpoch`).
    released_epoch: u64,
    /// The aggregates each device contributes to (bounded by `dp.max_globals`).
    device_globals: HashMap<String, BTreeSet<u32>>,
    /// Lone aggregates evicted so far (exact mode, `max_lone_per_device`).
    lone_evicted: u64,
    /// Exact mode: when globals were republished, and the changes held.
    republish: Republish,
}

/// Exact mode: the `republish_interval` bookkeeping (in memory).
#[derive(Debug, Default)]
struct Republish {
    /// When each published global was last (re)published, in
    /// aggregation-clock seconds.
    at: HashMap<u32, f64>,
    /// Published globals with a material change held back, published by
    /// the first pass after their interval.
    held: BTreeSet<u32>,
}

impl Republish {
    /// Takes the held globals whose `interval` has passed at `now` (seconds).
    fn due(&mut self, now: f64, interval: Duration) -> Vec<u32> {
        let due: Vec<u32> = self
            .held
            .iter()
            .copied()
            .filter(|id| {
                self.at
                    .get(id)
                    .is_none_or(|t| now - t >= interval.as_secs_f64())
            })
            .collect();
        for id in &due {
            self.held.remove(id);
        }
        due
    }

    /// Whether global `id`, published, must wait before it is republished
    /// at `now`; if so it is held for a later pass.
    fn hold(&mut self, id: u32, now: f64, interval: Duration) -> bool {
        let wait = !interval.is_zero()
            && self
                .at
                .get(&id)
                .is_some_and(|t| now - t < interval.as_secs_f64());
        if wait {
            self.held.insert(id);
        }
        wait
    }

    /// Notes that global `id` was published at `now`, or withdrawn (`None`).
    fn settled(&mut self, id: u32, now: Option<f64>) {
        self.held.remove(&id);
        match now {
            Some(t) => {
                self.at.insert(id, t);
            }
            None => {
                self.at.remove(&id);
            }
        }
    }
}

impl Aggregator {
    /// Forgets that `device` contributes to aggregate `id`.
    fn forget_device_global(&mut self, device: &str, id: u32) {
        if let Some(g) = self.device_globals.get_mut(device) {
            g.remove(&id);
            if g.is_empty() {
                self.device_globals.remove(device);
            }
        }
    }

    /// After a pass or a release changed aggregate `id`: drops it when no
    /// device contributes and nothing is published (`None` in `out`), else
    /// records its new state.
    fn keep_or_drop(&mut self, id: u32, out: &mut Vec<(u32, Option<GlobalAggregate>)>) {
        match self.aggs.get(&id) {
            Some(a) if a.devices.is_empty() && !a.published => {
                self.aggs.remove(&id);
                self.refresh(id);
                out.push((id, None));
            }
            Some(a) => out.push((id, Some(a.clone()))),
            None => {}
        }
    }

    /// Refreshes the cached unit centroid of aggregate `id`.
    fn refresh(&mut self, id: u32) {
        let Some(a) = self.aggs.get(&id) else {
            self.index.remove(id);
            return;
        };
        match unit(&a.sum).filter(|_| a.weight > 0.0) {
            Some(u) => self.index.set(&a.category, id, u),
            None => self.index.remove(id),
        }
    }
}

/// Runs aggregation passes every `interval` until `stop` turns true; a pass
/// that read a full batch is followed by the next at once (a backlog drains
/// at the pass's own rate).
pub async fn run(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut again = false;
    loop {
        if again {
            if *stop.borrow() {
                return;
            }
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(state.config.aggregate.interval) => {}
            }
        }
        again = match run_once(&state).await {
            Ok(_) => state.aggregator.lock().await.full_batch,
            Err(e) => {
                tracing::warn!(error = %e, "aggregation pass failed");
                false
            }
        };
    }
}

/// The noise source and the accountant of a running server.
#[derive(Debug)]
pub struct DpState {
    /// Noise for releases.
    pub noise: dp::Noise,
    /// Privacy loss (`None` when differential privacy is off).
    pub accountant: Option<accountant::Accountant>,
}

/// The release epoch of unix time `unix_s` (1-based, so 0 means "none yet").
fn epoch_of(cfg: &dp::DpConfig, unix_s: f64) -> u64 {
    (unix_s / cfg.epoch.as_secs_f64().max(1e-3)).floor() as u64 + 1
}

/// The time aggregation runs at, since the Unix epoch: the wall clock, or
/// with [`crate::AggregationClock::External`] the embedder's time of the
/// current (or last) pass.
pub(crate) fn now(state: &AppState) -> Duration {
    match state.config.aggregation_clock {
        crate::AggregationClock::Wall => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
        crate::AggregationClock::External => {
            Duration::from_millis(state.external_ms.load(std::sync::atomic::Ordering::Acquire))
        }
    }
}

/// With [`crate::AggregationClock::External`], puts a pass's changes in a
/// canonical order, (device, pattern), instead of commit order: concurrent
/// syncs commit in an order that depends on the machine, and the exact
/// mode's grouping (join the nearest centroid, else start one) on the order
/// of changes. The served binary keeps commit order.
pub(crate) fn canonical_order<P, C>(state: &AppState, items: &mut [(String, String, P, C)]) {
    if state.config.aggregation_clock == crate::AggregationClock::External {
        items.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    }
}

/// One pass; returns the changelog entries published. With differential
/// privacy on, global patterns and trends are published only when an epoch
/// begins (see [`dp::DpConfig::epoch`]).
pub async fn run_once(state: &Arc<AppState>) -> StoreResult<usize> {
    pass_and_release(state, false, None).await
}

/// One pass followed by a release now, whatever the schedule (differential
/// privacy on; counted by the accountant like any release). For tests and
/// simulations, whose clocks do not follow the epoch.
pub async fn release_now(state: &Arc<AppState>) -> StoreResult<usize> {
    pass_and_release(state, true, None).await
}

/// One pass at the embedder's time `at` (since the Unix epoch; see
/// [`crate::AggregationClock::External`]), with a release when `force` or
/// when `at` begins a new epoch. With the wall clock `at` is not used.
pub async fn run_at(state: &Arc<AppState>, at: Duration, force: bool) -> StoreResult<usize> {
    pass_and_release(state, force, Some(at)).await
}

async fn pass_and_release(
    state: &Arc<AppState>,
    force: bool,
    at: Option<Duration>,
) -> StoreResult<usize> {
    let mut guard = state.aggregator.lock().await;
    // The embedder's clock moves under the aggregator's lock: every read of
    // the time in this pass sees `at` (never earlier than a previous pass).
    if let Some(at) = at {
        let ms = u64::try_from(at.as_millis()).unwrap_or(u64::MAX);
        state
            .external_ms
            .fetch_max(ms, std::sync::atomic::Ordering::AcqRel);
    }
    let now_t = now(state);
    // Only the leader aggregates; a new term (this node took over) starts
    // from the stored state, which the previous leader may have changed.
    let term = state.store.aggregation_term();
    let leads = matches!(term, Ok(Some(_)));
    state
        .metrics
        .aggregation_leader
        .store(u64::from(leads), std::sync::atomic::Ordering::Relaxed);
    let Some(term) = term? else {
        *guard = Aggregator::default();
        return Ok(0);
    };
    if guard.term != term {
        *guard = Aggregator {
            term,
            ..Default::default()
        };
    }
    let agg = std::mem::take(&mut *guard);
    let st = state.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut agg = agg;
        let r = pass::load(&st, &mut agg).and_then(|()| {
            let dpc = &st.config.aggregate.dp;
            let epoch = epoch_of(dpc, now_t.as_secs_f64());
            let release = (dpc.enabled && (force || epoch > agg.released_epoch))
                .then_some(epoch.max(agg.released_epoch));
            pass::compute(&st, &mut agg, release)
        });
        (agg, r)
    })
    .await;
    let (mut agg, plan) = joined.map_err(|e| StoreError::Backend(e.to_string()))?;
    let plan = match plan {
        Ok(Some(p)) => p,
        Ok(None) => {
            *guard = agg;
            return Ok(0);
        }
        Err(e) => {
            *guard = Aggregator::default();
            return Err(e);
        }
    };
    let n = plan.changes.len();
    let released = plan.epoch;
    let retention = state.config.aggregate.retention_versions;
    let window = state.config.aggregate.dp.window;
    let r = store::write(&*state.store, move |txn| {
        for (d, p, c) in &plan.contributions {
            txn.put_contribution(d, p, c.as_ref())?;
        }
        for (id, a) in &plan.aggregates {
            txn.put_aggregate(*id, a.as_ref())?;
        }
        for c in &plan.changes {
            txn.publish(c)?;
        }
        txn.set_meta(Meta::AggregateCursor, plan.cursor)?;
        txn.drop_device_changes(plan.cursor)?;
        txn.set_meta(Meta::GlobalId, u64::from(plan.next_id))?;
        if let Some(e) = plan.epoch {
            txn.set_meta(Meta::DpEpoch, e)?;
            // The deployment's privacy loss: counted in the store, with the
            // release, so a restarted node or a new leader continues it.
            accountant::ReleaseLog::record(txn, window, now_t)?;
        }
        if retention > 0 {
            let current = txn.meta(Meta::GlobalVersion)?;
            let horizon = txn.meta(Meta::Horizon)?;
            let target = current.saturating_sub(retention);
            if target > horizon && target - horizon >= retention.div_ceil(10) {
                txn.prune_tombstones(target)?;
            }
        }
        Ok(())
    })
    .await;
    match r {
        Ok(()) => {
            use std::sync::atomic::Ordering::Relaxed;
            state.metrics.aggregation_runs.fetch_add(1, Relaxed);
            state.metrics.published.fetch_add(n as u64, Relaxed);
            if let Some(e) = released {
                agg.released_epoch = e;
                state.metrics.dp_releases.fetch_add(1, Relaxed);
                if let Ok(mut dp) = state.dp.lock() {
                    if let Some(a) = dp.accountant.as_mut() {
                        a.record(now_t.as_secs_f64());
                    }
                }
            }
            agg.loaded = true;
            *guard = agg;
            Ok(n)
        }
        Err(e) => {
            *guard = Aggregator::default();
            Err(e)
        }
    }
}
