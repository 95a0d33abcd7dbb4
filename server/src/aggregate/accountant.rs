//! The privacy accountant: zero-concentrated differential privacy (zCDP,
//! Bun & Steinke, "Concentrated Differential Privacy: Simplifications,
//! Extensions, and Lower Bounds", TCC 2016).
//!
//! Formulas (neighbouring datasets differ by all the data of one device):
//! - The Gaussian mechanism with L2 sensitivity `D` and noise `N(0, s^2)`
//!   per coordinate is `rho`-zCDP with `rho = D^2 / (2 s^2)` (Prop. 1.6).
//! - zCDP composes additively: `rho` of several mechanisms is the sum
//!   (Lemma 2.3). One release adds noise to, per cohort, the vector sum
//!   (sensitivity 1, `sigma_vector`) and three scalars (sensitivity 1 each,
//!   `sigma_scalar`); one device reaches at most `m` cohorts, so
//!   `rho_release = m * (1 / (2 sigma_vector^2) + 3 / (2 sigma_scalar^2))`.
//!   Over a window of `k` releases, `rho_window = k * rho_release`.
//! - `rho`-zCDP implies `(eps, delta)`-DP for every `delta > 0` with
//!   `eps = rho + 2 sqrt(rho ln(1/delta))` (Prop. 1.3).
//! - Cohorts are keyed by the device's own data, so a cohort may exist only
//!   because of one device; it is published only when its noisy count
//!   `1 + N(0, sigma_scalar^2)` reaches `threshold`, which happens with
//!   probability `Q((threshold - 1) / sigma_scalar)` per cohort (the
//!   standard argument for differentially private partition selection).
//!   Over the window this adds `k * m * Q(...)` to delta; the configured
//!   delta is split in two halves, one for this term (which must fit) and
//!   one for the zCDP conversion (at which the epsilons are stated).

use std::collections::VecDeque;
use std::time::Duration;

use super::dp::DpConfig;
use crate::store::{Meta, ReadTxn, StoreResult, WriteTxn, DP_WINDOW_SLOTS};

/// `eps` of `rho`-zCDP at `delta` (Bun & Steinke 2016, Prop. 1.3).
pub fn zcdp_epsilon(rho: f64, delta: f64) -> f64 {
    if rho <= 0.0 {
        return 0.0;
    }
    rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt()
}

/// `rho` of the Gaussian mechanism with L2 sensitivity `sensitivity` and
/// noise standard deviation `sigma` (Bun & Steinke 2016, Prop. 1.6).
pub fn gaussian_rho(sensitivity: f64, sigma: f64) -> f64 {
    if sigma <= 0.0 {
        return f64::INFINITY;
    }
    sensitivity * sensitivity / (2.0 * sigma * sigma)
}

/// The standard normal upper tail `P(Z > z)`.
pub fn normal_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Chebyshev fit, fractional error below
/// 1.2e-7 everywhere; Numerical Recipes, `erfcc`).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// A configuration the accountant refuses.
#[derive(Clone, Debug, PartialEq)]
pub enum BudgetError {
    /// The window epsilon exceeds the budget.
    OverBudget {
        /// Epsilon over the window at the stated delta.
        window_epsilon: f64,
        /// The configured budget.
        budget: f64,
    },
    /// The threshold lets a single device's cohort be published with a
    /// probability that does not fit in half of delta over the window.
    ThresholdTooLow {
        /// The window's probability of publishing a one-device cohort.
        selection_delta: f64,
        /// Half the configured delta.
        allowed: f64,
    },
    /// A parameter is out of range (zero noise, zero epoch, delta not in (0, 1)...).
    Invalid(&'static str),
}

impl std::fmt::Display for BudgetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetError::OverBudget {
                window_epsilon,
                budget,
            } => write!(
                f,
                "differential privacy: the window epsilon {window_epsilon:.3} exceeds the \
                 budget {budget:.3} (raise the noise, lengthen the epoch, lower \
                 max_globals, or shorten the window)"
            ),
            BudgetError::ThresholdTooLow {
                selection_delta,
                allowed,
            } => write!(
                f,
                "differential privacy: the publication threshold is too low: a one-device \
                 cohort is published with probability {selection_delta:.3e} over the window, \
                 more than half of delta ({allowed:.3e})"
            ),
            BudgetError::Invalid(what) => write!(f, "differential privacy: {what}"),
        }
    }
}

