//! One differentially private release: every cohort's exact, bounded sums
//! through the Gaussian mechanism ([`super::dp`]), published when the noisy
//! count passes the threshold, withdrawn when it no longer does; trend
//! activity from the published (noisy) values only.

use omega_tv_sync::{Embedding, DIM};

use super::dp::{perturb, Cohort, DpConfig, Noise};
use super::model::fingerprint;
use super::Aggregator;
use crate::store::{GlobalAggregate, GlobalChange};
use crate::AppState;

/// The exact statistics of aggregate `a` in units of `clip` samples.
pub(super) fn cohort(a: &GlobalAggregate, clip: u32) -> Cohort {
    let s = f64::from(clip.max(1));
    Cohort {
        sum: a.sum.iter().map(|x| f64::from(*x) / s).collect(),
        count: a.devices.len() as f64,
        samples: a.samples as f64 / s,
        weight: a.weight / s,
    }
}

/// What a release writes: changelog entries and the aggregates it changed
/// (`None`: dropped).
pub(super) struct Release {
    pub(super) changes: Vec<GlobalChange>,
    pub(super) aggregates: Vec<(u32, Option<GlobalAggregate>)>,
}

/// Releases every cohort of `agg` with fresh noise at unix time `now`.
pub(super) fn release(
    state: &AppState,
    agg: &mut Aggregator,
    noise: &mut Noise,
    now: f64,
    unix_s: u64,
) -> Release {
    let dp: &DpConfig = &state.config.aggregate.dp;
    let turn = state.config.aggregate.republish_turn;
    let primary = state.config.codebooks.primary().cloned();
    let mut ids: Vec<u32> = agg.aggs.keys().copied().collect();
    ids.sort_unstable();
    let mut changes = Vec::new();
    let mut aggregates = Vec::new();
    let mut activity: Vec<(String, String, f64)> = Vec::new();
    for id in ids {
        let Some(a) = agg.aggs.get_mut(&id) else {
            continue;
        };
        let noisy = perturb(&cohort(a, dp.full_weight_samples), dp, noise);
        let published = noisy.publish(dp);
        let mut upsert = None;
        if let (Some(p), Some(book)) = (&published, &primary) {
            if a.published && !a.material_change(&p.unit, p.contributors, p.rate, turn) {
                // Post-processing of this release: nothing new to send.
                aggregates.push((id, Some(a.clone())));
                continue;
            }
            let arr: Option<[f32; DIM]> = p.unit.clone().try_into().ok();
            if let Some(e) = arr.and_then(|arr| Embedding::normalize(arr).ok()) {
                let codes = book.quantize(&e);
                let mut buf = vec![0u8; omega_tv_sync::wire::MAX_CODE_LEN];
                if let Ok(n) = book.encode(&codes, &mut buf) {
                    buf.truncate(n);
                    let fp = fingerprint(&codes, p.contributors as usize, p.rate, p.samples.into());
                    upsert = Some((fp, book.id(), buf));
                }
            }
        }
        match (upsert, published) {
            (Some((fp, codebook, code)), Some(p)) => {
                changes.push(GlobalChange::Upsert {
                    id,
                    success_rate: p.rate,
                    sample_count: p.samples,
                    contributors: p.contributors,
                    category: a.category.clone(),
                    codebook,
                    code,
                });
                // Trend activity: the published samples, credited to the
                // catalogue item nearest the published (noisy) direction.
                let content = state
                    .config
                    .trends
                    .catalogue
                    .as_ref()
                    .and_then(|c| c.nearest(&p.unit).map(str::to_string))
                    .unwrap_or_else(|| format!("global-{id}"));
                activity.push((a.category.clone(), content, f64::from(p.samples)));
                a.published = true;
                a.fingerprint = fp;
                a.published_unit = p.unit;
                a.published_devices = p.contributors;
                a.published_rate = p.rate;
            }
            _ => {
                changes.extend(a.withdraw(id));
            }
        }
        agg.keep_or_drop(id, &mut aggregates);
    }
    for (category, content, amount) in activity {
        agg.trends
            .observe(&category, &content, amount, now, &state.config.trends);
    }
    changes.extend(agg.trends.due(now, unix_s, &state.config.trends));
    Release {
        changes,
        aggregates,
    }
}
