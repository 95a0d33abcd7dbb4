//! Checked conversions of C arguments (pointers, lengths, strings) into
//! Rust values. Every raw pointer the API receives goes through one of
//! these, so the checks (null, alignment, length bounds, NUL within the
//! bound) live in one place.

use core::ffi::c_char;

use crate::error::ots_error_t;
use crate::error::ots_error_t as E;

/// Result of a C API function body.
pub(crate) type Res<T> = core::result::Result<T, ots_error_t>;

/// Folds a body's result into the returned code.
pub(crate) fn code(r: Res<()>) -> ots_error_t {
    match r {
        Ok(()) => E::OTS_OK,
        Err(e) => e,
    }
}

/// A read-only byte range: `len == 0` allows NULL; otherwise `ptr` must be
/// non-NULL.
///
/// # Safety
/// `ptr..ptr + len` must be readable and not written during the borrow.
pub(crate) unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Res<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(E::OTS_ERROR_NULL_POINTER);
    }
    if len > isize::MAX as usize {
        return Err(E::OTS_ERROR_WRONG_LENGTH);
    }
    // SAFETY: non-null, in bounds by the caller's contract, len <= isize::MAX.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// A writable byte range (`len == 0` allows NULL).
///
/// # Safety
/// `ptr..ptr + len` must be writable and not otherwise accessed during the
/// borrow.
pub(crate) unsafe fn bytes_mut<'a>(ptr: *mut u8, len: usize) -> Res<&'a mut [u8]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(E::OTS_ERROR_NULL_POINTER);
    }
    if len > isize::MAX as usize {
        return Err(E::OTS_ERROR_WRONG_LENGTH);
    }
    // SAFETY: as in `bytes`, and exclusive by the caller's contract.
    Ok(unsafe { core::slice::from_raw_parts_mut(ptr, len) })
}

