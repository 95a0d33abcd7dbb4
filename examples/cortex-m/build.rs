//! Host side of the firmware build: puts `memory.x` on the linker path,
//! cuts the first `ROWS` real pattern vectors out of
//! `data/minilm/patterns_public.f32` with reference values computed here in
//! f64, so the firmware checks its f32 results against an independent
//! computation, and records the sync cycle's fixtures (see [`fixtures`]).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

#[path = "src/scenario.rs"]
#[allow(dead_code)]
mod scenario;

/// Real pattern rows compiled into the firmware (1536 B each).
const ROWS: usize = 16;
const DIM: usize = 384;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");

    let data = "../../data/minilm/patterns_public.f32";
    println!("cargo:rerun-if-changed={data}");
    let bytes = fs::read(data).expect("read data/minilm/patterns_public.f32");
    let rows = &bytes[..ROWS * DIM * 4];
    fs::write(out.join("patterns.bin"), rows).expect("write patterns.bin");

    let v: Vec<Vec<f64>> = rows
        .chunks_exact(DIM * 4)
        .map(|r| {
            r.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect()
        })
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut s = String::new();
    writeln!(s, "/// Real pattern rows compiled in.").unwrap();
    writeln!(s, "pub const ROWS: usize = {ROWS};").unwrap();
    writeln!(
        s,
        "/// cos(row i, row (i + 1) % ROWS), computed in f64 on the host."
    )
    .unwrap();
    write!(s, "pub const NEXT_COS: [f64; ROWS] = [").unwrap();
    for i in 0..ROWS {
        write!(s, "{:e}, ", dot(&v[i], &v[(i + 1) % ROWS])).unwrap();
    }
    writeln!(s, "];").unwrap();
    // Index of each row's nearest other row, when the margin over the
    // runner-up is large enough to survive f32 rounding (else usize::MAX).
    writeln!(
        s,
        "/// Nearest other row of each row (usize::MAX: near-tie, not checked)."
    )
    .unwrap();
    write!(s, "pub const NEAREST: [usize; ROWS] = [").unwrap();
    for i in 0..ROWS {
        let mut sims: Vec<(f64, usize)> = (0..ROWS)
            .filter(|&j| j != i)
            .map(|j| (dot(&v[i], &v[j]), j))
            .collect();
        sims.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
        let nearest = if sims[0].0 - sims[1].0 > 1e-4 {
            sims[0].1
        } else {
            usize::MAX
        };
        write!(s, "{nearest}, ").unwrap();
    }
    writeln!(s, "];").unwrap();
    fs::write(out.join("expected.rs"), s).expect("write expected.rs");
    println!("cargo:rerun-if-changed=src/scenario.rs");
    fixtures(rows, &out);
}

