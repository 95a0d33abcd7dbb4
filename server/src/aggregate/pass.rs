//! One aggregation pass, computed off the writer: the device-pattern
//! changes since the cursor, merged into the in-memory [`Aggregator`], the
//! per-device cap settled, and the [`Plan`] of what to write.

use std::collections::{BTreeSet, HashMap};

use omega_tv_sync::{Embedding, DIM};

use super::exact::{best_supported, evict_lone, nearest_or_new};
use super::model::{
    add, current_contributions, fingerprint, take_back, unit, update_index, ContributionUpdate,
};
use super::{AggregateConfig, Aggregator};
use crate::codebooks::{Codebooks, Codes};
use crate::store::{
    self, Contribution, GlobalAggregate, GlobalChange, Meta, StoreResult, StoredPattern,
};
use crate::AppState;

/// What one pass writes, in one transaction.
pub(super) struct Plan {
    pub(super) contributions: Vec<ContributionUpdate>,
    pub(super) aggregates: Vec<(u32, Option<GlobalAggregate>)>,
    pub(super) changes: Vec<GlobalChange>,
    pub(super) cursor: u64,
    pub(super) next_id: u32,
    /// The release epoch written with this plan (differential privacy).
    pub(super) epoch: Option<u64>,
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
    let mut index = update_index(contributions);
    for (device, global) in pairs {
        // The device's current contributions to `global`.
        let members = current_contributions(
            device,
            stored.get(device).map_or(&[][..], Vec::as_slice),
            contributions,
            &index,
            |g| g == *global,
        );
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

/// Computes one pass, and the release of epoch `release` when given;
/// `None` when there is nothing to write.
pub(super) fn compute(
    state: &AppState,
    agg: &mut Aggregator,
    release: Option<u64>,
) -> StoreResult<Option<Plan>> {
    let mut plan = compute_pass(state, agg, release.is_some())?;
    if let Some(epoch) = release {
        let p = plan.get_or_insert_with(|| Plan {
            contributions: Vec::new(),
            aggregates: Vec::new(),
            changes: Vec::new(),
            cursor: agg.cursor,
            next_id: agg.next_id,
            epoch: None,
        });
        let now = super::now(state);
        let mut dp = state
            .dp
            .lock()
            .map_err(|_| crate::store::StoreError::Backend("noise source poisoned".into()))?;
        let r =
            super::release::release(state, agg, &mut dp.noise, now.as_secs_f64(), now.as_secs());
        p.changes.extend(r.changes);
        p.aggregates.extend(r.aggregates);
        p.epoch = Some(epoch);
    }
    Ok(plan)
}

/// Loads the aggregation state from the store (first pass of a term).
pub(super) fn load(state: &AppState, agg: &mut Aggregator) -> StoreResult<()> {
    if !agg.loaded {
        let (aggs, next_id, cursor, epoch) = store::read(&*state.store, |t| {
            Ok((
                t.aggregates()?,
                t.meta(Meta::GlobalId)?,
                t.meta(Meta::AggregateCursor)?,
                t.meta(Meta::DpEpoch)?,
            ))
        })?;
        agg.cursor = cursor;
        agg.released_epoch = epoch;
        agg.device_globals.clear();
        for (id, a) in &aggs {
            for d in a.devices.keys() {
                agg.device_globals.entry(d.clone()).or_default().insert(*id);
            }
        }
        agg.aggs = aggs.into_iter().collect();
        agg.index.clear();
        let ids: Vec<u32> = agg.aggs.keys().copied().collect();
        for id in ids {
            agg.refresh(id);
        }
        agg.next_id = u32::try_from(next_id).unwrap_or(u32::MAX);
        agg.loaded = true;
    }
    Ok(())
}

/// Items whose embeddings are reconstructed together, a window at a time
/// (32: four batches of eight per codebook; a pass holds up to
/// `aggregate.batch` items, whose embeddings all at once would take 1.5 KB
/// each in fresh memory).
const WINDOW: usize = 32;

/// The embeddings of the window of items being aggregated.
#[derive(Default)]
struct Ahead {
    /// Index of the window's first item.
    start: usize,
    /// The window's embeddings ([`reconstruct_all`]), taken one by one.
    embs: Vec<Option<omega_tv_sync::Result<Embedding>>>,
}

impl Ahead {
    /// Item `i`'s embedding (`None`: it counts nowhere); past the window,
    /// the window of items from `i` on is reconstructed first.
    fn take<D, C>(
        &mut self,
        cfg: &AggregateConfig,
        books: &Codebooks,
        items: &[(D, D, Option<StoredPattern>, C)],
        i: usize,
    ) -> Option<omega_tv_sync::Result<Embedding>> {
        if i < self.start || i >= self.start + self.embs.len() {
            self.start = i;
            let end = i.saturating_add(WINDOW).min(items.len());
            self.embs = reconstruct_all(cfg, books, items.get(i..end).unwrap_or(&[]));
        }
        self.embs.get_mut(i - self.start).and_then(Option::take)
    }
}

/// The embedding of each item's stored pattern, `None` for an item that
/// counts nowhere: removed, below the quality filter (`min_success_rate`,
/// `min_samples`), or in a codebook the server does not accept. The
/// patterns of each codebook are reconstructed together
/// ([`CodeSpace::reconstruct_many`](crate::codebooks::CodeSpace::reconstruct_many):
/// the basis read once per eight patterns instead of once per pattern).
fn reconstruct_all<D, C>(
    cfg: &AggregateConfig,
    books: &Codebooks,
    items: &[(D, D, Option<StoredPattern>, C)],
) -> Vec<Option<omega_tv_sync::Result<Embedding>>> {
    let mut out: Vec<_> = items.iter().map(|_| None).collect();
    // Item indices to reconstruct and their codes, per codebook id (in
    // order of first use).
    let mut groups: Vec<(u32, Vec<usize>, Vec<Codes>)> = Vec::new();
    for (i, (_, _, p, _)) in items.iter().enumerate() {
        let Some(p) = p else { continue };
        if p.success_rate < cfg.min_success_rate || p.sample_count < cfg.min_samples {
            continue;
        }
        match groups.iter_mut().find(|(id, _, _)| *id == p.codebook) {
            Some((_, ix, codes)) => {
                ix.push(i);
                codes.push(*p.codes);
            }
            None => groups.push((p.codebook, vec![i], vec![*p.codes])),
        }
    }
    for (id, ix, codes) in groups {
        let Some(book) = books.get(id) else {
            continue;
        };
        let mut embs: Vec<_> = codes
            .iter()
            .map(|_| Err(omega_tv_sync::Error::NotUnitNorm))
            .collect();
        book.reconstruct_many(&codes, &mut embs);
        for (i, e) in ix.into_iter().zip(embs) {
            out[i] = Some(e);
        }
    }
    out
}

/// The pass proper: device-pattern changes since the cursor into `agg`.
fn compute_pass(
    state: &AppState,
    agg: &mut Aggregator,
    releasing: bool,
) -> StoreResult<Option<Plan>> {
    let cfg = &state.config.aggregate;
    let dp = cfg.dp.enabled;
    type Snapshot = (
        u64,
        Vec<(String, String, Option<StoredPattern>, Option<Contribution>)>,
        bool,
    );
    let (cursor, items, full): Snapshot = store::read(&*state.store, |t| {
        let cursor = t.meta(Meta::AggregateCursor)?;
        let changes = t.device_changes_after(cursor, cfg.batch.max(1))?;
        let full = changes.len() >= cfg.batch.max(1);
        let last = changes.last().map_or(cursor, |c| c.seq);
        let mut seen = BTreeSet::new();
        let mut items = Vec::new();
        for c in changes {
            if !seen.insert((c.device.clone(), c.pattern.clone())) {
                // A later change of the same (device, pattern): the pass
                // reads its current state once.
                state
                    .metrics
                    .aggregation_coalesced
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            let p = t.pattern(&c.device, &c.pattern)?;
            let old = t.contribution(&c.device, &c.pattern)?;
            items.push((c.device, c.pattern, p, old));
        }
        super::canonical_order(state, &mut items);
        Ok((last, items, full))
    })?;
    let now = super::now(state);
    let (now_f, unix_s) = (now.as_secs_f64(), now.as_secs());
    agg.cursor = cursor;
    agg.full_batch = full;
    // Exact mode: published globals whose held change may go out now.
    let due = if dp {
        Vec::new()
    } else {
        agg.republish.due(now_f, cfg.republish_interval)
    };
    if items.is_empty() && due.is_empty() {
        if dp || releasing {
            // Trends come with releases only.
            return Ok(None);
        }
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
            epoch: None,
        }));
    }
    // The most samples one contribution counts for (weight, published
    // sample count, trend activity).
    let clip = cfg.clip();
    let mut touched: BTreeSet<u32> = due.into_iter().collect();
    let mut contributions = Vec::with_capacity(items.len());
    // (device, global) pairs whose contributions changed in this pass: the
    // per-device cap is settled for them at the end.
    let mut recheck: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut items = items;
    let mut ahead = Ahead::default();
    for i in 0..items.len() {
        let e = ahead.take(cfg, &state.config.codebooks, &items, i);
        let (device, pattern, p, old) = std::mem::take(&mut items[i]);
        let old_samples = old.as_ref().map_or(0, |o| o.sample_count);
        if let Some(o) = &old {
            if let Some(a) = agg.aggs.get_mut(&o.global) {
                take_back(a, o, clip);
                if let Some(n) = a.devices.get_mut(&device) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        a.devices.remove(&device);
                        agg.forget_device_global(&device, o.global);
                    } else {
                        // Its other contributions may regain weight.
                        recheck.insert((device.clone(), o.global));
                    }
                }
                touched.insert(o.global);
            }
            agg.refresh(o.global);
        }
        let (Some(p), Some(Ok(e))) = (p, e) else {
            // Removed, below the quality filter, in a codebook the server
            // no longer accepts, or not reconstructible: counted nowhere.
            contributions.push((device, pattern, None));
            continue;
        };
        let mut v: Vec<f32> = e.as_array().to_vec();
        super::dp::clip_unit(&mut v);
        let id = if dp {
            // The cohort is a function of this pattern alone.
            let id = super::dp::cohort_id(
                &p.category,
                super::dp::cell_of(&p.codes[..], cfg.dp.cell_bits),
            );
            let clash = agg.aggs.get(&id).is_some_and(|a| a.category != p.category);
            let mine = agg.device_globals.get(&device);
            let full = mine
                .is_some_and(|g| !g.contains(&id) && g.len() >= cfg.dp.max_globals.max(1) as usize);
            if clash || full {
                // Beyond the device's `m` cohorts (or a hash clash): not
                // counted anywhere until the pattern changes again.
                state
                    .metrics
                    .dp_bounded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                contributions.push((device, pattern, None));
                continue;
            }
            agg.aggs
                .entry(id)
                .or_insert_with(|| GlobalAggregate::new(&p.category));
            id
        } else {
            nearest_or_new(agg, cfg.similarity, &p.category, &v)
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
            agg.device_globals
                .entry(device.clone())
                .or_default()
                .insert(id);
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
        let k_reached = !dp
            && agg
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
    if !dp && cfg.max_lone_per_device > 0 {
        evict_lone(state, agg, clip, &mut contributions, &mut touched)?;
    }
    // Exact mode: the aggregates each touched category may publish (its
    // best supported), and those whose standing changed without a change
    // of their own.
    let allowed = if dp || cfg.max_globals_per_category == 0 {
        None
    } else {
        let (allowed, standing) = best_supported(agg, cfg, &touched);
        touched.extend(standing);
        Some(allowed)
    };
    let primary = state.config.codebooks.primary().cloned();
    let mut changes = Vec::new();
    let mut aggregates = Vec::new();
    for id in touched {
        let Some(a) = agg.aggs.get_mut(&id) else {
            continue;
        };
        if dp {
            // Published by the epoch's release only.
            if a.devices.is_empty() && !a.published {
                agg.aggs.remove(&id);
                aggregates.push((id, None));
            } else {
                aggregates.push((id, Some(a.clone())));
            }
            continue;
        }
        let devices = a.devices.len();
        let rate = if a.weight > 0.0 {
            (a.rate_sum / a.weight).clamp(0.0, 1.0) as f32
        } else {
            0.0
        };
        let publishable = devices >= cfg.k.max(1) as usize
            && a.weight > 0.0
            && allowed.as_ref().is_none_or(|s| s.contains(&id));
        let mut upsert = None;
        if publishable {
            if let (Some(book), Some(u)) = (&primary, unit(&a.sum)) {
                let devs = u32::try_from(devices).unwrap_or(u32::MAX);
                if !a.material_change(&u, devs, rate, cfg.republish_turn) {
                    // Published and still close enough: nothing to send.
                    agg.republish.held.remove(&id);
                    aggregates.push((id, Some(a.clone())));
                    continue;
                }
                if a.published && agg.republish.hold(id, now_f, cfg.republish_interval) {
                    // Republished too recently: sent by a later pass.
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
                agg.republish.settled(id, Some(now_f));
            }
            None => {
                changes.extend(a.withdraw(id));
                agg.republish.settled(id, None);
            }
        }
        agg.keep_or_drop(id, &mut aggregates);
    }
    if !dp {
        changes.extend(agg.trends.due(now_f, unix_s, &state.config.trends));
    }
    Ok(Some(Plan {
        contributions,
        aggregates,
        changes,
        cursor,
        next_id: agg.next_id,
        epoch: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use omega_tv_sync::codec::{minilm_small_v1, minilm_v1};
    use omega_tv_sync_testkit::rows;

    /// A window's embeddings are each item's own reconstruction, bit for
    /// bit, whatever mixes in it: both shipped codebooks interleaved (two
    /// batches going at once), a codebook the server does not accept, a
    /// removed pattern, patterns under either quality threshold; over more
    /// items than one window, taken one by one through `Ahead` as the pass
    /// takes them.
    #[test]
    fn a_window_reconstructs_each_item_as_it_alone_would() {
        let cfg = AggregateConfig::default();
        let books = crate::codebooks::default_codebooks();
        let (big, small) = (minilm_v1().unwrap(), minilm_small_v1().unwrap());
        let pats = rows("patterns_public.f32");
        let mut items = Vec::new();
        for (i, v) in pats.iter().take(3 * WINDOW + 5).enumerate() {
            let book = if i % 3 == 1 { &small } else { &big };
            let codes = book.quantize(&Embedding::new(*v).unwrap());
            let mut p = StoredPattern {
                revision: 1,
                codebook: book.id(),
                success_rate: 0.9,
                sample_count: 50,
                category: "film".into(),
                codes: Box::new(codes),
            };
            match i % 11 {
                4 => p.codebook = 0x0bad_c0de,
                6 => p.success_rate = cfg.min_success_rate / 2.0,
                8 => p.sample_count = cfg.min_samples.saturating_sub(1),
                _ => {}
            }
            let p = (i % 11 != 9).then_some(p);
            items.push((format!("tv-{i}"), "p".to_string(), p, ()));
        }
        let mut ahead = Ahead::default();
        let (mut counted, mut none) = (0, 0);
        for i in 0..items.len() {
            let got = ahead.take(&cfg, &books, &items, i);
            let want = items[i].2.as_ref().and_then(|p| {
                let ok =
                    p.success_rate >= cfg.min_success_rate && p.sample_count >= cfg.min_samples;
                let book = books.get(p.codebook).filter(|_| ok)?;
                Some(book.reconstruct(&p.codes))
            });
            match (&want, &got) {
                (Some(Ok(w)), Some(Ok(g))) => {
                    counted += 1;
                    assert_eq!(
                        w.as_array().map(f32::to_bits),
                        g.as_array().map(f32::to_bits),
                        "item {i}"
                    );
                }
                (None, None) => none += 1,
                _ => panic!(
                    "item {i}: want {:?}, got {:?}",
                    want.is_some(),
                    got.is_some()
                ),
            }
            // Taken once.
            assert!(ahead.take(&cfg, &books, &items, i).is_none());
        }
        assert!(
            counted > 2 * WINDOW && none > 20,
            "{counted} counted, {none} not"
        );
    }
}
