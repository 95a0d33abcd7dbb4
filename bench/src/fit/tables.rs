//! Entropy-coding tables: the generalised-Gaussian frequency tables, the
//! cost model, the per-component table indices, and the blob writer.

use super::*;

/// Cumulative frequencies of a discretised generalised Gaussian with
/// standard deviation `sigma` (in steps) and shape `beta`, over the values
/// `-HALF..HALF`, plus the escape.
pub fn gg_table(sigma: f64, beta: f64) -> Vec<u16> {
    let a = sigma * libm::sqrt(libm::tgamma(1.0 / beta) / libm::tgamma(3.0 / beta));
    let z = 2.0 * a * libm::tgamma(1.0 + 1.0 / beta);
    const SUB: usize = 256;
    let mut p = vec![0f64; N_SYM];
    for (s, ps) in p.iter_mut().take(ESC).enumerate() {
        let h = s as f64 - f64::from(HALF);
        let mut acc = 0.0;
        for k in 0..SUB {
            let y = h - 0.5 + (k as f64 + 0.5) / SUB as f64;
            acc += libm::exp(-libm::pow(y.abs() / a, beta));
        }
        *ps = acc / SUB as f64 / z;
    }
    let inside: f64 = p.iter().sum();
    p[ESC] = (1.0 - inside).max(ESC_FLOOR);
    let total: f64 = p.iter().sum();
    let mut f: Vec<i64> = p
        .iter()
        .map(|&x| ((x / total * M).round() as i64).max(1))
        .collect();
    let sum: i64 = f.iter().sum();
    let mut arg = 0;
    for (i, &x) in f.iter().enumerate() {
        if x > f[arg] {
            arg = i;
        }
    }
    f[arg] += M as i64 - sum;
    let mut cum = Vec::with_capacity(N_SYM + 1);
    let mut c = 0i64;
    cum.push(0u16);
    for x in f {
        c += x;
        cum.push(c as u16);
    }
    cum
}

/// The tables of one family for `P = p` (`p + PERIOD` cumulative arrays).
pub fn family_tables(beta: f64, p: u8) -> Vec<Vec<u16>> {
    (0..usize::from(p + PERIOD))
        .map(|p| gg_table(libm::exp2(p as f64 / 4.0 - 4.0), beta))
        .collect()
}

/// Physical table and raw bits of a logical index for `P = small` (as in the core).
pub(super) fn physical(t: usize, small: u8) -> (usize, u32) {
    let (s, p) = (usize::from(small), usize::from(PERIOD));
    if t < s {
        (t, 0)
    } else {
        (s + (t - s) % p, ((t - s) / p) as u32)
    }
}

/// Ideal code lengths (bits) of every symbol of every table.
pub(super) struct CostModel {
    pub(super) cost: Vec<[f64; N_SYM]>,
    /// `P` of the layout.
    small: u8,
    /// Logical tables `T`.
    n_logical: u8,
}

impl CostModel {
    /// Cost model of `tables`, the `P + PERIOD` tables of a family for `P = small`.
    pub(super) fn new(tables: &[Vec<u16>], small: u8) -> Self {
        let cost = tables
            .iter()
            .map(|cum| {
                let mut c = [0f64; N_SYM];
                for (s, cs) in c.iter_mut().enumerate() {
                    *cs = libm::log2(M / f64::from(cum[s + 1] - cum[s]));
                }
                c
            })
            .collect();
        CostModel {
            cost,
            small,
            n_logical: n_logical(small),
        }
    }

    /// Bits to code `v` with logical table `t`.
    #[inline]
    pub(super) fn bits(&self, v: i32, t: usize) -> f64 {
        let (phys, b) = physical(t, self.small);
        let c = &self.cost[phys];
        let half = i32::from(HALF);
        let h = if b == 0 { v } else { (v + (1 << (b - 1))) >> b };
        if h >= -half && h < half {
            c[(h + half) as usize] + f64::from(b)
        } else {
            let u = ((v << 1) ^ (v >> 31)) as u32;
            let n = 32 - u.leading_zeros();
            c[ESC] + 5.0 + f64::from(n.saturating_sub(1))
        }
    }
}

