//! The one error enum of the C API, its names and its classes.

use core::ffi::c_char;

use omega_tv_sync::Error;

/// What every function returns. `OTS_OK` (0) is success; every other value
/// is an error whose number never changes between releases (new errors get
/// new numbers). The numbers are grouped by class (see `ots_error_class`):
///
/// | range | class | what to do |
/// |---|---|---|
/// | 1..=15 | API misuse | fix the call (null pointer, misaligned memory, unsupported slot count) |
/// | 16..=47 | input | the value or frame is bad: drop it or report it |
/// | 48..=63 | peer | the other side speaks another codebook or breaks the protocol |
/// | 64..=79 | state | the call does not fit the client's state (a request is in flight, unknown id) |
/// | 80..=95 | resource | a buffer or a capacity is too small: retry with more room |
/// | 96..=111 | storage | flash storage failed (core feature `flash`) |
/// | 112 | transport | for the application's own transport code; never returned by the library |
/// | 127 | unknown | an error of a newer core that this build has no number for |
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ots_error_t {
    /// Success.
    OTS_OK = 0,

    // ---- API misuse ----
    /// A pointer argument that must not be NULL is NULL.
    OTS_ERROR_NULL_POINTER = 1,
    /// Memory is not aligned as the function requires (client memory:
    /// `OTS_CLIENT_ALIGN`; float arrays: 4; `int16_t` arrays: 2).
    OTS_ERROR_MISALIGNED = 2,
    /// The slot count is not one this library was built with (see
    /// `ots_client_size`).
    OTS_ERROR_UNSUPPORTED_SLOTS = 3,
    /// The client or codebook memory does not hold an initialised object
    /// (never initialised, or released with `ots_client_deinit`).
    OTS_ERROR_NOT_INITIALISED = 4,
    /// An argument has a value outside its documented set (a method, a
    /// flag this build does not support).
    OTS_ERROR_INVALID_ARGUMENT = 5,
    /// A callback called back into the client that is running it.
    OTS_ERROR_REENTRANT = 6,

    // ---- input: values ----
    /// A float is NaN or infinite.
    OTS_ERROR_NON_FINITE = 16,
    /// An embedding's L2 norm is outside `1 +- 1e-3`.
    OTS_ERROR_NOT_UNIT_NORM = 17,
    /// A success rate is outside `[0, 1]`.
    OTS_ERROR_RATE_OUT_OF_RANGE = 18,
    /// A number is outside its documented range.
    OTS_ERROR_OUT_OF_RANGE = 19,
    /// An identifier or name is empty.
    OTS_ERROR_EMPTY_ID = 20,
    /// A string is longer than its bound (or not NUL-terminated within it).
    OTS_ERROR_STRING_TOO_LONG = 21,
    /// A string holds a byte outside printable ASCII (`0x21..=0x7e`).
    OTS_ERROR_INVALID_CHAR = 22,
    /// A region is not two upper-case ASCII letters.
    OTS_ERROR_INVALID_REGION = 23,
    /// An array does not have the length the operation needs.
    OTS_ERROR_WRONG_LENGTH = 24,
    /// A length on the wire exceeds its documented maximum.
    OTS_ERROR_OVERSIZE = 25,

    // ---- input: codec and frames ----
    /// An integer code is outside `int16_t`.
    OTS_ERROR_CODE_OUT_OF_RANGE = 32,
    /// An entropy-coded stream is inconsistent.
    OTS_ERROR_CORRUPT_STREAM = 33,
    /// Input ended before the value was complete (a truncated frame).
    OTS_ERROR_TRUNCATED = 34,
    /// Bytes remain after a complete value.
    OTS_ERROR_TRAILING_BYTES = 35,
    /// A frame does not start with the magic bytes.
    OTS_ERROR_BAD_MAGIC = 36,
    /// A frame or snapshot has a format version this build does not speak.
    OTS_ERROR_UNSUPPORTED_VERSION = 37,
    /// A frame kind or record tag is unknown.
    OTS_ERROR_UNKNOWN_KIND = 38,
    /// A frame sets reserved or unsupported flags (a compressed response
    /// given to `ots_client_apply`).
    OTS_ERROR_BAD_FLAGS = 39,
    /// A frame's CRC-32 does not match its content.
    OTS_ERROR_CHECKSUM = 40,
    /// A frame's body does not decode.
    OTS_ERROR_MALFORMED = 41,
    /// A codebook blob is malformed, or its content does not match its id.
    OTS_ERROR_BAD_CODEBOOK = 42,
    /// zstd failed to decompress.
    OTS_ERROR_DECOMPRESSION = 43,

    // ---- peer ----
    /// A frame was coded with a codebook this client does not have.
    OTS_ERROR_UNKNOWN_CODEBOOK = 48,
    /// A response answers another request, or breaks the protocol.
    OTS_ERROR_PROTOCOL_VIOLATION = 49,
    /// The server refused the request (a 4xx other than 401/409/429): it is
    /// dropped, the patterns stay pending.
    OTS_ERROR_REJECTED = 50,
    /// A response to a signed request was not signed for it (forged or
    /// replayed; `X-OTS-Signature` missing or wrong): nothing was applied,
    /// the request stays in flight and is resent after the backoff.
    OTS_ERROR_UNAUTHENTICATED = 51,

    // ---- state ----
    /// A request is in flight: resend it (or apply its response) first.
    OTS_ERROR_BUSY = 64,
    /// No pattern with that id (or it is not acknowledged yet).
    OTS_ERROR_NOT_FOUND = 65,

    // ---- resource ----
    /// A caller buffer is too small for the output.
    OTS_ERROR_BUFFER_TOO_SMALL = 80,
    /// A capacity is exhausted (all slots used, too many records).
    OTS_ERROR_CAPACITY_EXCEEDED = 81,
    /// zstd failed to compress.
    OTS_ERROR_COMPRESSION = 82,
    /// The server's per-device quota of stored pattern ids is full (`403
    /// pattern_quota_exceeded`): the request was dropped, its patterns stay
    /// pending, the next attempt waits at least the backoff cap. Remove
    /// patterns to make room.
    OTS_ERROR_QUOTA_EXCEEDED = 83,

    // ---- storage ----
    /// The flash driver reported an error.
    OTS_ERROR_FLASH = 96,
    /// Stored data could not be repaired.
    OTS_ERROR_STORAGE_CORRUPT = 97,

    // ---- transport ----
    /// The exchange did not complete (connection, timeout, a response larger
    /// than the buffer). Never returned by the library: it is the number an
    /// application's transport code can use in the same enum; report the
    /// failure with `ots_client_transport_failed`.
    OTS_ERROR_TRANSPORT = 112,

    // ---- unknown ----
    /// An error of a newer core that this build has no number for.
    OTS_ERROR_UNKNOWN = 127,
}

