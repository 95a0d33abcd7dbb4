//! The exact mode's nearest-centroid index: the unit centroids of a
//! category's aggregates, bucketed by the signs of their leading
//! coefficients in the codec's PCA basis, searched with multi-probe.
//!
//! A centroid `c` and a changed pattern `v` (both unit vectors) with cosine
//! at least `s` are within `r^2 = 2 (1 - s)` of each other, and so are
//! their coordinates in any orthonormal basis: wherever the sign of a
//! leading coordinate differs (`x_j` of `v` on one side of the mean, `c_j`
//! on the other), `x_j^2 <= (x_j - c_j)^2`, and the `x_j^2` of all the
//! differing signs sum to at most `r^2`. The search visits `v`'s own bucket
//! and then the buckets whose differing bits cost `sum x_j^2 <= r^2`,
//! cheapest first ([`MAX_PROBES`] at most). It returns what the linear scan
//! would have returned (the most similar centroid at or above `s`, ties to
//! the smaller id) unless that centroid lies in a bucket beyond the probe
//! budget: on the real patterns of `data/minilm` this happens for
//! 0.32% of the changes that join a centroid (`docs/server.md`, "Exact
//! aggregation"); such a change starts a new aggregate instead, and is
//! searched for again when the pattern changes.
//!
//! The number of key bits follows the number of centroids of the category
//! (about [`LEAF`] centroids per bucket, at most [`MAX_BITS`] bits), so the
//! cosines computed per change stay about `LEAF x probes` however many
//! aggregates the category holds; re-keying when the bit count changes is
//! a pass over the stored coordinates, amortised over the doublings.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::OnceLock;

use omega_tv_sync::codec::Codes;
use omega_tv_sync::DIM;

use super::model::dot;

/// Most key bits (leading basis coefficients) a category's index uses.
pub const MAX_BITS: usize = 20;
/// Centroids per bucket the bit count aims at.
pub const LEAF: usize = 4;
/// Most buckets one search visits.
pub const MAX_PROBES: usize = 16;

/// The codec's mean and its leading orthonormal basis directions.
#[derive(Debug)]
struct Projection {
    mean: Vec<f32>,
    dirs: Vec<Vec<f32>>,
}

impl Projection {
    /// Recovered from the default codebook's public operations: its mean
    /// is `|m| * reconstruct(0)` (`m` the mean's coordinates), and basis
    /// direction `j` follows from the reconstruction of a large code on
    /// component `j` alone, `N w = mu + K s_j U_j` with `N` the norm of its
    /// coordinates.
    fn from_codec() -> Option<Projection> {
        let book = omega_tv_sync::codec::minilm_v1().ok()?;
        let space = book.coefficient_space();
        let zero: Codes = [0; DIM];
        let m = space.coefficients(&zero);
        let mnorm = m.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let mu_dir = book.reconstruct(&zero).ok()?;
        let mean: Vec<f64> = mu_dir
            .as_array()
            .iter()
            .map(|x| f64::from(*x) * mnorm)
            .collect();
        let k = 2000i16;
        let mut dirs = Vec::with_capacity(MAX_BITS);
        for j in 0..MAX_BITS {
            let mut c: Codes = [0; DIM];
            c[j] = k;
            let coords = space.coefficients(&c);
            let n = coords
                .iter()
                .map(|x| f64::from(*x).powi(2))
                .sum::<f64>()
                .sqrt();
            let w = book.reconstruct(&c).ok()?;
            let mut u: Vec<f64> = w
                .as_array()
                .iter()
                .zip(&mean)
                .map(|(x, mu)| f64::from(*x) * n - mu)
                .collect();
            let un = u.iter().map(|x| x * x).sum::<f64>().sqrt();
            if un < 1e-9 {
                return None;
            }
            for x in &mut u {
                *x /= un;
            }
            dirs.push(u.into_iter().map(|x| x as f32).collect());
        }
        Some(Projection {
            mean: mean.into_iter().map(|x| x as f32).collect(),
            dirs,
        })
    }

