//! The client in caller memory: layout, checks on every call, dispatch to
//! the compiled-in slot counts, creation and release.
//!
//! Client memory holds a 16-byte [`Head`] (magic, slot count, a re-entry
//! flag) followed by a `SyncClient<'static, N>`. Every call checks the
//! pointer, its alignment, the magic and the slot count before it touches
//! the client, and refuses a call made from inside a callback of the same
//! client (the client is then borrowed mutably by the running call).

use core::mem::{align_of, size_of};

use omega_tv_sync::sync::SyncClient;

use crate::args::{self, code, Res};
use crate::codebook::{self, ots_codebook_t};
use crate::config::ots_config_t;
use crate::error::ots_error_t;
use crate::error::ots_error_t as E;

/// Alignment client memory must have (bytes).
pub const OTS_CLIENT_ALIGN: usize = 8;
/// Fixed part of `OTS_CLIENT_SIZE(slots)`, bytes: an upper bound of the
/// client's size without its slots on every supported target.
pub const OTS_CLIENT_BASE_BYTES: usize = 512;
/// Per-slot part of `OTS_CLIENT_SIZE(slots)`, bytes (two `int16_t[384]`
/// code arrays and the pattern's metadata).
pub const OTS_CLIENT_SLOT_BYTES: usize = 1608;

/// An initialised client lives in caller memory that starts with this.
/// Opaque to C: only ever handled through `ots_client_t *`.
#[allow(non_camel_case_types)]
pub struct ots_client_t {
    _private: [u8; 0],
}

#[repr(C)]
struct Head {
    magic: u32,
    slots: u32,
    busy: u32,
    _reserved: u32,
}

const HEAD: usize = 16;
const MAGIC: u32 = 0x4f54_5343; // "OTSC"
const _: () = assert!(size_of::<Head>() == HEAD);

/// Exact bytes of a client with `N` slots, this target.
pub(crate) const fn bytes<const N: usize>() -> usize {
    HEAD + size_of::<SyncClient<'static, N>>()
}

