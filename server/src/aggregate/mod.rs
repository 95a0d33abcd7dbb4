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

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use omega_tv_sync::{Embedding, DIM};
use tokio::sync::watch;

use crate::codes::Codes;
use crate::store::{
    self, Contribution, GlobalAggregate, GlobalChange, Meta, StoreError, StoreResult, StoredPattern,
};
use crate::trends::TrendTracker;
use crate::AppState;

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
    /// Pause between passes.
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
        }
    }
}

/// In-memory mirror of the aggregation state (reloaded after a failed write).
#[derive(Debug, Default)]
pub struct Aggregator {
    loaded: bool,
    aggs: HashMap<u32, GlobalAggregate>,
    /// Unit centroids of the aggregates with weight, per category: the
    /// candidates a changed pattern is compared with.
    units: HashMap<String, HashMap<u32, Vec<f32>>>,
    next_id: u32,
    trends: TrendTracker,
    /// The leadership term this state was loaded in (`Store::aggregation_term`).
    term: u64,
}

impl Aggregator {
    /// Refreshes the cached unit centroid of aggregate `id`.
    fn refresh(&mut self, id: u32) {
        let Some(a) = self.aggs.get(&id) else {
            for m in self.units.values_mut() {
                m.remove(&id);
            }
            return;
        };
        let m = self.units.entry(a.category.clone()).or_default();
        match unit(&a.sum).filter(|_| a.weight > 0.0) {
            Some(u) => {
                m.insert(id, u);
            }
            None => {
                m.remove(&id);
            }
        }
    }
}

/// Dot product with eight independent accumulators (vectorises).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum()
}

/// Runs aggregation passes every `interval` until `stop` turns true.
pub async fn run(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(state.config.aggregate.interval) => {}
        }
        if let Err(e) = run_once(&state).await {
            tracing::warn!(error = %e, "aggregation pass failed");
        }
    }
}