impl std::error::Error for BudgetError {}

/// Privacy loss of the configured mechanism, and of the releases made.
#[derive(Clone, Debug)]
pub struct Accountant {
    cfg: DpConfig,
    /// Unix times (seconds) of the releases made within the window.
    releases: VecDeque<f64>,
}

impl Accountant {
    /// Checks `cfg` against its budget.
    pub fn new(cfg: &DpConfig) -> Result<Self, BudgetError> {
        let a = Accountant {
            cfg: cfg.clone(),
            releases: VecDeque::new(),
        };
        if !(0.0..1.0).contains(&cfg.delta) || cfg.delta == 0.0 {
            return Err(BudgetError::Invalid("delta must be in (0, 1)"));
        }
        if cfg.sigma_vector.is_nan()
            || cfg.sigma_scalar.is_nan()
            || cfg.sigma_vector <= 0.0
            || cfg.sigma_scalar <= 0.0
        {
            return Err(BudgetError::Invalid("noise must be positive"));
        }
        if cfg.epoch.is_zero() || cfg.max_globals == 0 || cfg.full_weight_samples == 0 {
            return Err(BudgetError::Invalid(
                "epoch, max_globals and full_weight_samples must be positive",
            ));
        }
        let allowed = cfg.delta / 2.0;
        if a.selection_delta_window() > allowed {
            return Err(BudgetError::ThresholdTooLow {
                selection_delta: a.selection_delta_window(),
                allowed,
            });
        }
        if a.epsilon_window().is_nan() || a.epsilon_window() > cfg.budget_epsilon {
            return Err(BudgetError::OverBudget {
                window_epsilon: a.epsilon_window(),
                budget: cfg.budget_epsilon,
            });
        }
        Ok(a)
    }

    /// `rho` of one release.
    pub fn rho_release(&self) -> f64 {
        f64::from(self.cfg.max_globals)
            * (gaussian_rho(1.0, self.cfg.sigma_vector)
                + 3.0 * gaussian_rho(1.0, self.cfg.sigma_scalar))
    }

    /// Releases the schedule allows within one window.
    pub fn releases_per_window(&self) -> u64 {
        let e = self.cfg.epoch.as_secs_f64();
        (self.cfg.window.as_secs_f64() / e).ceil().max(1.0) as u64
    }

    /// `rho` over the window, releasing on schedule.
    pub fn rho_window(&self) -> f64 {
        self.releases_per_window() as f64 * self.rho_release()
    }

    /// The delta the epsilons are stated at (half the configured delta).
    pub fn conversion_delta(&self) -> f64 {
        self.cfg.delta / 2.0
    }

    /// Epsilon of one release at [`Accountant::conversion_delta`].
    pub fn epsilon_release(&self) -> f64 {
        zcdp_epsilon(self.rho_release(), self.conversion_delta())
    }

    /// Epsilon over the window, releasing on schedule.
    pub fn epsilon_window(&self) -> f64 {
        zcdp_epsilon(self.rho_window(), self.conversion_delta())
    }

    /// Probability, over the window, that some cohort held by one device
    /// alone is published.
    pub fn selection_delta_window(&self) -> f64 {
        let z = (self.cfg.threshold - 1.0) / self.cfg.sigma_scalar;
        self.releases_per_window() as f64 * f64::from(self.cfg.max_globals) * normal_tail(z)
    }

    /// Records a release at unix time `now` (seconds).
    pub fn record(&mut self, now: f64) {
        self.releases.push_back(now);
        self.forget(now);
    }

    fn forget(&mut self, now: f64) {
        let horizon = now - self.cfg.window.as_secs_f64();
        while self.releases.front().is_some_and(|t| *t <= horizon) {
            self.releases.pop_front();
        }
    }

    /// Releases made in the window ending at `now` (forced releases too).
    pub fn releases_in_window(&mut self, now: f64) -> u64 {
        self.forget(now);
        self.releases.len() as u64
    }

    /// Epsilon spent by the releases made in the window ending at `now`.
    pub fn epsilon_spent(&mut self, now: f64) -> f64 {
        let k = self.releases_in_window(now);
        self.epsilon_of(k)
    }

