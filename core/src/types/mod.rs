//! Validated values: embeddings, patterns, trend signals, global patterns.
//!
//! Every constructor validates and returns [`Error`](crate::Error); no value
//! of these types can hold a NaN, an out-of-range rate or an oversize string.
//!
//! | bound | value | where |
//! |---|---:|---|
//! | [`DIM`] | 384 | embedding dimensions |
//! | [`NORM_TOLERANCE`] | 1e-3 | allowed `| ‖x‖ - 1 |` |
//! | [`PatternId`] | 16 bytes | printable ASCII |
//! | [`Category`] | 16 bytes | printable ASCII |
//! | [`ContentId`] | 64 bytes | printable ASCII |
//! | [`DeviceId`] | 64 bytes | printable ASCII |

mod embedding;
mod global;
mod name;
mod pattern;
mod trend;

pub use embedding::{Embedding, DIM, NORM_TOLERANCE};
pub use global::GlobalPattern;
pub use name::Name;
pub use pattern::Pattern;
pub use trend::{Region, TrendSignal};

/// A device-local pattern id, unique per device: at most 16 bytes.
pub type PatternId = Name<16>;
/// A pattern or trend category such as `drama`: at most 16 bytes.
pub type Category = Name<16>;
/// A content id named by a trend signal: at most 64 bytes.
pub type ContentId = Name<64>;
/// A device id, as sent in `X-Device-ID`: at most 64 bytes.
pub type DeviceId = Name<64>;

/// Validates a rate in `[0, 1]` (finite).
pub(crate) fn check_rate(rate: f32) -> crate::Result<()> {
    if !rate.is_finite() {
        return Err(crate::Error::NonFinite);
    }
    if !(0.0..=1.0).contains(&rate) {
        return Err(crate::Error::RateOutOfRange);
    }
    Ok(())
}
