//! The client's configuration as a C struct.

use core::ffi::c_char;

use omega_tv_sync::sync::{Backoff, Config};
use omega_tv_sync::wire::{Caps, MAX_DOWNLOAD_FRAME, MIN_DOWNLOAD_FRAME};
use omega_tv_sync::{DeviceId, DeviceKey};

use crate::args::{self, code, Res};
use crate::codebook::ots_quality_filter_t;
use crate::error::ots_error_t;
use crate::error::ots_error_t as E;
use crate::{OTS_DEVICE_ID_MAX, OTS_DEVICE_ID_SIZE};

/// What the device can take in one response; sent in every request.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ots_caps_t {
    /// Most global-pattern records (upserts and removals) per response
    /// (default 64).
    pub max_globals: u16,
    /// Most trend records per response (default 64).
    pub max_trends: u16,
    /// Bytes of the response buffer the application passes to
    /// `ots_client_apply`: the whole response must fit. In
    /// `OTS_MIN_DOWNLOAD_FRAME..=OTS_MAX_DOWNLOAD_FRAME` (default 16384).
    pub max_bytes: u32,
}

/// How a client behaves. Fill it with `ots_config_init`, then change
/// fields. Copied into the client by `ots_client_init`: it need not outlive
/// the call.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ots_config_t {
    /// The device id, NUL-terminated: 1..=`OTS_DEVICE_ID_MAX` bytes of
    /// printable ASCII. Sent as `X-Device-ID`.
    pub device_id: [c_char; OTS_DEVICE_ID_SIZE],
    /// Which patterns are uploaded (default 0.7 / 10).
    pub filter: ots_quality_filter_t,
    /// What the device can take per response.
    pub caps: ots_caps_t,
    /// Retry delay bound after the first failure, ms (default 1000). The
    /// delay after the n-th failure in a row is uniform in
    /// `0..=min(backoff_cap_ms, backoff_base_ms * 2^(n-1))`, and never less
    /// than a server's `Retry-After`.
    pub backoff_base_ms: u64,
    /// Largest retry delay bound, ms (default 300000).
    pub backoff_cap_ms: u64,
    /// Seed of the retry jitter: make it differ between devices (default: a
    /// hash of the device id).
    pub jitter_seed: u64,
    /// Non-zero: ask for zstd-compressed responses. Must be 0: this build
    /// applies uncompressed responses only (`OTS_ERROR_INVALID_ARGUMENT`).
    pub accept_zstd: u8,
    /// Non-zero: sign every request with `auth_key` (the server requires it
    /// unless it runs with authentication off). Default 0.
    pub has_auth_key: u8,
    /// The device's 32-byte secret, as issued at enrolment
    /// (`constellation device add` prints it as 64 hex digits:
    /// `ots_config_set_key_hex`).
    pub auth_key: [u8; crate::OTS_AUTH_KEY_LEN],
}

impl ots_config_t {
    /// The core configuration, every field checked.
    pub(crate) fn core_config(&self) -> Res<Config> {
        let id = DeviceId::new(args::str_in_array(&self.device_id)?)?;
        let mut c = Config::new(id);
        c.filter = self.filter.to_core()?;
        let caps = self.caps;
        let bytes = caps.max_bytes as usize;
        if !(MIN_DOWNLOAD_FRAME..=MAX_DOWNLOAD_FRAME).contains(&bytes) {
            return Err(E::OTS_ERROR_OUT_OF_RANGE);
        }
        c.caps = Caps {
            max_globals: caps.max_globals,
            max_trends: caps.max_trends,
            max_bytes: caps.max_bytes,
        };
        c.backoff = Backoff {
            base_ms: self.backoff_base_ms,
            cap_ms: self.backoff_cap_ms,
        };
        c.jitter_seed = self.jitter_seed;
        if self.accept_zstd != 0 {
            return Err(E::OTS_ERROR_INVALID_ARGUMENT);
        }
        c.auth_key = (self.has_auth_key != 0).then(|| DeviceKey::new(self.auth_key));
        Ok(c)
    }
}

/// Fills `cfg` with the defaults for `device_id` (NUL-terminated,
/// 1..=`OTS_DEVICE_ID_MAX` bytes of printable ASCII): the product's
/// quality filter, 64 global records, 64 trends and a 16 KiB response
/// buffer, 1 s..5 min backoff, jitter seeded from the id, no key.
/// Errors: `OTS_ERROR_NULL_POINTER`, `OTS_ERROR_EMPTY_ID`,
/// `OTS_ERROR_STRING_TOO_LONG`, `OTS_ERROR_INVALID_CHAR`; `cfg` is not
/// written on error.
///
/// # Safety
/// `cfg` must be NULL or writable for an `ots_config_t`; `device_id` NULL
/// or readable up to its NUL (at most `OTS_DEVICE_ID_SIZE` bytes are read).
#[no_mangle]
pub unsafe extern "C" fn ots_config_init(
    cfg: *mut ots_config_t,
    device_id: *const c_char,
) -> ots_error_t {
    code((|| {
        // SAFETY: forwarded contract.
        let s = unsafe { args::str_bounded(device_id, OTS_DEVICE_ID_MAX) }?;
        let id = DeviceId::new(s)?;
        let c = Config::new(id);
        let mut out = ots_config_t {
            device_id: [0; OTS_DEVICE_ID_SIZE],
            filter: ots_quality_filter_t::from_core(c.filter),
            caps: ots_caps_t {
                max_globals: c.caps.max_globals,
                max_trends: c.caps.max_trends,
                max_bytes: c.caps.max_bytes,
            },
            backoff_base_ms: c.backoff.base_ms,
            backoff_cap_ms: c.backoff.cap_ms,
            jitter_seed: c.jitter_seed,
            accept_zstd: 0,
            has_auth_key: 0,
            auth_key: [0; crate::OTS_AUTH_KEY_LEN],
        };
        args::copy_to_array(s, &mut out.device_id)?;
        // SAFETY: forwarded contract.
        unsafe { args::put(cfg, out) }
    })())
}

/// Sets the signing key from 64 hex digits (either case, NUL-terminated),
/// as `constellation device add` prints it, and turns signing on.
/// Errors: `OTS_ERROR_NULL_POINTER`, `OTS_ERROR_MALFORMED` (not 64 hex
/// digits); `cfg` is unchanged on error.
///
/// # Safety
/// `cfg` must be NULL or a writable `ots_config_t`; `hex` NULL or readable
/// up to its NUL (at most 65 bytes are read).
#[no_mangle]
pub unsafe extern "C" fn ots_config_set_key_hex(
    cfg: *mut ots_config_t,
    hex: *const c_char,
) -> ots_error_t {
    code((|| {
        if cfg.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        // SAFETY: forwarded contract.
        let s = unsafe { args::str_bounded(hex, 64) }.map_err(|e| match e {
            E::OTS_ERROR_STRING_TOO_LONG | E::OTS_ERROR_INVALID_CHAR => E::OTS_ERROR_MALFORMED,
            e => e,
        })?;
        let key = DeviceKey::from_hex(s)?;
        if !cfg.is_aligned() {
            return Err(E::OTS_ERROR_MISALIGNED);
        }
        // SAFETY: non-null, aligned, a valid `ots_config_t` by the caller's
        // contract (every bit pattern of its fields is valid).
        let c = unsafe { &mut *cfg };
        c.auth_key = *key.as_bytes();
        c.has_auth_key = 1;
        Ok(())
    })())
}
