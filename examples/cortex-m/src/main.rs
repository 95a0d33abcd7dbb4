//! Cortex-M4F firmware that runs the omega-tv-sync core on real vectors
//! under QEMU (`mps2-an386`), checks every result, and exits through
//! semihosting: 0 when everything matched, 1 on the first mismatch.
//!
//! `cargo run --release` in this folder builds and runs it (see
//! `.cargo/config.toml`). It prints one line per check, then
//! `stack_peak_bytes=N`: the stack high-water mark of the whole run,
//! measured by cortex-m-rt's `paint-stack` (the stack is filled with
//! `0xCCCC_CCCC` at reset; the deepest overwritten word is the peak).
//!
//! The workload, in [`workload`]:
//! 1. validates 16 real MiniLM pattern embeddings compiled in, checks their
//!    cosines and nearest neighbours against f64 values computed at build
//!    time, and checks that corrupted copies are rejected;
//! 2. builds patterns and runs the quality filter;
//! 3. round-trips a record through postcard in a `MaxSize` buffer;
//! 4. saves and loads sync-state snapshots through the `flash` feature on a
//!    RAM-backed NOR flash;
//! 5. **the sync cycle** ([`sync_cycle`]), for the default and the small
//!    codebook profile, with zstd off and (feature `zstd`) on: upsert real
//!    patterns, prepare an upload frame (byte-exact with the host's), apply
//!    a server response recorded at build time (acks, a conflict, global
//!    changes, trends), check the acked state, snapshot, restore and store
//!    it on flash. Its own stack peak is printed as
//!    `sync_cycle_stack_peak_bytes=N` (the stack is painted again before it).
#![no_std]
#![no_main]
#![deny(unsafe_code)]
#![deny(missing_docs)]

// Links the single-core critical-section implementation semihosting uses.
use cortex_m as _;
use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;

mod exit;
#[cfg(feature = "zstd")]
mod libc_stubs;
mod patterns;
mod ramflash;
mod scenario;
mod stack;
mod sync_cycle;
mod workload;

/// Counts checks and prints each one.
pub struct Checks {
    passed: u32,
    failed: u32,
}

impl Checks {
    /// Records one check.
    pub fn check(&mut self, what: &str, ok: bool) {
        if ok {
            self.passed += 1;
            hprintln!("ok   {}", what);
        } else {
            self.failed += 1;
            hprintln!("FAIL {}", what);
        }
    }
}

#[entry]
fn main() -> ! {
    let mut checks = Checks {
        passed: 0,
        failed: 0,
    };
    workload::run(&mut checks);
    hprintln!("stack_peak_bytes={}", stack::peak_bytes());
    hprintln!("stack_size_bytes={}", stack::size_bytes());
    workload::print_sizes();
    hprintln!(
        "cortex-m: {} passed, {} failed",
        checks.passed,
        checks.failed
    );
    exit::exit(checks.failed == 0 && checks.passed > 0)
}
