//! Test support shared by the core's integration tests, the fuzz targets,
//! the end-to-end tests, the examples and the benches (`publish = false`).
//!
//! - [`data`]: the real MiniLM vectors of `data/minilm/`.
//! - [`rng`]: the two deterministic PRNGs (SplitMix64, xorshift64*).
//! - [`fixtures`]: the codebooks, the client configuration and patterns the
//!   fuzz targets and their replay tests build on.
//! - [`frames`]: real frames (uploads, downloads, snapshots, flash images)
//!   the seed corpora are written from.
//! - [`ram_flash`] (feature `flash`): a NOR flash in RAM.
//! - [`http`]: request builders.
//! - [`targets`]: the bodies of the core's fuzz targets, run by the fuzzer
//!   (`fuzz/`) and replayed by `cargo test` (`core/tests/fuzz_replay.rs`).
//!
//! The names most tests use are re-exported at the root.
#![warn(missing_docs)]
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

pub mod data;
pub mod fixtures;
pub mod frames;
pub mod http;
#[cfg(feature = "flash")]
pub mod ram_flash;
pub mod rng;
pub mod targets;

pub use data::{read_rows, rows, vectors, Row};
pub use fixtures::*;
pub use frames::*;
pub use http::get;
pub use rng::{SplitMix64, XorShift64Star};
