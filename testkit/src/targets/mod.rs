//! The bodies of the core's fuzz targets, one module each. Each takes
//! arbitrary bytes, must never panic, and checks invariants that hold for
//! every input (`assert!` turns a broken one into a crash the fuzzer
//! reports). The return value says whether the input was accepted as a
//! whole: real frames (the seed corpora) must be.
//!
//! The fuzz crate (`fuzz/fuzz_targets/*.rs`) runs them under libFuzzer;
//! `core/tests/fuzz_replay.rs` replays the committed inputs through them
//! with `cargo test`.

mod codec;
mod download;
#[cfg(feature = "flash")]
mod flash;
mod frame;
mod snapshot;
mod upload;
#[cfg(feature = "zstd")]
mod zstd;

pub use codec::{codec, decode_checked, mutate_blob};
pub use download::{download, CountingSink, STATUSES};
#[cfg(feature = "flash")]
pub use flash::flash;
pub use frame::frame_header;
pub use snapshot::snapshot;
pub use upload::upload;
#[cfg(feature = "zstd")]
pub use zstd::{zstd, ZSTD_OUT};
