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
//! Then the entropy decoder the server runs on every uploaded pattern:
//! `decode` of each pattern's absolute stream (`run_decode_absolute`) and of
//! its closed-loop delta to the pattern drifted by a real item
//! (`run_decode_delta`, the benchmark drift of `--bin codec`); then the
//! same two with the server's slot-to-symbol index ([`DecodeLut`], built
//! once: `run_decode_absolute_lut`, `run_decode_delta_lut`), checked to give
//! the same codes; and `reconstruct` over the server's `f32` copy of the
//! basis ([`FloatBasis`]: `run_reconstruct_float`), checked to give the
//! same embeddings bit for bit.
//!
//! Last, the server's reconstruction (`constellation::codebooks::wide`):
//! the same `f32` basis compiled for the widest vector unit the CPU has
//! (`run_reconstruct_wide`; under valgrind, which offers no AVX-512, that is
//! AVX2), one pattern at a time and eight at a time
//! (`run_reconstruct_many`), checked to give the same embeddings bit for bit.
//!
//! `codec-cost time [N] [SECONDS]` times the entropy decoder instead, on
//! CPU time from `/proc` (not under callgrind): the `N` delta and absolute
//! streams (default 2,000, distinct real patterns, so that the branch
//! predictor cannot learn one stream) decoded over and over for about
//! `SECONDS` each (default 2) with the binary search and with the index,
//! and prints nanoseconds per pattern and the index's ratio to the binary
//! search measured in the same run; then the reconstruction over the
//! `f32` basis, as the build compiles it and on the widest unit found
//! (the same `N` patterns' codes), with the ratio of the two.

use constellation::codebooks::wide::{self, Unit};
use omega_tv_sync::codec::{minilm_v1, Codebook, Codes, DecodeLut, FloatBasis, MAX_CODED_LEN};
use omega_tv_sync::Embedding;
use omega_tv_sync_bench::data::{data_dir, drift, read_rows};
use omega_tv_sync_bench::procfs::cpu_s;
use std::hint::black_box;

/// Coded streams with the base each decodes against.
type Streams = Vec<(Vec<u8>, Option<Codes>)>;

/// Decodes every stream into `out`; each named stage below runs this, so
/// callgrind counts it under that stage's name.
#[inline(always)]
fn decode_each(cb: &Codebook<'_>, streams: &Streams, out: &mut [Codes]) {
    for ((s, base), o) in streams.iter().zip(out.iter_mut()) {
        cb.decode(black_box(s), base.as_ref(), o).expect("decodes");
    }
}

#[inline(never)]
fn run_decode_absolute(cb: &Codebook<'_>, streams: &Streams, out: &mut [Codes]) {
    assert!(!cb.has_lut(), "the binary search");
    decode_each(cb, streams, out);
}

#[inline(never)]
fn run_decode_delta(cb: &Codebook<'_>, streams: &Streams, out: &mut [Codes]) {
    assert!(!cb.has_lut(), "the binary search");
    decode_each(cb, streams, out);
}

#[inline(never)]
fn run_decode_absolute_lut(cb: &Codebook<'_>, streams: &Streams, out: &mut [Codes]) {
    assert!(cb.has_lut(), "the index");
    decode_each(cb, streams, out);
}

#[inline(never)]
fn run_decode_delta_lut(cb: &Codebook<'_>, streams: &Streams, out: &mut [Codes]) {
    assert!(cb.has_lut(), "the index");
    decode_each(cb, streams, out);
}

/// Encodes `codes` (against `base`) into a stream.
fn stream(cb: &Codebook<'_>, codes: &Codes, base: Option<&Codes>) -> (Vec<u8>, Option<Codes>) {
    let mut buf = [0u8; MAX_CODED_LEN];
    let n = cb.encode(codes, base, &mut buf).expect("encodes");
    (buf[..n].to_vec(), base.copied())
}

/// The absolute stream of each of `codes` (the quantised `rows`), and the
/// closed-loop delta from it to its row drifted by a real item (the
/// benchmark drift of `--bin codec`).
fn streams_of(cb: &Codebook<'_>, rows: &[[f32; 384]], codes: &[Codes]) -> (Streams, Streams) {
    let items = read_rows(&data_dir().join("items_public.f32")).expect("items");
    let absolute = codes.iter().map(|c| stream(cb, c, None)).collect();
    let delta = rows
        .iter()
        .cycle()
        .enumerate()
        .zip(codes.iter())
        .map(|((i, r), c)| {
            let moved = drift(r, &items[(7 * i + 3) % items.len()], (5 + i % 16) as f64);
            let moved = cb.quantize(&Embedding::new(moved).expect("unit norm"));
            stream(cb, &moved, Some(c))
        })
        .collect();
    (absolute, delta)
}