/// Records, for each codebook profile and with zstd off and on, what the
/// host's `SyncClient` does in the scenario of `src/scenario.rs`:
///
/// - `upload-P-Z.bin`: the upload frame it prepares;
/// - `response-P-Z.bin`: the server's download frame answering it, built with
///   the core's `FrameWriter` as Constellation builds it (acks, a conflict
///   with the server's state, a global removal, global upserts, trends;
///   compressed with the core's static-workspace zstd for `Z = zstd`);
/// - `auth-P-Z.txt`: the `Authorization` header value signing that upload;
/// - `snapshot-P-Z.bin`: the client's snapshot after applying it.
///
/// The firmware repeats the cycle on the target and compares byte for byte.
fn fixtures(rows: &[u8], out: &Path) {
    use omega_tv_sync::codec::{minilm_small_v1, minilm_v1, Codebook, MAX_CODED_LEN};
    use omega_tv_sync::sync::{Outcome, SyncClient};
    use omega_tv_sync::wire::zstd::{Compressor, CCTX_WORKSPACE_WORDS};
    use omega_tv_sync::wire::{
        Ack, Conflict, DownloadHead, FrameReader, FrameWriter, GlobalRemove, GlobalUpsert, Kind,
        Record, ServerState, TrendRecord,
    };
    use omega_tv_sync::Response;
    use scenario::*;

    let profiles: [(&str, Codebook<'static>); 2] = [
        ("v1", minilm_v1().expect("minilm_v1")),
        ("small", minilm_small_v1().expect("minilm_small_v1")),
    ];
    let mut cws = vec![0u64; CCTX_WORKSPACE_WORDS];
    let mut zstd = Compressor::new(&mut cws).expect("zstd workspace");
    for (name, cb) in profiles {
        for z in [false, true] {
            let tag = format!("{name}-{}", if z { "zstd" } else { "plain" });
            let mut c = SyncClient::<N>::new(cb, config(z).expect("config"));
            for i in 0..PATTERNS {
                c.upsert(&pattern(rows, i).expect("pattern"), NOW_MS)
                    .expect("upsert");
            }
            let mut tx = vec![0u8; 16 * 1024];
            let n = c.prepare(&mut tx).expect("prepare");
            let upload = &tx[..n];
            let mut ab = [0u8; omega_tv_sync::transport::auth::HEADER_MAX];
            let auth = c
                .authorization(
                    omega_tv_sync::Method::Post,
                    omega_tv_sync::sync::SYNC_PATH,
                    upload,
                    &mut ab,
                )
                .expect("sign")
                .expect("a key is configured");
            fs::write(out.join(format!("auth-{tag}.txt")), auth).expect("write");

            // The response, record by record.
            let mut resp = vec![0u8; 16 * 1024];
            let mut w = FrameWriter::new(&mut resp, Kind::Download, cb.id()).expect("writer");
            let mut code = vec![0u8; MAX_CODED_LEN];
            w.push(&Record::DownloadHead(DownloadHead {
                seq: c.seq(),
                global_version: GLOBAL_VERSION,
                more: false,
                reset: false,
                next_sync_s: NEXT_SYNC_S,
            }))
            .expect("head");
            for r in FrameReader::parse(upload).expect("upload").records() {
                let Record::Pattern(p) = r.expect("record") else {
                    continue;
                };
                if p.id == id(CONFLICT).expect("id") {
                    let srv = cb.quantize(&row(rows, SERVER_ROW).expect("row"));
                    let len = cb.encode(&srv, None, &mut code).expect("encode");
                    w.push(&Record::Conflict(Conflict {
                        id: p.id.clone(),
                        server_rev: SERVER_REV,
                        state: Some(ServerState {
                            success_rate: SERVER_RATE,
                            sample_count: SERVER_SAMPLES,
                            category: p.category.clone(),
                            code: &code[..len],
                        }),
                    }))
                    .expect("conflict");
                } else {
                    w.push(&Record::Ack(Ack {
                        id: p.id.clone(),
                        revision: ACK_REV,
                    }))
                    .expect("ack");
                }
            }
            w.push(&Record::GlobalRemove(GlobalRemove {
                id: GLOBAL_REMOVED,
                version: VERSIONS[0],
            }))
            .expect("remove");
            for (k, &(gid, r)) in GLOBAL_ROWS.iter().enumerate() {
                let g = cb.quantize(&row(rows, r).expect("row"));
                let len = cb.encode(&g, None, &mut code).expect("encode");
                w.push(&Record::GlobalUpsert(GlobalUpsert {
                    id: gid,
                    version: VERSIONS[1 + k],
                    success_rate: 0.85,
                    sample_count: 1_000,
                    contributors: 12,
                    category: category(r).expect("category"),
                    code: &code[..len],
                }))
                .expect("upsert");
            }
            for k in 0..2 {
                w.push(&Record::Trend(TrendRecord {
                    version: VERSIONS[3 + k],
                    signal: trend(k).expect("trend"),
                }))
                .expect("trend");
            }
            let mut scratch = vec![0u8; 16 * 1024];
            let response = if z {
                let f = w.finish_zstd(&mut zstd, &mut scratch).expect("zstd");
                assert!(FrameReader::parse(f).expect("frame").is_compressed());
                f.to_vec()
            } else {
                w.finish().expect("finish").to_vec()
            };

            // The server signs its answer for the request's counter.
            let key = omega_tv_sync::DeviceKey::new(DEVICE_KEY);
            let sig = omega_tv_sync::transport::auth::sign_response(
                &key,
                c.auth_counter() - 1,
                200,
                &response,
            )
            .expect("sign response");
            let mut sig_hex = [0u8; 64];
            let sig_text =
                omega_tv_sync::transport::auth::format_response_header(&sig, &mut sig_hex);
            fs::write(out.join(format!("sig-{tag}.txt")), sig_text).expect("write");

            // Apply it on the host, as the firmware will.
            let r = Response {
                status: 200,
                body_len: response.len(),
                retry_after_s: None,
                signature: Some(sig),
            };
            let outcome = if z {
                use omega_tv_sync::sync::ZstdBuffers;
                use omega_tv_sync::wire::zstd::DCTX_WORKSPACE_WORDS;
                let mut dws = vec![0u64; DCTX_WORKSPACE_WORDS];
                let mut z = ZstdBuffers::new(&mut dws, &mut scratch).expect("dctx");
                c.apply_zstd(upload, r, &response, &mut z, NOW_MS, &mut ())
            } else {
                c.apply(upload, r, &response, NOW_MS, &mut ())
            };
            assert!(
                matches!(outcome, Ok(Outcome::Synced(s)) if s.acked as usize == PATTERNS - 1),
                "{outcome:?}"
            );
            let mut snap = vec![0u8; SyncClient::<N>::MAX_SNAPSHOT_LEN];
            let sn = c.snapshot(&mut snap).expect("snapshot");
            fs::write(out.join(format!("upload-{tag}.bin")), upload).expect("write");
            fs::write(out.join(format!("response-{tag}.bin")), &response).expect("write");
            fs::write(out.join(format!("snapshot-{tag}.bin")), &snap[..sn]).expect("write");
        }
    }
}
