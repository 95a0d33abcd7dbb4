//! Where downloaded global patterns and trends go.

use crate::codec::{Codebook, Codes};
use crate::types::Category;
use crate::{Embedding, GlobalPattern, Result, TrendSignal};

/// Receives what a sync response brings down, in frame order. The client
/// holds none of it: the application decides what to keep (and how much RAM
/// that takes). Every method has an empty default.
///
/// Calls are idempotent by id and version: after a reboot before the cursor
/// was persisted, the same changes may arrive again.
///
/// A global pattern arrives in one of two forms, chosen by
/// [`GlobalSink::RECONSTRUCT`]: reconstructed to 384 floats
/// ([`GlobalSink::global_upsert`], the default), or as its integer codes
/// ([`GlobalSink::global_codes`]), which costs the device no
/// reconstruction at all; scoring in the code domain is
/// [`CoefficientSpace::cosine`](crate::codec::CoefficientSpace::cosine).
pub trait GlobalSink {
    /// `true` (the default): every global pattern is reconstructed and given
    /// to [`GlobalSink::global_upsert`]. `false`: it is given as codes to
    /// [`GlobalSink::global_codes`] and nothing is reconstructed (a
    /// reconstruction is a `DIM x DIM` product, the bulk of a catch-up's
    /// cost on a microcontroller).
    const RECONSTRUCT: bool = true;
    /// The server's changelog no longer reaches back to the device's version:
    /// drop every global pattern and trend; the changes that follow (this
    /// frame and the next pages) rebuild them.
    fn reset(&mut self) {}
    /// A global pattern was published or changed (when
    /// [`GlobalSink::RECONSTRUCT`] is `true`).
    fn global_upsert(&mut self, _pattern: &GlobalPattern) {}
    /// A global pattern was published or changed, as codes (when
    /// [`GlobalSink::RECONSTRUCT`] is `false`).
    fn global_codes(&mut self, _pattern: &CodedGlobal<'_, '_>) {}
    /// A global pattern was withdrawn.
    fn global_remove(&mut self, _id: u32, _version: u64) {}
    /// A trend signal, published at global `version`.
    fn trend(&mut self, _signal: &TrendSignal, _version: u64) {}
}

/// Discards everything, without reconstructing a global pattern first.
impl GlobalSink for () {
    const RECONSTRUCT: bool = false;
}

/// A global pattern as its integer codes in the client's codebook: what
/// [`GlobalSink::global_codes`] receives. Keep [`CodedGlobal::codes`] (768
/// bytes) to score against later, or reconstruct on request.
#[derive(Clone, Copy, Debug)]
pub struct CodedGlobal<'c, 'b> {
    /// Server-assigned id, stable for the pattern's life.
    pub id: u32,
    /// The pattern's codes (decoded, checked).
    pub codes: &'c Codes,
    /// Sample-weighted success rate, in `[0, 1]`.
    pub success_rate: f32,
    /// Samples behind it (as published).
    pub sample_count: u32,
    /// Contributing devices (as published).
    pub contributors: u32,
    /// Category.
    pub category: &'c Category,
    /// Global version at which this state was published.
    pub version: u64,
    /// The codebook the codes are in.
    pub codebook: &'c Codebook<'b>,
}

impl CodedGlobal<'_, '_> {
    /// The unit-norm embedding these codes stand for (one reconstruction).
    pub fn embedding(&self) -> Result<Embedding> {
        self.codebook.reconstruct(self.codes)
    }

    /// The same pattern reconstructed, as [`GlobalSink::global_upsert`]
    /// would have received it.
    pub fn to_pattern(&self) -> Result<GlobalPattern> {
        Ok(GlobalPattern {
            id: self.id,
            embedding: self.embedding()?,
            success_rate: self.success_rate,
            sample_count: self.sample_count,
            contributors: self.contributors,
            category: self.category.clone(),
            version: self.version,
        })
    }
}
