//! Stack high-water mark from cortex-m-rt's `paint-stack`.
//!
//! At reset every word between `_stack_end` (the top of `.bss`/`.uninit`)
//! and `_stack_start` (the initial stack pointer) holds
//! `STACK_PAINT_VALUE`. The stack grows down from `_stack_start`; the
//! lowest word that no longer holds the paint marks the deepest point the
//! stack ever reached. (A frame that happened to store exactly the paint
//! value at its deepest word would hide 4 bytes: negligible.)
//!
//! [`repaint`] paints the unused stack again so that the next
//! [`peak_bytes`] reports the peak of one phase (the sync cycle).
//!
//! This is the firmware's one place that reads or writes raw memory.
#![allow(unsafe_code)]

use core::ptr::{addr_of, read_volatile, write_volatile};

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

/// Bytes below the current stack pointer left unpainted by [`repaint`]:
/// room for its own frame.
const REPAINT_MARGIN: usize = 256;

/// Paints the stack again from its bottom bound up to `REPAINT_MARGIN`
/// bytes below the current stack pointer, so that [`peak_bytes`] then
/// reports the deepest point reached by what runs after this call (the
/// frames above the caller included, since the peak is measured from the
/// top of the stack).
pub fn repaint() {
    let (end, _) = bounds();
    let sp = cortex_m::register::msp::read() as usize;
    let stop = sp.saturating_sub(REPAINT_MARGIN) & !3;
    let mut p = (end + 3) & !3;
    while p < stop {
        // SAFETY: `p` is word-aligned, at or above `_stack_end` and below
        // the current stack pointer minus a margin: stack memory that no
        // live frame uses (no interrupt is enabled in this firmware), which
        // the linker script reserves for the stack.
        unsafe { write_volatile(p as *mut u32, cortex_m_rt::STACK_PAINT_VALUE) };
        p += 4;
    }
}

/// Current stack depth in bytes (top of the stack minus the stack pointer).
pub fn depth() -> usize {
    let (_, start) = bounds();
    start.saturating_sub(cortex_m::register::msp::read() as usize)
}

/// Runs `f` on a freshly painted stack and returns its result with the
/// stack bytes it used beyond the caller's depth (its own frames and
/// everything it calls).
#[inline(never)]
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    repaint();
    let base = depth();
    let r = f();
    (r, peak_bytes().saturating_sub(base))
}

/// Bytes just below the stack pointer that [`deepest`] leaves unpainted.
const DEEPEST_MARGIN: usize = 64;

/// Runs `f` and raises `*deepest` to the stack bytes it used below this
/// call's frame, if that is more than `*deepest` already holds; `window`
/// bounds the search (a use that reaches the window's bottom reports
/// `window`: the caller treats that as an overflow of the measurement).
///
/// Built for a poll loop that calls the same futures thousands of times:
/// only the part of the window below the deepest use seen so far is painted
/// before the call and scanned after it, so a call that goes no deeper
/// costs `window - *deepest` bytes of writes and reads, and nothing below
/// the window is touched. (The network firmware only.)
#[allow(dead_code)]
#[inline(never)]
pub fn deepest<R>(window: usize, deepest: &mut usize, f: impl FnOnce() -> R) -> R {
    let (end, _) = bounds();
    let sp = cortex_m::register::msp::read() as usize;
    let lo = (sp.saturating_sub(window).max(end) + 3) & !3;
    let hi = sp.saturating_sub((*deepest).max(DEEPEST_MARGIN)) & !3;
    let mut p = lo;
    while p < hi {
        // SAFETY: `p` is word-aligned, at or above `_stack_end` and below
        // the current stack pointer minus a margin: stack memory that no
        // live frame uses (no interrupt is enabled in this firmware), which
        // the linker script reserves for the stack.
        unsafe { write_volatile(p as *mut u32, cortex_m_rt::STACK_PAINT_VALUE) };
        p += 4;
    }
    let r = call(f);
    let mut p = lo;
    while p < hi {
        // SAFETY: as above; `p` is inside the region just painted, which
        // holds no live frame once `f` has returned.
        let w = unsafe { read_volatile(p as *const u32) };
        if w != cortex_m_rt::STACK_PAINT_VALUE {
            break;
        }
        p += 4;
    }
    if p < hi {
        *deepest = sp - p;
    }
    r
}

/// Calls `f` in a frame of its own, below [`deepest`]'s: were `f` (a
/// future's `poll`) inlined into `deepest`, its locals would sit above the
/// stack pointer that `deepest` measures from and go uncounted.
#[inline(never)]
fn call<R>(f: impl FnOnce() -> R) -> R {
    f()
}
