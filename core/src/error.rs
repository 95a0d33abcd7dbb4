//! The crate's one error type.

use core::fmt;

/// Result alias used throughout the crate.
pub type Result<T> = core::result::Result<T, Error>;

/// Everything that can go wrong in the core, as one flat enum.
///
/// Variants fall in three groups a caller can act on differently:
/// *input* errors (the value or frame is bad: drop it or report it),
/// *resource* errors (a caller-provided buffer or a compile-time capacity is too
/// small: retry with more room, or send the rest next time), and *peer* errors
/// (the other side speaks a different format or codebook), plus the
/// *storage* errors of the `flash` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    // ---- input: values ----
    /// A float is NaN or infinite.
    NonFinite,
    /// An embedding's L2 norm is outside `1 ± NORM_TOLERANCE`.
    NotUnitNorm,
    /// A success rate is outside `[0, 1]`.
    RateOutOfRange,
    /// A score or other bounded number is outside its documented range.
    OutOfRange,
    /// An identifier or name is empty.
    EmptyId,
    /// A string is longer than its type's bound.
    StringTooLong,
    /// A string holds a byte outside printable ASCII (`0x21..=0x7e`).
    InvalidChar,
    /// A region is not two upper-case ASCII letters (ISO 3166-1 alpha-2).
    InvalidRegion,
    /// A slice does not have the length the operation needs.
    WrongLength,
    /// A length on the wire exceeds its documented maximum.
    Oversize,

    // ---- input: codec and frames ----
    /// An integer code, or a code plus a delta, is outside `i16`.
    CodeOutOfRange,
    /// An entropy-coded stream is inconsistent (bad symbol, bad final state).
    CorruptStream,
    /// Input ended before the value was complete.
    Truncated,
    /// Bytes remain after a complete value.
    TrailingBytes,
    /// A frame does not start with the magic bytes.
    BadMagic,
    /// A frame has a format version this build does not speak.
    UnsupportedVersion,
    /// A frame kind or record tag is unknown.
    UnknownKind,
    /// A frame sets flags that are reserved or not supported by this build.
    BadFlags,
    /// A frame's CRC-32 does not match its content.
    Checksum,
    /// A frame's body does not decode (postcard error, bad enum tag, ...).
    Malformed,
    /// A codebook blob is malformed, or its content does not match its id.
    BadCodebook,

    // ---- peer ----
    /// A frame was coded with a codebook this side does not have.
    UnknownCodebook,
    /// A response answers another request than the one in flight, or breaks
    /// the protocol (an ack for a pattern that was not sent).
    ProtocolViolation,
    /// The server refused the request with a 4xx other than 409/429: the
    /// request is dropped, the patterns stay dirty.
    Rejected,
    /// A response to a signed request did not carry a valid signature of
    /// the device's key bound to that request (`X-OTS-Signature`, see
    /// `docs/wire-format.md`): it may be forged or replayed, so nothing of
    /// it was applied; the same request is resent later.
    Unauthenticated,

    // ---- state ----
    /// An exchange is in flight: resend its request (or apply its response)
    /// before preparing a new one.
    Busy,
    /// No pattern with that id.
    NotFound,

    // ---- resource ----
    /// A caller-provided buffer is too small for the output.
    BufferTooSmall,
    /// A compile-time capacity (patterns, records, bytes) is exhausted.
    CapacityExceeded,
    /// zstd failed to compress (workspace too small, or output too large).
    Compression,
    /// zstd failed to decompress (corrupt input, or output too large).
    Decompression,
    /// The server's per-device quota of stored pattern ids is full (`403
    /// pattern_quota_exceeded`, signed for the request): the request was
    /// dropped, nothing of it stored (its patterns stay pending), and the
    /// client waits at least the backoff cap before it sends again. The
    /// server refuses every upload that adds pattern ids while the quota is
    /// full; the application removes patterns (their removals are uploaded)
    /// to make room.
    QuotaExceeded,

    // ---- storage (feature `flash`) ----
    /// The flash driver reported an error (read, write or erase failed).
    Flash,
    /// The snapshot region holds data that could not be repaired.
    StorageCorrupt,
}

impl Error {
    /// A stable, machine-readable code (`snake_case`), the same string the
    /// server puts in its error responses.
    pub const fn code(self) -> &'static str {
        match self {
            Error::NonFinite => "non_finite",
            Error::NotUnitNorm => "not_unit_norm",
            Error::RateOutOfRange => "rate_out_of_range",
            Error::OutOfRange => "out_of_range",
            Error::EmptyId => "empty_id",
            Error::StringTooLong => "string_too_long",
            Error::InvalidChar => "invalid_char",
            Error::InvalidRegion => "invalid_region",
            Error::WrongLength => "wrong_length",
            Error::Oversize => "oversize",
            Error::CodeOutOfRange => "code_out_of_range",
            Error::CorruptStream => "corrupt_stream",
            Error::Truncated => "truncated",
            Error::TrailingBytes => "trailing_bytes",
            Error::BadMagic => "bad_magic",
            Error::UnsupportedVersion => "unsupported_version",
            Error::UnknownKind => "unknown_kind",
            Error::BadFlags => "bad_flags",
            Error::Checksum => "checksum",
            Error::Malformed => "malformed",
            Error::BadCodebook => "bad_codebook",
            Error::UnknownCodebook => "unknown_codebook",
            Error::ProtocolViolation => "protocol_violation",
            Error::Rejected => "rejected",
            Error::Unauthenticated => "unauthenticated",
            Error::Busy => "busy",
            Error::NotFound => "not_found",
            Error::BufferTooSmall => "buffer_too_small",
            Error::CapacityExceeded => "capacity_exceeded",
            Error::Compression => "compression",
            Error::Decompression => "decompression",
            Error::QuotaExceeded => "pattern_quota_exceeded",
            Error::Flash => "flash",
            Error::StorageCorrupt => "storage_corrupt",
        }
    }

    /// True for errors that more room (a bigger buffer, fewer items per frame)
    /// or fewer stored patterns (the server's quota) would fix; false for bad
    /// input and peer mismatches.
    pub const fn is_resource(self) -> bool {
        matches!(
            self,
            Error::BufferTooSmall
                | Error::CapacityExceeded
                | Error::Compression
                | Error::QuotaExceeded
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        match e {
            postcard::Error::DeserializeUnexpectedEnd => Error::Truncated,
            postcard::Error::SerializeBufferFull => Error::BufferTooSmall,
            _ => Error::Malformed,
        }
    }
}
