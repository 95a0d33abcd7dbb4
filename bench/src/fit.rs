//! Fits a codebook blob from the catalogue items: PCA basis (optional),
//! mean, per-component steps, per-component table indices and the shared
//! frequency tables. The blob format is documented in `docs/codec.md` and
//! parsed by `omega_tv_sync::codec::Codebook::from_bytes`.

use crate::data::Row;
use crate::eig::symmetric_eigen;
use crate::synth::Synth;
use omega_tv_sync::codec::{self, Codebook, Codes};
use omega_tv_sync::{Embedding, DIM};

/// Table half-width: symbols are values `-HALF..HALF` plus an escape.
pub const HALF: u8 = 40;
/// Logical tables `0..N_SMALL + PERIOD` send no raw bits (scale below 4 steps).
pub const N_SMALL: u8 = 20;
/// Above `N_SMALL`, tables repeat every `PERIOD` indices (one octave) with one more raw bit.
pub const PERIOD: u8 = 4;
/// Logical tables: scales `2^(t/4 - 4)` for `t` in `0..N_LOGICAL` (1/16 to ~2^14.75 steps).
pub const N_LOGICAL: u8 = N_SMALL + PERIOD * 13;
/// Scale classes the encoder chooses from.
pub const N_CLASSES: u8 = 16;
/// Index offset of class 0: classes shift every index by `-8..=7` quarter octaves.
pub const CLASS_BASE: i8 = -8;
const N_PHYS: usize = (N_SMALL + PERIOD) as usize;
const N_SYM: usize = 2 * HALF as usize + 1;
const ESC: usize = N_SYM - 1;
const M: f64 = 16384.0;
/// Smallest escape probability of a table.
const ESC_FLOOR: f64 = 1.0 / 4096.0;
/// Generalised-Gaussian shapes tried for each table family.
pub const BETAS: [f64; 4] = [1.2, 1.5, 1.8, 2.1];

/// What to generate.
#[derive(Clone, Debug)]
pub struct Options {
    /// Fit and store a PCA basis (the default profile) or use the identity (small-flash profile).
    pub basis: bool,
    /// Base quantisation step `s0`.
    pub step: f64,
    /// Step weighting exponent on the training patterns' spread:
    /// `step_j = s0 * (sigma_j / median sigma)^-alpha * (lambda_j / median lambda)^-gamma`.
    pub alpha: f64,
    /// Step weighting exponent on the catalogue's variance `lambda_j` along
    /// component `j` (see `alpha`). A ranking error is the error's inner
    /// product with items, whose variance is `sum_j lambda_j e_j^2`:
    /// `gamma = 0.5` equalises every component's share of it.
    pub gamma: f64,
    /// Fit the basis to the synthetic training patterns (the vectors devices
    /// hold) instead of the catalogue items.
    pub pattern_basis: bool,
    /// Number of synthetic training patterns.
    pub n_train: usize,
    /// PRNG seed of the training patterns.
    pub seed: u64,
}

/// Step-independent part of a fit: basis, training data and mean.
pub struct Prepared {
    /// i16 basis rows and per-row scale, or `None` for the identity.
    pub basis: Option<(Vec<i16>, Vec<f64>)>,
    /// Synthetic training patterns.
    pub train: Vec<Row>,
    /// One synthetic drift of each training pattern.
    pub drifted: Vec<Row>,
    /// Mean of the training patterns, rounded to f32 as stored.
    pub mean: [f32; DIM],
    /// Variance over the catalogue items of each component's coefficient.
    pub item_var: Vec<f64>,
}

