//! Fits a codebook blob from the catalogue items: PCA basis (optional),
//! mean, per-component steps, per-component table indices and the shared
//! frequency tables. The blob format is documented in `docs/codec.md` and
//! parsed by `omega_tv_sync::codec::Codebook::from_bytes`.

use crate::data::Row;
use crate::eig::symmetric_eigen;
use crate::synth::Synth;
use omega_tv_sync::codec::{self, Codebook, Codes};
use omega_tv_sync::{Embedding, DIM};

mod tables;
use tables::*;
pub use tables::{family_tables, gg_table, write_blob};

/// Table half-width: symbols are values `-HALF..HALF` plus an escape.
pub const HALF: u8 = 40;
/// Default `P` (the blob header's): `P + PERIOD` physical tables per family;
/// logical tables `0..P + PERIOD` send no raw bits (spread below 4 steps for
/// `P = 20`, below 8 steps for `P = 24`).
pub const N_SMALL: u8 = 20;
/// From `P` on, tables repeat every `PERIOD` indices (one octave) with one more raw bit.
pub const PERIOD: u8 = 4;
/// Octaves of logical tables above `P`: `T = P + PERIOD * 13` logical tables,
/// scales `2^(t/4 - 4)` (1/16 to ~2^14.75 steps for `P = 20`), raw bits up to 12.
const RAW_OCTAVES: u8 = 13;

/// Number of logical tables `T` for `P = p`.
pub const fn n_logical(p: u8) -> u8 {
    p + PERIOD * RAW_OCTAVES
}
/// Scale classes the encoder chooses from.
pub const N_CLASSES: u8 = 16;
/// Index offset of class 0: classes shift every index by `-8..=7` quarter octaves.
pub const CLASS_BASE: i8 = -8;
const N_SYM: usize = 2 * HALF as usize + 1;
const ESC: usize = N_SYM - 1;
const M: f64 = 16384.0;
/// Smallest escape probability of a table.
const ESC_FLOOR: f64 = 1.0 / 4096.0;
/// Largest quantisation step: a coefficient of a unit vector minus a mean
/// of unit vectors has magnitude below 2, so with a step of 4 its code is 0.
/// The parser's bound on `dec_mul` (with no basis a step is its `dec_mul`).
const MAX_STEP: f64 = omega_tv_sync::codec::MAX_DEC_MUL as f64;
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
    /// The blob header's `P` (see [`N_SMALL`]): raw low bits start at a
    /// spread of `2^(P/4 - 3)` steps (4 for `P = 20`, 8 for `P = 24`).
    pub plain_tables: u8,
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
    fit_weighted(prep, step, alpha, 0.0, N_SMALL)
}

/// [`fit`] with the catalogue-variance weighting `gamma` and the table
/// layout `P = small` (see [`Options`]).
pub fn fit_weighted(prep: &Prepared, step: f64, alpha: f64, gamma: f64, small: u8) -> Fitted {
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
        // Components the catalogue barely spans (the last few PCA rows have
        // a variance near 0) would get steps of 10^20 and more, whose squares
        // overflow f32 in `CoefficientSpace`; any step above MAX_STEP
        // already quantises every unit vector's coefficient to 0.
        sj = sj.min(MAX_STEP);
        enc_mul[j] = (scale / sj) as f32;
        dec_mul[j] = (scale * sj) as f32;
    }
    let basis = prep.basis.as_ref().map(|(b, _)| b.as_slice());
    let t0 = family_tables(2.0, small);
    let idx0 = vec![40u8; DIM];
    let draft = write_blob(
        small, basis, &prep.mean, &enc_mul, &dec_mul, &idx0, &idx0, &t0, &t0,
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
            let tables = family_tables(beta, small);
            let (idx, bits) = fit_indices(vals, &CostModel::new(&tables, small), 3);
            if best.as_ref().is_none_or(|b| bits < b.0) {
                best = Some((bits, beta, idx, tables));
            }
        }
        best.expect("BETAS is not empty")
    };
    let (abits, abeta, aidx, atab) = fam(&abs);
    let (dbits, dbeta, didx, dtab) = fam(&delta);
    let blob = write_blob(
        small, basis, &prep.mean, &enc_mul, &dec_mul, &aidx, &didx, &atab, &dtab,
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
    fit_weighted(&prep, opts.step, opts.alpha, opts.gamma, opts.plain_tables)
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

/// The shipped profiles. `step`, `alpha`, `gamma` and `plain_tables` were
/// chosen with `gen-codebook --tune` on synthetic validation patterns (see
/// `docs/codec.md`).
pub fn profiles() -> [Profile; 2] {
    [
        Profile {
            name: "minilm-v1",
            file: "minilm-v1.bin",
            opts: Options {
                basis: true,
                step: 1.15 / 512.0,
                alpha: 0.25,
                gamma: 0.25,
                plain_tables: N_SMALL,
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
                plain_tables: N_SMALL,
                pattern_basis: false,
                n_train: 8000,
                seed: 1,
            },
        },
    ]
}
