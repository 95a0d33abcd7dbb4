//! Criterion benches of the codec hot paths on real MiniLM patterns:
//! quantise, encode (absolute and delta), decode (absolute and delta),
//! reconstruct, for both shipped profiles.

use criterion::{criterion_group, criterion_main, Criterion};
use omega_tv_sync::codec::{minilm_small_v1, minilm_v1, Codebook, MAX_CODED_LEN};
use omega_tv_sync::Embedding;
use omega_tv_sync_bench::data::{data_dir, drift, read_rows};
use std::hint::black_box;

fn profile(c: &mut Criterion, name: &str, cb: &Codebook<'_>) {
    let pats = read_rows(&data_dir().join("patterns_public.f32")).expect("patterns");
    let items = read_rows(&data_dir().join("items_public.f32")).expect("items");
    let old = Embedding::new(pats[0]).expect("unit");
    let new = Embedding::new(drift(&pats[0], &items[3], 10.0)).expect("unit");
    let q_old = cb.quantize(&old);
    let q_new = cb.quantize(&new);
    let mut abs = [0u8; MAX_CODED_LEN];
    let n_abs = cb.encode(&q_old, None, &mut abs).expect("encode");
    let mut del = [0u8; MAX_CODED_LEN];
    let n_del = cb.encode(&q_new, Some(&q_old), &mut del).expect("encode");

    let mut g = c.benchmark_group(name);
    g.bench_function("quantize", |b| b.iter(|| cb.quantize(black_box(&old))));
    g.bench_function("encode_abs", |b| {
        let mut out = [0u8; MAX_CODED_LEN];
        b.iter(|| cb.encode(black_box(&q_old), None, &mut out))
    });
    g.bench_function("encode_delta", |b| {
        let mut out = [0u8; MAX_CODED_LEN];
        b.iter(|| cb.encode(black_box(&q_new), Some(&q_old), &mut out))
    });
    g.bench_function("decode_abs", |b| {
        let mut out = [0i16; 384];
        b.iter(|| cb.decode(black_box(&abs[..n_abs]), None, &mut out))
    });
    g.bench_function("decode_delta", |b| {
        let mut out = [0i16; 384];
        b.iter(|| cb.decode(black_box(&del[..n_del]), Some(&q_old), &mut out))
    });
    g.bench_function("reconstruct", |b| {
        b.iter(|| cb.reconstruct(black_box(&q_old)))
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    profile(c, "minilm-v1", &minilm_v1().expect("codebook"));
    profile(c, "minilm-small-v1", &minilm_small_v1().expect("codebook"));
}

criterion_group!(codec, benches);
criterion_main!(codec);