/// What kind of error a code is, so a caller can act on the class without
/// listing every code.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ots_error_class_t {
    /// `OTS_OK`.
    OTS_CLASS_OK = 0,
    /// The call is wrong (pointer, alignment, slot count, argument).
    OTS_CLASS_API = 1,
    /// The value or frame is bad.
    OTS_CLASS_INPUT = 2,
    /// The peer speaks another codebook or breaks the protocol.
    OTS_CLASS_PEER = 3,
    /// The call does not fit the client's state.
    OTS_CLASS_STATE = 4,
    /// More room (a bigger buffer, more slots) would fix it.
    OTS_CLASS_RESOURCE = 5,
    /// Flash storage.
    OTS_CLASS_STORAGE = 6,
    /// The network exchange failed (the application's transport).
    OTS_CLASS_TRANSPORT = 7,
    /// Not a code this build knows.
    OTS_CLASS_UNKNOWN = 8,
}

use ots_error_t as E;

impl From<Error> for ots_error_t {
    fn from(e: Error) -> Self {
        match e {
            Error::NonFinite => E::OTS_ERROR_NON_FINITE,
            Error::NotUnitNorm => E::OTS_ERROR_NOT_UNIT_NORM,
            Error::RateOutOfRange => E::OTS_ERROR_RATE_OUT_OF_RANGE,
            Error::OutOfRange => E::OTS_ERROR_OUT_OF_RANGE,
            Error::EmptyId => E::OTS_ERROR_EMPTY_ID,
            Error::StringTooLong => E::OTS_ERROR_STRING_TOO_LONG,
            Error::InvalidChar => E::OTS_ERROR_INVALID_CHAR,
            Error::InvalidRegion => E::OTS_ERROR_INVALID_REGION,
            Error::WrongLength => E::OTS_ERROR_WRONG_LENGTH,
            Error::Oversize => E::OTS_ERROR_OVERSIZE,
            Error::CodeOutOfRange => E::OTS_ERROR_CODE_OUT_OF_RANGE,
            Error::CorruptStream => E::OTS_ERROR_CORRUPT_STREAM,
            Error::Truncated => E::OTS_ERROR_TRUNCATED,
            Error::TrailingBytes => E::OTS_ERROR_TRAILING_BYTES,
            Error::BadMagic => E::OTS_ERROR_BAD_MAGIC,
            Error::UnsupportedVersion => E::OTS_ERROR_UNSUPPORTED_VERSION,
            Error::UnknownKind => E::OTS_ERROR_UNKNOWN_KIND,
            Error::BadFlags => E::OTS_ERROR_BAD_FLAGS,
            Error::Checksum => E::OTS_ERROR_CHECKSUM,
            Error::Malformed => E::OTS_ERROR_MALFORMED,
            Error::BadCodebook => E::OTS_ERROR_BAD_CODEBOOK,
            Error::Decompression => E::OTS_ERROR_DECOMPRESSION,
            Error::UnknownCodebook => E::OTS_ERROR_UNKNOWN_CODEBOOK,
            Error::ProtocolViolation => E::OTS_ERROR_PROTOCOL_VIOLATION,
            Error::Rejected => E::OTS_ERROR_REJECTED,
            Error::Unauthenticated => E::OTS_ERROR_UNAUTHENTICATED,
            Error::Busy => E::OTS_ERROR_BUSY,
            Error::NotFound => E::OTS_ERROR_NOT_FOUND,
            Error::BufferTooSmall => E::OTS_ERROR_BUFFER_TOO_SMALL,
            Error::CapacityExceeded => E::OTS_ERROR_CAPACITY_EXCEEDED,
            Error::Compression => E::OTS_ERROR_COMPRESSION,
            Error::QuotaExceeded => E::OTS_ERROR_QUOTA_EXCEEDED,
            Error::Flash => E::OTS_ERROR_FLASH,
            Error::StorageCorrupt => E::OTS_ERROR_STORAGE_CORRUPT,
            _ => E::OTS_ERROR_UNKNOWN,
        }
    }
}