    /// The leading coordinates of `v - mean`.
    fn coords(&self, v: &[f32]) -> [f32; MAX_BITS] {
        let r: Vec<f32> = v.iter().zip(&self.mean).map(|(x, m)| x - m).collect();
        let mut out = [0f32; MAX_BITS];
        for (o, d) in out.iter_mut().zip(&self.dirs) {
            *o = dot(d, &r);
        }
        out
    }
}

/// The projection, computed once (`None` only if the shipped codebook does
/// not load: then every category is one bucket, the linear scan).
fn projection() -> Option<&'static Projection> {
    static P: OnceLock<Option<Projection>> = OnceLock::new();
    P.get_or_init(Projection::from_codec).as_ref()
}

fn key_of(x: &[f32; MAX_BITS], bits: usize) -> u32 {
    x.iter()
        .take(bits)
        .enumerate()
        .fold(0u32, |k, (i, &c)| if c > 0.0 { k | (1 << i) } else { k })
}

/// The bit count for `n` centroids: about [`LEAF`] per bucket.
fn target_bits(n: usize) -> usize {
    if projection().is_none() || n < 2 * LEAF {
        return 0;
    }
    ((n / LEAF).ilog2() as usize).min(MAX_BITS)
}

#[derive(Debug)]
struct Entry {
    unit: Vec<f32>,
    coords: [f32; MAX_BITS],
    key: u32,
}

#[derive(Debug, Default)]
struct Category {
    bits: usize,
    entries: HashMap<u32, Entry>,
    buckets: HashMap<u32, Vec<u32>>,
}

impl Category {
    fn unbucket(&mut self, id: u32, key: u32) {
        if let Some(b) = self.buckets.get_mut(&key) {
            if let Some(i) = b.iter().position(|x| *x == id) {
                b.swap_remove(i);
            }
            if b.is_empty() {
                self.buckets.remove(&key);
            }
        }
    }

    /// Re-keys every centroid when the bit count should change (it moves
    /// only when the size doubles or halves past its target).
    fn rebalance(&mut self) {
        let t = target_bits(self.entries.len());
        if t > self.bits || t + 1 < self.bits {
            self.bits = t;
            self.buckets.clear();
            for (id, e) in self.entries.iter_mut() {
                e.key = key_of(&e.coords, t);
                self.buckets.entry(e.key).or_default().push(*id);
            }
            for b in self.buckets.values_mut() {
                b.sort_unstable();
            }
        }
    }
}

/// The unit centroids of the aggregates with weight, per category.
#[derive(Debug, Default)]
pub struct CentroidIndex {
    cats: HashMap<String, Category>,
    category_of: HashMap<u32, String>,
    /// Cosines computed by [`CentroidIndex::nearest`] so far.
    pub cosines: u64,
    /// Searches made so far.
    pub searches: u64,
}

impl CentroidIndex {
    /// Forgets every centroid.
    pub fn clear(&mut self) {
        self.cats.clear();
        self.category_of.clear();
    }

    /// Removes aggregate `id`'s centroid, if held.
    pub fn remove(&mut self, id: u32) {
        let Some(cat) = self.category_of.remove(&id) else {
            return;
        };
        if let Some(c) = self.cats.get_mut(&cat) {
            if let Some(e) = c.entries.remove(&id) {
                c.unbucket(id, e.key);
            }
            if c.entries.is_empty() {
                self.cats.remove(&cat);
            } else {
                c.rebalance();
            }
        }
    }

    /// Sets aggregate `id`'s unit centroid in `category`.
    pub fn set(&mut self, category: &str, id: u32, unit: Vec<f32>) {
        if self
            .category_of
            .get(&id)
            .is_some_and(|c| c.as_str() != category)
        {
            self.remove(id);
        }
        let coords = projection().map_or([0f32; MAX_BITS], |p| p.coords(&unit));
        let c = self.cats.entry(category.to_string()).or_default();
        let key = key_of(&coords, c.bits);
        if let Some(old) = c.entries.insert(id, Entry { unit, coords, key }) {
            if old.key == key {
                return;
            }
            c.unbucket(id, old.key);
        } else {
            self.category_of.insert(id, category.to_string());
        }
        let b = c.buckets.entry(key).or_default();
        let at = b.partition_point(|x| *x < id);
        b.insert(at, id);
        c.rebalance();
    }