#[inline(never)]
fn run_quantize(cb: &Codebook<'_>, embs: &[Embedding], out: &mut [Codes]) {
    for (e, o) in embs.iter().zip(out.iter_mut()) {
        *o = cb.quantize(black_box(e));
    }
}

/// Reconstructs every pattern's codes into `out` (as [`decode_each`]).
#[inline(always)]
fn reconstruct_each(cb: &Codebook<'_>, codes: &[Codes], out: &mut [Embedding]) {
    for (c, o) in codes.iter().zip(out.iter_mut()) {
        *o = cb.reconstruct(black_box(c)).expect("nonzero");
    }
}

#[inline(never)]
fn run_reconstruct(cb: &Codebook<'_>, codes: &[Codes], out: &mut [Embedding]) {
    assert!(!cb.has_float_basis(), "the blob's rows");
    reconstruct_each(cb, codes, out);
}

#[inline(never)]
fn run_reconstruct_float(cb: &Codebook<'_>, codes: &[Codes], out: &mut [Embedding]) {
    assert!(cb.has_float_basis(), "the f32 basis");
    reconstruct_each(cb, codes, out);
}

#[inline(never)]
fn run_reconstruct_wide(cb: &Codebook<'_>, codes: &[Codes], out: &mut [Embedding]) {
    assert!(cb.has_float_basis(), "the f32 basis");
    for (c, o) in codes.iter().zip(out.iter_mut()) {
        *o = wide::reconstruct(cb, black_box(c)).expect("nonzero");
    }
}

#[inline(never)]
fn run_reconstruct_many(
    cb: &Codebook<'_>,
    codes: &[Codes],
    out: &mut [omega_tv_sync::Result<Embedding>],
) {
    assert!(cb.has_float_basis(), "the f32 basis");
    wide::reconstruct_many(cb, black_box(codes), out);
}

/// CPU nanoseconds per pattern of `f` over `n` patterns, run over and
/// over for about `secs` seconds of CPU time.
fn time_per(n: usize, secs: f64, mut f: impl FnMut()) -> f64 {
    let start = cpu_s();
    let mut rounds = 0u64;
    while cpu_s() - start < secs {
        f();
        rounds += 1;
    }
    (cpu_s() - start) * 1e9 / (rounds as f64 * n as f64)
}

/// CPU nanoseconds per pattern of `a` and of `b` (each from [`time_per`]
/// over half the time), timed a, b, b, a: neither always runs on a cache
/// the other warmed.
fn abba(mut a: impl FnMut() -> f64, mut b: impl FnMut() -> f64) -> (f64, f64) {
    let (a1, b1) = (a(), b());
    let (b2, a2) = (b(), a());
    ((a1 + a2) / 2.0, (b1 + b2) / 2.0)
}

/// CPU nanoseconds per stream of decoding `streams` over and over for
/// about `secs` seconds of CPU time.
fn time_decode(cb: &Codebook<'_>, streams: &Streams, secs: f64) -> f64 {
    let mut out = vec![[0i16; 384]; streams.len()];
    let ns = time_per(streams.len(), secs, || decode_each(cb, streams, &mut out));
    black_box(&out);
    ns
}