/// Every code with its name: the one table `ots_error_str` and
/// `ots_error_class` read (and the tests walk).
pub(crate) const TABLE: &[(ots_error_t, &core::ffi::CStr)] = &[
    (E::OTS_OK, c"ok"),
    (E::OTS_ERROR_NULL_POINTER, c"null_pointer"),
    (E::OTS_ERROR_MISALIGNED, c"misaligned"),
    (E::OTS_ERROR_UNSUPPORTED_SLOTS, c"unsupported_slots"),
    (E::OTS_ERROR_NOT_INITIALISED, c"not_initialised"),
    (E::OTS_ERROR_INVALID_ARGUMENT, c"invalid_argument"),
    (E::OTS_ERROR_REENTRANT, c"reentrant"),
    (E::OTS_ERROR_NON_FINITE, c"non_finite"),
    (E::OTS_ERROR_NOT_UNIT_NORM, c"not_unit_norm"),
    (E::OTS_ERROR_RATE_OUT_OF_RANGE, c"rate_out_of_range"),
    (E::OTS_ERROR_OUT_OF_RANGE, c"out_of_range"),
    (E::OTS_ERROR_EMPTY_ID, c"empty_id"),
    (E::OTS_ERROR_STRING_TOO_LONG, c"string_too_long"),
    (E::OTS_ERROR_INVALID_CHAR, c"invalid_char"),
    (E::OTS_ERROR_INVALID_REGION, c"invalid_region"),
    (E::OTS_ERROR_WRONG_LENGTH, c"wrong_length"),
    (E::OTS_ERROR_OVERSIZE, c"oversize"),
    (E::OTS_ERROR_CODE_OUT_OF_RANGE, c"code_out_of_range"),
    (E::OTS_ERROR_CORRUPT_STREAM, c"corrupt_stream"),
    (E::OTS_ERROR_TRUNCATED, c"truncated"),
    (E::OTS_ERROR_TRAILING_BYTES, c"trailing_bytes"),
    (E::OTS_ERROR_BAD_MAGIC, c"bad_magic"),
    (E::OTS_ERROR_UNSUPPORTED_VERSION, c"unsupported_version"),
    (E::OTS_ERROR_UNKNOWN_KIND, c"unknown_kind"),
    (E::OTS_ERROR_BAD_FLAGS, c"bad_flags"),
    (E::OTS_ERROR_CHECKSUM, c"checksum"),
    (E::OTS_ERROR_MALFORMED, c"malformed"),
    (E::OTS_ERROR_BAD_CODEBOOK, c"bad_codebook"),
    (E::OTS_ERROR_DECOMPRESSION, c"decompression"),
    (E::OTS_ERROR_UNKNOWN_CODEBOOK, c"unknown_codebook"),
    (E::OTS_ERROR_PROTOCOL_VIOLATION, c"protocol_violation"),
    (E::OTS_ERROR_REJECTED, c"rejected"),
    (E::OTS_ERROR_UNAUTHENTICATED, c"unauthenticated"),
    (E::OTS_ERROR_BUSY, c"busy"),
    (E::OTS_ERROR_NOT_FOUND, c"not_found"),
    (E::OTS_ERROR_BUFFER_TOO_SMALL, c"buffer_too_small"),
    (E::OTS_ERROR_CAPACITY_EXCEEDED, c"capacity_exceeded"),
    (E::OTS_ERROR_COMPRESSION, c"compression"),
    (E::OTS_ERROR_QUOTA_EXCEEDED, c"pattern_quota_exceeded"),
    (E::OTS_ERROR_FLASH, c"flash"),
    (E::OTS_ERROR_STORAGE_CORRUPT, c"storage_corrupt"),
    (E::OTS_ERROR_TRANSPORT, c"transport"),
    (E::OTS_ERROR_UNKNOWN, c"unknown"),
];