/// `len` values of `T` at `ptr`, which must be non-NULL and aligned for `T`.
///
/// # Safety
/// `ptr..ptr + len` must be readable `T`s (any bit pattern valid for `T`).
pub(crate) unsafe fn array<'a, T>(ptr: *const T, len: usize) -> Res<&'a [T]> {
    if ptr.is_null() {
        return Err(E::OTS_ERROR_NULL_POINTER);
    }
    if !ptr.is_aligned() {
        return Err(E::OTS_ERROR_MISALIGNED);
    }
    if len > isize::MAX as usize / core::mem::size_of::<T>().max(1) {
        return Err(E::OTS_ERROR_WRONG_LENGTH);
    }
    // SAFETY: non-null, aligned, in bounds by the caller's contract.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// Writable twin of [`array`].
///
/// # Safety
/// `ptr..ptr + len` must be writable and exclusive during the borrow.
pub(crate) unsafe fn array_mut<'a, T>(ptr: *mut T, len: usize) -> Res<&'a mut [T]> {
    if ptr.is_null() {
        return Err(E::OTS_ERROR_NULL_POINTER);
    }
    if !ptr.is_aligned() {
        return Err(E::OTS_ERROR_MISALIGNED);
    }
    if len > isize::MAX as usize / core::mem::size_of::<T>().max(1) {
        return Err(E::OTS_ERROR_WRONG_LENGTH);
    }
    // SAFETY: as in `array`, and exclusive by the caller's contract.
    Ok(unsafe { core::slice::from_raw_parts_mut(ptr, len) })
}

/// A shared reference to a C object.
///
/// # Safety
/// A non-NULL `ptr` must point to a valid `T`.
pub(crate) unsafe fn get<'a, T>(ptr: *const T) -> Res<&'a T> {
    if ptr.is_null() {
        return Err(E::OTS_ERROR_NULL_POINTER);
    }
    if !ptr.is_aligned() {
        return Err(E::OTS_ERROR_MISALIGNED);
    }
    // SAFETY: non-null, aligned, valid by the caller's contract.
    Ok(unsafe { &*ptr })
}

/// Writes `v` through an out-pointer.
///
/// # Safety
/// A non-NULL `ptr` must be writable for a `T`.
pub(crate) unsafe fn put<T>(ptr: *mut T, v: T) -> Res<()> {
    if ptr.is_null() {
        return Err(E::OTS_ERROR_NULL_POINTER);
    }
    if !ptr.is_aligned() {
        return Err(E::OTS_ERROR_MISALIGNED);
    }
    // SAFETY: non-null, aligned, writable by the caller's contract; `write`
    // does not read or drop the old value (the C memory may be garbage).
    unsafe { ptr.write(v) };
    Ok(())
}

/// A NUL-terminated string of at most `max` bytes. Reads at most `max + 1`
/// bytes: a string with no NUL among them is too long
/// ([`E::OTS_ERROR_STRING_TOO_LONG`]), never read past. The bytes must be
/// printable ASCII for any use here; non-ASCII is [`E::OTS_ERROR_INVALID_CHAR`].
///
/// # Safety
/// `ptr` must be readable up to its NUL or `max + 1` bytes, whichever
/// comes first.
pub(crate) unsafe fn str_bounded<'a>(ptr: *const c_char, max: usize) -> Res<&'a str> {
    if ptr.is_null() {
        return Err(E::OTS_ERROR_NULL_POINTER);
    }
    let p = ptr.cast::<u8>();
    let mut n = 0usize;
    loop {
        if n > max {
            return Err(E::OTS_ERROR_STRING_TOO_LONG);
        }
        // SAFETY: `n <= max`, inside the range the caller guarantees.
        if unsafe { p.add(n).read() } == 0 {
            break;
        }
        n += 1;
    }
    // SAFETY: the `n` bytes before the NUL were just read.
    let b = unsafe { core::slice::from_raw_parts(p, n) };
    core::str::from_utf8(b).map_err(|_| E::OTS_ERROR_INVALID_CHAR)
}

/// The string in a fixed `char` array of a C struct (NUL-terminated within
/// the array, else [`E::OTS_ERROR_STRING_TOO_LONG`]).
pub(crate) fn str_in_array(a: &[c_char]) -> Res<&str> {
    // `c_char` is `i8` or `u8` by target: reinterpret each as a byte.
    let n = a
        .iter()
        .position(|&c| c == 0)
        .ok_or(E::OTS_ERROR_STRING_TOO_LONG)?;
    let b = a.get(..n).ok_or(E::OTS_ERROR_STRING_TOO_LONG)?;
    // SAFETY: `c_char` and `u8` have the same size and alignment, and any
    // bit pattern is a valid `u8`.
    let b = unsafe { core::slice::from_raw_parts(b.as_ptr().cast::<u8>(), b.len()) };
    core::str::from_utf8(b).map_err(|_| E::OTS_ERROR_INVALID_CHAR)
}

/// Copies `s` into a `char` array with a NUL after it.
pub(crate) fn copy_to_array(s: &str, out: &mut [c_char]) -> Res<()> {
    let room = out
        .len()
        .checked_sub(1)
        .ok_or(E::OTS_ERROR_BUFFER_TOO_SMALL)?;
    if s.len() > room {
        return Err(E::OTS_ERROR_BUFFER_TOO_SMALL);
    }
    for (d, &b) in out.iter_mut().zip(s.as_bytes()) {
        *d = b as c_char;
    }
    if let Some(d) = out.get_mut(s.len()) {
        *d = 0;
    }
    Ok(())
}

/// Copies `s` and a NUL into the C buffer `buf` of `cap` bytes and stores
/// the length without the NUL in `*len` (when `len` is not NULL).
///
/// # Safety
/// `buf` must be writable for `cap` bytes; a non-NULL `len` writable.
pub(crate) unsafe fn put_str(s: &str, buf: *mut c_char, cap: usize, len: *mut usize) -> Res<()> {
    if buf.is_null() {
        return Err(E::OTS_ERROR_NULL_POINTER);
    }
    if cap < s.len() + 1 {
        return Err(E::OTS_ERROR_BUFFER_TOO_SMALL);
    }
    // SAFETY: checked non-null and `cap` bytes long by the caller's contract.
    let out = unsafe { bytes_mut(buf.cast::<u8>(), cap) }?;
    let (head, tail) = out.split_at_mut(s.len());
    head.copy_from_slice(s.as_bytes());
    if let Some(nul) = tail.first_mut() {
        *nul = 0;
    }
    if !len.is_null() {
        // SAFETY: non-null; writable by the caller's contract.
        unsafe { put(len, s.len()) }?;
    }
    Ok(())
}
