//! Stack high-water mark from cortex-m-rt's `paint-stack`.
//!
//! At reset every word between `_stack_end` (the top of `.bss`/`.uninit`)
//! and `_stack_start` (the initial stack pointer) holds
//! `STACK_PAINT_VALUE`. The stack grows down from `_stack_start`; the
//! lowest word that no longer holds the paint marks the deepest point the
//! stack ever reached. (A frame that happened to store exactly the paint
//! value at its deepest word would hide 4 bytes: negligible.)
//!
//! This is the firmware's one place that reads raw memory.
#![allow(unsafe_code)]

use core::ptr::{addr_of, read_volatile};

extern "C" {
    static _stack_start: u32;
    static _stack_end: u32;
}

fn bounds() -> (usize, usize) {
    // Only the addresses of the linker symbols are taken (no read).
    (
        addr_of!(_stack_end) as usize,
        addr_of!(_stack_start) as usize,
    )
}

/// Bytes between the stack's bottom bound and its top.
pub fn size_bytes() -> usize {
    let (end, start) = bounds();
    start - end
}

/// Deepest stack use so far, in bytes.
pub fn peak_bytes() -> usize {
    let (end, start) = bounds();
    let mut p = (end + 3) & !3;
    while p < start {
        // SAFETY: `p` is word-aligned and inside the RAM region between
        // `_stack_end` and `_stack_start`, which the linker script reserves
        // for the stack; reading it has no side effects.
        let w = unsafe { read_volatile(p as *const u32) };
        if w != cortex_m_rt::STACK_PAINT_VALUE {
            break;
        }
        p += 4;
    }
    start - p
}