/// The error's stable name in `snake_case` (the same string the server uses
/// in its error bodies, e.g. `"checksum"`), as a static NUL-terminated
/// string; `"unknown"` for a value that is no `ots_error_t`. Never NULL;
/// the string must not be freed or written.
#[no_mangle]
pub extern "C" fn ots_error_str(code: i32) -> *const c_char {
    TABLE
        .iter()
        .find(|(e, _)| *e as i32 == code)
        .map_or(c"unknown".as_ptr(), |(_, s)| s.as_ptr())
}

/// The class of an error code (see `ots_error_t` for the ranges);
/// `OTS_CLASS_UNKNOWN` for a value that is no `ots_error_t`.
#[no_mangle]
pub extern "C" fn ots_error_class(code: i32) -> ots_error_class_t {
    use ots_error_class_t as C;
    if !TABLE.iter().any(|(e, _)| *e as i32 == code) {
        return C::OTS_CLASS_UNKNOWN;
    }
    match code {
        0 => C::OTS_CLASS_OK,
        1..=15 => C::OTS_CLASS_API,
        16..=47 => C::OTS_CLASS_INPUT,
        48..=63 => C::OTS_CLASS_PEER,
        64..=79 => C::OTS_CLASS_STATE,
        80..=95 => C::OTS_CLASS_RESOURCE,
        96..=111 => C::OTS_CLASS_STORAGE,
        112 => C::OTS_CLASS_TRANSPORT,
        _ => C::OTS_CLASS_UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The core's own resource test agrees with the C classes, and every
    /// core error has its own number and the core's name.
    #[test]
    fn core_errors_map_one_to_one_with_the_same_names() {
        let all = [
            Error::NonFinite,
            Error::NotUnitNorm,
            Error::RateOutOfRange,
            Error::OutOfRange,
            Error::EmptyId,
            Error::StringTooLong,
            Error::InvalidChar,
            Error::InvalidRegion,
            Error::WrongLength,
            Error::Oversize,
            Error::CodeOutOfRange,
            Error::CorruptStream,
            Error::Truncated,
            Error::TrailingBytes,
            Error::BadMagic,
            Error::UnsupportedVersion,
            Error::UnknownKind,
            Error::BadFlags,
            Error::Checksum,
            Error::Malformed,
            Error::BadCodebook,
            Error::UnknownCodebook,
            Error::ProtocolViolation,
            Error::Rejected,
            Error::Unauthenticated,
            Error::Busy,
            Error::NotFound,
            Error::BufferTooSmall,
            Error::CapacityExceeded,
            Error::Compression,
            Error::Decompression,
            Error::Flash,
            Error::StorageCorrupt,
        ];
        let mut seen = std::vec::Vec::new();
        for e in all {
            let c = ots_error_t::from(e);
            assert_ne!(c, E::OTS_ERROR_UNKNOWN, "{e:?}");
            assert!(!seen.contains(&c), "{e:?} shares a number");
            seen.push(c);
            // SAFETY: ots_error_str returns a static NUL-terminated string.
            let name = unsafe { core::ffi::CStr::from_ptr(ots_error_str(c as i32)) };
            assert_eq!(name.to_str(), Ok(e.code()));
            assert_eq!(
                ots_error_class(c as i32) == ots_error_class_t::OTS_CLASS_RESOURCE,
                e.is_resource(),
                "{e:?}"
            );
        }
    }

    #[test]
    fn unknown_values_are_named_and_classed_unknown() {
        for v in [-1, 7, 15, 44, 999, i32::MIN, i32::MAX] {
            // SAFETY: as above.
            let name = unsafe { core::ffi::CStr::from_ptr(ots_error_str(v)) };
            assert_eq!(name.to_str(), Ok("unknown"));
            assert_eq!(ots_error_class(v), ots_error_class_t::OTS_CLASS_UNKNOWN);
        }
        assert_eq!(ots_error_class(0), ots_error_class_t::OTS_CLASS_OK);
        assert_eq!(ots_error_class(112), ots_error_class_t::OTS_CLASS_TRANSPORT);
    }
}
