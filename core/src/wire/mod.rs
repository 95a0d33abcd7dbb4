//! Wire frames: a fixed header, a body of tagged postcard records, a CRC-32.
//!
//! ```text
//! offset  size  field
//! 0       2     magic "OT" (0x4F 0x54)
//! 2       1     format version (FORMAT_VERSION = 1)
//! 3       1     kind (1 upload, 2 download, 3 snapshot)
//! 4       1     flags (bit 0: body is zstd-compressed; bit 1: sender accepts
//!               zstd responses; others reserved, 0)
//! 5       4     codebook id, u32 little-endian
//! 9       n     body: records, each a tag byte + postcard encoding
//! 9+n     4     CRC-32 (IEEE) of bytes 0..9+n, little-endian
//! ```
//!
//! Frames are written into caller buffers by [`FrameWriter`] and read in
//! place by [`FrameReader`] (records borrow from the buffer; nothing is
//! copied). `docs/wire-format.md` is the full specification with every bound
//! and a worked example.

mod crc;
mod reader;
mod records;
mod writer;
#[cfg(feature = "zstd")]
#[allow(unsafe_code)] // The FFI boundary to the zstd C library; each block has a SAFETY comment.
pub mod zstd;

pub use crc::crc32;
pub use reader::{FrameReader, Records};
pub use records::{
    max_len, tag, Ack, Caps, Coding, Conflict, DownloadHead, GlobalRemove, GlobalUpsert,
    PatternRemoval, PatternUpdate, ServerState, TrendRecord, UploadHead, MAX_CODE_LEN,
};
#[cfg(feature = "zstd")]
pub use writer::compress_body;
pub use writer::{seal, FrameWriter};

/// The two magic bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"OT";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 9;
/// Bytes of the CRC trailer.
pub const TRAILER_LEN: usize = 4;
/// Header plus trailer: a frame's size with an empty body.
pub const OVERHEAD: usize = HEADER_LEN + TRAILER_LEN;
/// Flag bit: the body is one zstd frame of the records.
pub const FLAG_ZSTD: u8 = 0x01;
/// Flag bit, uploads only: the device can decompress a zstd response body
/// (the server compresses a response only when this is set and it helps).
pub const FLAG_ACCEPT_ZSTD: u8 = 0x02;

/// Most pattern records (updates + removals) in one upload frame.
pub const MAX_UPLOAD_PATTERNS: usize = 64;
/// Largest upload frame: header, head, [`MAX_UPLOAD_PATTERNS`] largest
/// pattern records, trailer. The server rejects larger bodies (413).
pub const MAX_UPLOAD_FRAME: usize =
    OVERHEAD + max_len::UPLOAD_HEAD + MAX_UPLOAD_PATTERNS * max_len::PATTERN;
/// Largest download frame a device may ask for (`Caps::max_bytes` is
/// clamped to this).
pub const MAX_DOWNLOAD_FRAME: usize = 1 << 20;
/// Smallest `Caps::max_bytes` the server honours: room for the head, an ack
/// for every pattern of a full upload and some records.
pub const MIN_DOWNLOAD_FRAME: usize = 2048;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Kind {
    /// Device to server: [`UploadHead`] then pattern records.
    Upload = 1,
    /// Server to device: [`DownloadHead`] then acks, conflicts, globals, trends.
    Download = 2,
    /// The device's persisted sync state.
    Snapshot = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Upload),
            2 => Some(Kind::Download),
            3 => Some(Kind::Snapshot),
            _ => None,
        }
    }
}

/// One decoded record of any kind. Which tags a frame may hold depends on its
/// [`Kind`]; the reader refuses a tag out of place with
/// [`Error::UnknownKind`](crate::Error::UnknownKind).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Record<'a> {
    /// See [`UploadHead`].
    UploadHead(UploadHead),
    /// See [`PatternUpdate`].
    Pattern(PatternUpdate<'a>),
    /// See [`PatternRemoval`].
    Removal(PatternRemoval),
    /// See [`DownloadHead`].
    DownloadHead(DownloadHead),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`Conflict`].
    Conflict(Conflict<'a>),
    /// See [`GlobalUpsert`].
    GlobalUpsert(GlobalUpsert<'a>),
    /// See [`GlobalRemove`].
    GlobalRemove(GlobalRemove),
    /// See [`TrendRecord`].
    Trend(TrendRecord),
    /// An opaque snapshot body (postcard of the sync state).
    Snapshot(&'a [u8]),
}

impl Record<'_> {
    /// The record's tag byte.
    pub fn tag(&self) -> u8 {
        match self {
            Record::UploadHead(_) => tag::UPLOAD_HEAD,
            Record::Pattern(_) => tag::PATTERN,
            Record::Removal(_) => tag::REMOVAL,
            Record::DownloadHead(_) => tag::DOWNLOAD_HEAD,
            Record::Ack(_) => tag::ACK,
            Record::Conflict(_) => tag::CONFLICT,
            Record::GlobalUpsert(_) => tag::GLOBAL_UPSERT,
            Record::GlobalRemove(_) => tag::GLOBAL_REMOVE,
            Record::Trend(_) => tag::TREND,
            Record::Snapshot(_) => tag::SNAPSHOT,
        }
    }

    /// The head tag a frame of `kind` starts with, and whether `tag` may
    /// follow it.
    pub(crate) fn allowed(kind: Kind, tag: u8, first: bool) -> bool {
        match (kind, first) {
            (Kind::Upload, true) => tag == tag::UPLOAD_HEAD,
            (Kind::Upload, false) => matches!(tag, tag::PATTERN | tag::REMOVAL),
            (Kind::Download, true) => tag == tag::DOWNLOAD_HEAD,
            (Kind::Download, false) => matches!(
                tag,
                tag::ACK | tag::CONFLICT | tag::GLOBAL_UPSERT | tag::GLOBAL_REMOVE | tag::TREND
            ),
            (Kind::Snapshot, true) => tag == tag::SNAPSHOT,
            (Kind::Snapshot, false) => false,
        }
    }
}

#[cfg(test)]
mod tests;
