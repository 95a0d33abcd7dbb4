//! # omega-tv-sync
//!
//! Delta sync of learned viewing *patterns* between a TV set-top box and the
//! Constellation server, in `#![no_std]` Rust with no heap.
//!
//! A pattern is a 384-dimensional all-MiniLM-L6-v2 embedding with a success
//! rate, a sample count and a category ([`Pattern`]). The device uploads only
//! the patterns that changed since the server last acknowledged them and pass
//! the [`QualityFilter`], as quantised, entropy-coded deltas; it downloads the
//! global patterns and [`TrendSignal`]s that changed since its global version.
//!
//! The data flow, one module per stage:
//!
//! ```text
//! types (validated values) -> codec (integer codes, entropy coding)
//!        -> wire (frames, zstd) -> sync (the device's state machine)
//!        -> transport ([Transport], request signing) -> server
//! ```
//!
//! `ascii` (decimal text), `Error` and the logging macros are shared by all
//! stages. A module imports only the stages before it; `sync` drives the
//! `transport` boundary (its trait and signing), which imports no stage.
//!
//! ## Memory
//! Nothing here allocates. Every variable-length value has a compile-time
//! bound, listed with its default in `docs/memory.md` and on the type that
//! holds it. Buffers are passed in by the caller.
//!
//! ## Features
//! | feature | effect |
//! |---|---|
//! | `std` | implements `std::error::Error` for [`Error`] |
//! | `defmt` | internal logging through defmt; `Format` impls |
//! | `log` | internal logging through the `log` crate |
//! | `zstd` | module `wire::zstd`: per-frame zstd in caller-provided static workspaces (builds the zstd C library) |
//! | `flash` | `sync::persist`: power-loss-safe snapshot storage on NOR flash (sequential-storage) |
//!
//! `defmt` and `log` are mutually exclusive. The default build has none of
//! them and is `no_std`.
#![no_std]
// `unsafe` is denied everywhere except the FFI module `wire::zstd`.
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(any(feature = "std", test))]
extern crate std;

#[macro_use]
mod fmt;

pub mod ascii;
mod error;

// The stages, in data-flow order.
pub mod types;

pub mod codec;

pub mod wire;

pub mod sync;

pub mod transport;

pub use error::{Error, Result};
pub use sync::QualityFilter;
pub use transport::auth::DeviceKey;
pub use transport::{Method, Request, Response, Transport};
pub use types::{
    Category, ContentId, DeviceId, Embedding, GlobalPattern, Name, Pattern, PatternId, Region,
    TrendSignal, DIM,
};
