//! Records the sync cycle of the C firmware (`ffi/examples/cortex-m`) on the
//! host, with the Rust client, as C source: `fixtures.h` and `fixtures.c`
//! in the directory given as the only argument.
//!
//! The scenario is the Rust firmware's (`examples/cortex-m/src/scenario.rs`,
//! compiled in here unchanged): 8 real patterns (rows of
//! `data/minilm/patterns_public.f32`) are upserted and uploaded; the server's
//! answer, built with the core's `FrameWriter` the way Constellation builds
//! it, acks seven, answers one with a conflict carrying the server's state,
//! withdraws a global pattern, publishes two and sends two trends. For each
//! codebook profile the files hold what the host's client did: the upload,
//! its `Authorization` value, the response and the snapshot after applying
//! it. The C firmware repeats the cycle through the C API on the target and
//! compares byte for byte.
//!
//! ```text
//! cargo run -p omega-tv-sync-ffi --example fixtures -- OUT_DIR
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs, process};

use omega_tv_sync::codec::{minilm_small_v1, minilm_v1, Codebook, MAX_CODED_LEN};
use omega_tv_sync::sync::{Outcome, SyncClient};
use omega_tv_sync::wire::{
    Ack, Conflict, DownloadHead, FrameReader, FrameWriter, GlobalRemove, GlobalUpsert, Kind,
    Record, ServerState, TrendRecord,
};
use omega_tv_sync::{Response, DIM};

#[path = "../../examples/cortex-m/src/scenario.rs"]
#[allow(dead_code)]
mod scenario;
use scenario::*;

/// Real pattern rows compiled into the firmware (as the Rust firmware's).
const ROWS: usize = 16;

/// What the host recorded for one profile.
struct Recorded {
    upload: Vec<u8>,
    auth: String,
    response: Vec<u8>,
    /// `X-OTS-Signature` of the response: signed for the request's counter.
    response_sig: String,
    snapshot: Vec<u8>,
}

fn main() {
    let Some(out) = env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fixtures OUT_DIR");
        process::exit(2);
    };
    if let Err(e) = run(&out) {
        eprintln!("fixtures: {e}");
        process::exit(1);
    }
}

fn run(out: &Path) -> Result<(), String> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/minilm/patterns_public.f32");
    let bytes = fs::read(&data).map_err(|e| format!("read {}: {e}", data.display()))?;
    let rows = bytes
        .get(..ROWS * DIM * 4)
        .ok_or("patterns_public.f32 is too short")?;
    let v1 = record(minilm_v1().map_err(|e| e.to_string())?, rows)?;
    let small = record(minilm_small_v1().map_err(|e| e.to_string())?, rows)?;
    fs::create_dir_all(out).map_err(|e| e.to_string())?;
    fs::write(out.join("fixtures.h"), header()).map_err(|e| e.to_string())?;
    fs::write(out.join("fixtures.c"), source(rows, &v1, &small)?).map_err(|e| e.to_string())?;
    println!(
        "fixtures: {} (v1 upload {} B, response {} B, snapshot {} B; small {} / {} / {} B)",
        out.display(),
        v1.upload.len(),
        v1.response.len(),
        v1.snapshot.len(),
        small.upload.len(),
        small.response.len(),
        small.snapshot.len()
    );
    Ok(())
}

