//! The bodies of the fuzz targets, shared with the stable replay tests
//! (`core/tests/fuzz_replay.rs`, `server/tests/fuzz_replay.rs` include these
//! files), so a fuzzer and `cargo test` run the same code on an input.

pub mod core_targets;
pub mod server_targets;
