//! Differential privacy of global patterns: the settings, the noise source
//! and the mechanism itself (pure functions over the exact, bounded sums of
//! one cohort), so that it can be tested and measured in-process.
//!
//! # The mechanism
//! Devices' patterns are grouped into cohorts by a data-independent key:
//! (category, the signs of the first [`DpConfig::cell_bits`] codebook
//! coefficients of the pattern; [`cell_of`]). A device's key depends only on
//! its own pattern, so adding or removing one device never moves another
//! device's contribution between cohorts.
//!
//! Contribution bounding (user level): a device contributes to at most
//! [`DpConfig::max_globals`] cohorts (`m`); in one cohort its patterns count
//! together for at most `full_weight_samples` samples, each vector clipped to
//! unit L2 norm, weight `samples/full_weight_samples * rate <= 1`. Per
//! cohort the released statistics are, in units of `full_weight_samples`:
//! the weighted vector sum `S` (one device moves it by L2 <= 1), the number
//! of devices `C` (<= 1), the samples `N` (<= 1) and the weight `W` (<= 1).
//!
//! Each release adds independent Gaussian noise to every statistic of every
//! cohort: `N(0, sigma_vector^2)` per coordinate of `S`, `N(0,
//! sigma_scalar^2)` to each of `C`, `N`, `W` (the Gaussian mechanism), and
//! publishes a cohort only when its *noisy* count passes `threshold`. What
//! devices see (direction, contributors, samples, rate) is computed from the
//! noisy values only ([`NoisyCohort`]).
//!
//! The privacy loss is accounted in zero-concentrated DP
//! ([`super::accountant`]).

use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Differential-privacy settings of the release of global patterns.
#[derive(Clone, Debug)]
pub struct DpConfig {
    /// On by default. Off, the server publishes exact aggregates of `k`
    /// distinct devices whenever they change (k-anonymity only: no
    /// protection against Sybil or differencing attacks; closed test fleets).
    pub enabled: bool,
    /// Time between releases. Contributions are aggregated continuously,
    /// but global patterns and trends are published only once per epoch
    /// (aligned on multiples of the epoch since the Unix epoch).
    pub epoch: Duration,
    /// The window the cumulative privacy loss is stated over.
    pub window: Duration,
    /// `m`: most cohorts (global patterns) one device contributes to.
    pub max_globals: u32,
    /// Samples at which a device reaches full weight in a cohort (the clip
    /// of samples per device and cohort, over all its pattern ids).
    pub full_weight_samples: u32,
    /// Standard deviation of the noise on each coordinate of the vector sum.
    pub sigma_vector: f64,
    /// Standard deviation of the noise on the count, samples and weight.
    pub sigma_scalar: f64,
    /// A cohort is published only when its noisy device count is at least this.
    pub threshold: f64,
    /// The delta the epsilons are stated at (half of it for the zCDP
    /// conversion, half for the thresholding of cohorts over the window).
    pub delta: f64,
    /// The server refuses to start when the window epsilon exceeds this.
    pub budget_epsilon: f64,
    /// Sign bits of codebook coefficients in a cohort key (`2^bits` cohorts
    /// per category).
    pub cell_bits: u32,
    /// TEST AND SIMULATION ONLY: seeds the noise generator, making every
    /// release predictable (to anyone who knows the seed, too). `None`, the
    /// default, seeds ChaCha20 from the operating system's CSPRNG.
    pub seed: Option<u64>,
}

impl Default for DpConfig {
    /// The defaults defended in docs/privacy.md: hourly releases, `m = 4`,
    /// `sigma_vector = 12`, `sigma_scalar = 24`, threshold 180, stated at
    /// delta = 1e-10: epsilon about 1.5 per release and 8.0 per day, within
    /// a budget of 10.
    fn default() -> Self {
        DpConfig {
            enabled: true,
            epoch: Duration::from_secs(3600),
            window: Duration::from_secs(86_400),
            max_globals: 4,
            full_weight_samples: 50,
            sigma_vector: 12.0,
            sigma_scalar: 24.0,
            threshold: 180.0,
            delta: 1e-10,
            budget_epsilon: 10.0,
            cell_bits: 6,
            seed: None,
        }
    }
}

impl DpConfig {
    /// The exact (k-anonymity only) mode: see [`DpConfig::enabled`].
    pub fn disabled() -> Self {
        DpConfig {
            enabled: false,
            ..Default::default()
        }
    }
}

/// The noise source: ChaCha20, seeded from the operating system (or, for
/// tests and simulations only, from [`DpConfig::seed`]).
pub struct Noise {
    rng: ChaCha20Rng,
    spare: Option<f64>,
}

impl std::fmt::Debug for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Noise")
    }
}

impl Noise {
    /// A generator seeded from the OS CSPRNG, or from `seed` (test only).
    pub fn new(seed: Option<u64>) -> std::io::Result<Self> {
        let rng = match seed {
            Some(s) => ChaCha20Rng::seed_from_u64(s),
            None => {
                let mut k = [0u8; 32];
                getrandom::fill(&mut k).map_err(|e| std::io::Error::other(e.to_string()))?;
                ChaCha20Rng::from_seed(k)
            }
        };
        Ok(Noise { rng, spare: None })
    }

