//! A device's learned viewing pattern.

use super::{check_rate, Category, Embedding, PatternId};
use crate::Result;

/// A learned viewing pattern, as the device holds it.
///
/// Constructed through [`Pattern::new`], which validates every field; the
/// fields are public for reading, and a pattern changed in place should be
/// re-checked with [`Pattern::validate`].
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Pattern {
    /// Unique per device; at most 16 bytes of printable ASCII.
    pub id: PatternId,
    /// The pattern's direction in MiniLM space (unit norm).
    pub embedding: Embedding,
    /// Fraction of recommendations from this pattern that were watched, in `[0, 1]`.
    pub success_rate: f32,
    /// How many watch events the pattern was learned from.
    pub sample_count: u32,
    /// The category it belongs to; at most 16 bytes.
    pub category: Category,
}

impl Pattern {
    /// Builds a pattern from validated parts; checks the rate
    /// ([`Error::NonFinite`](crate::Error::NonFinite),
    /// [`Error::RateOutOfRange`](crate::Error::RateOutOfRange)).
    pub fn new(
        id: PatternId,
        embedding: Embedding,
        success_rate: f32,
        sample_count: u32,
        category: Category,
    ) -> Result<Self> {
        let p = Pattern {
            id,
            embedding,
            success_rate,
            sample_count,
            category,
        };
        p.validate()?;
        Ok(p)
    }

    /// Re-checks the fields that can be changed in place to invalid values.
    pub fn validate(&self) -> Result<()> {
        check_rate(self.success_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, DIM};

    #[test]
    fn rate_is_checked() {
        let mut v = [0f32; DIM];
        v[0] = 1.0;
        let e = Embedding::new(v).unwrap();
        let mk = |r| {
            Pattern::new(
                PatternId::new("p1").unwrap(),
                e.clone(),
                r,
                10,
                Category::new("drama").unwrap(),
            )
        };
        assert!(mk(0.0).is_ok());
        assert!(mk(1.0).is_ok());
        assert_eq!(mk(1.01).unwrap_err(), Error::RateOutOfRange);
        assert_eq!(mk(-0.1).unwrap_err(), Error::RateOutOfRange);
        assert_eq!(mk(f32::NAN).unwrap_err(), Error::NonFinite);
    }
}
