//! Per-frame zstd compression in caller-provided static workspaces
//! (feature `zstd`).
//!
//! The zstd C library (through `zstd-sys`) runs entirely inside memory the
//! caller passes in: a [`Compressor`] in a workspace of at least
//! [`CCTX_WORKSPACE_BYTES`], a [`Decompressor`] in one of at least
//! [`DCTX_WORKSPACE_BYTES`]. Nothing allocates. Both do one-shot calls: a
//! whole frame body in, a whole zstd frame out (no streaming state survives a
//! call).
//!
//! The frame layer compresses a body and keeps the compressed form only when
//! it is smaller; quantised, entropy-coded embeddings rarely shrink (see
//! `data/minilm/baselines.md`), so compression is a cheap attempt, not a
//! promise.
//!
//! # Parameters
//! The compressor uses fixed parameters sized for frame bodies of a few KB:
//! strategy `fast`, window 2^[`WINDOW_LOG`] = 1 KiB, hash table
//! 2^[`HASH_LOG`] entries, minimum match [`MIN_MATCH`], no checksum (frames
//! carry their own CRC-32), content size in the frame header. Any
//! standard zstd decoder reads the output. The decompressor accepts any
//! zstd frame (or several concatenated) whose content fits `dst`.
//!
//! # Workspace sizes
//! | target | [`CCTX_WORKSPACE_BYTES`] | [`DCTX_WORKSPACE_BYTES`] |
//! |---|---:|---:|
//! | 32-bit (Cortex-M4) | 29,944 | 95,800; 31,288 with `-DZSTD_DECODER_INTERNAL_BUFFER=1024` |
//! | 64-bit (x86-64 host) | 33,560 | 95,976; 31,464 with `-DZSTD_DECODER_INTERNAL_BUFFER=1024` |
//!
//! The decompressor's size depends on how the C library was compiled:
//! zstd's `ZSTD_DECODER_INTERNAL_BUFFER` (default 64 KiB) is a literal buffer
//! inside the context. This crate's build script reads the C flags the `cc`
//! crate will use for zstd-sys (`CFLAGS_<target>`, `TARGET_CFLAGS`,
//! `CFLAGS`) and sizes [`DCTX_WORKSPACE_BYTES`] to match; this repository's
//! `.cargo/config.toml` sets `-DZSTD_DECODER_INTERNAL_BUFFER=1024` for
//! `thumbv7em-none-eabihf`. In every case [`Compressor::new`] and
//! [`Decompressor::new`] check the workspace against what the linked C
//! library reports at run time, so a wrong size is an `Err`, never undefined
//! behaviour. [`Compressor::workspace_bytes`] and
//! [`Decompressor::workspace_bytes`] give the run-time figures.
//!
//! # Firmware integration
//! zstd's C code references `malloc`, `calloc` and `free` even though these
//! static contexts never call them. A bare-metal firmware without a C heap
//! must link definitions in which `malloc` and `calloc` return null and
//! `free` does nothing; this crate does not define them (a hosted build uses
//! the C library's). The C code also needs `memcpy`, `memmove` and `memset`,
//! which Rust's `compiler_builtins` provides on bare-metal targets. See
//! `docs/memory.md` for an example and for code size.
//!
//! A workspace is `&mut [u64]` so that it is 8-byte aligned, as zstd
//! requires; declare it as e.g.
//! `static mut WS: [u64; CCTX_WORKSPACE_WORDS]` or in a `static_cell`.

use core::ffi::c_void;
use core::marker::PhantomData;
use core::ptr::NonNull;

use zstd_sys as sys;

use crate::error::{Error, Result};

// The build script writes `ZSTD_DECODER_INTERNAL_BUFFER` (bytes), read from
// the C flags zstd-sys is compiled with.
include!(concat!(env!("OUT_DIR"), "/zstd_build.rs"));

/// log2 of the compressor's window: matches reach back at most 1 KiB.
pub const WINDOW_LOG: u32 = 10;
/// log2 of the number of entries in the compressor's hash table.
pub const HASH_LOG: u32 = 10;
/// Shortest match the compressor looks for, in bytes (zstd's level-1 value).
pub const MIN_MATCH: u32 = 5;

