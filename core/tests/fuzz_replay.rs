//! Replays the committed fuzz inputs through the same target bodies the
//! fuzzers run (`fuzz/src/core_targets.rs`): every seed (real frames) and
//! every regression input (what the fuzzers found). None may panic, and the
//! seeds must still be accepted.
//!
//! The seed corpora themselves are written by the ignored test
//! `write_seed_corpora`, from real vectors:
//!
//! ```text
//! cargo test -p omega-tv-sync --features zstd --test fuzz_replay -- --ignored
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use omega_tv_sync_testkit::{self as t, targets};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted.
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(rd) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

/// Seeds must be accepted; regressions must not panic (their outcome is
/// pinned by the regression tests in the crate).
fn replay<E: std::fmt::Debug>(target: &str, f: impl Fn(&[u8]) -> Result<(), E>) {
    let seeds = inputs("seeds", target);
    assert!(
        seeds.len() >= 5,
        "fuzz/seeds/{target} holds {} files",
        seeds.len()
    );
    let mut accepted = 0;
    for (p, b) in &seeds {
        // A seed may be deliberately rejected when its name says so.
        let must_accept = !p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("reject-");
        let r = f(b);
        if must_accept {
            assert!(r.is_ok(), "{}: {r:?}", p.display());
            accepted += 1;
        }
    }
    assert!(accepted > 0, "{target}: no seed is a real, accepted input");
    for (_, b) in inputs("regressions", target) {
        let _ = f(&b);
    }
}

#[test]
fn replay_frame_header() {
    replay("frame_header", targets::frame_header);
}

#[test]
fn replay_upload() {
    replay("upload", targets::upload);
}

#[test]
fn replay_download() {
    replay("download", targets::download);
}

#[test]
fn replay_snapshot() {
    replay("snapshot", targets::snapshot);
}

#[test]
fn replay_codec() {
    replay("codec", targets::codec);
}

#[cfg(feature = "zstd")]
#[test]
fn replay_zstd() {
    replay("zstd", targets::zstd);
}

#[cfg(feature = "flash")]
#[test]
fn replay_flash() {
    replay("flash", targets::flash);
}

