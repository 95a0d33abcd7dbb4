//! Where downloaded global patterns and trends go.

use crate::{GlobalPattern, TrendSignal};

/// Receives what a sync response brings down, in frame order. The client
/// holds none of it: the application decides what to keep (and how much RAM
/// that takes). Every method has an empty default.
///
/// Calls are idempotent by id and version: after a reboot before the cursor
/// was persisted, the same changes may arrive again.
pub trait GlobalSink {
    /// The server's changelog no longer reaches back to the device's version:
    /// drop every global pattern and trend; the changes that follow (this
    /// frame and the next pages) rebuild them.
    fn reset(&mut self) {}
    /// A global pattern was published or changed.
    fn global_upsert(&mut self, _pattern: &GlobalPattern) {}
    /// A global pattern was withdrawn.
    fn global_remove(&mut self, _id: u32, _version: u64) {}
    /// A trend signal, published at global `version`.
    fn trend(&mut self, _signal: &TrendSignal, _version: u64) {}
}

/// Discards everything.
impl GlobalSink for () {}
