//! `malloc`, `calloc` and `free` for C code linked into the firmware
//! (zstd-sys). The core gives zstd caller-provided static workspaces, so
//! zstd never needs the heap; should it ask anyway, it gets null and fails
//! with an error instead of the firmware failing to link or allocating.
//!
//! Only built with the `zstd` feature: never in std builds, where libc's
//! allocator must stay in place.
#![allow(unsafe_code)]

use core::ffi::c_void;
use core::ptr::null_mut;

/// Always fails: returns null.
#[no_mangle]
pub extern "C" fn malloc(_size: usize) -> *mut c_void {
    null_mut()
}

/// Always fails: returns null.
#[no_mangle]
pub extern "C" fn calloc(_count: usize, _size: usize) -> *mut c_void {
    null_mut()
}

/// Nothing was ever allocated: does nothing.
#[no_mangle]
pub extern "C" fn free(_ptr: *mut c_void) {}
