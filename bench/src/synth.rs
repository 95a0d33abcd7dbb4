//! Synthetic training patterns, made from catalogue items the way
//! `data/minilm/gen.py` makes the real ones, with our own PRNG: the public
//! patterns stay a test set that no fitted parameter has seen.

use crate::data::{dot, drift, normalize, Row};
use crate::rng::SplitMix64;
use omega_tv_sync::DIM;
use std::collections::HashMap;

/// Smallest and largest number of items averaged into one pattern.
pub const K_MIN: u64 = 5;
/// See [`K_MIN`].
pub const K_MAX: u64 = 20;
/// Coherent patterns draw members from the seed item's top neighbours.
pub const POOL: usize = 200;
/// ... with this probability, otherwise uniformly.
pub const P_POOL: f64 = 0.8;

/// Generates synthetic patterns and drifts from a catalogue.
pub struct Synth<'a> {
    items: &'a [Row],
    rng: SplitMix64,
    pools: HashMap<usize, Vec<usize>>,
}

impl<'a> Synth<'a> {
    /// A generator over `items` with a seed.
    pub fn new(items: &'a [Row], seed: u64) -> Self {
        Synth {
            items,
            rng: SplitMix64::new(seed),
            pools: HashMap::new(),
        }
    }

    fn pool(&mut self, seed_item: usize) -> &[usize] {
        let items = self.items;
        self.pools.entry(seed_item).or_insert_with(|| {
            let s = &items[seed_item];
            let sims: Vec<f32> = items.iter().map(|x| dot(s, x)).collect();
            let mut idx: Vec<usize> = (0..items.len()).collect();
            idx.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]).then(a.cmp(&b)));
            idx.truncate(POOL);
            idx
        })
    }

    /// One pattern: the renormalised centroid of k = 5..20 distinct items,
    /// uniformly random (`coherent == false`) or a seed item and mostly its
    /// neighbours.
    pub fn pattern(&mut self, coherent: bool) -> Row {
        let n = self.items.len() as u64;
        let k = (K_MIN + self.rng.below(K_MAX - K_MIN + 1)) as usize;
        let mut members: Vec<usize> = Vec::with_capacity(k);
        if coherent {
            let s = self.rng.below(n) as usize;
            members.push(s);
            while members.len() < k {
                let m = if self.rng.unit() < P_POOL {
                    let r = self.rng.below(POOL as u64) as usize;
                    self.pool(s)[r]
                } else {
                    self.rng.below(n) as usize
                };
                if !members.contains(&m) {
                    members.push(m);
                }
            }
        } else {
            while members.len() < k {
                let m = self.rng.below(n) as usize;
                if !members.contains(&m) {
                    members.push(m);
                }
            }
        }
        members.sort_unstable();
        let mut acc = [0f64; DIM];
        for &m in &members {
            for (a, &x) in acc.iter_mut().zip(self.items[m].iter()) {
                *a += f64::from(x);
            }
        }
        normalize(&acc)
    }

    /// `n` patterns, alternating random and coherent.
    pub fn patterns(&mut self, n: usize) -> Vec<Row> {
        (0..n).map(|i| self.pattern(i % 2 == 1)).collect()
    }

    /// A drifted version of `old`: `normalize(k * old + item)`, k uniform in
    /// 5..=20 and the item uniform.
    pub fn drift(&mut self, old: &Row) -> Row {
        let k = (K_MIN + self.rng.below(K_MAX - K_MIN + 1)) as f64;
        let item = self.rng.below(self.items.len() as u64) as usize;
        drift(old, &self.items[item], k)
    }
}
