//! Trend signals: what is gaining viewers, per region and category.

use serde::{Deserialize, Serialize};

use super::{Category, ContentId};
use crate::{Error, Result};

/// An ISO 3166-1 alpha-2 region code such as `US` or `DE`: two upper-case
/// ASCII letters. The format is checked; whether the code is assigned is not
/// (user-assigned codes such as `ZZ` are accepted, and `ZZ` means "global").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Region([u8; 2]);

impl Region {
    /// The region that stands for "every region".
    pub const GLOBAL: Region = Region(*b"ZZ");

    /// Validates a two-letter code ([`Error::InvalidRegion`] otherwise).
    pub fn new(code: &str) -> Result<Self> {
        let b: [u8; 2] = code
            .as_bytes()
            .try_into()
            .map_err(|_| Error::InvalidRegion)?;
        Self::from_bytes(b)
    }

    /// Validates two bytes.
    pub fn from_bytes(b: [u8; 2]) -> Result<Self> {
        if b.iter().all(u8::is_ascii_uppercase) {
            Ok(Region(b))
        } else {
            Err(Error::InvalidRegion)
        }
    }

    /// The code as a string.
    pub fn as_str(&self) -> &str {
        // Validated as ASCII; the fallback is unreachable but keeps this panic-free.
        core::str::from_utf8(&self.0).unwrap_or("ZZ")
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
        let b = <[u8; 2]>::deserialize(d)?;
        Region::from_bytes(b).map_err(|e| serde::de::Error::custom(e.code()))
    }
}

impl postcard::experimental::max_size::MaxSize for Region {
    const POSTCARD_MAX_SIZE: usize = 2;
}

/// A trend signal: content gaining momentum in a region and category.
///
/// `score` is the content's recent momentum against its baseline (1.0 means
/// "as usual"); it is finite and in `[0, 1e6]`. `calculated_at` is the
/// server's Unix time in seconds: the device only compares it, never trusts
/// its own clock against it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TrendFields")]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TrendSignal {
    /// Content id (in simulation, an item's `movie_name`); at most 64 bytes.
    pub content_id: ContentId,
    /// Momentum against baseline, finite, in `[0, 1e6]`.
    pub score: f32,
    /// Where the trend was measured.
    pub region: Region,
    /// Category it was measured in; at most 16 bytes.
    pub category: Category,
    /// Server Unix time (seconds) at which it was computed.
    pub calculated_at: u64,
}

/// Largest trend score accepted.
pub const MAX_TREND_SCORE: f32 = 1e6;

impl TrendSignal {
    /// Builds and validates a trend signal ([`Error::NonFinite`],
    /// [`Error::OutOfRange`] for the score).
    pub fn new(
        content_id: ContentId,
        score: f32,
        region: Region,
        category: Category,
        calculated_at: u64,
    ) -> Result<Self> {
        TrendSignal::try_from(TrendFields {
            content_id,
            score,
            region,
            category,
            calculated_at,
        })
    }
}

/// Unvalidated wire form of [`TrendSignal`].
#[derive(Deserialize)]
struct TrendFields {
    content_id: ContentId,
    score: f32,
    region: Region,
    category: Category,
    calculated_at: u64,
}

impl TryFrom<TrendFields> for TrendSignal {
    type Error = Error;
    fn try_from(f: TrendFields) -> Result<Self> {
        if !f.score.is_finite() {
            return Err(Error::NonFinite);
        }
        if !(0.0..=MAX_TREND_SCORE).contains(&f.score) {
            return Err(Error::OutOfRange);
        }
        Ok(TrendSignal {
            content_id: f.content_id,
            score: f.score,
            region: f.region,
            category: f.category,
            calculated_at: f.calculated_at,
        })
    }
}

impl postcard::experimental::max_size::MaxSize for TrendSignal {
    const POSTCARD_MAX_SIZE: usize = ContentId::POSTCARD_MAX_SIZE
        + 4
        + Region::POSTCARD_MAX_SIZE
        + Category::POSTCARD_MAX_SIZE
        + u64::POSTCARD_MAX_SIZE;
}

#[cfg(test)]
mod tests {
    use super::*;
    use postcard::experimental::max_size::MaxSize;

    fn t(score: f32) -> Result<TrendSignal> {
        TrendSignal::new(
            ContentId::new("the_quiet_american").unwrap(),
            score,
            Region::new("DE").unwrap(),
            Category::new("fresh").unwrap(),
            1_700_000_000,
        )
    }

    #[test]
    fn region_format() {
        assert!(Region::new("US").is_ok());
        assert_eq!(Region::new("us"), Err(Error::InvalidRegion));
        assert_eq!(Region::new("USA"), Err(Error::InvalidRegion));
        assert_eq!(Region::new("U1"), Err(Error::InvalidRegion));
        assert_eq!(Region::new("DE").unwrap().as_str(), "DE");
    }

    #[test]
    fn score_validated_on_build_and_decode() {
        assert_eq!(t(f32::NAN).unwrap_err(), Error::NonFinite);
        assert_eq!(t(-1.0).unwrap_err(), Error::OutOfRange);
        let ok = t(2.5).unwrap();
        let mut buf = [0u8; TrendSignal::POSTCARD_MAX_SIZE];
        let n = postcard::to_slice(&ok, &mut buf).unwrap().len();
        let back: TrendSignal = postcard::from_bytes(&buf[..n]).unwrap();
        assert_eq!(back, ok);
        // Patch the score to NaN on the wire: decoding must refuse it.
        let name_len = 1 + "the_quiet_american".len();
        buf[name_len..name_len + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(postcard::from_bytes::<TrendSignal>(&buf[..n]).is_err());
    }
}
