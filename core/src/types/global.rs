//! Global patterns: what the fleet learned, as the device receives it.

use super::{check_rate, Category, Embedding};
use crate::Result;

/// A global pattern aggregated by the server from at least k devices.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GlobalPattern {
    /// Server-assigned id, stable for the pattern's life.
    pub id: u32,
    /// The aggregated direction (unit norm).
    pub embedding: Embedding,
    /// Sample-weighted success rate of the contributors, in `[0, 1]`.
    pub success_rate: f32,
    /// Total samples behind it (saturating).
    pub sample_count: u32,
    /// Distinct devices that contributed (always >= the server's k).
    pub contributors: u32,
    /// Category.
    pub category: Category,
    /// Global version at which this state was published.
    pub version: u64,
}

impl GlobalPattern {
    /// Checks the rate (the embedding and category are valid by type).
    pub fn validate(&self) -> Result<()> {
        check_rate(self.success_rate)
    }
}
