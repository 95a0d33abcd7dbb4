//! Codebooks (the embedding codec's tables, in flash) and the quality filter.

use omega_tv_sync::codec::{self, Codebook};
use omega_tv_sync::{Embedding, QualityFilter, DIM};

use crate::args::{self, code, Res};
use crate::error::ots_error_t;
use crate::error::ots_error_t as E;

/// Bytes of an `ots_codebook_t`.
pub const OTS_CODEBOOK_SIZE: usize = 256;

/// `ots_codebook_t` holds this in its first word once initialised.
const MAGIC: u64 = 0x4f54_5343_4f44_4542; // "OTSCODEB"

/// A validated codebook: a small handle (`OTS_CODEBOOK_SIZE` bytes, in any
/// memory: stack, static, inside a struct) over the codebook's tables, which
/// stay where they are (the built-in ones in flash, a blob in the caller's
/// memory). Fill it with `ots_codebook_minilm_v1`,
/// `ots_codebook_minilm_small_v1` or `ots_codebook_from_blob`; copying it
/// with `memcpy` or `=` is allowed. Read-only once filled: any number of
/// threads and clients may use one at the same time.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct ots_codebook_t {
    /// Opaque (`u64` words: 8-byte alignment).
    pub _opaque: [u64; OTS_CODEBOOK_WORDS],
}

/// `OTS_CODEBOOK_SIZE` in 8-byte words.
pub const OTS_CODEBOOK_WORDS: usize = 32;
const _: () = assert!(OTS_CODEBOOK_WORDS * 8 == OTS_CODEBOOK_SIZE);

#[repr(C)]
struct Stored {
    magic: u64,
    cb: Codebook<'static>,
}

const _: () = assert!(core::mem::size_of::<Stored>() <= OTS_CODEBOOK_SIZE);
const _: () = assert!(core::mem::align_of::<Stored>() <= 8);

/// The codebook stored in `p`.
///
/// # Safety
/// A non-NULL `p` must point to a readable `ots_codebook_t`.
pub(crate) unsafe fn read(p: *const ots_codebook_t) -> Res<Codebook<'static>> {
    // SAFETY: the caller's contract; `get` checks null and alignment.
    let h = unsafe { args::get(p) }?;
    let s = (h as *const ots_codebook_t).cast::<Stored>();
    // SAFETY: `ots_codebook_t` is 8-aligned and large enough for `Stored`
    // (asserted above); its first 8 bytes are plain bytes, any value valid.
    let magic = unsafe { core::ptr::addr_of!((*s).magic).read() };
    if magic != MAGIC {
        return Err(E::OTS_ERROR_NOT_INITIALISED);
    }
    // SAFETY: the magic is only written together with a valid `Codebook`
    // (see `store`), which is `Copy` and stays valid while its tables live
    // (the built-in ones always; a blob by the caller's contract).
    Ok(unsafe { core::ptr::addr_of!((*s).cb).read() })
}

/// Stores `cb` in `out`.
///
/// # Safety
/// A non-NULL `out` must be writable for an `ots_codebook_t`.
unsafe fn store(out: *mut ots_codebook_t, cb: Codebook<'static>) -> Res<()> {
    if out.is_null() {
        return Err(E::OTS_ERROR_NULL_POINTER);
    }
    if !out.is_aligned() {
        return Err(E::OTS_ERROR_MISALIGNED);
    }
    // SAFETY: non-null, aligned for `Stored` (asserted above: align <= 8),
    // large enough, writable by the caller's contract; `write` reads nothing.
    unsafe {
        out.cast::<Stored>().write(Stored { magic: MAGIC, cb });
    }
    Ok(())
}

/// Fills `out` with the default codebook `minilm_v1` (PCA basis fitted on
/// the MiniLM catalogue; about 309 KB of flash, linked only if this
/// function is called). Errors: `OTS_ERROR_NULL_POINTER`,
/// `OTS_ERROR_MISALIGNED` (`out` not 8-aligned).
///
/// # Safety
/// `out` must be NULL or writable for an `ots_codebook_t`.
#[no_mangle]
pub unsafe extern "C" fn ots_codebook_minilm_v1(out: *mut ots_codebook_t) -> ots_error_t {
    // SAFETY: forwarded contract.
    code(
        codec::minilm_v1()
            .map_err(ots_error_t::from)
            .and_then(|cb| unsafe { store(out, cb) }),
    )
}

/// Fills `out` with the small-flash codebook `minilm_small_v1` (no basis,
/// per-dimension tables; about 15 KB of flash, ~20% more bytes per sync).
/// Errors as `ots_codebook_minilm_v1`.
///
/// # Safety
/// `out` must be NULL or writable for an `ots_codebook_t`.
#[no_mangle]
pub unsafe extern "C" fn ots_codebook_minilm_small_v1(out: *mut ots_codebook_t) -> ots_error_t {
    // SAFETY: forwarded contract.
    code(
        codec::minilm_small_v1()
            .map_err(ots_error_t::from)
            .and_then(|cb| unsafe { store(out, cb) }),
    )
}