/// One pass; returns the changelog entries published.
pub async fn run_once(state: &Arc<AppState>) -> StoreResult<usize> {
    let mut guard = state.aggregator.lock().await;
    // Only the leader aggregates; a new term (this node took over) starts
    // from the stored state, which the previous leader may have changed.
    let Some(term) = state.store.aggregation_term()? else {
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
        let r = compute(&st, &mut agg);
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
    let retention = state.config.aggregate.retention_versions;
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

type ContributionUpdate = (String, String, Option<Contribution>);

/// Adds contribution `c` to `a` (not its device count).
fn add(a: &mut GlobalAggregate, c: &Contribution, clip: u32) {
    for (s, x) in a.sum.iter_mut().zip(&c.vector) {
        *s += c.weight * x;
    }
    a.weight += f64::from(c.weight);
    a.rate_sum += f64::from(c.weight * c.success_rate);
    a.samples += u64::from(c.counted(clip));
}

/// Takes contribution `c` back out of `a` (not its device count).
fn take_back(a: &mut GlobalAggregate, c: &Contribution, clip: u32) {
    for (s, v) in a.sum.iter_mut().zip(&c.vector) {
        *s -= c.weight * v;
    }
    a.weight = (a.weight - f64::from(c.weight)).max(0.0);
    a.rate_sum = (a.rate_sum - f64::from(c.weight * c.success_rate)).max(0.0);
    a.samples = a.samples.saturating_sub(u64::from(c.counted(clip)));
}

/// The per-device cap: one device's contributions to one global pattern
/// count together for at most `clip` samples (so at most `clip` of weight),
/// however many pattern ids it spreads them over. When their own clipped
/// samples `s_i` sum to `T > clip`, each counts for `floor(s_i * clip / T)`
/// (weight: that times its rate); otherwise for `s_i`. Settled for every
/// (device, global) pair in `pairs` over the device's current contributions
/// (stored ones, overridden by this pass's `contributions`), so the result
/// does not depend on the order the changes came in, and a device whose
/// contribution left regains the weight for its others.
fn cap_devices(
    state: &AppState,
    agg: &mut Aggregator,
    clip: u32,
    pairs: &BTreeSet<(String, u32)>,
    contributions: &mut Vec<ContributionUpdate>,
    touched: &mut BTreeSet<u32>,
) -> StoreResult<()> {
    let devices: BTreeSet<&str> = pairs.iter().map(|(d, _)| d.as_str()).collect();
    let stored: HashMap<String, Vec<(String, Contribution)>> = store::read(&*state.store, |t| {
        devices
            .iter()
            .map(|d| Ok((d.to_string(), t.device_contributions(d)?)))
            .collect()
    })?;
    // This pass's updates, by (device, pattern): index into `contributions`.
    let mut index: HashMap<(String, String), usize> = contributions
        .iter()
        .enumerate()
        .map(|(i, (d, p, _))| ((d.clone(), p.clone()), i))
        .collect();
    for (device, global) in pairs {
        // The device's current contributions to `global`.
        let mut members: Vec<(String, Contribution)> = Vec::new();
        for (p, c) in stored.get(device).into_iter().flatten() {
            if !index.contains_key(&(device.clone(), p.clone())) && c.global == *global {
                members.push((p.clone(), c.clone()));
            }
        }
        for (d, p, c) in contributions.iter() {
            if d == device {
                if let Some(c) = c.as_ref().filter(|c| c.global == *global) {
                    members.push((p.clone(), c.clone()));
                }
            }
        }
        let total: u64 = members
            .iter()
            .map(|(_, c)| u64::from(c.sample_count.min(clip)))
            .sum();
        let Some(a) = agg.aggs.get_mut(global) else {
            continue;
        };
        let mut changed = false;
        for (p, c) in members {
            let own = c.sample_count.min(clip);
            let target = if total <= u64::from(clip) {
                own
            } else {
                (u64::from(own) * u64::from(clip) / total) as u32
            };
            if c.counted(clip) == target {
                continue;
            }
            take_back(a, &c, clip);
            let c = Contribution {
                weight: target as f32 * c.success_rate,
                counted: Some(target),
                ..c
            };
            add(a, &c, clip);
            changed = true;
            let key = (device.clone(), p.clone());
            match index.get(&key) {
                Some(&i) => contributions[i].2 = Some(c),
                None => {
                    index.insert(key, contributions.len());
                    contributions.push((device.clone(), p, Some(c)));
                }
            }
        }
        if changed {
            touched.insert(*global);
            agg.refresh(*global);
        }
    }
    Ok(())
}

struct Plan {
    contributions: Vec<ContributionUpdate>,
    aggregates: Vec<(u32, Option<GlobalAggregate>)>,
    changes: Vec<GlobalChange>,
    cursor: u64,
    next_id: u32,
}

fn unit(sum: &[f32]) -> Option<Vec<f32>> {
    let n = sum
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    (n > 1e-9).then(|| sum.iter().map(|x| (f64::from(*x) / n) as f32).collect())
}

/// What makes a published global pattern worth republishing: its codes,
/// its contributor count, its rate to 0.01, and its samples to a quarter
/// octave (so steady sample growth does not republish on every pass).
fn fingerprint(codes: &Codes, contributors: usize, rate: f32, samples: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    codes.hash(&mut h);
    contributors.hash(&mut h);
    ((rate * 100.0).round() as i32).hash(&mut h);
    (((samples.max(1) as f64).log2() * 4.0).floor() as i64).hash(&mut h);
    h.finish() | 1
}

fn compute(state: &AppState, agg: &mut Aggregator) -> StoreResult<Option<Plan>> {
    let cfg = &state.config.aggregate;
    if !agg.loaded {
        let (aggs, next_id) = store::read(&*state.store, |t| {
            Ok((t.aggregates()?, t.meta(Meta::GlobalId)?))
        })?;
        agg.aggs = aggs.into_iter().collect();
        agg.units.clear();
        let ids: Vec<u32> = agg.aggs.keys().copied().collect();
        for id in ids {
            agg.refresh(id);
        }
        agg.next_id = u32::try_from(next_id).unwrap_or(u32::MAX);
        agg.loaded = true;
    }
    type Snapshot = (
        u64,
        Vec<(String, String, Option<StoredPattern>, Option<Contribution>)>,
    );
    let (cursor, items): Snapshot = store::read(&*state.store, |t| {
        let cursor = t.meta(Meta::AggregateCursor)?;
        let changes = t.device_changes_after(cursor, cfg.batch.max(1))?;
        let last = changes.last().map_or(cursor, |c| c.seq);
        let mut seen = BTreeSet::new();
        let mut items = Vec::new();
        for c in changes {
            if !seen.insert((c.device.clone(), c.pattern.clone())) {
                continue;
            }
            let p = t.pattern(&c.device, &c.pattern)?;
            let old = t.contribution(&c.device, &c.pattern)?;
            items.push((c.device, c.pattern, p, old));
        }
        Ok((last, items))
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (now_f, unix_s) = (now.as_secs_f64(), now.as_secs());
    if items.is_empty() {
        let trends = agg.trends.due(now_f, unix_s, &state.config.trends);
        if trends.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Plan {
            contributions: Vec::new(),
            aggregates: Vec::new(),
            changes: trends,
            cursor,
            next_id: agg.next_id,
        }));
    }
    // The most samples one contribution counts for (weight, published
    // sample count, trend activity).
    let clip = cfg.max_weight_samples.max(1);
    let mut touched: BTreeSet<u32> = BTreeSet::new();
    let mut contributions = Vec::with_capacity(items.len());
    // (device, global) pairs whose contributions changed in this pass: the
    // per-device cap is settled for them at the end.
    let mut recheck: BTreeSet<(String, u32)> = BTreeSet::new();
    for (device, pattern, p, old) in items {
        let old_samples = old.as_ref().map_or(0, |o| o.sample_count);
        if let Some(o) = &old {
            if let Some(a) = agg.aggs.get_mut(&o.global) {
                take_back(a, o, clip);
                if let Some(n) = a.devices.get_mut(&device) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        a.devices.remove(&device);
                    } else {
                        // Its other contributions may regain weight.
                        recheck.insert((device.clone(), o.global));
                    }
                }
                touched.insert(o.global);
            }
            agg.refresh(o.global);
        }
        let Some(p) = p else {
            contributions.push((device, pattern, None));
            continue;
        };
        if p.success_rate < cfg.min_success_rate || p.sample_count < cfg.min_samples {
            contributions.push((device, pattern, None));
            continue;
        }
        let Some(book) = state.config.codebooks.get(p.codebook) else {
            contributions.push((device, pattern, None));
            continue;
        };
        let Ok(e) = book.reconstruct(&p.codes) else {
            contributions.push((device, pattern, None));
            continue;
        };
        let v: Vec<f32> = e.as_array().to_vec();
        let mut best: Option<(f32, u32)> = None;
        if let Some(cands) = agg.units.get(&p.category) {
            for (id, u) in cands {
                let cos = dot(u, &v);
                if cos >= cfg.similarity
                    && best.is_none_or(|(c, b)| cos > c || (cos == c && *id < b))
                {
                    best = Some((cos, *id));
                }
            }
        }
        let id = match best {
            Some((_, id)) => id,
            None => {
                agg.next_id = agg.next_id.saturating_add(1);
                agg.aggs
                    .insert(agg.next_id, GlobalAggregate::new(&p.category));
                agg.next_id
            }
        };
        // Merged at its own clip; the device's total in this global pattern
        // is capped below, once every change of the pass is in.
        let counted = p.sample_count.min(clip);
        let c = Contribution {
            global: id,
            weight: counted as f32 * p.success_rate,
            success_rate: p.success_rate,
            sample_count: p.sample_count,
            vector: v,
            counted: Some(counted),
        };
        if let Some(a) = agg.aggs.get_mut(&id) {
            add(a, &c, clip);
            let n = a.devices.entry(device.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                recheck.insert((device.clone(), id));
            }
        }
        agg.refresh(id);
        touched.insert(id);
        // Trend activity: the samples gained since the last contribution.
        let gained = p
            .sample_count
            .min(clip)
            .saturating_sub(old_samples.min(clip));
        // Only from a global pattern with k distinct devices: a trend
        // signal must not reveal what fewer than k households watch.
        let k_reached = agg
            .aggs
            .get(&id)
            .is_some_and(|a| a.devices.len() >= cfg.k.max(1) as usize);
        if gained > 0 && k_reached {
            let content = match &state.config.trends.catalogue {
                Some(cat) => cat.nearest(&c.vector).map(str::to_string),
                None => None,
            }
            .unwrap_or_else(|| format!("global-{id}"));
            agg.trends.observe(
                &p.category,
                &content,
                f64::from(gained),
                now_f,
                &state.config.trends,
            );
        }
        contributions.push((device, pattern, Some(c)));
    }
    if !recheck.is_empty() {
        cap_devices(state, agg, clip, &recheck, &mut contributions, &mut touched)?;
    }
    let primary = state.config.codebooks.primary().cloned();
    let mut changes = Vec::new();
    let mut aggregates = Vec::new();
    for id in touched {
        let Some(a) = agg.aggs.get_mut(&id) else {
            continue;
        };
        let devices = a.devices.len();
        let rate = if a.weight > 0.0 {
            (a.rate_sum / a.weight).clamp(0.0, 1.0) as f32
        } else {
            0.0
        };
        let publishable = devices >= cfg.k.max(1) as usize && a.weight > 0.0;
        let mut upsert = None;
        if publishable {
            if let (Some(book), Some(u)) = (&primary, unit(&a.sum)) {
                let devs = u32::try_from(devices).unwrap_or(u32::MAX);
                if !a.material_change(&u, devs, rate, cfg.republish_turn) {
                    // Published and still close enough: nothing to send.
                    aggregates.push((id, Some(a.clone())));
                    continue;
                }
                let arr: Option<[f32; DIM]> = u.clone().try_into().ok();
                if let Some(e) = arr.and_then(|arr| Embedding::normalize(arr).ok()) {
                    let codes = book.quantize(&e);
                    let fp = fingerprint(&codes, devices, rate, a.samples);
                    let mut buf = vec![0u8; omega_tv_sync::wire::MAX_CODE_LEN];
                    if let Ok(n) = book.encode(&codes, &mut buf) {
                        buf.truncate(n);
                        upsert = Some((fp, book.id(), buf, u, devs));
                    }
                }
            }
        }
        match upsert {
            Some((fp, codebook, code, u, devs)) => {
                changes.push(GlobalChange::Upsert {
                    id,
                    success_rate: rate,
                    sample_count: u32::try_from(a.samples).unwrap_or(u32::MAX),
                    contributors: devs,
                    category: a.category.clone(),
                    codebook,
                    code,
                });
                a.published = true;
                a.fingerprint = fp;
                a.published_unit = u;
                a.published_devices = devs;
                a.published_rate = rate;
            }
            None => {
                if a.published {
                    changes.push(GlobalChange::Remove { id });
                    a.published = false;
                    a.fingerprint = 0;
                    a.published_unit.clear();
                }
            }
        }
        if a.devices.is_empty() && !a.published {
            agg.aggs.remove(&id);
            agg.refresh(id);
            aggregates.push((id, None));
        } else {
            aggregates.push((id, Some(a.clone())));
        }
    }
    changes.extend(agg.trends.due(now_f, unix_s, &state.config.trends));
    Ok(Some(Plan {
        contributions,
        aggregates,
        changes,
        cursor,
        next_id: agg.next_id,
    }))
}
