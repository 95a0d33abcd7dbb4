//! Shared helpers of the example binaries.

/// Length of the `GET /chunked` body of `embassy-test-server`.
pub const CHUNKED_LEN: usize = 3000;
/// Length of the oversize bodies (`/big`, `/big-chunked`): larger than the
/// client's response buffer.
pub const BIG_LEN: usize = 8192;

/// Deterministic binary test bytes: every byte value occurs, and no two
/// positions 256 apart are alike (so a dropped or repeated chunk is caught).
pub fn pattern_bytes(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add((i / 256) as u32) as u8)
        .collect()
}

pub mod data;
pub mod fleet;
pub mod herd;
pub mod proxy;
