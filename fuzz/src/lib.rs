//! The bodies of the fuzz targets. The core's targets live in the test
//! support crate (`omega_tv_sync_testkit::targets`), where the stable replay
//! tests (`core/tests/fuzz_replay.rs`) run the same code on an input; the
//! server's `http_body` target is here (`server/tests/fuzz_replay.rs`
//! includes it).

pub use omega_tv_sync_testkit::targets as core_targets;
pub mod server_targets;
