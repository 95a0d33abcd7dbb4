//! Measurement and generation tools for omega-tv-sync: the codebook
//! generator (`gen-codebook`), the codec benchmark (`codec`) and the helpers
//! they share (data loading, a deterministic PRNG, synthetic training
//! patterns, a symmetric eigensolver, retrieval metrics).
//!
//! Everything here is std and deterministic: the same inputs give the same
//! codebook bytes on every platform (f64 arithmetic with `+ - * /` and
//! `sqrt` in a fixed order, transcendental functions from the pure-Rust
//! `libm`).

pub mod data;
pub mod eig;
pub mod fit;
pub mod metrics;
pub mod procfs;
pub mod rng;
pub mod synth;