/// The header's bound holds for `N` on this target, and the client's
/// alignment is within `OTS_CLIENT_ALIGN`: checked at compile time for
/// every compiled-in slot count, so a target where the bound is wrong
/// fails to build instead of corrupting memory.
const fn fits<const N: usize>() -> bool {
    bytes::<N>() <= OTS_CLIENT_BASE_BYTES + N * OTS_CLIENT_SLOT_BYTES
        && align_of::<SyncClient<'static, N>>() <= OTS_CLIENT_ALIGN
        && HEAD.is_multiple_of(align_of::<SyncClient<'static, N>>())
}

/// Calls `$body` with `$c: &mut SyncClient<'static, N>` for the slot count
/// in `$g` (a [`Guard`]); the arms exist for the compiled-in counts only.
macro_rules! dispatch {
    ($g:expr, |$c:ident| $body:expr) => {{
        let g: &$crate::client::Guard = &$g;
        match g.slots() {
            #[cfg(feature = "slots-8")]
            8 => {
                // SAFETY: `Guard::enter` checked the memory holds a client
                // with this slot count, and holds it exclusively.
                let $c = unsafe { g.client::<8>() };
                $body
            }
            #[cfg(feature = "slots-16")]
            16 => {
                // SAFETY: as above.
                let $c = unsafe { g.client::<16>() };
                $body
            }
            #[cfg(feature = "slots-32")]
            32 => {
                // SAFETY: as above.
                let $c = unsafe { g.client::<32>() };
                $body
            }
            #[cfg(feature = "slots-64")]
            64 => {
                // SAFETY: as above.
                let $c = unsafe { g.client::<64>() };
                $body
            }
            #[cfg(feature = "slots-128")]
            128 => {
                // SAFETY: as above.
                let $c = unsafe { g.client::<128>() };
                $body
            }
            #[cfg(feature = "slots-256")]
            256 => {
                // SAFETY: as above.
                let $c = unsafe { g.client::<256>() };
                $body
            }
            _ => Err($crate::error::ots_error_t::OTS_ERROR_NOT_INITIALISED),
        }
    }};
}
pub(crate) use dispatch;

/// Calls `$f::<N>($($arg),*)` for the compiled-in slot count `$slots`
/// (a `u32`), or evaluates `$none`.
macro_rules! for_slots {
    ($slots:expr, $none:expr, $f:ident($($arg:expr),*)) => {
        match $slots {
            #[cfg(feature = "slots-8")]
            8 => $f::<8>($($arg),*),
            #[cfg(feature = "slots-16")]
            16 => $f::<16>($($arg),*),
            #[cfg(feature = "slots-32")]
            32 => $f::<32>($($arg),*),
            #[cfg(feature = "slots-64")]
            64 => $f::<64>($($arg),*),
            #[cfg(feature = "slots-128")]
            128 => $f::<128>($($arg),*),
            #[cfg(feature = "slots-256")]
            256 => $f::<256>($($arg),*),
            _ => $none,
        }
    };
}

#[cfg(feature = "slots-8")]
const _: () = assert!(fits::<8>());
#[cfg(feature = "slots-16")]
const _: () = assert!(fits::<16>());
#[cfg(feature = "slots-32")]
const _: () = assert!(fits::<32>());
#[cfg(feature = "slots-64")]
const _: () = assert!(fits::<64>());
#[cfg(feature = "slots-128")]
const _: () = assert!(fits::<128>());
#[cfg(feature = "slots-256")]
const _: () = assert!(fits::<256>());

/// Exclusive access to an initialised client for the length of one call.
pub(crate) struct Guard {
    head: *mut Head,
    slots: u32,
}

impl Guard {
    /// Checks `p` and marks the client busy until the guard drops.
    ///
    /// # Safety
    /// A non-NULL `p` must point to memory that `ots_client_init` accepted
    /// (or to readable memory of at least 16 bytes that holds no client),
    /// not used by another thread during the call.
    pub(crate) unsafe fn enter(p: *mut ots_client_t) -> Res<Guard> {
        if p.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        if !(p as usize).is_multiple_of(OTS_CLIENT_ALIGN) {
            return Err(E::OTS_ERROR_MISALIGNED);
        }
        let head = p.cast::<Head>();
        // SAFETY: non-null and aligned; at least a `Head` is readable by the
        // caller's contract, and every bit pattern of it is valid.
        let h = unsafe { head.read() };
        if h.magic != MAGIC || size_for(h.slots) == 0 {
            return Err(E::OTS_ERROR_NOT_INITIALISED);
        }
        if h.busy != 0 {
            return Err(E::OTS_ERROR_REENTRANT);
        }
        // SAFETY: as above; the flag is ours to set while we run.
        unsafe { core::ptr::addr_of_mut!((*head).busy).write(1) };
        Ok(Guard {
            head,
            slots: h.slots,
        })
    }

    pub(crate) fn slots(&self) -> u32 {
        self.slots
    }

    /// The client behind the head.
    ///
    /// # Safety
    /// `N` must be the slot count the head holds (then `ots_client_init`
    /// wrote a `SyncClient<N>` after it), and the returned borrow must end
    /// before the guard drops.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn client<'a, const N: usize>(&self) -> &'a mut SyncClient<'static, N> {
        // SAFETY: by the contract, a valid `SyncClient<N>` lives `HEAD`
        // bytes after the (OTS_CLIENT_ALIGN-aligned) head, suitably aligned
        // (`fits`); the busy flag excludes every other borrow of it.
        unsafe {
            &mut *self
                .head
                .cast::<u8>()
                .add(HEAD)
                .cast::<SyncClient<'static, N>>()
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: `head` was checked in `enter` and stays valid for the call.
        unsafe { core::ptr::addr_of_mut!((*self.head).busy).write(0) };
    }
}

/// Runs `f` on the checked client `p`.
macro_rules! with_client {
    ($p:expr, |$c:ident| $body:expr) => {{
        // SAFETY: the C function's contract (see its `# Safety`).
        let g = unsafe { $crate::client::Guard::enter($p) }?;
        $crate::client::dispatch!(g, |$c| $body)
    }};
}
pub(crate) use with_client;

fn size_for(slots: u32) -> usize {
    for_slots!(slots, 0, bytes())
}

/// Bytes of client memory for `slots` slots on this target, or 0 when this
/// library was built without that slot count (the ones compiled in are
/// cargo features `slots-8` .. `slots-256`; the default host build has 8,
/// 64 and 256). Never more than `OTS_CLIENT_SIZE(slots)`.
#[no_mangle]
pub extern "C" fn ots_client_size(slots: u32) -> usize {
    size_for(slots)
}

/// Creates a client with no patterns, sequence 1 and global version 0 in
/// caller memory `mem` of `mem_len` bytes, and stores the handle (which is
/// `mem`) in `*out`.
///
/// - `mem`: aligned to `OTS_CLIENT_ALIGN` (`OTS_ERROR_MISALIGNED`) and at
///   least `ots_client_size(slots)` bytes (`OTS_ERROR_BUFFER_TOO_SMALL`);
///   `OTS_CLIENT_SIZE(slots)` bytes always suffice. Owned by the client
///   until `ots_client_deinit`; the library never allocates.
/// - `slots`: how many patterns the client holds; one of the counts this
///   library was built with (`OTS_ERROR_UNSUPPORTED_SLOTS`).
/// - `codebook`: copied; its tables must outlive the client.
/// - `config`: copied and checked (`OTS_ERROR_EMPTY_ID`,
///   `OTS_ERROR_STRING_TOO_LONG`, `OTS_ERROR_INVALID_CHAR` for the device id,
///   `OTS_ERROR_RATE_OUT_OF_RANGE`/`OTS_ERROR_NON_FINITE` for the filter,
///   `OTS_ERROR_OUT_OF_RANGE` for `caps.max_bytes`,
///   `OTS_ERROR_INVALID_ARGUMENT` for `accept_zstd`).
///
/// On error nothing is written. Calling it on memory that holds a client
/// replaces that client (`OTS_ERROR_REENTRANT` from that client's own
/// callback). The client is not thread-safe: call its functions
/// from one thread at a time (different clients are independent).
///
/// # Safety
/// `mem` must be NULL or writable for `mem_len` bytes; `codebook` and
/// `config` NULL or readable; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ots_client_init(
    mem: *mut core::ffi::c_void,
    mem_len: usize,
    slots: u32,
    codebook: *const ots_codebook_t,
    config: *const ots_config_t,
    out: *mut *mut ots_client_t,
) -> ots_error_t {
    code((|| {
        if mem.is_null() || out.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        if !(mem as usize).is_multiple_of(OTS_CLIENT_ALIGN) {
            return Err(E::OTS_ERROR_MISALIGNED);
        }
        let need = size_for(slots);
        if need == 0 {
            return Err(E::OTS_ERROR_UNSUPPORTED_SLOTS);
        }
        if mem_len < need {
            return Err(E::OTS_ERROR_BUFFER_TOO_SMALL);
        }
        // SAFETY: forwarded contract.
        let cb = unsafe { codebook::read(codebook) }?;
        // SAFETY: forwarded contract.
        let cfg = unsafe { args::get(config) }?.core_config()?;
        let p = mem.cast::<ots_client_t>();
        // A callback of the client that lives here may not replace it.
        // SAFETY: `mem` is non-null, aligned and at least a `Head` long.
        let h = unsafe { p.cast::<Head>().read() };
        if h.magic == MAGIC && h.busy != 0 {
            return Err(E::OTS_ERROR_REENTRANT);
        }
        for_slots!(slots, Err(E::OTS_ERROR_UNSUPPORTED_SLOTS), init(p, cb, cfg))?;
        // SAFETY: non-null (checked); writable by the caller's contract.
        unsafe { args::put(out, p) }
    })())
}