    /// Epsilon of `k` releases at [`Accountant::conversion_delta`].
    pub fn epsilon_of(&self, k: u64) -> f64 {
        zcdp_epsilon(k as f64 * self.rho_release(), self.conversion_delta())
    }
}

/// The releases of the trailing window as the store keeps them (the meta
/// slots [`Meta::DpWindow`]), so that the privacy loss is the deployment's:
/// a restarted server, or a new leader of a PostgreSQL deployment, continues
/// the window's count.
///
/// Time is cut into buckets of `window / (slots - 1)`; a slot holds the end
/// of one bucket (ms since the Unix epoch) and the releases made in it, and
/// a release counts as made at the end of its bucket: it stays in the
/// window up to one bucket (45 min for a day's window) longer than it
/// would, never shorter. A bucket reuses its slot only after every release
/// in it left the window; should a live bucket hold the slot (the window
/// was changed between runs) the new release joins it and the later end is
/// kept, which again only lengthens what is counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReleaseLog {
    /// (bucket end in ms, releases) per slot; `(0, 0)` for an empty one.
    slots: Vec<(u64, u64)>,
}

/// Bits of the release count in a slot's value (the bucket end above it).
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

impl ReleaseLog {
    fn bucket_ms(window: Duration) -> u64 {
        let w = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        (w / (DP_WINDOW_SLOTS as u64 - 1)).max(1)
    }

    fn decode(v: u64) -> (u64, u64) {
        (v >> COUNT_BITS, v & COUNT_MAX)
    }

    fn encode(end_ms: u64, count: u64) -> u64 {
        // Bucket ends up to 2^43 ms (year 2248) fit a PostgreSQL bigint.
        (end_ms.min((1 << 43) - 1) << COUNT_BITS) | count.min(COUNT_MAX)
    }

    /// Reads the log from the store.
    pub fn read(t: &dyn ReadTxn) -> StoreResult<Self> {
        let mut slots = Vec::with_capacity(DP_WINDOW_SLOTS);
        for i in 0..DP_WINDOW_SLOTS {
            slots.push(Self::decode(t.meta(Meta::DpWindow(i as u8))?));
        }
        Ok(ReleaseLog { slots })
    }

    /// Records a release at `at` (since the Unix epoch) in the store, in
    /// the transaction that writes the release.
    pub fn record(t: &mut dyn WriteTxn, window: Duration, at: Duration) -> StoreResult<()> {
        let len = Self::bucket_ms(window);
        let at_ms = u64::try_from(at.as_millis()).unwrap_or(u64::MAX);
        let bucket = at_ms / len;
        let end = bucket.saturating_add(1).saturating_mul(len);
        let slot = Meta::DpWindow((bucket % DP_WINDOW_SLOTS as u64) as u8);
        let (old_end, old_n) = Self::decode(t.meta(slot)?);
        let w = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let live = old_n > 0 && (old_end == end || old_end.saturating_add(w) > at_ms);
        let v = if live {
            Self::encode(old_end.max(end), old_n.saturating_add(1))
        } else {
            Self::encode(end, 1)
        };
        t.set_meta(slot, v)
    }