/// Validates a codebook blob (format in `docs/codec.md`) and fills `out`
/// with a handle over it. The blob is not copied: it must stay unchanged
/// and readable for as long as `out`, any copy of it, or any client created
/// with it is used. Errors: `OTS_ERROR_NULL_POINTER`, `OTS_ERROR_MISALIGNED`,
/// `OTS_ERROR_BAD_CODEBOOK` (malformed, or its content does not match its id).
///
/// # Safety
/// `blob` must be readable for `len` bytes for the lifetime stated above;
/// `out` must be NULL or writable for an `ots_codebook_t`.
#[no_mangle]
pub unsafe extern "C" fn ots_codebook_from_blob(
    blob: *const u8,
    len: usize,
    out: *mut ots_codebook_t,
) -> ots_error_t {
    code((|| {
        if blob.is_null() {
            return Err(E::OTS_ERROR_NULL_POINTER);
        }
        // SAFETY: the caller guarantees `blob` outlives every use of the
        // handle, which is what the `'static` stands for here.
        let b: &'static [u8] = unsafe { args::bytes(blob, len) }?;
        let cb = Codebook::from_bytes(b)?;
        // SAFETY: forwarded contract.
        unsafe { store(out, cb) }
    })())
}

/// The codebook's id (carried in every frame) in `*id`.
///
/// # Safety
/// `cb` must be NULL or a readable `ots_codebook_t`; `id` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ots_codebook_id(cb: *const ots_codebook_t, id: *mut u32) -> ots_error_t {
    // SAFETY: forwarded contract.
    code(unsafe { read(cb) }.and_then(|c| unsafe { args::put(id, c.id()) }))
}

/// Bytes of flash the codebook's tables take, in `*bytes`.
///
/// # Safety
/// As `ots_codebook_id`.
#[no_mangle]
pub unsafe extern "C" fn ots_codebook_flash_bytes(
    cb: *const ots_codebook_t,
    bytes: *mut usize,
) -> ots_error_t {
    // SAFETY: forwarded contract.
    code(unsafe { read(cb) }.and_then(|c| unsafe { args::put(bytes, c.flash_bytes()) }))
}

/// Quantises an embedding into the integer codes the client keeps and the
/// server stores (`OTS_DIM` `int16_t`s): what `ots_client_acked` returns for
/// a pattern the server acknowledged unchanged. Uses about 2.4 KB of stack.
///
/// `embedding`: `embedding_len` floats, 4-byte aligned; `embedding_len`
/// must be `OTS_DIM` (`OTS_ERROR_WRONG_LENGTH`), every value finite
/// (`OTS_ERROR_NON_FINITE`) and the L2 norm within `1 +- 1e-3`
/// (`OTS_ERROR_NOT_UNIT_NORM`). `codes`: `codes_len >= OTS_DIM` `int16_t`s,
/// 2-byte aligned (`OTS_ERROR_BUFFER_TOO_SMALL`).
///
/// # Safety
/// The pointers must be NULL or valid for the stated lengths.
#[no_mangle]
pub unsafe extern "C" fn ots_codebook_quantize(
    cb: *const ots_codebook_t,
    embedding: *const f32,
    embedding_len: usize,
    codes: *mut i16,
    codes_len: usize,
) -> ots_error_t {
    code((|| {
        // SAFETY: forwarded contract.
        let cb = unsafe { read(cb) }?;
        // SAFETY: forwarded contract.
        let values = unsafe { args::array(embedding, embedding_len) }?;
        // SAFETY: forwarded contract.
        let out = unsafe { args::array_mut(codes, codes_len) }?;
        let out = out.get_mut(..DIM).ok_or(E::OTS_ERROR_BUFFER_TOO_SMALL)?;
        quantize_into(&cb, values, out)
    })())
}

/// Checks and quantises in one frame of its own (one embedding on the stack).
#[inline(never)]
fn quantize_into(cb: &Codebook<'_>, values: &[f32], out: &mut [i16]) -> Res<()> {
    let e = Embedding::from_slice(values)?;
    out.copy_from_slice(&cb.quantize(&e));
    Ok(())
}

/// The quality filter: which patterns are uploaded. A pattern is uploaded
/// once `success_rate >= min_success_rate` and `sample_count >= min_samples`
/// (both inclusive); the others stay on the device until they pass.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ots_quality_filter_t {
    /// Smallest success rate uploaded, in `[0, 1]` (default 0.7).
    pub min_success_rate: f32,
    /// Smallest sample count uploaded (default 10).
    pub min_samples: u32,
}

impl ots_quality_filter_t {
    pub(crate) fn to_core(self) -> Res<QualityFilter> {
        if !self.min_success_rate.is_finite() {
            return Err(E::OTS_ERROR_NON_FINITE);
        }
        if !(0.0..=1.0).contains(&self.min_success_rate) {
            return Err(E::OTS_ERROR_RATE_OUT_OF_RANGE);
        }
        Ok(QualityFilter {
            min_success_rate: self.min_success_rate,
            min_samples: self.min_samples,
        })
    }

    pub(crate) fn from_core(f: QualityFilter) -> Self {
        ots_quality_filter_t {
            min_success_rate: f.min_success_rate,
            min_samples: f.min_samples,
        }
    }
}

/// The product's filter: 0.7 and 10.
#[no_mangle]
pub extern "C" fn ots_quality_filter_default() -> ots_quality_filter_t {
    ots_quality_filter_t::from_core(QualityFilter::DEFAULT)
}

/// True when a pattern with `success_rate` and `sample_count` passes
/// `filter`. False for a NULL or invalid filter and for a NaN rate.
///
/// # Safety
/// `filter` must be NULL or a readable `ots_quality_filter_t`.
#[no_mangle]
pub unsafe extern "C" fn ots_quality_filter_accepts(
    filter: *const ots_quality_filter_t,
    success_rate: f32,
    sample_count: u32,
) -> bool {
    // SAFETY: forwarded contract.
    match unsafe { args::get(filter) }.and_then(|f| f.to_core()) {
        Ok(f) => f.accepts(success_rate, sample_count),
        Err(_) => false,
    }
}