/// Writes a new `SyncClient<N>` and then the head into checked memory.
fn init<const N: usize>(
    p: *mut ots_client_t,
    cb: omega_tv_sync::codec::Codebook<'static>,
    cfg: omega_tv_sync::sync::Config,
) -> Res<()> {
    let head = p.cast::<Head>();
    // SAFETY: `p` is aligned, non-null and `bytes::<N>()` long (checked by
    // the caller); the client goes `HEAD` bytes in, aligned (`fits`).
    // `write` neither reads nor drops what the memory held. The magic goes
    // last, so a half-written client is never seen as initialised.
    unsafe {
        head.write(Head {
            magic: 0,
            slots: N as u32,
            busy: 0,
            _reserved: 0,
        });
        let c = p.cast::<u8>().add(HEAD).cast::<SyncClient<'static, N>>();
        c.write(SyncClient::new(cb, cfg));
        core::ptr::addr_of_mut!((*head).magic).write(MAGIC);
    }
    Ok(())
}

/// Ends the client: its memory may be reused or freed afterwards, and any
/// later call with the handle returns `OTS_ERROR_NOT_INITIALISED`. Save a
/// snapshot first if the state must survive. `OTS_ERROR_REENTRANT` from a
/// callback of this client.
///
/// # Safety
/// `client` must be NULL or a handle from `ots_client_init`.
#[no_mangle]
pub unsafe extern "C" fn ots_client_deinit(client: *mut ots_client_t) -> ots_error_t {
    code((|| {
        // SAFETY: forwarded contract.
        let g = unsafe { Guard::enter(client) }?;
        // SAFETY: checked by `enter`; the client holds no resources (no
        // heap, no handles), so forgetting it is its whole release.
        unsafe { core::ptr::addr_of_mut!((*g.head).magic).write(0) };
        Ok(())
    })())
}
