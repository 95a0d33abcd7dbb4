//! Instruction counts of the codec's float stages, for callgrind.
//!
//! ```text
//! cargo build --release -p omega-tv-sync-bench --bin codec-cost
//! scripts/codec-cost.sh        # runs this under valgrind --tool=callgrind
//! ```
//!
//! Runs `quantize` on the first `N` public patterns (default 200), then
//! `reconstruct` on their codes, each in its own non-inlined function
//! (`run_quantize`, `run_reconstruct`), so that callgrind's inclusive counts
//! of those two functions divided by `N` are the instructions per pattern.

use omega_tv_sync::codec::{minilm_v1, Codebook, Codes};
use omega_tv_sync::Embedding;
use omega_tv_sync_bench::data::{data_dir, read_rows};
use std::hint::black_box;

#[inline(never)]
fn run_quantize(cb: &Codebook<'_>, embs: &[Embedding], out: &mut [Codes]) {
    for (e, o) in embs.iter().zip(out.iter_mut()) {
        *o = cb.quantize(black_box(e));
    }
}

#[inline(never)]
fn run_reconstruct(cb: &Codebook<'_>, codes: &[Codes], out: &mut [Embedding]) {
    for (c, o) in codes.iter().zip(out.iter_mut()) {
        *o = cb.reconstruct(black_box(c)).expect("nonzero");
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(200, |a| a.parse().expect("N is a number"));
    let rows = read_rows(&data_dir().join("patterns_public.f32")).expect("patterns");
    let embs: Vec<Embedding> = rows
        .iter()
        .cycle()
        .take(n)
        .map(|r| Embedding::new(*r).expect("unit norm"))
        .collect();
    let cb = minilm_v1().expect("default codebook");
    let mut codes = vec![[0i16; 384]; n];
    run_quantize(&cb, &embs, &mut codes);
    let mut out = embs.clone();
    run_reconstruct(&cb, &codes, &mut out);
    let cos: f64 = embs
        .iter()
        .zip(out.iter())
        .map(|(a, b)| {
            a.as_array()
                .iter()
                .zip(b.as_array().iter())
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum::<f64>()
        })
        .sum::<f64>()
        / n as f64;
    let nonzero: usize = codes
        .iter()
        .map(|c| c.iter().filter(|&&q| q != 0).count())
        .sum();
    println!(
        "{n} patterns; mean cos {cos:.6}; nonzero codes per pattern {:.1}",
        nonzero as f64 / n as f64
    );
}
