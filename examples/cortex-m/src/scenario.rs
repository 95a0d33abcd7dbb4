//! The sync cycle's scenario, shared by the host (`build.rs`, which records
//! the upload the host's client prepares, the server response that answers
//! it and the snapshot after it) and the firmware (which replays the same
//! steps on the target and compares). One source of truth for both sides.
//!
//! The device uploads [`PATTERNS`] new patterns (real vectors, rows
//! `0..PATTERNS`). The response acks all but pattern [`CONFLICT`], which
//! comes back as a conflict carrying the server's state (quantised from row
//! [`SERVER_ROW`] at revision [`SERVER_REV`]), then a global removal, two
//! global upserts (rows [`GLOBAL_ROWS`]) and two trend signals, with global
//! version [`GLOBAL_VERSION`].

use omega_tv_sync::sync::Config;
use omega_tv_sync::types::{Category, ContentId, DeviceId, Pattern, PatternId, Region};
use omega_tv_sync::{Embedding, Error, TrendSignal, DIM};

/// Client capacity (slots).
pub const N: usize = 8;
/// Patterns the device uploads: rows `0..PATTERNS`.
pub const PATTERNS: usize = 8;
/// The pattern the server answers with a conflict.
pub const CONFLICT: usize = 3;
/// Row the server's state of the conflicting pattern is quantised from.
pub const SERVER_ROW: usize = 12;
/// The server's revision of the conflicting pattern.
pub const SERVER_REV: u32 = 5;
/// Revision the server acks each other pattern with (new patterns).
pub const ACK_REV: u32 = 1;
/// Rows of the two global patterns in the response, with their ids.
pub const GLOBAL_ROWS: [(u32, usize); 2] = [(7, 13), (9, 14)];
/// Id of the global pattern the response withdraws.
pub const GLOBAL_REMOVED: u32 = 3;
/// Global version after the response.
pub const GLOBAL_VERSION: u64 = 42;
/// Versions of the records: removal, the two upserts, the two trends.
pub const VERSIONS: [u64; 5] = [38, 39, 40, 41, 42];
/// `next_sync_s` of the response.
pub const NEXT_SYNC_S: u32 = 600;
/// The device's clock when it prepares and applies (ms).
pub const NOW_MS: u64 = 1_000;
/// Samples and success rate of the server's conflicting state (used by the
/// host side, which builds the response).
#[allow(dead_code)]
pub const SERVER_SAMPLES: u32 = 50;
/// See [`SERVER_SAMPLES`].
#[allow(dead_code)]
pub const SERVER_RATE: f32 = 0.6;

/// The device's signing key (a test key: `constellation device add` issues
/// real ones).
pub const DEVICE_KEY: [u8; 32] = [
    0x6f, 0x6d, 0x65, 0x67, 0x61, 0x2d, 0x74, 0x76, 0x2d, 0x73, 0x79, 0x6e, 0x63, 0x2d, 0x71, 0x65,
    0x6d, 0x75, 0x2d, 0x63, 0x6f, 0x72, 0x74, 0x65, 0x78, 0x2d, 0x6d, 0x34, 0x66, 0x2d, 0x6b, 0x31,
];

/// The device's configuration (`accept_zstd` for the compressed cycle),
/// signing its requests with [`DEVICE_KEY`].
pub fn config(accept_zstd: bool) -> Result<Config, Error> {
    let mut c = Config::new(DeviceId::new("stb-qemu-mps2-an386")?);
    c.accept_zstd = accept_zstd;
    c.auth_key = Some(omega_tv_sync::DeviceKey::new(DEVICE_KEY));
    Ok(c)
}

/// Row `i` of the little-endian f32 vectors in `rows`.
pub fn row(rows: &[u8], i: usize) -> Result<Embedding, Error> {
    let b = rows
        .get(i * DIM * 4..(i + 1) * DIM * 4)
        .ok_or(Error::WrongLength)?;
    Embedding::from_le_bytes(b)
}

/// Id of pattern `i` (`p-00` ...).
pub fn id(i: usize) -> Result<PatternId, Error> {
    let s = [
        b'p',
        b'-',
        b'0' + (i / 10 % 10) as u8,
        b'0' + (i % 10) as u8,
    ];
    PatternId::new(core::str::from_utf8(&s).map_err(|_| Error::InvalidChar)?)
}

/// Category of pattern `i`.
pub fn category(i: usize) -> Result<Category, Error> {
    Category::new(if i.is_multiple_of(2) {
        "drama"
    } else {
        "comedy"
    })
}

/// Pattern `i` as the device holds it: row `i`, rate 0.9, `30 + i` samples.
pub fn pattern(rows: &[u8], i: usize) -> Result<Pattern, Error> {
    Pattern::new(id(i)?, row(rows, i)?, 0.9, 30 + i as u32, category(i)?)
}

/// Trend signal `k` of the response.
pub fn trend(k: usize) -> Result<TrendSignal, Error> {
    TrendSignal::new(
        ContentId::new(if k == 0 { "movie-a" } else { "movie-b" })?,
        1.5 + k as f32,
        Region::new("DE")?,
        Category::new("drama")?,
        1_700_000_000 + k as u64,
    )
}
