//! The exact mode's grouping and its bounds (`--no-dp`): a changed
//! pattern joins the nearest centroid of its category through the
//! [`super::index::CentroidIndex`] or starts an aggregate
//! ([`nearest_or_new`]); a device holds at most `max_lone_per_device`
//! aggregates alone ([`evict_lone`]); a category publishes at most
//! `max_globals_per_category`, the best supported ([`best_supported`]).
//! Called by the pass (`pass.rs`).

use std::collections::{BTreeSet, HashMap, HashSet};

use super::model::{current_contributions, take_back, update_index, ContributionUpdate};
use super::Aggregator;
use crate::store::{self, Contribution, GlobalAggregate, StoreResult};
use crate::AppState;

/// In the ranking for publication, a published aggregate's weight counts
/// this many times (a margin against churn at the boundary).
pub(super) const PUBLISHED_EDGE: f64 = 1.25;

/// Exact mode: for every category of `touched`, its candidates for
/// publication (at least `k` devices, some weight) ranked by contributors,
/// then weight (a published one's times [`PUBLISHED_EDGE`]), then age
/// (smaller id), and the first
/// `max_globals_per_category` of them: the set allowed to be published,
/// and the aggregates whose publication must change although the pass did
/// not touch them (published but no longer allowed, allowed but not
/// published). A pass over the aggregates, once per pass.
pub(super) fn best_supported(
    agg: &Aggregator,
    cfg: &super::AggregateConfig,
    touched: &BTreeSet<u32>,
) -> (HashSet<u32>, Vec<u32>) {
    let cats: HashSet<&str> = touched
        .iter()
        .filter_map(|id| agg.aggs.get(id))
        .map(|a| a.category.as_str())
        .collect();
    let k = cfg.k.max(1) as usize;
    let mut ranked: HashMap<&str, Vec<(usize, f64, u32)>> = HashMap::new();
    let mut published: Vec<(&str, u32)> = Vec::new();
    for (id, a) in &agg.aggs {
        if !cats.contains(a.category.as_str()) {
            continue;
        }
        if a.published {
            published.push((a.category.as_str(), *id));
        }
        if a.devices.len() >= k && a.weight > 0.0 {
            // A published one keeps its place against as many contributors
            // unless their weight is PUBLISHED_EDGE times more: weights
            // drifting at the boundary do not withdraw and republish (both
            // downloaded by every device) pass after pass.
            let w = if a.published {
                a.weight * PUBLISHED_EDGE
            } else {
                a.weight
            };
            ranked
                .entry(a.category.as_str())
                .or_default()
                .push((a.devices.len(), w, *id));
        }
    }
    let n = cfg.max_globals_per_category as usize;
    let mut allowed = HashSet::new();
    for list in ranked.values_mut() {
        list.sort_by(|x, y| y.0.cmp(&x.0).then(y.1.total_cmp(&x.1)).then(x.2.cmp(&y.2)));
        allowed.extend(list.iter().take(n).map(|e| e.2));
    }
    let mut standing: Vec<u32> = published
        .iter()
        .filter(|(_, id)| !allowed.contains(id))
        .map(|(_, id)| *id)
        .collect();
    standing.extend(
        allowed
            .iter()
            .filter(|id| agg.aggs.get(id).is_some_and(|a| !a.published)),
    );
    (allowed, standing)
}

/// Exact mode: bounds the aggregates each device of this pass holds alone
/// (it is their only device) to `max_lone_per_device`, evicting the oldest
/// (smallest id) beyond it: the device's contributions to them are dropped
/// (written as none), so the aggregate, empty, is dropped with them. The
/// patterns stay stored and enter aggregation again when they change.
pub(super) fn evict_lone(
    state: &AppState,
    agg: &mut Aggregator,
    clip: u32,
    contributions: &mut Vec<ContributionUpdate>,
    touched: &mut BTreeSet<u32>,
) -> StoreResult<()> {
    let max = state.config.aggregate.max_lone_per_device as usize;
    let devices: BTreeSet<String> = contributions.iter().map(|(d, _, _)| d.clone()).collect();
    let mut evict: Vec<(String, Vec<u32>)> = Vec::new();
    for d in devices {
        let Some(mine) = agg.device_globals.get(&d) else {
            continue;
        };
        let lone: Vec<u32> = mine
            .iter()
            .copied()
            .filter(|id| agg.aggs.get(id).is_some_and(|a| a.devices.len() == 1))
            .collect();
        if lone.len() > max {
            // `mine` is ordered: the smallest ids are the oldest.
            evict.push((d, lone[..lone.len() - max].to_vec()));
        }
    }
    if evict.is_empty() {
        return Ok(());
    }
    let stored: HashMap<String, Vec<(String, Contribution)>> = store::read(&*state.store, |t| {
        evict
            .iter()
            .map(|(d, _)| Ok((d.clone(), t.device_contributions(d)?)))
            .collect()
    })?;
    let mut index = update_index(contributions);
    let mut evicted = 0u64;
    for (device, ids) in evict {
        let ids: HashSet<u32> = ids.into_iter().collect();
        // The device's current contributions to them.
        let members = current_contributions(
            &device,
            stored.get(&device).map_or(&[][..], Vec::as_slice),
            contributions,
            &index,
            |g| ids.contains(&g),
        );
        for (p, c) in members {
            if let Some(a) = agg.aggs.get_mut(&c.global) {
                take_back(a, &c, clip);
            }
            let key = (device.clone(), p.clone());
            match index.get(&key) {
                Some(&i) => contributions[i].2 = None,
                None => {
                    index.insert(key, contributions.len());
                    contributions.push((device.clone(), p, None));
                }
            }
        }
        for id in ids {
            if let Some(a) = agg.aggs.get_mut(&id) {
                a.devices.remove(&device);
            }
            agg.forget_device_global(&device, id);
            agg.refresh(id);
            touched.insert(id);
            evicted += 1;
        }
    }
    agg.lone_evicted += evicted;
    Ok(())
}

