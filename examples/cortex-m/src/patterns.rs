//! The real pattern rows compiled into the firmwares (`build.rs` cuts them
//! out of `data/minilm/patterns_public.f32`) and the reference values the
//! build computed for them in f64.

use omega_tv_sync::DIM;

/// Reference values from the build (`ROWS`, `NEXT_COS`, `NEAREST`).
#[allow(dead_code)]
pub mod expected {
    include!(concat!(env!("OUT_DIR"), "/expected.rs"));
}

/// `ROWS` real pattern embeddings, little-endian f32, row-major.
pub static PATTERNS: &[u8; expected::ROWS * DIM * 4] =
    include_bytes!(concat!(env!("OUT_DIR"), "/patterns.bin"));

/// The bytes of row `i` (`i < ROWS`).
pub fn row(i: usize) -> &'static [u8] {
    &PATTERNS[i * DIM * 4..(i + 1) * DIM * 4]
}
