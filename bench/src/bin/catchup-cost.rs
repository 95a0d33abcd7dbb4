//! Instructions a device spends on a catch-up of global patterns, for
//! callgrind: the same feed pages applied to a sink that reconstructs every
//! global (384 floats, a `DIM x DIM` product) and to one that keeps codes
//! (`GlobalSink::RECONSTRUCT = false`), then scoring 16 local patterns
//! against every global from floats and from codes.
//!
//! ```text
//! scripts/catchup-cost.sh [N]   # N globals (default 1600), under callgrind
//! ```
//!
//! The globals are real MiniLM patterns (`patterns_public.f32`), coded with
//! the default codebook, 64 to a page as a device's caps ask.

use omega_tv_sync::codec::{
    minilm_v1, CodeNorms, Codebook, Codes, CoefficientSpace, MAX_CODED_LEN,
};
use omega_tv_sync::sync::{CodedGlobal, Config, GlobalSink, SyncClient};
use omega_tv_sync::types::{Category, DeviceId, GlobalPattern};
use omega_tv_sync::wire::{DownloadHead, FrameWriter, GlobalUpsert, Kind, Record};
use omega_tv_sync::Embedding;
use omega_tv_sync_bench::data::{data_dir, read_rows};
use std::hint::black_box;

/// Keeps every reconstructed global (what a firmware that scores in floats holds).
#[derive(Default)]
struct Floats(Vec<Embedding>);
impl GlobalSink for Floats {
    fn global_upsert(&mut self, g: &GlobalPattern) {
        self.0.push(g.embedding.clone());
    }
}

/// Keeps every global's codes and nothing else.
#[derive(Default)]
struct ByCodes(Vec<Codes>);
impl GlobalSink for ByCodes {
    const RECONSTRUCT: bool = false;
    fn global_codes(&mut self, g: &CodedGlobal<'_, '_>) {
        self.0.push(*g.codes);
    }
}

fn pages(cb: &Codebook<'_>, embs: &[Embedding]) -> Vec<Vec<u8>> {
    let cat = Category::new("film").expect("category");
    let chunks: Vec<&[Embedding]> = embs.chunks(64).collect();
    let mut out = Vec::new();
    let mut version = 0u64;
    for (i, chunk) in chunks.iter().enumerate() {
        let mut buf = vec![0u8; 64 * (MAX_CODED_LEN + 64) + 256];
        let mut w = FrameWriter::new(&mut buf, Kind::Download, cb.id()).expect("buffer");
        w.push(&Record::DownloadHead(DownloadHead {
            seq: 0,
            global_version: version + chunk.len() as u64,
            more: i + 1 < chunks.len(),
            reset: false,
            next_sync_s: 0,
        }))
        .expect("head fits");
        for e in chunk.iter() {
            version += 1;
            let mut code = [0u8; MAX_CODED_LEN];
            let n = cb.encode(&cb.quantize(e), None, &mut code).expect("encode");
            w.push(&Record::GlobalUpsert(GlobalUpsert {
                id: version as u32,
                version,
                success_rate: 0.8,
                sample_count: 400,
                contributors: 12,
                category: cat.clone(),
                code: &code[..n],
            }))
            .expect("record fits");
        }
        out.push(w.finish().expect("finish").to_vec());
    }
    out
}

fn client(cb: Codebook<'_>) -> SyncClient<'_, 4> {
    SyncClient::new(cb, Config::new(DeviceId::new("tv-bench").expect("id")))
}

#[inline(never)]
fn run_apply_reconstruct(cb: Codebook<'_>, pages: &[Vec<u8>], sink: &mut Floats) {
    let mut c = client(cb);
    for p in pages {
        c.apply_feed(black_box(p), sink).expect("page applies");
    }
}

#[inline(never)]
fn run_apply_codes(cb: Codebook<'_>, pages: &[Vec<u8>], sink: &mut ByCodes) {
    let mut c = client(cb);
    for p in pages {
        c.apply_feed(black_box(p), sink).expect("page applies");
    }
}

#[inline(never)]
fn run_score_floats(local: &[Embedding], globals: &[Embedding]) -> f32 {
    let mut best = f32::MIN;
    for l in local {
        for g in globals {
            best = best.max(black_box(l).dot(g));
        }
    }
    best
}

#[inline(never)]
fn run_score_codes(space: &CoefficientSpace, local: &[Codes], globals: &[Codes]) -> f32 {
    let mut best = f32::MIN;
    for l in local {
        for g in globals {
            best = best.max(space.cosine(black_box(l), g));
        }
    }
    best
}

/// The firmware's way: `CodeNorms` kept beside each stored pattern's codes.
#[inline(never)]
fn run_score_prepared(
    space: &CoefficientSpace,
    local: &[(Codes, CodeNorms)],
    globals: &[(Codes, CodeNorms)],
) -> f32 {
    let mut best = f32::MIN;
    for (l, nl) in local {
        for (g, ng) in globals {
            best = best.max(space.cosine_prepared(black_box(l), *nl, g, *ng));
        }
    }
    best
}

#[inline(never)]
fn run_space(cb: &Codebook<'_>) -> CoefficientSpace {
    cb.coefficient_space()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(1600, |a| a.parse().expect("N is a number"));
    let rows = read_rows(&data_dir().join("patterns_public.f32")).expect("patterns");
    let embs: Vec<Embedding> = rows
        .iter()
        .cycle()
        .take(n + 16)
        .map(|r| Embedding::new(*r).expect("unit norm"))
        .collect();
    let (local, globals) = embs.split_at(16);
    let cb = minilm_v1().expect("default codebook");
    let pages = pages(&cb, globals);
    let bytes: usize = pages.iter().map(Vec::len).sum();

    let mut floats = Floats::default();
    run_apply_reconstruct(cb, &pages, &mut floats);
    let mut codes = ByCodes::default();
    run_apply_codes(cb, &pages, &mut codes);
    assert_eq!(floats.0.len(), n);
    assert_eq!(codes.0.len(), n);

    let space = run_space(&cb);
    let local_codes: Vec<Codes> = local.iter().map(|e| cb.quantize(e)).collect();
    let local_recon: Vec<Embedding> = local_codes
        .iter()
        .map(|c| cb.reconstruct(c).expect("nonzero"))
        .collect();
    let a = run_score_floats(&local_recon, &floats.0);
    let b = run_score_codes(&space, &local_codes, &codes.0);
    let with_norms = |c: &[Codes]| -> Vec<(Codes, CodeNorms)> {
        c.iter().map(|c| (*c, space.prepare(c))).collect()
    };
    let c = run_score_prepared(&space, &with_norms(&local_codes), &with_norms(&codes.0));
    println!(
        "{n} globals in {} pages, {bytes} bytes; best score floats {a:.6} codes {b:.6} prepared {c:.6}",
        pages.len()
    );
}
