//! The records a frame body is made of.
//!
//! On the wire each record is one tag byte followed by the record's postcard
//! encoding. Strings are a varint length and bytes; `f32` is 4 bytes
//! little-endian; integers are varints (`u16`/`u32`/`u64`) except `u8`.
//! `docs/wire-format.md` lists every field with its bound.

use postcard::experimental::max_size::MaxSize;
use serde::{Deserialize, Serialize};

use crate::types::{check_rate, Category, PatternId, TrendSignal};
use crate::{Error, Result};

/// Largest coded embedding a record may carry, in bytes: the codec's proven
/// worst case ([`MAX_CODED_LEN`](crate::codec::MAX_CODED_LEN), 1686). Larger
/// is [`Error::Oversize`] on decode and on encode.
pub const MAX_CODE_LEN: usize = crate::codec::MAX_CODED_LEN;

/// Bytes a `varint(len) + bytes` field of at most [`MAX_CODE_LEN`] bytes takes.
const CODE_FIELD_MAX: usize = varint_len(MAX_CODE_LEN) + MAX_CODE_LEN;

const fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Record tags (the first byte of every record).
pub mod tag {
    /// [`UploadHead`](super::UploadHead)
    pub const UPLOAD_HEAD: u8 = 0x01;
    /// [`PatternUpdate`](super::PatternUpdate)
    pub const PATTERN: u8 = 0x02;
    /// [`PatternRemoval`](super::PatternRemoval)
    pub const REMOVAL: u8 = 0x03;
    /// [`DownloadHead`](super::DownloadHead)
    pub const DOWNLOAD_HEAD: u8 = 0x10;
    /// [`Ack`](super::Ack)
    pub const ACK: u8 = 0x11;
    /// [`Conflict`](super::Conflict)
    pub const CONFLICT: u8 = 0x12;
    /// [`GlobalUpsert`](super::GlobalUpsert)
    pub const GLOBAL_UPSERT: u8 = 0x13;
    /// [`GlobalRemove`](super::GlobalRemove)
    pub const GLOBAL_REMOVE: u8 = 0x14;
    /// [`TrendRecord`](super::TrendRecord)
    pub const TREND: u8 = 0x15;
    /// A sync-state snapshot (kind `Snapshot`); its layout belongs to the sync module.
    pub const SNAPSHOT: u8 = 0x20;
}

/// What the device can take in the response, so the server pages to fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, MaxSize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Caps {
    /// Most global-pattern records (upserts + removals) per response.
    pub max_globals: u16,
    /// Most trend records per response.
    pub max_trends: u16,
    /// Size of the device's response buffer: the whole response frame must fit.
    pub max_bytes: u32,
}

/// First record of an upload: who is where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, MaxSize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct UploadHead {
    /// Sync sequence number; with the device id, the idempotency key.
    pub seq: u64,
    /// The device's global version: send changes after this one.
    pub since: u64,
    /// Response limits.
    pub caps: Caps,
}

/// How a pattern's embedding is coded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, MaxSize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Coding {
    /// The codes themselves.
    Absolute,
    /// Codes minus the codes acknowledged at `base_rev` (closed loop).
    Delta,
}

/// One changed pattern in an upload.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PatternUpdate<'a> {
    /// The device's pattern id.
    pub id: PatternId,
    /// The revision this update is based on (0: the device believes the
    /// server has no such pattern). A mismatch is a conflict.
    pub base_rev: u32,
    /// Success rate in `[0, 1]`.
    pub success_rate: f32,
    /// Samples behind the pattern.
    pub sample_count: u32,
    /// Category.
    pub category: Category,
    /// Absolute or delta.
    pub coding: Coding,
    /// The coded embedding, at most [`MAX_CODE_LEN`] bytes.
    #[serde(serialize_with = "ser_bytes")]
    pub code: &'a [u8],
}

/// A pattern the device dropped.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PatternRemoval {
    /// The device's pattern id.
    pub id: PatternId,
    /// The revision the device last had acknowledged.
    pub base_rev: u32,
}

/// First record of a download (a sync response or a page of the global feed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, MaxSize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DownloadHead {
    /// The upload's sequence number this answers (0 for a feed page).
    pub seq: u64,
    /// Global version to store once every record of this frame is applied.
    pub global_version: u64,
    /// More global changes wait: sync again now rather than at `next_sync_s`.
    pub more: bool,
    /// The device's version was older than the retained changelog: drop every
    /// global pattern and trend before applying this frame.
    pub reset: bool,
    /// Seconds until the device should sync next (already jittered).
    pub next_sync_s: u32,
}

/// The server stored a pattern update durably.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, MaxSize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ack {
    /// The device's pattern id.
    pub id: PatternId,
    /// Its new revision (0 after a removal).
    pub revision: u32,
}

/// The server's state of a pattern, sent with a conflict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServerState<'a> {
    /// Success rate in `[0, 1]`.
    pub success_rate: f32,
    /// Samples.
    pub sample_count: u32,
    /// Category.
    pub category: Category,
    /// Absolute codes, at most [`MAX_CODE_LEN`] bytes.
    #[serde(serialize_with = "ser_bytes", borrow)]
    pub code: &'a [u8],
}