/// The aggregate of `category` whose unit centroid is nearest `v` with
/// cosine at least `similarity`, or a new one (the exact mode's grouping).
pub(super) fn nearest_or_new(
    agg: &mut Aggregator,
    similarity: f32,
    category: &str,
    v: &[f32],
) -> u32 {
    match agg.index.nearest(category, v, similarity) {
        Some(id) => id,
        None => {
            agg.next_id = agg.next_id.saturating_add(1);
            agg.aggs.insert(agg.next_id, GlobalAggregate::new(category));
            agg.next_id
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::model::dot;
    use crate::aggregate::model::tests::real;
    use crate::aggregate::model::unit;
    use omega_tv_sync::DIM;

    /// Deterministic standard normal numbers (splitmix64, Box-Muller).
    struct Gauss(u64);
    impl Gauss {
        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn next(&mut self) -> f32 {
            let (u, v) = (self.uniform(), self.uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        }
        /// `base` turned by noise of relative norm `amount`, unit again.
        fn near(&mut self, base: &[f32], amount: f32) -> Vec<f32> {
            let g: Vec<f32> = (0..DIM).map(|_| self.next()).collect();
            let gn = dot(&g, &g).sqrt();
            let v: Vec<f32> = base
                .iter()
                .zip(&g)
                .map(|(b, x)| b + amount * x / gn)
                .collect();
            unit(&v).unwrap()
        }
    }

    /// Adds unit vector `v` with weight 1 where the exact pass would.
    fn insert(agg: &mut Aggregator, v: &[f32]) -> u32 {
        let id = nearest_or_new(agg, 0.92, "drama", v);
        let a = agg.aggs.get_mut(&id).unwrap();
        for (s, x) in a.sum.iter_mut().zip(v) {
            *s += x;
        }
        a.weight += 1.0;
        agg.refresh(id);
        id
    }

    /// Cosines computed per change stay about flat from ~1,000 to ~10,000
    /// aggregates of one category (the linear scan computes one per
    /// aggregate: 10 times more at 10,000).
    #[test]
    fn nearest_centroid_work_per_change_grows_sublinearly() {
        let mut base = real("patterns_public.f32");
        base.extend(real("items_public.f32"));
        let mut g = Gauss(42);
        let mut agg = Aggregator::default();
        let mut i = 0usize;
        let mut per_change = Vec::new();
        for target in [1_000usize, 10_000] {
            while agg.aggs.len() < target {
                let v = g.near(&base[i % base.len()], 0.6);
                insert(&mut agg, &v);
                i += 1;
            }
            let (c0, s0) = (agg.index.cosines, agg.index.searches);
            for j in 0..500 {
                let v = g.near(&base[(i + 7 * j) % base.len()], 0.6);
                agg.index.nearest("drama", &v, 0.92);
            }
            let per = (agg.index.cosines - c0) as f64 / (agg.index.searches - s0) as f64;
            println!("{} aggregates: {per:.1} cosines per change", agg.aggs.len());
            per_change.push((agg.aggs.len(), per));
        }
        let (n0, p0) = per_change[0];
        let (n1, p1) = per_change[1];
        assert!(
            p1 < p0 * 3.0,
            "{n0} -> {n1} aggregates: {p0:.1} -> {p1:.1} cosines per change"
        );
        assert!(p1 < n1 as f64 / 10.0, "{p1:.1} cosines at {n1} aggregates");
    }

    /// On real patterns (each uploaded by three devices, every one through
    /// the codec and with its own small deviation), how often the index
    /// does not return the centroid the linear scan would have joined.
    #[test]
    fn the_index_joins_what_the_linear_scan_joins_on_real_patterns() {
        let book = omega_tv_sync::codec::minilm_v1().unwrap();
        let mut base = real("patterns_public.f32");
        base.extend(real("items_public.f32").into_iter().take(2400));
        let mut g = Gauss(7);
        let mut agg = Aggregator::default();
        let (mut joins, mut missed, mut changes) = (0u64, 0u64, 0u64);
        for device in 0..3 {
            for b in &base {
                let v = if device == 0 {
                    b.clone()
                } else {
                    g.near(b, 0.12)
                };
                let arr: [f32; DIM] = v.try_into().unwrap();
                let e = omega_tv_sync::Embedding::normalize(arr).unwrap();
                let v = book
                    .reconstruct(&book.quantize(&e))
                    .unwrap()
                    .as_array()
                    .to_vec();
                // The linear scan's answer over the same centroids.
                let mut best: Option<(f32, u32)> = None;
                for (id, a) in &agg.aggs {
                    let Some(u) = unit(&a.sum) else { continue };
                    let cos = dot(&u, &v);
                    if cos >= 0.92 && best.is_none_or(|(c, i)| cos > c || (cos == c && *id < i)) {
                        best = Some((cos, *id));
                    }
                }
                let got = insert(&mut agg, &v);
                changes += 1;
                if let Some((_, want)) = best {
                    joins += 1;
                    missed += u64::from(got != want);
                }
            }
        }
        let rate = missed as f64 / joins.max(1) as f64;
        println!(
            "{changes} changes, {joins} joined a centroid, {missed} missed it \
             ({:.4}%), {} aggregates, {:.1} cosines per change",
            100.0 * rate,
            agg.aggs.len(),
            agg.index.cosines as f64 / agg.index.searches as f64
        );
        assert!(joins > 1000, "{joins} joins");
        assert!(rate < 0.01, "miss rate {rate}");
    }
}