/// The targets reject what they should: a flipped byte anywhere in a real
/// frame is caught by the CRC (which `frame_header` also checks on the
/// input as it is), so the harness would notice a reader that stopped
/// checking; a snapshot of another device does not restore.
#[test]
fn targets_reject_corruption() {
    let frame = t::real_upload(3, false);
    assert!(targets::frame_header(&frame).is_ok());
    for i in 0..frame.len() {
        let mut bad = frame.clone();
        bad[i] ^= 0x10;
        assert!(targets::frame_header(&bad).is_err(), "byte {i}");
    }
    let mut wrong_kind = frame.clone();
    wrong_kind[3] = 2;
    assert_eq!(
        targets::upload(&wrong_kind),
        Err(omega_tv_sync::Error::UnknownKind)
    );
    let snap = t::download_base().to_vec();
    assert!(targets::snapshot(&snap).is_ok());
    let mut bad = snap.clone();
    bad[20] ^= 1;
    assert!(targets::snapshot(&bad).is_err());
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = fuzz_dir().join("seeds").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

/// Writes `fuzz/seeds/<target>/` from real frames built by the core with
/// real vectors (`data/minilm/patterns_public.f32`). Run with `--features
/// zstd` so the compressed seeds are written too.
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_seed_corpora() {
    use omega_tv_sync::wire::FrameReader;

    let uploads: Vec<(String, Vec<u8>)> = [1usize, 2, 3, 5, 8]
        .iter()
        .flat_map(|&k| {
            [
                (format!("upload-{k}"), t::real_upload(k, false)),
                (format!("upload-{k}-accept-zstd"), t::real_upload(k, true)),
            ]
        })
        .chain([("upload-empty".to_string(), t::real_upload(0, false))])
        .chain(std::iter::once({
            // The download target's request: absolute, delta and removal.
            let (_, tx) = t::download_client();
            ("upload-delta-removal".to_string(), tx)
        }))
        .collect();
    let downloads = t::real_downloads();
    let snapshots = t::real_snapshots();

    for (name, b) in &uploads {
        write("upload", name, b);
        write("frame_header", name, b);
    }
    for (name, b) in &downloads {
        write("download", name, b);
        if FrameReader::parse(&b[1..]).is_ok() {
            write("frame_header", &format!("download-{name}"), &b[1..]);
        }
    }
    for (name, b) in &snapshots {
        write("snapshot", name, b);
        write("frame_header", &format!("snapshot-{name}"), b);
    }
    // The worked example of docs/wire-format.md.
    let doc = include_str!("../../docs/wire-format.md");
    let hex = doc
        .split("<!-- example-frame -->")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .unwrap();
    let example: Vec<u8> = hex
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    write("frame_header", "doc-example", &example);

    // codec: every real code, absolute with both codebooks and as deltas.
    use omega_tv_sync::codec::MAX_CODED_LEN;
    let v = t::vectors();
    for i in 0..6 {
        for (mode, cb) in [(0u8, t::book()), (1, t::small_book())] {
            let mut buf = [0u8; MAX_CODED_LEN];
            let n = cb.encode(&cb.quantize(&v[i]), None, &mut buf).unwrap();
            let mut s = vec![mode];
            s.extend_from_slice(&buf[..n]);
            write("codec", &format!("abs-{mode}-{i}"), &s);
        }
        let cb = t::book();
        let mut buf = [0u8; MAX_CODED_LEN];
        let n = cb
            .encode(&cb.quantize(&v[i + 6]), Some(t::base_codes()), &mut buf)
            .unwrap();
        let mut s = vec![2u8];
        s.extend_from_slice(&buf[..n]);
        write("codec", &format!("delta-{i}"), &s);
    }
    // Mutated-blob mode: no patch, and patches that keep the blob valid
    // (a mean value rewritten to another finite value).
    let code = t::real_code(1);
    let small = omega_tv_sync::codec::minilm_small_v1().unwrap();
    let mut buf = [0u8; MAX_CODED_LEN];
    let n = small
        .encode(&small.quantize(&v[1]), None, &mut buf)
        .unwrap();
    let mut s = vec![0x80, 0];
    s.extend_from_slice(&buf[..n]);
    write("codec", "blob-unpatched", &s);
    write("codec", "blob-unpatched-nocode", &[0x80, 0]);
    let mut s = vec![0x80, 2, 20, 0, 0, 0x3c, 21, 0, 0, 0x3c];
    s.extend_from_slice(&buf[..n]);
    write("codec", "blob-mean-patched", &s);
    let _ = code;

    #[cfg(feature = "flash")]
    for (name, image) in t::real_flash_images() {
        write("flash", &name, &image);
    }
    // Torn and overwritten images: a real image cut short, a page erased.
    #[cfg(feature = "flash")]
    {
        let (_, image) = t::real_flash_images().pop().unwrap();
        let used = image.iter().rposition(|&b| b != 0xff).unwrap_or(0) + 1;
        write("flash", "torn-tail", &image[..used - 3]);
        let mut erased = image.clone();
        erased[..1024].fill(0xff);
        write(
            "flash",
            "reject-first-page-erased",
            &erased[..used.max(1100)],
        );
        let mut flipped = image.clone();
        flipped[used / 2] ^= 0x40;
        write("flash", "reject-bit-flip", &flipped[..used]);
    }

    #[cfg(feature = "zstd")]
    {
        use omega_tv_sync::wire::zstd::{Compressor, CCTX_WORKSPACE_WORDS};
        let mut cws = vec![0u64; CCTX_WORKSPACE_WORDS];
        let mut c = Compressor::new(&mut cws).unwrap();
        let bodies: Vec<(String, u8, Vec<u8>)> = uploads
            .iter()
            .map(|(n, b)| (n.clone(), 0u8, b.clone()))
            .chain(
                downloads
                    .iter()
                    .map(|(n, b)| (n.clone(), 1, b[1..].to_vec())),
            )
            .chain(snapshots.iter().map(|(n, b)| (n.clone(), 2, b.clone())))
            .filter_map(|(n, kind, frame)| {
                let f = FrameReader::parse(&frame).ok()?;
                Some((n, kind, f.body().to_vec()))
            })
            .collect();
        for (name, kind, body) in bodies.iter().take(24) {
            let mut z = vec![0u8; body.len() + 128];
            let m = c.compress(body, &mut z).unwrap();
            // Output size 70,000 (index 3), frame kind in bits 2-3.
            let mut s = vec![3 | (kind << 2)];
            s.extend_from_slice(&z[..m]);
            write("zstd", &format!("{name}-k{kind}"), &s);
        }
        // A whole compressed download frame, as the server sends it.
        let trends: Vec<_> = (0..40)
            .map(|i| t::trend(100 + i, "heat", 1.5, "DE", "fresh"))
            .collect();
        let plain = t::real_download(&trends, 1, false, false);
        let f = FrameReader::parse(&plain).unwrap();
        let mut z = vec![0u8; plain.len()];
        let m = c.compress(f.body(), &mut z).unwrap();
        assert!(m < f.body().len());
        let mut s = vec![2 | (1 << 2)];
        s.extend_from_slice(&z[..m]);
        write("zstd", "download-trends-k1", &s);
    }
}