    /// Releases counted in the window of length `window` ending at `now`
    /// (seconds since the Unix epoch).
    pub fn releases_in_window(&self, now: f64, window: Duration) -> u64 {
        let now_ms = (now * 1000.0).max(0.0) as u64;
        let w = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.slots
            .iter()
            .filter(|(end, n)| *n > 0 && end.saturating_add(w) > now_ms)
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formulas_match_hand_computed_values() {
        // rho = 1 / (2 * 1^2) = 0.5; eps = 0.5 + 2 sqrt(0.5 ln 1e5) = 5.298526.
        assert_eq!(gaussian_rho(1.0, 1.0), 0.5);
        assert_eq!(gaussian_rho(2.0, 4.0), 0.125);
        assert!((zcdp_epsilon(0.5, 1e-5) - 5.298_526).abs() < 1e-5);
        assert_eq!(zcdp_epsilon(0.0, 1e-5), 0.0);
        // P(Z > 2) = 0.0227501, P(Z > 6) = 9.8659e-10.
        assert!((normal_tail(2.0) - 0.022_750_13).abs() < 1e-8);
        assert!((normal_tail(6.0) / 9.865_876e-10 - 1.0).abs() < 1e-5);
        assert!((normal_tail(-2.0) - 0.977_249_87).abs() < 1e-8);
    }

    #[test]
    fn the_default_configuration() {
        // rho per release = 4 * (1/288 + 3/1152) = 0.0243056; 24 releases a
        // day: 0.583333; at delta/2 = 5e-11: eps 1.54286 and 8.02271.
        let mut a = Accountant::new(&DpConfig::default()).unwrap();
        assert!((a.rho_release() - 0.024_305_56).abs() < 1e-7);
        assert_eq!(a.releases_per_window(), 24);
        assert!((a.rho_window() - 0.583_333_3).abs() < 1e-6);
        assert!((a.epsilon_release() - 1.542_862).abs() < 1e-5);
        assert!((a.epsilon_window() - 8.022_710).abs() < 1e-5);
        // 24 * 4 * Q(179/24) = 4.2059e-12, well under 5e-11.
        assert!((a.selection_delta_window() / 4.205_94e-12 - 1.0).abs() < 1e-4);
        // Spent: what was released in the trailing window.
        assert_eq!(a.epsilon_spent(0.0), 0.0);
        a.record(100.0);
        a.record(200.0);
        let two = zcdp_epsilon(2.0 * a.rho_release(), 5e-11);
        assert!((a.epsilon_spent(300.0) - two).abs() < 1e-12);
        assert_eq!(a.releases_in_window(100.0 + 86_400.0), 1);
    }

    /// The store's log: releases stay in the window for `window` after the
    /// end of their bucket (never less than after the release itself), then
    /// leave it; a bucket's slot is reused only once its releases left.
    #[tokio::test]
    async fn the_release_log_counts_the_window_conservatively() {
        use crate::store::{self, mem::MemStore};
        let s = std::sync::Arc::new(MemStore::new());
        let day = Duration::from_secs(86_400);
        let bucket = 86_400.0 / 31.0;
        let at = |x: f64| Duration::from_secs_f64(x);
        for t in [1000.0, 1001.0, 1000.0 + 3.0 * 3600.0] {
            store::write(&*s, move |txn| ReleaseLog::record(txn, day, at(t)))
                .await
                .unwrap();
        }
        let log = store::read(&*s, ReleaseLog::read).unwrap();
        assert_eq!(log.releases_in_window(1002.0, day), 3);
        // A day after the first two: still counted until their bucket's end
        // has aged a day, then gone.
        assert_eq!(log.releases_in_window(1001.0 + 86_400.0, day), 3);
        assert_eq!(log.releases_in_window(bucket + 86_400.0 + 1.0, day), 1);
        assert_eq!(
            log.releases_in_window(1000.0 + 4.0 * 3600.0 + 86_400.0, day),
            0
        );
        // 40 releases an hour apart: never more than a window's worth, the
        // 32 slots reused; every release of the trailing day is counted.
        let s = std::sync::Arc::new(MemStore::new());
        for i in 0..40u32 {
            let t = 3600.0 * f64::from(i);
            store::write(&*s, move |txn| ReleaseLog::record(txn, day, at(t)))
                .await
                .unwrap();
            let log = store::read(&*s, ReleaseLog::read).unwrap();
            let exact = (0..=i)
                .filter(|j| 3600.0 * f64::from(*j) > t - 86_400.0)
                .count() as u64;
            let n = log.releases_in_window(t, day);
            assert!(
                n >= exact && n <= exact + 1,
                "release {i}: {n} counted, {exact} in the day"
            );
        }
    }

    #[test]
    fn refuses_what_exceeds_the_budget() {
        let cfg = DpConfig {
            epoch: Duration::from_secs(60),
            threshold: 250.0,
            ..Default::default()
        };
        match Accountant::new(&cfg) {
            Err(BudgetError::OverBudget { window_epsilon, .. }) => {
                assert!(window_epsilon > 10.0);
            }
            other => panic!("{other:?}"),
        }
        let cfg = DpConfig {
            threshold: 50.0,
            ..Default::default()
        };
        assert!(matches!(
            Accountant::new(&cfg),
            Err(BudgetError::ThresholdTooLow { .. })
        ));
        let cfg = DpConfig {
            sigma_vector: 0.0,
            ..Default::default()
        };
        assert!(matches!(
            Accountant::new(&cfg),
            Err(BudgetError::Invalid(_))
        ));
    }
}
