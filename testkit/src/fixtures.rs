//! What the fuzz targets, their replay tests and the seed frames build on:
//! the shipped codebooks, one client configuration, valid patterns.
//!
//! Cross-module paths go through `super::` so that
//! `server/tests/fuzz_replay.rs` can still include this file by path
//! (through `fuzz/src/core_targets.rs`).

use std::sync::OnceLock;

use omega_tv_sync::codec::{self, Codebook, Codes};
use omega_tv_sync::sync::{Config, SyncClient};
use omega_tv_sync::wire::OVERHEAD;
use omega_tv_sync::{Category, DeviceId, Embedding, Pattern, PatternId, DIM};

use super::data::vectors;

/// Device id of every client the targets build (snapshots must carry it).
pub const DEVICE: &str = "stb-fuzz-0001";
/// Slots of the clients the targets build.
pub const SLOTS: usize = 8;
/// The client type the targets use.
pub type Client = SyncClient<'static, SLOTS>;

/// The small-flash codebook blob, mutated by the `codec` target.
pub static SMALL_BLOB: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../core/codebooks/minilm-small-v1.bin"
));

/// The default codebook.
pub fn book() -> Codebook<'static> {
    static B: OnceLock<Codebook<'static>> = OnceLock::new();
    *B.get_or_init(|| codec::minilm_v1().expect("shipped codebook"))
}

/// The small-flash codebook.
pub fn small_book() -> Codebook<'static> {
    static B: OnceLock<Codebook<'static>> = OnceLock::new();
    *B.get_or_init(|| codec::minilm_small_v1().expect("shipped codebook"))
}

/// The fixed base deltas are decoded against: the codes of a real vector.
pub fn base_codes() -> &'static Codes {
    static B: OnceLock<Codes> = OnceLock::new();
    B.get_or_init(|| book().quantize(&vectors()[0]))
}

/// A base at the top of the `i16` range, so that most deltas leave it.
pub const EDGE_BASE: Codes = [i16::MAX; DIM];

/// The client configuration every target uses.
pub fn config() -> Config {
    Config::new(DeviceId::new(DEVICE).expect("valid id"))
}

/// A valid pattern `id` with embedding `e`.
pub fn pattern(id: &str, e: &Embedding, rate: f32, n: u32, category: &str) -> Pattern {
    Pattern::new(
        PatternId::new(id).expect("id"),
        e.clone(),
        rate,
        n,
        Category::new(category).expect("category"),
    )
    .expect("pattern")
}

/// `data` with its CRC trailer recomputed, so that mutations reach the
/// record decoders instead of stopping at the checksum (real frames are
/// unchanged). Shorter than a frame: returned as is.
pub fn fix_crc(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    if v.len() >= OVERHEAD {
        let end = v.len() - 4;
        let crc = omega_tv_sync::wire::crc32(&v[..end]);
        v[end..].copy_from_slice(&crc.to_le_bytes());
    }
    v
}

/// The snapshot of `c`.
pub fn snapshot_of(c: &Client) -> Vec<u8> {
    let mut buf = vec![0u8; Client::MAX_SNAPSHOT_LEN];
    let n = c.snapshot(&mut buf).expect("snapshot fits");
    buf.truncate(n);
    buf
}