/// PCA of `items` (catalogue items or training patterns): rows sorted by
/// decreasing variance, sign fixed so the largest-magnitude entry is
/// positive, stored as i16 with a per-row scale.
pub fn pca_basis(items: &[Row]) -> (Vec<i16>, Vec<f64>) {
    let n = items.len() as f64;
    let mut m = [0f64; DIM];
    for x in items {
        for (a, &v) in m.iter_mut().zip(x.iter()) {
            *a += f64::from(v);
        }
    }
    for a in m.iter_mut() {
        *a /= n;
    }
    let mut cov = vec![0f64; DIM * DIM];
    let mut c = [0f64; DIM];
    for x in items {
        for ((ci, &v), mi) in c.iter_mut().zip(x.iter()).zip(m.iter()) {
            *ci = f64::from(v) - mi;
        }
        for i in 0..DIM {
            let ci = c[i];
            let row = &mut cov[i * DIM..(i + 1) * DIM];
            for j in i..DIM {
                row[j] += ci * c[j];
            }
        }
    }
    for i in 0..DIM {
        for j in i..DIM {
            let v = cov[i * DIM + j] / n;
            cov[i * DIM + j] = v;
            cov[j * DIM + i] = v;
        }
    }
    let (_vals, vecs) = symmetric_eigen(&cov, DIM);
    let mut basis = Vec::with_capacity(DIM * DIM);
    let mut scales = Vec::with_capacity(DIM);
    for mut v in vecs {
        let mut arg = 0;
        for (d, x) in v.iter().enumerate() {
            if x.abs() > v[arg].abs() {
                arg = d;
            }
        }
        if v[arg] < 0.0 {
            for x in v.iter_mut() {
                *x = -*x;
            }
        }
        let scale = v[arg] / 32767.0;
        for x in &v {
            basis.push((x / scale).round().clamp(-32767.0, 32767.0) as i16);
        }
        scales.push(scale);
    }
    (basis, scales)
}

/// Builds the step-independent part of a fit.
pub fn prepare(items: &[Row], basis: bool, n_train: usize, seed: u64) -> Prepared {
    prepare_with(items, basis, false, n_train, seed)
}

/// [`prepare`], with the basis fitted to the training patterns if
/// `pattern_basis`.
pub fn prepare_with(
    items: &[Row],
    basis: bool,
    pattern_basis: bool,
    n_train: usize,
    seed: u64,
) -> Prepared {
    let mut synth = Synth::new(items, seed);
    let train = synth.patterns(n_train);
    let drifted: Vec<Row> = train.iter().map(|p| synth.drift(p)).collect();
    let basis = basis.then(|| pca_basis(if pattern_basis { &train } else { items }));
    let mut mean = [0f64; DIM];
    for p in &train {
        for (a, &v) in mean.iter_mut().zip(p.iter()) {
            *a += f64::from(v);
        }
    }
    let mut mean32 = [0f32; DIM];
    for (o, a) in mean32.iter_mut().zip(mean.iter()) {
        *o = (a / train.len() as f64) as f32;
    }
    let mut prep = Prepared {
        basis,
        train,
        drifted,
        mean: mean32,
        item_var: Vec::new(),
    };
    let ys: Vec<[f64; DIM]> = items.iter().map(|x| coefficients(&prep, x)).collect();
    prep.item_var = spreads(&ys).into_iter().map(|s| s * s).collect();
    prep
}

/// Standard deviation of each coefficient over `ys`.
fn spreads(ys: &[[f64; DIM]]) -> Vec<f64> {
    let n = ys.len() as f64;
    (0..DIM)
        .map(|j| {
            let m = ys.iter().map(|y| y[j]).sum::<f64>() / n;
            libm::sqrt(ys.iter().map(|y| (y[j] - m).powi(2)).sum::<f64>() / n)
        })
        .collect()
}

/// Median of `v`.
fn median(v: &[f64]) -> f64 {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let h = sorted.len() / 2;
    (sorted[h - 1] + sorted[h]) / 2.0
}

/// Unquantised coefficients `y_j` of `x` (f64).
fn coefficients(prep: &Prepared, x: &Row) -> [f64; DIM] {
    let mut r = [0f64; DIM];
    for ((o, &v), &m) in r.iter_mut().zip(x.iter()).zip(prep.mean.iter()) {
        *o = f64::from(v - m);
    }
    match &prep.basis {
        None => r,
        Some((b, s)) => {
            let mut y = [0f64; DIM];
            for (j, yj) in y.iter_mut().enumerate() {
                let row = &b[j * DIM..(j + 1) * DIM];
                *yj = s[j]
                    * row
                        .iter()
                        .zip(r.iter())
                        .map(|(&b, r)| f64::from(b) * r)
                        .sum::<f64>();
            }
            y
        }
    }
}

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

