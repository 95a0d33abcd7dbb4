//! How faithful the published global patterns are: each published direction
//! (as devices reconstruct it from the feed) against the exact centroid of
//! the fleet patterns it stands for (the server's exact, clipped sum of its
//! group or cohort), and recall@10 against the catalogue as
//! `docs/privacy.md` defines it (the 10 items nearest the published
//! direction vs the 10 nearest the exact centroid).

use omega_tv_sync::DIM;
use serde::Serialize;

use super::model::Catalog;
use super::LiveGlobals;
use crate::data::dot;

/// Fidelity of the live global set at the end of a run.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Fidelity {
    /// Published globals measured (those whose exact group the server holds).
    pub globals: u64,
    /// Mean cosine of a published direction to its exact centroid.
    pub cos_mean: f64,
    /// Lowest such cosine.
    pub cos_min: f64,
    /// Mean recall@10 against the catalogue.
    pub recall10_mean: f64,
}

/// The 10 catalogue items nearest `v`, by index.
fn top10(cat: &Catalog, v: &[f32; DIM]) -> Vec<u32> {
    let mut scored: Vec<(f32, u32)> = cat
        .items
        .iter()
        .enumerate()
        .map(|(i, it)| (dot(v, it), i as u32))
        .collect();
    let k = 10.min(scored.len());
    if k == 0 {
        return Vec::new();
    }
    scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.truncate(k);
    scored.into_iter().map(|s| s.1).collect()
}

/// Measures every live global of `live` against its exact centroid in
/// `exact` (id, exact weighted sum); globals without one are skipped.
pub fn measure(cat: &Catalog, live: &LiveGlobals, exact: &[(u32, Vec<f32>)]) -> Fidelity {
    let (mut n, mut cos_sum, mut cos_min, mut rec_sum) = (0u64, 0.0f64, 1.0f64, 0.0f64);
    for (id, sum) in exact {
        let Some((_, published)) = live.get(id) else {
            continue;
        };
        let norm = sum
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        if norm <= 0.0 || sum.len() != DIM {
            continue;
        }
        let mut c = [0f32; DIM];
        for (o, x) in c.iter_mut().zip(sum) {
            *o = (f64::from(*x) / norm) as f32;
        }
        let p = published.as_array();
        let cos = f64::from(dot(p, &c));
        let a = top10(cat, p);
        let b = top10(cat, &c);
        let hit = a.iter().filter(|i| b.contains(i)).count();
        n += 1;
        cos_sum += cos;
        cos_min = cos_min.min(cos);
        rec_sum += hit as f64 / b.len().max(1) as f64;
    }
    if n == 0 {
        return Fidelity::default();
    }
    Fidelity {
        globals: n,
        cos_mean: cos_sum / n as f64,
        cos_min,
        recall10_mean: rec_sum / n as f64,
    }
}