    /// Uniform in (0, 1] with 53 random bits.
    fn uniform(&mut self) -> f64 {
        ((self.rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// A standard normal deviate (Box-Muller, both outputs used).
    pub fn gaussian(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }
}

/// The exact statistics of one cohort, in units of `full_weight_samples`
/// (each device moves each by at most 1; see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Cohort {
    /// Weighted vector sum `S`.
    pub sum: Vec<f64>,
    /// Devices `C`.
    pub count: f64,
    /// Samples `N`.
    pub samples: f64,
    /// Weight `W` (samples times rate).
    pub weight: f64,
}

/// One release of a cohort: its statistics with noise added.
#[derive(Clone, Debug, PartialEq)]
pub struct NoisyCohort {
    /// `S` plus noise.
    pub sum: Vec<f64>,
    /// `C` plus noise.
    pub count: f64,
    /// `N` plus noise.
    pub samples: f64,
    /// `W` plus noise.
    pub weight: f64,
}

/// The Gaussian mechanism on one cohort.
pub fn perturb(c: &Cohort, cfg: &DpConfig, noise: &mut Noise) -> NoisyCohort {
    let sv = cfg.sigma_vector.max(0.0);
    let ss = cfg.sigma_scalar.max(0.0);
    NoisyCohort {
        sum: c.sum.iter().map(|x| x + sv * noise.gaussian()).collect(),
        count: c.count + ss * noise.gaussian(),
        samples: c.samples + ss * noise.gaussian(),
        weight: c.weight + ss * noise.gaussian(),
    }
}

/// What is published from a noisy cohort, or `None` when its noisy count is
/// below the threshold (or its noisy sum is zero).
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    /// Unit direction of the noisy sum.
    pub unit: Vec<f32>,
    /// Noisy device count, rounded.
    pub contributors: u32,
    /// Noisy samples, in samples, rounded.
    pub samples: u32,
    /// Noisy weight over noisy samples, clamped to [0, 1].
    pub rate: f32,
}

impl NoisyCohort {
    /// Post-processing: the published values (`None` below the threshold).
    pub fn publish(&self, cfg: &DpConfig) -> Option<Published> {
        if self.count.is_nan() || self.count < cfg.threshold {
            return None;
        }
        let n = self.sum.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n.is_nan() || n <= 1e-12 {
            return None;
        }
        let unit = self.sum.iter().map(|x| (x / n) as f32).collect();
        let scale = f64::from(cfg.full_weight_samples.max(1));
        let rate = if self.samples > 0.0 {
            (self.weight / self.samples).clamp(0.0, 1.0) as f32
        } else {
            0.0
        };
        Some(Published {
            unit,
            contributors: self.count.round().clamp(0.0, f64::from(u32::MAX)) as u32,
            samples: (self.samples * scale)
                .round()
                .clamp(0.0, f64::from(u32::MAX)) as u32,
            rate,
        })
    }
}

/// The cohort key bits of a pattern: bit `i` set when codebook coefficient
/// `i` is positive, for the first `bits` coefficients (at most 31). With a
/// PCA codebook these are the directions of largest variance of the
/// catalogue, so a cohort is an orthant of the leading principal subspace.
pub fn cell_of(codes: &[i16], bits: u32) -> u32 {
    codes
        .iter()
        .take(bits.min(31) as usize)
        .enumerate()
        .fold(0u32, |k, (i, &c)| if c > 0 { k | (1 << i) } else { k })
}

/// The global pattern id of a cohort: a hash of (category, cell), never 0,
/// so ids say nothing about how many cohorts exist or when they appeared.
pub fn cohort_id(category: &str, cell: u32) -> u32 {
    // FNV-1a, 32 bits: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in category.bytes().chain([0xff]).chain(cell.to_le_bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// Scales `v` down to unit L2 norm when it is longer.
pub fn clip_unit(v: &mut [f32]) {
    let n = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if n > 1.0 {
        for x in v.iter_mut() {
            *x = (f64::from(*x) / n) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_has_unit_variance_and_the_seed_is_repeatable() {
        let mut n = Noise::new(Some(1)).unwrap();
        let xs: Vec<f64> = (0..200_000).map(|_| n.gaussian()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
        let tail = xs.iter().filter(|x| **x > 2.0).count() as f64 / xs.len() as f64;
        assert!((tail - 0.02275).abs() < 0.002, "P(Z > 2) = {tail}");
        let mut a = Noise::new(Some(9)).unwrap();
        let mut b = Noise::new(Some(9)).unwrap();
        assert_eq!(a.gaussian(), b.gaussian());
        let mut os1 = Noise::new(None).unwrap();
        let mut os2 = Noise::new(None).unwrap();
        assert_ne!(os1.gaussian(), os2.gaussian(), "seeded from the OS");
    }

    #[test]
    fn cells_and_ids() {
        assert_eq!(cell_of(&[5, -3, 0, 7], 4), 0b1001);
        assert_eq!(cell_of(&[5, -3, 0, 7], 1), 1);
        assert_ne!(cohort_id("drama", 1), cohort_id("drama", 2));
        assert_ne!(cohort_id("drama", 1), cohort_id("news", 1));
        assert_ne!(cohort_id("", 0), 0);
        let mut v = vec![3.0f32, 4.0];
        clip_unit(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn publishes_only_above_the_noisy_threshold() {
        let cfg = DpConfig {
            threshold: 10.0,
            ..Default::default()
        };
        let mut c = NoisyCohort {
            sum: vec![0.0, 2.0],
            count: 9.9,
            samples: 20.0,
            weight: 15.0,
        };
        assert_eq!(c.publish(&cfg), None);
        c.count = 10.4;
        let p = c.publish(&cfg).unwrap();
        assert_eq!(p.unit, vec![0.0, 1.0]);
        assert_eq!(p.contributors, 10);
        assert_eq!(p.samples, 1000);
        assert!((p.rate - 0.75).abs() < 1e-6);
    }
}