/// The host client's cycle for one codebook (zstd off).
fn record(cb: Codebook<'static>, rows: &[u8]) -> Result<Recorded, String> {
    let e = |e: omega_tv_sync::Error| e.to_string();
    let mut c = SyncClient::<N>::new(cb, config(false).map_err(e)?);
    for i in 0..PATTERNS {
        c.upsert(&pattern(rows, i).map_err(e)?, NOW_MS).map_err(e)?;
    }
    let mut tx = vec![0u8; 16 * 1024];
    let n = c.prepare(&mut tx).map_err(e)?;
    let upload = tx[..n].to_vec();
    let mut ab = [0u8; omega_tv_sync::transport::auth::HEADER_MAX];
    let auth = c
        .authorization(
            omega_tv_sync::Method::Post,
            omega_tv_sync::sync::SYNC_PATH,
            &upload,
            &mut ab,
        )
        .map_err(e)?
        .ok_or("no key configured")?
        .to_string();

    let mut resp = vec![0u8; 16 * 1024];
    let mut w = FrameWriter::new(&mut resp, Kind::Download, cb.id()).map_err(e)?;
    let mut code = vec![0u8; MAX_CODED_LEN];
    w.push(&Record::DownloadHead(DownloadHead {
        seq: c.seq(),
        global_version: GLOBAL_VERSION,
        more: false,
        reset: false,
        next_sync_s: NEXT_SYNC_S,
    }))
    .map_err(e)?;
    for r in FrameReader::parse(&upload).map_err(e)?.records() {
        let Record::Pattern(p) = r.map_err(e)? else {
            continue;
        };
        if p.id == id(CONFLICT).map_err(e)? {
            let srv = cb.quantize(&row(rows, SERVER_ROW).map_err(e)?);
            let len = cb.encode(&srv, None, &mut code).map_err(e)?;
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
            .map_err(e)?;
        } else {
            w.push(&Record::Ack(Ack {
                id: p.id.clone(),
                revision: ACK_REV,
            }))
            .map_err(e)?;
        }
    }
    w.push(&Record::GlobalRemove(GlobalRemove {
        id: GLOBAL_REMOVED,
        version: VERSIONS[0],
    }))
    .map_err(e)?;
    for (k, &(gid, r)) in GLOBAL_ROWS.iter().enumerate() {
        let g = cb.quantize(&row(rows, r).map_err(e)?);
        let len = cb.encode(&g, None, &mut code).map_err(e)?;
        w.push(&Record::GlobalUpsert(GlobalUpsert {
            id: gid,
            version: VERSIONS[1 + k],
            success_rate: 0.85,
            sample_count: 1_000,
            contributors: 12,
            category: category(r).map_err(e)?,
            code: &code[..len],
        }))
        .map_err(e)?;
    }
    for k in 0..2 {
        w.push(&Record::Trend(TrendRecord {
            version: VERSIONS[3 + k],
            signal: trend(k).map_err(e)?,
        }))
        .map_err(e)?;
    }
    let response = w.finish().map_err(e)?.to_vec();

    // The server signs its answer for the counter the request carried.
    let key = omega_tv_sync::DeviceKey::new(DEVICE_KEY);
    let sig =
        omega_tv_sync::transport::auth::sign_response(&key, c.auth_counter() - 1, 200, &response)
            .map_err(e)?;
    let mut sig_buf = [0u8; 64];
    let response_sig =
        omega_tv_sync::transport::auth::format_response_header(&sig, &mut sig_buf).to_string();
    let r = Response {
        status: 200,
        body_len: response.len(),
        retry_after_s: None,
        signature: Some(sig),
    };
    match c.apply(&upload, r, &response, NOW_MS, &mut ()) {
        Ok(Outcome::Synced(s)) if s.acked as usize == PATTERNS - 1 => {}
        other => return Err(format!("host apply: {other:?}")),
    }
    let mut snap = vec![0u8; SyncClient::<N>::MAX_SNAPSHOT_LEN];
    let sn = c.snapshot(&mut snap).map_err(e)?;
    snap.truncate(sn);
    Ok(Recorded {
        upload,
        auth,
        response,
        response_sig,
        snapshot: snap,
    })
}

