//! The quality filter: which patterns are worth uploading.

use crate::Pattern;

/// Decides which patterns are good enough to upload.
///
/// Defaults (the product's): `success_rate >= 0.7` and `sample_count >= 10`.
/// A pattern that fails the filter stays on the device; it is uploaded once
/// it passes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QualityFilter {
    /// Smallest success rate uploaded (inclusive).
    pub min_success_rate: f32,
    /// Smallest sample count uploaded (inclusive).
    pub min_samples: u32,
}

impl QualityFilter {
    /// The product defaults: 0.7 and 10.
    pub const DEFAULT: QualityFilter = QualityFilter {
        min_success_rate: 0.7,
        min_samples: 10,
    };

    /// True when `rate` and `samples` pass.
    pub fn accepts(&self, rate: f32, samples: u32) -> bool {
        rate >= self.min_success_rate && samples >= self.min_samples
    }

    /// True when the pattern passes.
    pub fn passes(&self, p: &Pattern) -> bool {
        self.accepts(p.success_rate, p.sample_count)
    }
}

impl Default for QualityFilter {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_inclusive_and_configurable() {
        let f = QualityFilter::default();
        assert!(f.accepts(0.7, 10));
        assert!(!f.accepts(0.69, 10));
        assert!(!f.accepts(0.9, 9));
        assert!(!f.accepts(f32::NAN, 100));
        let loose = QualityFilter {
            min_success_rate: 0.5,
            min_samples: 1,
        };
        assert!(loose.accepts(0.5, 1));
    }
}
