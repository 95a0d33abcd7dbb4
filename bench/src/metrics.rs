//! Retrieval and similarity metrics.

use crate::data::{dot, Row};

/// Exact scores of a query against every item, and its top-10 indices.
pub struct Ranked {
    /// Score of every item.
    pub scores: Vec<f32>,
    /// The 10 best items, best first (ties by index).
    pub top: [usize; 10],
}

fn top10_of(scores: impl Iterator<Item = (usize, f32)>) -> [usize; 10] {
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(11);
    for (i, s) in scores {
        if best.len() == 10 && s <= best[9].1 {
            continue;
        }
        let pos = best.iter().position(|&(_, b)| s > b).unwrap_or(best.len());
        best.insert(pos, (i, s));
        best.truncate(10);
    }
    let mut top = [usize::MAX; 10];
    for (t, (i, _)) in top.iter_mut().zip(best) {
        *t = i;
    }
    top
}

/// Ranks every item for `q`.
pub fn rank(q: &Row, items: &[Row]) -> Ranked {
    let scores: Vec<f32> = items.iter().map(|x| dot(q, x)).collect();
    let top = top10_of(scores.iter().copied().enumerate());
    Ranked { scores, top }
}

/// Recall@10 of the decoded query `dec` against the exact ranking of the
/// original `orig`: the fraction of the original top 10 that the decoded
/// query also ranks in its top 10.
///
/// Exact but fast: an item whose original score is below the original 10th
/// best minus `2 * |dec - orig|` cannot enter the decoded top 10 (items are
/// unit vectors), so only the others are rescored.
pub fn recall10(orig: &Row, ranked: &Ranked, dec: &Row, items: &[Row]) -> f64 {
    let err = orig
        .iter()
        .zip(dec.iter())
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum::<f64>()
        .sqrt() as f32;
    let s10 = ranked.scores[ranked.top[9]];
    let floor = s10 - 2.0 * err - 1e-5;
    let cands = ranked
        .scores
        .iter()
        .enumerate()
        .filter(|&(_, &s)| s >= floor)
        .map(|(i, _)| (i, dot(dec, &items[i])));
    let top = top10_of(cands);
    top.iter().filter(|i| ranked.top.contains(i)).count() as f64 / 10.0
}

/// Cosine of two unit vectors, in f64.
pub fn cos(a: &Row, b: &Row) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}