fn header() -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "/* Generated by `cargo run -p omega-tv-sync-ffi --example fixtures`: the sync\n \
         * cycle of examples/cortex-m/src/scenario.rs as the host's Rust client ran it. */"
    );
    let _ = writeln!(w, "#ifndef OTS_FIXTURES_H\n#define OTS_FIXTURES_H\n");
    let _ = writeln!(w, "#include <stddef.h>\n#include <stdint.h>\n");
    let _ = writeln!(w, "#define FX_ROWS {ROWS}");
    let _ = writeln!(w, "#define FX_SLOTS {N}");
    let _ = writeln!(w, "#define FX_PATTERNS {PATTERNS}");
    let _ = writeln!(w, "#define FX_CONFLICT {CONFLICT}");
    let _ = writeln!(w, "#define FX_SERVER_ROW {SERVER_ROW}");
    let _ = writeln!(w, "#define FX_SERVER_REV {SERVER_REV}u");
    let _ = writeln!(w, "#define FX_ACK_REV {ACK_REV}u");
    let _ = writeln!(w, "#define FX_GLOBAL_REMOVED {GLOBAL_REMOVED}u");
    let _ = writeln!(w, "#define FX_GLOBAL_VERSION {GLOBAL_VERSION}ull");
    let _ = writeln!(w, "#define FX_NEXT_SYNC_S {NEXT_SYNC_S}u");
    let _ = writeln!(w, "#define FX_NOW_MS {NOW_MS}ull");
    let _ = writeln!(w, "#define FX_RATE 0.9f");
    let _ = writeln!(w, "#define FX_SAMPLES_BASE 30u");
    let _ = writeln!(w, "#define FX_DEVICE_ID \"stb-qemu-mps2-an386\"");
    let key: String = DEVICE_KEY.iter().map(|b| format!("{b:02x}")).collect();
    let _ = writeln!(w, "#define FX_DEVICE_KEY_HEX \"{key}\"");
    let _ = writeln!(
        w,
        "\n/* Global patterns of the response: ids and the rows they were quantised from. */"
    );
    let _ = writeln!(
        w,
        "static const uint32_t FX_GLOBAL_IDS[2] = {{{}, {}}};",
        GLOBAL_ROWS[0].0, GLOBAL_ROWS[1].0
    );
    let _ = writeln!(
        w,
        "static const uint32_t FX_GLOBAL_ROW[2] = {{{}, {}}};",
        GLOBAL_ROWS[0].1, GLOBAL_ROWS[1].1
    );
    let _ = writeln!(
        w,
        "/* Versions: the removal, the two upserts, the two trends. */\nstatic const uint64_t FX_VERSIONS[5] = {{{}}};",
        VERSIONS.map(|v| format!("{v}ull")).join(", ")
    );
    let _ = writeln!(w, "\n/* The trend signals of the response. */");
    let mut ids = Vec::new();
    let mut scores = Vec::new();
    let mut regions = Vec::new();
    let mut cats = Vec::new();
    let mut at = Vec::new();
    for k in 0..2 {
        let t = trend(k).unwrap_or_else(|e| panic!("trend {k}: {e}"));
        ids.push(format!("\"{}\"", t.content_id.as_str()));
        scores.push(format!("{:?}f", t.score));
        regions.push(format!("\"{}\"", t.region.as_str()));
        cats.push(format!("\"{}\"", t.category.as_str()));
        at.push(format!("{}ull", t.calculated_at));
    }
    let _ = writeln!(
        w,
        "static const char *const FX_TREND_CONTENT[2] = {{{}}};",
        ids.join(", ")
    );
    let _ = writeln!(
        w,
        "static const float FX_TREND_SCORE[2] = {{{}}};",
        scores.join(", ")
    );
    let _ = writeln!(
        w,
        "static const char *const FX_TREND_REGION[2] = {{{}}};",
        regions.join(", ")
    );
    let _ = writeln!(
        w,
        "static const char *const FX_TREND_CATEGORY[2] = {{{}}};",
        cats.join(", ")
    );
    let _ = writeln!(
        w,
        "static const uint64_t FX_TREND_AT[2] = {{{}}};",
        at.join(", ")
    );
    let _ = writeln!(
        w,
        "\n/* Real pattern rows (little-endian f32 as floats, 16 x 384). */"
    );
    let _ = writeln!(w, "extern const float fx_rows[FX_ROWS][384];");
    let _ = writeln!(
        w,
        "\n/* What the host recorded for one codebook profile. */\ntypedef struct {{\n    const uint8_t *upload;\n    size_t upload_len;\n    const char *auth;\n    const uint8_t *response;\n    size_t response_len;\n    const uint8_t *snapshot;\n    size_t snapshot_len;\n    const char *response_sig;\n}} fx_recorded_t;\n"
    );
    let _ = writeln!(w, "extern const fx_recorded_t fx_v1;");
    let _ = writeln!(w, "extern const fx_recorded_t fx_small;");
    let _ = writeln!(w, "\n#endif");
    s
}

fn bytes_c(name: &str, b: &[u8], s: &mut String) {
    let _ = writeln!(s, "static const uint8_t {name}[{}] = {{", b.len());
    for chunk in b.chunks(16) {
        let line: Vec<String> = chunk.iter().map(|x| format!("0x{x:02x}")).collect();
        let _ = writeln!(s, "    {},", line.join(", "));
    }
    let _ = writeln!(s, "}};");
}

fn source(rows: &[u8], v1: &Recorded, small: &Recorded) -> Result<String, String> {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "/* Generated by `cargo run -p omega-tv-sync-ffi --example fixtures`. */\n#include \"fixtures.h\"\n"
    );
    let _ = writeln!(s, "const float fx_rows[FX_ROWS][384] = {{");
    for r in rows.chunks_exact(DIM * 4) {
        let vals: Vec<String> = r
            .chunks_exact(4)
            .map(|c| format!("{:e}f", f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let _ = writeln!(s, "    {{{}}},", vals.join(", "));
    }
    let _ = writeln!(s, "}};\n");
    for (tag, r) in [("v1", v1), ("small", small)] {
        bytes_c(&format!("{tag}_upload"), &r.upload, &mut s);
        bytes_c(&format!("{tag}_response"), &r.response, &mut s);
        bytes_c(&format!("{tag}_snapshot"), &r.snapshot, &mut s);
        if !r.auth.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err("unexpected Authorization value".into());
        }
        let _ = writeln!(
            s,
            "const fx_recorded_t fx_{tag} = {{\n    {tag}_upload, sizeof {tag}_upload,\n    \"{}\",\n    {tag}_response, sizeof {tag}_response,\n    {tag}_snapshot, sizeof {tag}_snapshot,\n    \"{}\",\n}};\n",
            r.auth, r.response_sig
        );
    }
    Ok(s)
}
