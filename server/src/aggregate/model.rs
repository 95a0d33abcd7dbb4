//! The aggregation model: how a contribution enters and leaves a global
//! pattern's sums, its unit centroid, and when a published global pattern
//! has changed enough to be published again. Pure functions over the
//! stored records.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::codebooks::Codes;
use crate::store::{Contribution, GlobalAggregate, GlobalChange};

impl GlobalAggregate {
    /// Takes a published aggregate back: its changelog removal, or `None`
    /// when it was not published.
    pub(super) fn withdraw(&mut self, id: u32) -> Option<GlobalChange> {
        if !self.published {
            return None;
        }
        self.published = false;
        self.fingerprint = 0;
        self.published_unit.clear();
        Some(GlobalChange::Remove { id })
    }

    /// Whether a new state differs enough from the last published one to be
    /// published again. Every republication is downloaded by every device,
    /// so a centroid that moved less than the codec's own error is not news:
    /// it must have turned by more than `min_turn` (1 - cosine), or its
    /// contributor count crossed a power of two, or its success rate moved by
    /// 0.02 or more.
    pub fn material_change(&self, unit: &[f32], devices: u32, rate: f32, min_turn: f32) -> bool {
        if !self.published || self.published_unit.len() != unit.len() {
            return true;
        }
        let cos: f32 = self
            .published_unit
            .iter()
            .zip(unit)
            .map(|(a, b)| a * b)
            .sum();
        let bucket = |d: u32| 32 - d.max(1).leading_zeros();
        1.0 - cos > min_turn
            || bucket(devices) != bucket(self.published_devices)
            || (rate - self.published_rate).abs() >= 0.02
    }
}

/// One contribution written by a pass: (device, pattern id, the new
/// contribution, or `None` when it is withdrawn).
pub(super) type ContributionUpdate = (String, String, Option<Contribution>);

/// This pass's updates by (device, pattern id): the index of each in
/// `contributions`.
pub(super) fn update_index(
    contributions: &[ContributionUpdate],
) -> HashMap<(String, String), usize> {
    contributions
        .iter()
        .enumerate()
        .map(|(i, (d, p, _))| ((d.clone(), p.clone()), i))
        .collect()
}

/// The current contributions of `device` to the globals `keep` accepts:
/// this pass's updates where it has one (`contributions`, indexed by
/// `index`), else the stored ones (`stored`, the device's contributions as
/// committed).
pub(super) fn current_contributions(
    device: &str,
    stored: &[(String, Contribution)],
    contributions: &[ContributionUpdate],
    index: &HashMap<(String, String), usize>,
    keep: impl Fn(u32) -> bool,
) -> Vec<(String, Contribution)> {
    let mut members: Vec<(String, Contribution)> = Vec::new();
    for (p, c) in stored {
        if !index.contains_key(&(device.to_string(), p.clone())) && keep(c.global) {
            members.push((p.clone(), c.clone()));
        }
    }
    for (d, p, c) in contributions {
        if d == device {
            if let Some(c) = c.as_ref().filter(|c| keep(c.global)) {
                members.push((p.clone(), c.clone()));
            }
        }
    }
    members
}

/// Dot product with eight independent accumulators (vectorises).
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum()
}

/// Adds contribution `c` to `a` (not its device count).
pub(super) fn add(a: &mut GlobalAggregate, c: &Contribution, clip: u32) {
    for (s, x) in a.sum.iter_mut().zip(&c.vector) {
        *s += c.weight * x;
    }
    a.weight += f64::from(c.weight);
    a.rate_sum += f64::from(c.weight * c.success_rate);
    a.samples += u64::from(c.counted(clip));
}

/// Takes contribution `c` back out of `a` (not its device count).
pub(super) fn take_back(a: &mut GlobalAggregate, c: &Contribution, clip: u32) {
    for (s, v) in a.sum.iter_mut().zip(&c.vector) {
        *s -= c.weight * v;
    }
    a.weight = (a.weight - f64::from(c.weight)).max(0.0);
    a.rate_sum = (a.rate_sum - f64::from(c.weight * c.success_rate)).max(0.0);
    a.samples = a.samples.saturating_sub(u64::from(c.counted(clip)));
}

/// The unit vector of `sum` (`None` when it is about zero).
pub(super) fn unit(sum: &[f32]) -> Option<Vec<f32>> {
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
pub(super) fn fingerprint(codes: &Codes, contributors: usize, rate: f32, samples: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    codes.hash(&mut h);
    contributors.hash(&mut h);
    ((rate * 100.0).round() as i32).hash(&mut h);
    (((samples.max(1) as f64).log2() * 4.0).floor() as i64).hash(&mut h);
    h.finish() | 1
}

#[cfg(test)]
pub(super) mod tests {
    use crate::store::GlobalAggregate;

    /// The rows of `data/minilm/<file>` as vectors (the aggregation tests'
    /// real data).
    pub(in crate::aggregate) fn real(file: &str) -> Vec<Vec<f32>> {
        omega_tv_sync_testkit::rows(file)
            .iter()
            .map(|r| r.to_vec())
            .collect()
    }

    #[test]
    fn only_material_changes_republish() {
        let mut a = GlobalAggregate::new("drama");
        let mut u = vec![0f32; 384];
        u[0] = 1.0;
        assert!(a.material_change(&u, 5, 0.8, 2e-4), "never published");
        a.published = true;
        a.published_unit = u.clone();
        a.published_devices = 5;
        a.published_rate = 0.8;
        assert!(!a.material_change(&u, 5, 0.8, 2e-4));
        assert!(
            !a.material_change(&u, 7, 0.81, 2e-4),
            "same power-of-two bucket, small rate move"
        );
        assert!(
            a.material_change(&u, 8, 0.8, 2e-4),
            "contributors crossed 8"
        );
        assert!(a.material_change(&u, 5, 0.83, 2e-4), "rate moved 0.03");
        // Turn by angle t: 1 - cos t; 0.01 rad is 5e-5 (no), 0.03 rad is 4.5e-4 (yes).
        for (t, expect) in [(0.01f32, false), (0.03f32, true)] {
            let mut v = vec![0f32; 384];
            v[0] = t.cos();
            v[1] = t.sin();
            assert_eq!(a.material_change(&v, 5, 0.8, 2e-4), expect, "turn {t}");
        }
    }
}
