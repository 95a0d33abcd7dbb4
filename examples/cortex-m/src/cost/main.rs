//! Instructions per pattern of the codec on the Cortex-M4: `quantize`,
//! `reconstruct` and the entropy decoder (absolute and delta streams) over
//! the 16 real patterns compiled into the firmware, built as the sync-cycle
//! firmware is (`opt-level = "s"`, fat LTO).
//!
//! QEMU counts instructions, not cycles: run with `-icount shift=0`, every
//! executed instruction advances the virtual clock by 1 ns, and SysTick,
//! clocked from the core clock (25 MHz on `mps2-an386`), ticks once per
//! 40 ns, i.e. once per 40 instructions. The firmware reads SysTick around
//! each call, and first calibrates the conversion with
//! `cortex_m::asm::delay(n)`, a loop of exactly `2 (n + 1)` instructions.
//! `scripts/codec-cost-m4.sh` builds and runs it. A Cortex-M4 retires about
//! one instruction per cycle with flash wait states and the multiply and
//! load latencies on top, so the counts are a lower bound on cycles.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
#![deny(missing_docs)]

use core::hint::black_box;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;
use omega_tv_sync::codec::{minilm_small_v1, minilm_v1, Codebook, Codes, MAX_CODED_LEN};
use omega_tv_sync::{Embedding, DIM};

#[path = "../exit.rs"]
mod exit;
#[path = "../patterns.rs"]
mod patterns;
use patterns::expected::ROWS;

/// SysTick's reload: the whole 24-bit range.
const RELOAD: u32 = 0x00FF_FFFF;

/// Instructions per SysTick tick under `-icount shift=0` (module docs).
const PER_TICK: u64 = 40;

/// SysTick ticks `f` took (it counts down; one measured call must stay
/// under 2^24 ticks, 671 M instructions). The result passes through
/// `black_box` between the two reads, so the call cannot move past them.
fn ticks<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let t0 = SYST::get_current();
    let r = black_box(f());
    let t1 = SYST::get_current();
    (u64::from(t0.wrapping_sub(t1) & RELOAD), r)
}

fn row(i: usize) -> Option<Embedding> {
    Embedding::from_le_bytes(patterns::row(i)).ok()
}

/// Pattern `i` moved towards pattern `j` (`k x p_i + p_j`, normalised): a
/// drift of the size the host's codec bench uses.
fn drifted(i: usize, j: usize, k: f32) -> Option<Embedding> {
    let (a, b) = (row(i)?, row(j)?);
    let mut v = [0f32; DIM];
    for ((o, x), y) in v.iter_mut().zip(a.as_array()).zip(b.as_array()) {
        *o = k * x + y;
    }
    Embedding::normalize(v).ok()
}

/// Measures one codebook; prints instructions per pattern. `false` when a
/// step failed.
fn measure(name: &str, cb: &Codebook<'_>) -> bool {
    let (mut q, mut r, mut da, mut dd) = (0u64, 0u64, 0u64, 0u64);
    let (mut abs_len, mut delta_len) = (0usize, 0usize);
    let mut buf = [0u8; MAX_CODED_LEN];
    let mut out: Codes = [0; DIM];
    for i in 0..ROWS {
        let Some(e) = row(i) else { return false };
        let (t, codes) = ticks(|| cb.quantize(black_box(&e)));
        q += t;
        let (t, back) = ticks(|| cb.reconstruct(black_box(&codes)));
        r += t;
        if back.is_err() {
            return false;
        }
        let Ok(n) = cb.encode(&codes, None, &mut buf) else {
            return false;
        };
        abs_len += n;
        let (t, ok) = ticks(|| cb.decode(black_box(&buf[..n]), None, &mut out));
        da += t;
        if ok.is_err() || out != codes {
            return false;
        }
        let Some(m) = drifted(i, (i + 5) % ROWS, (5 + i) as f32) else {
            return false;
        };
        let moved = cb.quantize(&m);
        let Ok(n) = cb.encode(&moved, Some(&codes), &mut buf) else {
            return false;
        };
        delta_len += n;
        let (t, ok) = ticks(|| cb.decode(black_box(&buf[..n]), Some(&codes), &mut out));
        dd += t;
        if ok.is_err() || out != moved {
            return false;
        }
    }
    let per = |t: u64| t * PER_TICK / ROWS as u64;
    hprintln!(
        "{}: quantize {} reconstruct {} decode_absolute {} decode_delta {} instructions per pattern; quantize / reconstruct {}.{:02}; streams {} / {} B",
        name,
        per(q),
        per(r),
        per(da),
        per(dd),
        q * 100 / r.max(1) / 100,
        q * 100 / r.max(1) % 100,
        abs_len / ROWS,
        delta_len / ROWS
    );
    true
}

#[entry]
fn main() -> ! {
    let ok = match cortex_m::Peripherals::take() {
        Some(mut p) => {
            p.SYST.set_clock_source(SystClkSource::Core);
            p.SYST.set_reload(RELOAD);
            p.SYST.clear_current();
            p.SYST.enable_counter();
            // Calibration: 2 (n + 1) instructions in the loop.
            let n = 1_000_000u32;
            let (t, ()) = ticks(|| cortex_m::asm::delay(n));
            let expect = 2 * (u64::from(n) + 1);
            let measured = t * PER_TICK;
            hprintln!(
                "calibration: delay({}) = {} instructions, measured {}",
                n,
                expect,
                measured
            );
            // Within one tick and the few instructions around the loop.
            let calibrated = measured.abs_diff(expect) <= 2 * PER_TICK;
            let default = minilm_v1()
                .map(|cb| measure("minilm-v1", &cb))
                .unwrap_or(false);
            let small = minilm_small_v1()
                .map(|cb| measure("minilm-small-v1", &cb))
                .unwrap_or(false);
            calibrated && default && small
        }
        None => false,
    };
    if !ok {
        hprintln!("codec cost: a step failed (or not run with -icount shift=0)");
    }
    exit::exit(ok)
}