/// An update based on a stale revision; nothing was changed on the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Conflict<'a> {
    /// The device's pattern id.
    pub id: PatternId,
    /// The server's current revision (0: the server has no such pattern).
    pub server_rev: u32,
    /// The server's state, when it has one and it fits the device's
    /// `max_bytes`; without it the device resolves by re-sending absolute.
    #[serde(borrow)]
    pub state: Option<ServerState<'a>>,
}

/// A global pattern was published or changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GlobalUpsert<'a> {
    /// Server-assigned id.
    pub id: u32,
    /// Global version of this change.
    pub version: u64,
    /// Success rate in `[0, 1]`.
    pub success_rate: f32,
    /// Samples behind it.
    pub sample_count: u32,
    /// Distinct contributing devices.
    pub contributors: u32,
    /// Category.
    pub category: Category,
    /// Absolute codes, at most [`MAX_CODE_LEN`] bytes.
    #[serde(serialize_with = "ser_bytes", borrow)]
    pub code: &'a [u8],
}

/// A global pattern was withdrawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, MaxSize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GlobalRemove {
    /// Server-assigned id.
    pub id: u32,
    /// Global version of this change.
    pub version: u64,
}

/// A trend signal, with the global version it was published at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, MaxSize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TrendRecord {
    /// Global version of this change.
    pub version: u64,
    /// The signal.
    pub signal: TrendSignal,
}

fn ser_bytes<S: serde::Serializer>(b: &&[u8], s: S) -> core::result::Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

// ---- decoding forms: strings and rates arrive unvalidated so that each
// ---- failure gets its own error code, not a generic `malformed`.

#[derive(Deserialize)]
pub(crate) struct RawPatternUpdate<'a> {
    id: &'a str,
    base_rev: u32,
    success_rate: f32,
    sample_count: u32,
    category: &'a str,
    coding: Coding,
    code: &'a [u8],
}

impl<'a> RawPatternUpdate<'a> {
    pub(crate) fn validate(self) -> Result<PatternUpdate<'a>> {
        check_rate(self.success_rate)?;
        check_code(self.code)?;
        Ok(PatternUpdate {
            id: PatternId::new(self.id)?,
            base_rev: self.base_rev,
            success_rate: self.success_rate,
            sample_count: self.sample_count,
            category: Category::new(self.category)?,
            coding: self.coding,
            code: self.code,
        })
    }
}

#[derive(Deserialize)]
pub(crate) struct RawPatternRemoval<'a> {
    id: &'a str,
    base_rev: u32,
}

impl RawPatternRemoval<'_> {
    pub(crate) fn validate(self) -> Result<PatternRemoval> {
        Ok(PatternRemoval {
            id: PatternId::new(self.id)?,
            base_rev: self.base_rev,
        })
    }
}

pub(crate) fn check_code(code: &[u8]) -> Result<()> {
    if code.is_empty() {
        return Err(Error::Truncated);
    }
    if code.len() > MAX_CODE_LEN {
        return Err(Error::Oversize);
    }
    Ok(())
}

impl Conflict<'_> {
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(s) = &self.state {
            check_rate(s.success_rate)?;
            check_code(s.code)?;
        }
        Ok(())
    }
}

impl GlobalUpsert<'_> {
    pub(crate) fn validate(&self) -> Result<()> {
        check_rate(self.success_rate)?;
        check_code(self.code)
    }
}

/// Largest encoding of each record, tag byte included.
pub mod max_len {
    use super::*;
    use crate::types::Name;

    const NAME16: usize = <Name<16> as MaxSize>::POSTCARD_MAX_SIZE;
    const U32: usize = u32::POSTCARD_MAX_SIZE;
    const U64: usize = u64::POSTCARD_MAX_SIZE;

    /// [`UploadHead`]
    pub const UPLOAD_HEAD: usize = 1 + UploadHead::POSTCARD_MAX_SIZE;
    /// [`PatternUpdate`]
    pub const PATTERN: usize = 1 + NAME16 + U32 + 4 + U32 + NAME16 + 1 + CODE_FIELD_MAX;
    /// [`PatternRemoval`]
    pub const REMOVAL: usize = 1 + NAME16 + U32;
    /// [`DownloadHead`]
    pub const DOWNLOAD_HEAD: usize = 1 + DownloadHead::POSTCARD_MAX_SIZE;
    /// [`Ack`]
    pub const ACK: usize = 1 + Ack::POSTCARD_MAX_SIZE;
    /// [`Conflict`]
    pub const CONFLICT: usize = 1 + NAME16 + U32 + 1 + 4 + U32 + NAME16 + CODE_FIELD_MAX;
    /// [`GlobalUpsert`]
    pub const GLOBAL_UPSERT: usize = 1 + U32 + U64 + 4 + U32 + U32 + NAME16 + CODE_FIELD_MAX;
    /// [`GlobalRemove`]
    pub const GLOBAL_REMOVE: usize = 1 + GlobalRemove::POSTCARD_MAX_SIZE;
    /// [`TrendRecord`]
    pub const TREND: usize = 1 + TrendRecord::POSTCARD_MAX_SIZE;
}