// The chain table is not used by the `fast` strategy; zstd's minimum.
const CHAIN_LOG: u32 = 6;
const SEARCH_LOG: u32 = 1;

/// Bytes a [`Compressor`] workspace needs, for the parameters above.
///
/// Derived from `ZSTD_estimateCCtxSize_usingCParams` (which includes the
/// context object itself, as `ZSTD_initStaticCCtx` needs) for the target's
/// pointer width; the host tests check it against the linked library.
pub const CCTX_WORKSPACE_BYTES: usize = CCTX_BYTES_BY_WIDTH;

/// Bytes a [`Decompressor`] workspace needs: `sizeof(ZSTD_DCtx)` for the
/// target's pointer width and the C library's `ZSTD_DECODER_INTERNAL_BUFFER`.
pub const DCTX_WORKSPACE_BYTES: usize =
    DCTX_BYTES_WITHOUT_LITERAL_BUFFER + round8(literal_buffer_bytes());

/// [`CCTX_WORKSPACE_BYTES`] in `u64` words: the length of the array to
/// declare for a [`Compressor`].
pub const CCTX_WORKSPACE_WORDS: usize = CCTX_WORKSPACE_BYTES.div_ceil(8);

/// [`DCTX_WORKSPACE_BYTES`] in `u64` words: the length of the array to
/// declare for a [`Decompressor`].
pub const DCTX_WORKSPACE_WORDS: usize = DCTX_WORKSPACE_BYTES.div_ceil(8);

#[cfg(target_pointer_width = "32")]
const CCTX_BYTES_BY_WIDTH: usize = 29_944;
#[cfg(target_pointer_width = "32")]
const DCTX_BYTES_WITHOUT_LITERAL_BUFFER: usize = 95_800 - 65_536;

// 64-bit, and a safe upper bound for any other width.
#[cfg(not(target_pointer_width = "32"))]
const CCTX_BYTES_BY_WIDTH: usize = 33_560;
#[cfg(not(target_pointer_width = "32"))]
const DCTX_BYTES_WITHOUT_LITERAL_BUFFER: usize = 95_976 - 65_536;

/// zstd's `ZSTD_LITBUFFEREXTRASIZE`: the internal buffer clamped to
/// `[64, 128 KiB]`.
const fn literal_buffer_bytes() -> usize {
    let n = ZSTD_DECODER_INTERNAL_BUFFER;
    if n < 64 {
        64
    } else if n > 128 << 10 {
        128 << 10
    } else {
        n
    }
}

const fn round8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

fn c_params() -> sys::ZSTD_compressionParameters {
    sys::ZSTD_compressionParameters {
        windowLog: WINDOW_LOG,
        chainLog: CHAIN_LOG,
        hashLog: HASH_LOG,
        searchLog: SEARCH_LOG,
        minMatch: MIN_MATCH,
        targetLength: 0,
        strategy: sys::ZSTD_strategy::ZSTD_fast,
    }
}

fn is_error(code: usize) -> bool {
    // SAFETY: ZSTD_isError is a pure function of its integer argument; it
    // reads no memory.
    unsafe { sys::ZSTD_isError(code) != 0 }
}

fn workspace_len_bytes(workspace: &[u64]) -> usize {
    // Cannot overflow: the slice already occupies that many bytes.
    core::mem::size_of_val(workspace)
}

/// A zstd compression context living in a caller-provided workspace.
///
/// Holds the workspace exclusively for `'w`. Each [`compress`](Self::compress)
/// is independent: one source in, one complete zstd frame out.
pub struct Compressor<'w> {
    cctx: NonNull<sys::ZSTD_CCtx>,
    _workspace: PhantomData<&'w mut [u64]>,
}

// SAFETY: the context is plain memory inside the exclusively borrowed
// workspace; zstd keeps no thread-local or global state for it, so moving the
// owner to another thread is sound. It is not `Sync`: all use goes through
// `&mut self`.
unsafe impl Send for Compressor<'_> {}

