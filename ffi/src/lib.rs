//! # omega-tv-sync-ffi
//!
//! The C API of the omega-tv-sync core: the device's sync client for C and
//! C++ firmware (RTOS tasks, vendor SDKs, small-Linux middleware), with the
//! core's properties kept:
//!
//! - **no heap**: the client lives in caller memory (`ots_client_init`),
//!   every buffer is the caller's, every bound is a constant in the header;
//! - **no panic reaches C**: every function checks its pointers (NULL,
//!   alignment), lengths and values and returns an `ots_error_t`. The
//!   static library's profile (`--profile ffi`) sets `panic = "abort"` as the
//!   backstop: were a panic ever to happen, it would abort (std build) or
//!   call `ots_platform_panic()` (no_std build), never unwind into C;
//! - **no global state**: everything is in the client and codebook handles.
//!   A client is not thread-safe: call its functions from one thread at a
//!   time. Different clients, and codebook handles, are independent.
//!
//! `include/omega_tv_sync.h` is generated from this crate by cbindgen
//! (`cbindgen.toml`); `docs/c-api.md` has the lifecycle, the memory table and
//! the error table. `examples/host` is a complete small-Linux client over
//! libcurl; `examples/cortex-m` a Cortex-M4F firmware run under QEMU.
//!
//! ## Builds
//! | build | command |
//! |---|---|
//! | host (Linux, with std) | `cargo build -p omega-tv-sync-ffi --profile ffi` -> `target/ffi/libomega_tv_sync_ffi.a` |
//! | device (no_std) | `cargo build -p omega-tv-sync-ffi --profile ffi --target thumbv7em-none-eabihf --no-default-features --features slots-8` |
//!
//! Slot counts are compiled in by feature (`slots-8` .. `slots-256`): each is
//! an instance of the client code, so a device enables only the one it uses.
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[cfg(any(feature = "std", test))]
extern crate std;

mod args;
mod client;
mod codebook;
mod config;
mod cycle;
mod error;
mod sink;
mod state;

pub use client::{
    ots_client_deinit, ots_client_init, ots_client_size, ots_client_t, OTS_CLIENT_ALIGN,
    OTS_CLIENT_BASE_BYTES, OTS_CLIENT_SLOT_BYTES,
};
pub use codebook::{
    ots_codebook_flash_bytes, ots_codebook_from_blob, ots_codebook_id,
    ots_codebook_minilm_small_v1, ots_codebook_minilm_v1, ots_codebook_quantize, ots_codebook_t,
    ots_quality_filter_accepts, ots_quality_filter_default, ots_quality_filter_t,
    OTS_CODEBOOK_SIZE, OTS_CODEBOOK_WORDS,
};
pub use config::{ots_caps_t, ots_config_init, ots_config_set_key_hex, ots_config_t};
pub use cycle::{
    ots_client_apply, ots_client_apply_feed, ots_client_authorization, ots_client_feed_path,
    ots_client_prepare, ots_client_remove, ots_client_restore, ots_client_snapshot,
    ots_client_transport_failed, ots_client_upsert, ots_method_t, ots_outcome_kind_t,
    ots_outcome_t, ots_pattern_t, ots_response_t, ots_summary_t,
};
pub use error::{ots_error_class, ots_error_class_t, ots_error_str, ots_error_t};
pub use sink::{ots_global_pattern_t, ots_sink_t, ots_trend_t};
pub use state::{
    ots_client_acked, ots_client_auth_counter, ots_client_global_version, ots_client_in_flight,
    ots_client_len, ots_client_next_sync_at, ots_client_pending, ots_client_seq, ots_client_stats,
    ots_max_snapshot_len, ots_stats_t,
};

