//! Host tests of the `zstd` feature: `cargo test -p omega-tv-sync --features zstd`.
#![cfg(feature = "zstd")]

use omega_tv_sync::wire::zstd::{
    Compressor, Decompressor, CCTX_WORKSPACE_BYTES, CCTX_WORKSPACE_WORDS, DCTX_WORKSPACE_BYTES,
    DCTX_WORKSPACE_WORDS,
};
use omega_tv_sync::Error;
use omega_tv_sync_testkit::XorShift64Star;
use serde::Serialize;

fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/../data/minilm/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Ctx {
    cws: Vec<u64>,
    dws: Vec<u64>,
}
impl Ctx {
    fn new() -> Self {
        Ctx {
            cws: vec![0; CCTX_WORKSPACE_WORDS],
            dws: vec![0; DCTX_WORKSPACE_WORDS],
        }
    }
    fn pair(&mut self) -> (Compressor<'_>, Decompressor<'_>) {
        (
            Compressor::new(&mut self.cws).unwrap(),
            Decompressor::new(&mut self.dws).unwrap(),
        )
    }
}

/// Compresses with room for the worst case, checks the round trip, returns
/// the compressed size.
fn round_trip(c: &mut Compressor<'_>, d: &mut Decompressor<'_>, src: &[u8]) -> usize {
    let mut packed = vec![0u8; src.len() + src.len() / 128 + 64];
    let n = c.compress(src, &mut packed).unwrap();
    let mut out = vec![0u8; src.len()];
    let m = d.decompress(&packed[..n], &mut out).unwrap();
    assert_eq!(m, src.len());
    assert_eq!(out, src);
    n
}

#[test]
fn constants_match_the_linked_library() {
    println!(
        "cctx {} (const {CCTX_WORKSPACE_BYTES}), dctx {} (const {DCTX_WORKSPACE_BYTES})",
        Compressor::workspace_bytes(),
        Decompressor::workspace_bytes()
    );
    // The host build compiles zstd without extra C flags (see build.rs).
    assert_eq!(CCTX_WORKSPACE_BYTES, Compressor::workspace_bytes());
    assert!(DCTX_WORKSPACE_BYTES >= Decompressor::workspace_bytes());
    assert!(DCTX_WORKSPACE_BYTES - Decompressor::workspace_bytes() < 8);
    for (words, bytes) in [
        (CCTX_WORKSPACE_WORDS, CCTX_WORKSPACE_BYTES),
        (DCTX_WORKSPACE_WORDS, DCTX_WORKSPACE_BYTES),
    ] {
        assert!(words * 8 >= bytes && words * 8 - bytes < 8);
    }
}

#[test]
fn round_trips_real_embeddings() {
    let items = data("items_public.f32");
    let patterns = data("patterns_public.f32");
    let mut ctx = Ctx::new();
    let (mut c, mut d) = ctx.pair();
    // One vector, a few, ~2 KB, and 64 KiB (many blocks, beyond the window).
    for len in [1536, 2048, 4 * 1536, 64 << 10] {
        for start in [0, 1536 * 7, 1536 * 1000] {
            round_trip(&mut c, &mut d, &items[start..start + len]);
            round_trip(&mut c, &mut d, &patterns[start..start + len]);
        }
    }
    // Ten 384-d vectors as f32: zstd gains a little from the exponent bytes.
    let ten = &items[..10 * 1536];
    let n = round_trip(&mut c, &mut d, ten);
    assert!(n < ten.len(), "{n} >= {}", ten.len());
}

#[derive(Serialize)]
struct Record<'a> {
    index: u32,
    category: &'a str,
    movie_name: &'a str,
    score: u16,
}

#[test]
fn round_trips_postcard_records_and_shrinks_them() {
    let meta = String::from_utf8(data("items_public.meta.tsv")).unwrap();
    let mut body = vec![0u8; 4096];
    let mut used = 0;
    for (i, line) in meta.lines().skip(1).enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        let rec = Record {
            index: i as u32,
            category: cols[1],
            movie_name: cols[2],
            score: (i * 37 % 1000) as u16,
        };
        match postcard::to_slice(&rec, &mut body[used..]) {
            Ok(s) => used += s.len(),
            Err(_) => break,
        }
    }
    let body = &body[..used];
    assert!(body.len() > 3000);
    let mut ctx = Ctx::new();
    let (mut c, mut d) = ctx.pair();
    let n = round_trip(&mut c, &mut d, body);
    // Repeated category strings and film names: zstd must win here.
    assert!(n * 10 < body.len() * 8, "{n} of {}", body.len());

    // The frame layer's use: a dst one byte smaller than the body.
    let mut small = vec![0u8; body.len() - 1];
    let m = c.compress(body, &mut small).unwrap();
    assert_eq!(m, n);
}

#[test]
fn output_is_deterministic_and_contexts_are_reusable() {
    let items = data("items_public.f32");
    let text = b"viewing pattern viewing pattern viewing pattern ".repeat(40);
    let mut ctx = Ctx::new();
    let (mut c, mut d) = ctx.pair();
    let mut a = vec![0u8; 4096];
    let mut b = vec![0u8; 4096];
    let na = c.compress(&text, &mut a).unwrap();
    round_trip(&mut c, &mut d, &items[..2048]);
    let nb = c.compress(&text, &mut b).unwrap();
    assert_eq!(a[..na], b[..nb]);
    assert!(na < 100, "{na}");
}

#[test]
fn empty_input() {
    let mut ctx = Ctx::new();
    let (mut c, mut d) = ctx.pair();
    let mut packed = [0u8; 64];
    let n = c.compress(&[], &mut packed).unwrap();
    assert!(n > 0);
    assert_eq!(d.decompress(&packed[..n], &mut []), Ok(0));
    // No frame at all is not a valid compressed body.
    assert_eq!(d.decompress(&[], &mut [0u8; 16]), Err(Error::Decompression));
}