/// `codec-cost time [N] [SECONDS]` (module docs).
fn time_mode(mut args: impl Iterator<Item = String>) {
    let n: usize = args
        .next()
        .map_or(2000, |a| a.parse().expect("N is a number"));
    let secs: f64 = args
        .next()
        .map_or(2.0, |a| a.parse().expect("SECONDS is a number"));
    let rows = read_rows(&data_dir().join("patterns_public.f32")).expect("patterns");
    let cb = minilm_v1().expect("default codebook");
    let quantize = |v: &[f32; 384]| cb.quantize(&Embedding::new(*v).expect("unit norm"));
    let codes: Vec<Codes> = rows.iter().cycle().take(n).map(quantize).collect();
    let (absolute, delta) = streams_of(&cb, &rows, &codes);
    let (mut cum, mut index) = (vec![0u16; cb.lut_cum_len()], vec![0u8; cb.lut_index_len()]);
    let lut: DecodeLut<'_> = cb.build_lut(&mut cum, &mut index).expect("lut");
    let fast = cb.with_lut(&lut).expect("same codebook");
    eprintln!("timing the decoder on {n} streams of each kind, ~{secs} s of CPU per row...");
    println!("| stream | binary search, ns | with the index, ns | ratio |");
    println!("|---|---:|---:|---:|");
    for (name, streams) in [("delta", &delta), ("absolute", &absolute)] {
        let bisect = time_decode(&cb, streams, secs);
        let indexed = time_decode(&fast, streams, secs);
        println!(
            "| {name} | {bisect:.0} | {indexed:.0} | {:.2} |",
            indexed / bisect
        );
    }
    let mut rows_f32 = vec![0f32; cb.float_basis_len()];
    let fb: FloatBasis<'_> = cb.build_float_basis(&mut rows_f32).expect("float basis");
    let float = cb.with_float_basis(&fb).expect("same codebook");
    let mut out = vec![Embedding::new(rows[0]).expect("unit norm"); n];
    let mut out_wide = out.clone();
    let unit = wide::unit().name();
    eprintln!("timing the reconstruction over the f32 basis, ~{secs} s of CPU per column...");
    println!();
    println!("| reconstruct ({n} patterns) | build's baseline, ns | {unit}, ns | ratio |");
    println!("|---|---:|---:|---:|");
    let (base, widened) = abba(
        || time_per(n, secs / 2.0, || reconstruct_each(&float, &codes, &mut out)),
        || {
            time_per(n, secs / 2.0, || {
                run_reconstruct_wide(&float, &codes, &mut out_wide)
            })
        },
    );
    black_box((&out, &out_wide));
    println!(
        "| f32 basis | {base:.0} | {widened:.0} | {:.2} |",
        widened / base
    );
    let unset = || -> Vec<omega_tv_sync::Result<Embedding>> {
        codes
            .iter()
            .map(|_| Err(omega_tv_sync::Error::Truncated))
            .collect()
    };
    let (mut many_base, mut many_wide) = (unset(), unset());
    let many = |u: Unit, out: &mut Vec<_>| {
        time_per(n, secs / 2.0, || {
            wide::on_many(u, &float, black_box(&codes), out);
        })
    };
    let (m, w) = abba(
        || many(Unit::Baseline, &mut many_base),
        || many(wide::unit(), &mut many_wide),
    );
    println!(
        "| f32 basis, eight at a time | {m:.0} ({:.2}) | {w:.0} | {:.2} |",
        m / base,
        w / base
    );
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("time") {
        args.next();
        return time_mode(args);
    }
    let n: usize = args
        .next()
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
    // The decoder: absolute streams, and deltas to a drifted pattern.
    let (absolute, delta) = streams_of(&cb, &rows, &codes);
    let mut decoded = vec![[0i16; 384]; n];
    run_decode_absolute(&cb, &absolute, &mut decoded);
    assert_eq!(decoded, codes, "absolute streams decode to their codes");
    run_decode_delta(&cb, &delta, &mut decoded);
    let (mut cum, mut index) = (vec![0u16; cb.lut_cum_len()], vec![0u8; cb.lut_index_len()]);
    let lut: DecodeLut<'_> = cb.build_lut(&mut cum, &mut index).expect("lut");
    let fast = cb.with_lut(&lut).expect("same codebook");
    let mut with_lut = vec![[0i16; 384]; n];
    run_decode_delta_lut(&fast, &delta, &mut with_lut);
    assert_eq!(with_lut, decoded, "the lut decodes the deltas alike");
    run_decode_absolute_lut(&fast, &absolute, &mut with_lut);
    assert_eq!(
        with_lut, codes,
        "the lut decodes the absolute streams alike"
    );
    let mut rows_f32 = vec![0f32; cb.float_basis_len()];
    let fb: FloatBasis<'_> = cb.build_float_basis(&mut rows_f32).expect("float basis");
    let float = cb.with_float_basis(&fb).expect("same codebook");
    let mut out_f32 = out.clone();
    run_reconstruct_float(&float, &codes, &mut out_f32);
    let bits = |v: &[Embedding]| -> Vec<[u32; 384]> {
        v.iter().map(|e| e.as_array().map(f32::to_bits)).collect()
    };
    assert_eq!(
        bits(&out_f32),
        bits(&out),
        "the f32 basis reconstructs alike, bit for bit"
    );
    run_reconstruct_wide(&float, &codes, &mut out_f32);
    assert_eq!(
        bits(&out_f32),
        bits(&out),
        "the wide unit reconstructs alike, bit for bit"
    );
    let mut many: Vec<omega_tv_sync::Result<Embedding>> = codes
        .iter()
        .map(|_| Err(omega_tv_sync::Error::Truncated))
        .collect();
    run_reconstruct_many(&float, &codes, &mut many);
    let many: Vec<Embedding> = many.into_iter().map(|e| e.expect("nonzero")).collect();
    assert_eq!(
        bits(&many),
        bits(&out),
        "eight at a time on the wide unit reconstructs alike, bit for bit"
    );
    let mean_len = |s: &Streams| s.iter().map(|(b, _)| b.len()).sum::<usize>() as f64 / n as f64;
    println!(
        "streams: absolute {:.1} B, delta {:.1} B on average",
        mean_len(&absolute),
        mean_len(&delta)
    );
    let nonzero: usize = codes
        .iter()
        .map(|c| c.iter().filter(|&&q| q != 0).count())
        .sum();
    println!(
        "{n} patterns; mean cos {cos:.6}; nonzero codes per pattern {:.1}",
        nonzero as f64 / n as f64
    );
}