impl<'w> Compressor<'w> {
    /// Bytes the linked zstd library needs for a compressor workspace with
    /// this module's parameters (the run-time value behind
    /// [`CCTX_WORKSPACE_BYTES`]).
    pub fn workspace_bytes() -> usize {
        // SAFETY: takes the parameters by value and only computes a size.
        let n = unsafe { sys::ZSTD_estimateCCtxSize_usingCParams(c_params()) };
        if is_error(n) {
            usize::MAX
        } else {
            n
        }
    }

    /// Sets up a compressor in `workspace`.
    ///
    /// `workspace` must hold at least [`Compressor::workspace_bytes`] bytes
    /// ([`CCTX_WORKSPACE_BYTES`] for the builds documented in this module;
    /// [`CCTX_WORKSPACE_WORDS`] `u64`s). Its previous contents do not matter.
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] if the workspace is smaller than that;
    /// [`Error::Compression`] if zstd rejects the workspace or the parameters.
    pub fn new(workspace: &'w mut [u64]) -> Result<Self> {
        let len = workspace_len_bytes(workspace);
        if len < Self::workspace_bytes() {
            return Err(Error::BufferTooSmall);
        }
        // SAFETY: the pointer and length describe `workspace`, which is
        // writable, 8-byte aligned (it is a `[u64]`) and borrowed exclusively
        // for 'w, as long as the returned context is used (PhantomData ties
        // the context to that borrow). zstd checks size and alignment and
        // returns null on failure.
        let raw = unsafe { sys::ZSTD_initStaticCCtx(workspace.as_mut_ptr().cast::<c_void>(), len) };
        let cctx = NonNull::new(raw).ok_or(Error::Compression)?;
        // SAFETY: `cctx` was just initialised by ZSTD_initStaticCCtx in our
        // exclusively borrowed workspace; setting parameters only writes
        // fields of the context.
        let status = unsafe { sys::ZSTD_CCtx_setCParams(cctx.as_ptr(), c_params()) };
        if is_error(status) {
            return Err(Error::Compression);
        }
        for (param, value) in [
            (sys::ZSTD_cParameter::ZSTD_c_checksumFlag, 0),
            (sys::ZSTD_cParameter::ZSTD_c_contentSizeFlag, 1),
            (sys::ZSTD_cParameter::ZSTD_c_dictIDFlag, 0),
        ] {
            // SAFETY: as above; `param` and `value` are valid zstd
            // parameters, and zstd validates them anyway.
            let status = unsafe { sys::ZSTD_CCtx_setParameter(cctx.as_ptr(), param, value) };
            if is_error(status) {
                return Err(Error::Compression);
            }
        }
        Ok(Compressor {
            cctx,
            _workspace: PhantomData,
        })
    }

    /// Compresses `src` into `dst` as one zstd frame; returns the number of
    /// bytes written to `dst`.
    ///
    /// Any `src` length works. The output can be larger than `src` (by at
    /// most zstd's `ZSTD_compressBound` overhead: a few bytes per 128 KiB);
    /// to keep only outputs that save space, pass a `dst` of `src.len() - 1`
    /// bytes and treat [`Error::Compression`] as "not worth it".
    ///
    /// # Errors
    /// [`Error::Compression`] if the frame does not fit `dst` (or on any
    /// other zstd failure). `dst` may then hold partial output.
    pub fn compress(&mut self, src: &[u8], dst: &mut [u8]) -> Result<usize> {
        // SAFETY: `self.cctx` is a live static context (see `new`), used
        // exclusively through `&mut self`. `src` and `dst` are valid for
        // reads of `src.len()` and writes of `dst.len()` bytes respectively
        // and do not overlap (one is shared, one is mutable); zstd never
        // reads or writes outside them, and all its scratch memory comes
        // from the workspace.
        let n = unsafe {
            sys::ZSTD_compress2(
                self.cctx.as_ptr(),
                dst.as_mut_ptr().cast::<c_void>(),
                dst.len(),
                src.as_ptr().cast::<c_void>(),
                src.len(),
            )
        };
        if is_error(n) || n > dst.len() {
            debug!("zstd: compression failed for {} bytes", src.len());
            return Err(Error::Compression);
        }
        Ok(n)
    }
}