#[test]
fn incompressible_input_does_not_fit_a_smaller_dst() {
    let mut noise = vec![0u8; 2048];
    XorShift64Star::new(7).fill(&mut noise);
    let mut ctx = Ctx::new();
    let (mut c, mut d) = ctx.pair();
    let mut dst = vec![0u8; noise.len() - 1];
    assert_eq!(c.compress(&noise, &mut dst), Err(Error::Compression));
    // With room it is stored raw, a few bytes larger, and round-trips.
    let n = round_trip(&mut c, &mut d, &noise);
    assert!(n > noise.len());
    // The compressor still works after a failed call.
    round_trip(&mut c, &mut d, &[42u8; 3000]);
}

#[test]
fn too_small_dst_is_an_error() {
    let src = b"abcabcabcabcabcabcabcabcabcabcabcabc".repeat(100);
    let mut ctx = Ctx::new();
    let (mut c, mut d) = ctx.pair();
    let mut packed = vec![0u8; 512];
    let n = c.compress(&src, &mut packed).unwrap();
    for cap in [0, 1, n - 1] {
        let mut dst = vec![0u8; cap];
        assert_eq!(c.compress(&src, &mut dst), Err(Error::Compression));
    }
    for cap in [0, 1, src.len() / 2, src.len() - 1] {
        let mut out = vec![0u8; cap];
        assert_eq!(
            d.decompress(&packed[..n], &mut out),
            Err(Error::Decompression)
        );
    }
    let mut out = vec![0u8; src.len()];
    assert_eq!(d.decompress(&packed[..n], &mut out), Ok(src.len()));
}

#[test]
fn too_small_workspaces_are_errors() {
    for words in [0, 1, 64, CCTX_WORKSPACE_BYTES / 8 - 1] {
        let mut ws = vec![0u64; words];
        assert!(matches!(
            Compressor::new(&mut ws),
            Err(Error::BufferTooSmall)
        ));
    }
    for words in [0, 1, 64, DCTX_WORKSPACE_BYTES / 8 - 1] {
        let mut ws = vec![0u64; words];
        assert!(matches!(
            Decompressor::new(&mut ws),
            Err(Error::BufferTooSmall)
        ));
    }
    // A larger workspace, full of garbage, is fine.
    let mut cws = vec![u64::MAX; CCTX_WORKSPACE_WORDS + 100];
    let mut dws = vec![0x5a5a_5a5a_5a5a_5a5a; DCTX_WORKSPACE_WORDS + 3];
    let mut c = Compressor::new(&mut cws).unwrap();
    let mut d = Decompressor::new(&mut dws).unwrap();
    round_trip(&mut c, &mut d, &data("patterns_public.f32")[..8192]);
}

#[test]
fn truncated_and_extended_frames_are_errors() {
    let src = data("items_public.meta.tsv");
    let src = &src[..4000];
    let mut ctx = Ctx::new();
    let (mut c, mut d) = ctx.pair();
    let mut packed = vec![0u8; 8192];
    let n = c.compress(src, &mut packed).unwrap();
    let mut out = vec![0u8; 8192];
    for cut in 0..n {
        assert_eq!(
            d.decompress(&packed[..cut], &mut out),
            Err(Error::Decompression),
            "cut at {cut} of {n}"
        );
    }
    for extra in 1..8 {
        assert_eq!(
            d.decompress(&packed[..n + extra], &mut out),
            Err(Error::Decompression),
            "{extra} trailing bytes"
        );
    }
    assert_eq!(d.decompress(&packed[..n], &mut out), Ok(src.len()));
}

#[test]
fn corrupt_and_random_input_never_panics() {
    let src = data("items_public.meta.tsv");
    let src = &src[..3000];
    let mut ctx = Ctx::new();
    let (mut c, mut d) = ctx.pair();
    let mut packed = vec![0u8; 4096];
    let n = c.compress(src, &mut packed).unwrap();
    let frame = packed[..n].to_vec();
    let mut out = vec![0u8; 4096];
    let mut rng = XorShift64Star::new(0x1234_5678_9abc_def1);

    // Every single-byte corruption of a valid frame: an error, or (rarely,
    // with no checksum) other bytes; never more than `out` holds.
    let mut errors = 0;
    for i in 0..frame.len() {
        let mut bad = frame.clone();
        bad[i] ^= 1 << (rng.next_u64() % 8);
        match d.decompress(&bad, &mut out) {
            Ok(m) => assert!(m <= out.len()),
            Err(e) => {
                assert_eq!(e, Error::Decompression);
                errors += 1;
            }
        }
    }
    assert!(errors > 0);

    // Random bytes, with and without a valid magic number and header.
    for round in 0..3000 {
        let len = (rng.next_u64() % 600) as usize;
        let mut junk = vec![0u8; len];
        rng.fill(&mut junk);
        if round % 2 == 0 && len >= 6 {
            junk[..4].copy_from_slice(&frame[..4]);
            if round % 4 == 0 {
                junk[4..6].copy_from_slice(&frame[4..6]);
            }
        }
        let cap = (rng.next_u64() % 5000) as usize;
        let mut dst = vec![0u8; cap];
        if let Ok(m) = d.decompress(&junk, &mut dst) {
            assert!(m <= cap);
        }
    }
    // The decompressor still works afterwards.
    assert_eq!(d.decompress(&frame, &mut out), Ok(src.len()));
    assert_eq!(&out[..src.len()], src);
}
