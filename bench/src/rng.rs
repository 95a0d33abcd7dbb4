//! SplitMix64: the deterministic PRNG of the synthetic data (the one
//! implementation, in the test support crate).

pub use omega_tv_sync_testkit::SplitMix64;