/// Dimensions of an embedding (floats) and of its integer codes.
pub const OTS_DIM: usize = 384;
/// Longest pattern id, bytes (without the NUL).
pub const OTS_PATTERN_ID_MAX: usize = 16;
/// Longest category, bytes (without the NUL).
pub const OTS_CATEGORY_MAX: usize = 16;
/// Longest device id, bytes (without the NUL).
pub const OTS_DEVICE_ID_MAX: usize = 64;
/// Longest content id of a trend signal, bytes (without the NUL).
pub const OTS_CONTENT_ID_MAX: usize = 64;
/// Bytes of a `char` array that holds a device id and its NUL.
pub const OTS_DEVICE_ID_SIZE: usize = 65;
/// Bytes of a `char` array that holds a category and its NUL.
pub const OTS_CATEGORY_SIZE: usize = 17;
/// Bytes of a `char` array that holds a content id and its NUL.
pub const OTS_CONTENT_ID_SIZE: usize = 65;
/// Bytes of a `char` array that holds a region code and its NUL.
pub const OTS_REGION_SIZE: usize = 3;
/// Bytes of a device key.
pub const OTS_AUTH_KEY_LEN: usize = 32;
/// Longest `Authorization` header value, characters (without the NUL).
pub const OTS_AUTH_HEADER_MAX: usize = 114;
/// Smallest request buffer `ots_client_prepare` accepts (a request with no
/// pattern), bytes.
pub const OTS_MIN_REQUEST_LEN: usize = 45;
/// Most patterns in one request.
pub const OTS_MAX_UPLOAD_PATTERNS: usize = 64;
/// Largest request body, bytes (the server answers 413 above).
pub const OTS_MAX_UPLOAD_FRAME: usize = 111_277;
/// Smallest `caps.max_bytes` (response buffer), bytes.
pub const OTS_MIN_DOWNLOAD_FRAME: usize = 2048;
/// Largest `caps.max_bytes`, bytes.
pub const OTS_MAX_DOWNLOAD_FRAME: usize = 1_048_576;
/// Longest feed path (`ots_client_feed_path`), bytes (without the NUL).
pub const OTS_FEED_PATH_MAX: usize = 96;
/// Fixed part of `OTS_MAX_SNAPSHOT_LEN(slots)`, bytes.
pub const OTS_SNAPSHOT_BASE_BYTES: usize = 113;
/// Per-slot part of `OTS_MAX_SNAPSHOT_LEN(slots)`, bytes.
pub const OTS_SNAPSHOT_SLOT_BYTES: usize = 1201;

// The header's literals are the core's values (cbindgen needs literals).
const _: () = {
    use omega_tv_sync::transport::auth;
    use omega_tv_sync::{types, wire};
    assert!(OTS_DIM == omega_tv_sync::DIM);
    assert!(OTS_PATTERN_ID_MAX == types::PatternId::MAX_LEN);
    assert!(OTS_CATEGORY_MAX == types::Category::MAX_LEN);
    assert!(OTS_DEVICE_ID_MAX == types::DeviceId::MAX_LEN);
    assert!(OTS_CONTENT_ID_MAX == types::ContentId::MAX_LEN);
    assert!(OTS_DEVICE_ID_SIZE == OTS_DEVICE_ID_MAX + 1);
    assert!(OTS_CATEGORY_SIZE == OTS_CATEGORY_MAX + 1);
    assert!(OTS_CONTENT_ID_SIZE == OTS_CONTENT_ID_MAX + 1);
    assert!(OTS_AUTH_KEY_LEN == auth::KEY_LEN);
    assert!(OTS_AUTH_HEADER_MAX == auth::HEADER_MAX);
    assert!(OTS_MIN_REQUEST_LEN == wire::OVERHEAD + wire::max_len::UPLOAD_HEAD);
    assert!(OTS_MAX_UPLOAD_PATTERNS == wire::MAX_UPLOAD_PATTERNS);
    assert!(OTS_MAX_UPLOAD_FRAME == wire::MAX_UPLOAD_FRAME);
    assert!(OTS_MIN_DOWNLOAD_FRAME == wire::MIN_DOWNLOAD_FRAME);
    assert!(OTS_MAX_DOWNLOAD_FRAME == wire::MAX_DOWNLOAD_FRAME);
};

/// The no_std build's panic handler. The API is built so that no input can
/// panic (every path returns an error); should one ever happen anyway, it
/// calls `ots_platform_panic()`, which the firmware provides (log, reset).
/// Nothing unwinds into C.
#[cfg(all(not(feature = "std"), not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    extern "C" {
        fn ots_platform_panic() -> !;
    }
    // SAFETY: a plain C function without arguments that the firmware must
    // provide and that does not return (documented in the header).
    unsafe { ots_platform_panic() }
}

#[cfg(test)]
mod tests;