/// Logical table of index `idx` in class `class`, with `n_logical` tables.
pub(super) fn logical(idx: usize, class: usize, n_logical: u8) -> usize {
    (idx as i64 + i64::from(CLASS_BASE) + class as i64).clamp(0, i64::from(n_logical) - 1) as usize
}

/// Fits per-component indices for one family of values (`vals[p][j]`) by
/// alternating per-pattern class choice and per-component index choice.
/// Returns the indices and the total ideal cost in bits.
pub(super) fn fit_indices(vals: &[[i32; DIM]], model: &CostModel, rounds: usize) -> (Vec<u8>, f64) {
    let n = vals.len() as f64;
    let t_max = model.n_logical;
    let mut idx: Vec<usize> = (0..DIM)
        .map(|j| {
            let m = vals.iter().map(|v| f64::from(v[j])).sum::<f64>() / n;
            let var = vals
                .iter()
                .map(|v| (f64::from(v[j]) - m).powi(2))
                .sum::<f64>()
                / n;
            let s = libm::sqrt(var).max(1.0 / 16.0);
            let t = libm::round(4.0 * libm::log2(s) + 16.0);
            t.clamp(0.0, f64::from(t_max) - 1.0) as usize
        })
        .collect();
    let mut classes = vec![(-i64::from(CLASS_BASE)) as usize; vals.len()];
    let mut total = 0.0;
    for _ in 0..rounds {
        total = 0.0;
        for (v, cl) in vals.iter().zip(classes.iter_mut()) {
            let mut best = (f64::INFINITY, 0);
            for c in 0..usize::from(N_CLASSES) {
                let mut s = 0.0;
                for (j, &x) in v.iter().enumerate() {
                    s += model.bits(x, logical(idx[j], c, t_max));
                }
                if s < best.0 {
                    best = (s, c);
                }
            }
            *cl = best.1;
            total += best.0;
        }
        for (j, ij) in idx.iter_mut().enumerate() {
            let lo = ij.saturating_sub(3);
            let hi = (*ij + 3).min(usize::from(t_max) - 1);
            let mut best = (f64::INFINITY, *ij);
            for cand in lo..=hi {
                let s: f64 = vals
                    .iter()
                    .zip(classes.iter())
                    .map(|(v, &c)| model.bits(v[j], logical(cand, c, t_max)))
                    .sum();
                if s < best.0 {
                    best = (s, cand);
                }
            }
            *ij = best.1;
        }
    }
    (idx.into_iter().map(|t| t as u8).collect(), total)
}

/// Serialises a blob and sets its id; `small` is the header's `P` (the
/// tables are its `P + PERIOD` per family).
#[allow(clippy::too_many_arguments)]
pub fn write_blob(
    small: u8,
    basis: Option<&[i16]>,
    mean: &[f32],
    enc_mul: &[f32],
    dec_mul: &[f32],
    abs_idx: &[u8],
    delta_idx: &[u8],
    abs_tables: &[Vec<u16>],
    delta_tables: &[Vec<u16>],
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&codec::MAGIC);
    b.push(codec::FORMAT_VERSION);
    b.push(if basis.is_some() {
        codec::FLAG_BASIS
    } else {
        0
    });
    b.extend_from_slice(&(DIM as u16).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.push(14);
    b.push(HALF);
    b.push(small);
    b.push(PERIOD);
    b.push(n_logical(small));
    b.push(N_CLASSES);
    b.push(CLASS_BASE as u8);
    b.push(0);
    assert_eq!(b.len(), codec::HEADER_LEN);
    for s in [mean, enc_mul, dec_mul] {
        for x in s {
            b.extend_from_slice(&x.to_le_bytes());
        }
    }
    b.extend_from_slice(abs_idx);
    b.extend_from_slice(delta_idx);
    for t in abs_tables.iter().chain(delta_tables) {
        for c in t {
            b.extend_from_slice(&c.to_le_bytes());
        }
    }
    if let Some(basis) = basis {
        for x in basis {
            b.extend_from_slice(&x.to_le_bytes());
        }
    }
    let id = codec::codebook_id(&b);
    b[8..12].copy_from_slice(&id.to_le_bytes());
    b
}