    /// The centroid of `category` most similar to unit vector `v` with
    /// cosine at least `similarity` (ties to the smaller id), among the
    /// buckets within the probe budget.
    pub fn nearest(&mut self, category: &str, v: &[f32], similarity: f32) -> Option<u32> {
        self.searches += 1;
        let c = self.cats.get(category)?;
        let bits = c.bits;
        let x = match projection() {
            Some(p) if bits > 0 => p.coords(v),
            _ => [0f32; MAX_BITS],
        };
        let home = key_of(&x, bits);
        // Radius: |v - c|^2 = 2 (1 - cos) for unit vectors (a little slack
        // for rounding).
        let r2 = 2.0 * (1.0 - similarity.min(1.0)) + 1e-4;
        let mut best: Option<(f32, u32)> = None;
        let mut cosines = 0u64;
        let mut visit = |key: u32, best: &mut Option<(f32, u32)>| {
            for id in c.buckets.get(&key).into_iter().flatten() {
                let Some(e) = c.entries.get(id) else { continue };
                cosines += 1;
                let cos = dot(&e.unit, v);
                if cos >= similarity && best.is_none_or(|(b, i)| cos > b || (cos == b && *id < i)) {
                    *best = Some((cos, *id));
                }
            }
        };
        visit(home, &mut best);
        if bits > 0 {
            // The bits by the cost of flipping them, cheapest first.
            let mut order: Vec<(f32, usize)> = (0..bits).map(|j| (x[j] * x[j], j)).collect();
            order.sort_by(|a, b| a.0.total_cmp(&b.0));
            // Flip sets in increasing cost: from a set whose largest
            // position is i, "shift" replaces i by i + 1 and "expand" adds
            // i + 1; every set is reached once. Non-negative f32 bits sort
            // like the numbers.
            let mut heap: BinaryHeap<Reverse<(u32, u32, usize)>> = BinaryHeap::new();
            heap.push(Reverse((order[0].0.to_bits(), 1, 0)));
            let mut probes = 1;
            while let Some(Reverse((cost, set, last))) = heap.pop() {
                if probes >= MAX_PROBES || f32::from_bits(cost) > r2 {
                    break;
                }
                let flip = (0..bits)
                    .filter(|i| set & (1 << i) != 0)
                    .fold(0u32, |m, i| m | (1 << order[i].1));
                visit(home ^ flip, &mut best);
                probes += 1;
                if last + 1 < bits {
                    let c0 = f32::from_bits(cost);
                    let next = order[last + 1].0;
                    heap.push(Reverse((
                        (c0 + next).to_bits(),
                        set | (1 << (last + 1)),
                        last + 1,
                    )));
                    heap.push(Reverse((
                        (c0 - order[last].0 + next).max(0.0).to_bits(),
                        (set & !(1 << last)) | (1 << (last + 1)),
                        last + 1,
                    )));
                }
            }
        }
        self.cosines += cosines;
        best.map(|(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::model::tests::real;

    #[test]
    fn the_recovered_directions_are_orthonormal_and_match_the_codes_signs() {
        let p = projection().expect("projection");
        for (i, a) in p.dirs.iter().enumerate() {
            for (j, b) in p.dirs.iter().enumerate() {
                let d = dot(a, b);
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((d - want).abs() < 1e-3, "<U{i},U{j}> = {d}");
            }
        }
        let book = omega_tv_sync::codec::minilm_v1().unwrap();
        let v = real("patterns_public.f32");
        let (mut same, mut total) = (0, 0);
        for x in v.iter().take(200) {
            let arr: [f32; DIM] = x.clone().try_into().unwrap();
            let codes = book.quantize(&omega_tv_sync::Embedding::normalize(arr).unwrap());
            let c = p.coords(x);
            for j in 0..MAX_BITS {
                if codes[j] != 0 {
                    total += 1;
                    same += usize::from((codes[j] > 0) == (c[j] > 0.0));
                }
            }
        }
        assert_eq!(same, total, "signs of the leading codes");
    }
}