/// The tables of one family (`N_PHYS` cumulative arrays).
pub fn family_tables(beta: f64) -> Vec<Vec<u16>> {
    (0..N_PHYS)
        .map(|p| gg_table(libm::exp2(p as f64 / 4.0 - 4.0), beta))
        .collect()
}

/// Physical table and raw bits of a logical index (as in the core).
fn physical(t: usize) -> (usize, u32) {
    let (s, p) = (usize::from(N_SMALL), usize::from(PERIOD));
    if t < s {
        (t, 0)
    } else {
        (s + (t - s) % p, ((t - s) / p) as u32)
    }
}

/// Ideal code lengths (bits) of every symbol of every table.
struct CostModel {
    cost: Vec<[f64; N_SYM]>,
}

impl CostModel {
    fn new(tables: &[Vec<u16>]) -> Self {
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
        CostModel { cost }
    }

    /// Bits to code `v` with logical table `t`.
    #[inline]
    fn bits(&self, v: i32, t: usize) -> f64 {
        let (phys, b) = physical(t);
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

fn logical(idx: usize, class: usize) -> usize {
    (idx as i64 + i64::from(CLASS_BASE) + class as i64).clamp(0, i64::from(N_LOGICAL) - 1) as usize
}

/// Fits per-component indices for one family of values (`vals[p][j]`) by
/// alternating per-pattern class choice and per-component index choice.
/// Returns the indices and the total ideal cost in bits.
fn fit_indices(vals: &[[i32; DIM]], model: &CostModel, rounds: usize) -> (Vec<u8>, f64) {
    let n = vals.len() as f64;
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
            t.clamp(0.0, f64::from(N_LOGICAL) - 1.0) as usize
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
                    s += model.bits(x, logical(idx[j], c));
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
            let hi = (*ij + 3).min(usize::from(N_LOGICAL) - 1);
            let mut best = (f64::INFINITY, *ij);
            for cand in lo..=hi {
                let s: f64 = vals
                    .iter()
                    .zip(classes.iter())
                    .map(|(v, &c)| model.bits(v[j], logical(cand, c)))
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

/// Serialises a blob and sets its id.
#[allow(clippy::too_many_arguments)]
pub fn write_blob(
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
    b.push(N_SMALL);
    b.push(PERIOD);
    b.push(N_LOGICAL);
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

/// Fit report of one family.
#[derive(Clone, Debug)]
pub struct FamilyFit {
    /// Chosen shape.
    pub beta: f64,
    /// Ideal bits per training pattern.
    pub bits: f64,
}

/// Result of [`fit`]: the blob and what was chosen.
pub struct Fitted {
    /// The codebook blob.
    pub blob: Vec<u8>,
    /// Absolute family.
    pub abs: FamilyFit,
    /// Delta family.
    pub delta: FamilyFit,
}

/// Quantises with a codebook (validated embeddings only).
fn codes_of(cb: &Codebook<'_>, x: &Row) -> Codes {
    let e = Embedding::new(*x).expect("training vectors are unit norm");
    cb.quantize(&e)
}

/// Best shape of a family: (bits, beta, indices, tables).
type FamilyChoice = (f64, f64, Vec<u8>, Vec<Vec<u16>>);

/// Fits steps, indices and tables for given step parameters.
pub fn fit(prep: &Prepared, step: f64, alpha: f64) -> Fitted {
    fit_weighted(prep, step, alpha, 0.0)
}

/// [`fit`] with the catalogue-variance weighting `gamma` (see [`Options`]).
pub fn fit_weighted(prep: &Prepared, step: f64, alpha: f64, gamma: f64) -> Fitted {
    let n = prep.train.len() as f64;
    let ys: Vec<[f64; DIM]> = prep.train.iter().map(|x| coefficients(prep, x)).collect();
    let sigma = spreads(&ys);
    let med = median(&sigma);
    let lmed = median(&prep.item_var);
    let mut enc_mul = vec![0f32; DIM];
    let mut dec_mul = vec![0f32; DIM];
    for j in 0..DIM {
        let scale = prep.basis.as_ref().map_or(1.0, |(_, s)| s[j]);
        let mut sj = step * libm::pow(sigma[j] / med, -alpha);
        if gamma != 0.0 {
            sj *= libm::pow(prep.item_var[j] / lmed, -gamma);
        }
        enc_mul[j] = (scale / sj) as f32;
        dec_mul[j] = (scale * sj) as f32;
    }
    let basis = prep.basis.as_ref().map(|(b, _)| b.as_slice());
    let t0 = family_tables(2.0);
    let idx0 = vec![40u8; DIM];
    let draft = write_blob(
        basis, &prep.mean, &enc_mul, &dec_mul, &idx0, &idx0, &t0, &t0,
    );
    let cb = Codebook::from_bytes(&draft).expect("draft codebook is valid");
    let abs: Vec<[i32; DIM]> = prep
        .train
        .iter()
        .map(|x| codes_of(&cb, x).map(i32::from))
        .collect();
    let delta: Vec<[i32; DIM]> = prep
        .drifted
        .iter()
        .zip(abs.iter())
        .map(|(x, a)| {
            let q = codes_of(&cb, x);
            let mut d = [0i32; DIM];
            for ((o, &q), &a) in d.iter_mut().zip(q.iter()).zip(a.iter()) {
                *o = i32::from(q) - a;
            }
            d
        })
        .collect();
    let fam = |vals: &[[i32; DIM]]| {
        let mut best: Option<FamilyChoice> = None;
        for &beta in &BETAS {
            let tables = family_tables(beta);
            let (idx, bits) = fit_indices(vals, &CostModel::new(&tables), 3);
            if best.as_ref().is_none_or(|b| bits < b.0) {
                best = Some((bits, beta, idx, tables));
            }
        }
        best.expect("BETAS is not empty")
    };
    let (abits, abeta, aidx, atab) = fam(&abs);
    let (dbits, dbeta, didx, dtab) = fam(&delta);
    let blob = write_blob(
        basis, &prep.mean, &enc_mul, &dec_mul, &aidx, &didx, &atab, &dtab,
    );
    Fitted {
        blob,
        abs: FamilyFit {
            beta: abeta,
            bits: abits / n,
        },
        delta: FamilyFit {
            beta: dbeta,
            bits: dbits / n,
        },
    }
}

/// Generates a codebook blob from the catalogue items.
pub fn generate(items: &[Row], opts: &Options) -> Fitted {
    let prep = prepare_with(
        items,
        opts.basis,
        opts.pattern_basis,
        opts.n_train,
        opts.seed,
    );
    fit_weighted(&prep, opts.step, opts.alpha, opts.gamma)
}

/// A shipped codebook: its name, its file under `core/codebooks/`, and the
/// options that generate it (from `data/minilm/items_public.f32`).
#[derive(Clone, Debug)]
pub struct Profile {
    /// Profile name, as passed to `gen-codebook --profile`.
    pub name: &'static str,
    /// File name under `core/codebooks/`.
    pub file: &'static str,
    /// Generation options.
    pub opts: Options,
}

/// The shipped profiles. `step` and `alpha` were chosen with
/// `gen-codebook --tune` on synthetic validation patterns (see `docs/codec.md`).
pub fn profiles() -> [Profile; 2] {
    [
        Profile {
            name: "minilm-v1",
            file: "minilm-v1.bin",
            opts: Options {
                basis: true,
                step: 1.0 / 512.0,
                alpha: 0.25,
                gamma: 0.1,
                pattern_basis: false,
                n_train: 8000,
                seed: 1,
            },
        },
        Profile {
            name: "minilm-small-v1",
            file: "minilm-small-v1.bin",
            opts: Options {
                basis: false,
                step: 0.95 / 512.0,
                alpha: 0.0,
                gamma: 0.0,
                pattern_basis: false,
                n_train: 8000,
                seed: 1,
            },
        },
    ]
}