/// A zstd decompression context living in a caller-provided workspace.
///
/// Holds the workspace exclusively for `'w`. Each
/// [`decompress`](Self::decompress) is independent.
pub struct Decompressor<'w> {
    dctx: NonNull<sys::ZSTD_DCtx>,
    _workspace: PhantomData<&'w mut [u64]>,
}

// SAFETY: as for `Compressor`: plain memory in an exclusively borrowed
// workspace, no global state; all use goes through `&mut self`.
unsafe impl Send for Decompressor<'_> {}

impl<'w> Decompressor<'w> {
    /// Bytes the linked zstd library needs for a decompressor workspace
    /// (the run-time value behind [`DCTX_WORKSPACE_BYTES`]).
    pub fn workspace_bytes() -> usize {
        // SAFETY: computes `sizeof(ZSTD_DCtx)`; no arguments, no memory.
        unsafe { sys::ZSTD_estimateDCtxSize() }
    }

    /// Sets up a decompressor in `workspace`.
    ///
    /// `workspace` must hold at least [`Decompressor::workspace_bytes`] bytes
    /// ([`DCTX_WORKSPACE_BYTES`]; [`DCTX_WORKSPACE_WORDS`] `u64`s). Its
    /// previous contents do not matter.
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] if the workspace is smaller than that;
    /// [`Error::Decompression`] if zstd rejects the workspace.
    pub fn new(workspace: &'w mut [u64]) -> Result<Self> {
        let len = workspace_len_bytes(workspace);
        if len < Self::workspace_bytes() {
            return Err(Error::BufferTooSmall);
        }
        // SAFETY: the pointer and length describe `workspace`: writable,
        // 8-byte aligned, borrowed exclusively for 'w as long as the context
        // is used. zstd checks size and alignment and returns null on
        // failure.
        let raw = unsafe { sys::ZSTD_initStaticDCtx(workspace.as_mut_ptr().cast::<c_void>(), len) };
        let dctx = NonNull::new(raw).ok_or(Error::Decompression)?;
        Ok(Decompressor {
            dctx,
            _workspace: PhantomData,
        })
    }

    /// Decompresses the zstd frame(s) in `src` into `dst`; returns the number
    /// of bytes written.
    ///
    /// `src` must be exactly the compressed data: one or more complete
    /// frames, nothing after them (empty `src` is an error). Input that does not fit `dst` is rejected, so `dst`
    /// bounds the memory any peer can make this write.
    ///
    /// # Errors
    /// [`Error::Decompression`] if `src` is not valid zstd (corrupt,
    /// truncated, trailing bytes, unsupported features such as
    /// dictionaries) or its content is larger than `dst`. `dst` may then hold
    /// partial output.
    pub fn decompress(&mut self, src: &[u8], dst: &mut [u8]) -> Result<usize> {
        // zstd reads an empty input as zero frames, zero bytes; a compressed
        // body always holds at least one frame.
        if src.is_empty() {
            return Err(Error::Decompression);
        }
        // SAFETY: `self.dctx` is a live static context (see `new`), used
        // exclusively through `&mut self`. `src` is valid for reads of
        // `src.len()` bytes and `dst` for writes of `dst.len()` bytes; they
        // do not overlap. zstd bounds every write by `dst.len()` and every
        // read by `src.len()`, also on malformed input.
        let n = unsafe {
            sys::ZSTD_decompressDCtx(
                self.dctx.as_ptr(),
                dst.as_mut_ptr().cast::<c_void>(),
                dst.len(),
                src.as_ptr().cast::<c_void>(),
                src.len(),
            )
        };
        if is_error(n) || n > dst.len() {
            debug!("zstd: decompression failed for {} bytes", src.len());
            return Err(Error::Decompression);
        }
        Ok(n)
    }
}
