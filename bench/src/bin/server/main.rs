//! Server throughput and bytes per sync, on real vectors.
//!
//! Runs the real Constellation server (redb in a temp dir, group commit,
//! background aggregation) and, in the same run, a bare axum handler that
//! answers every sync with the same bytes the real server sent; drives both
//! with the same concurrent keep-alive clients on loopback for a bounded
//! time; prints a table and the ratio. Then prints bytes per sync up and
//! down for typical syncs.
//!
//! ```text
//! cargo run --release -p omega-tv-sync-bench --bin server -- [--clients 32] [--seconds 5]
//!     [--patterns 16] [--changed 5] [--aggregate-ms 1000] [--postgres URL]
//!     [--max-batch 1024] [--attack]
//!     [--postgres URL2 --serve-bin target/release/constellation]
//! ```
//!
//! With `--attack` it measures only the fleet under attack (`attack.rs`):
//! the same server, fleet syncs/s without and then with 20 concurrent
//! `limit=0` feed requests at random `since`, 400 idle and 50 trickling
//! connections, the ratio, and the process's peak RSS.
//!
//! With `--postgres postgres://USER@HOST:PORT/DB` (an empty database) the
//! same run also drives a node on that PostgreSQL database. With
//! `--serve-bin` (the `constellation` binary) it then runs nodes as
//! processes of their own, so that their CPU can be read from `/proc`: 1
//! node and 2 nodes on the first database, and with a second `--postgres`
//! (another empty database, ideally on another cluster) 2 nodes on the two
//! databases (`--db` twice). Each prints syncs/s, the nodes' CPU per sync
//! and the CPU per sync of the PostgreSQL servers behind the URLs' ports
//! (postmaster and its children).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;

use constellation::{Config, Server};
use omega_tv_sync::codec::{minilm_v1, Codebook, Codes, MAX_CODED_LEN};
use omega_tv_sync::wire::{
    Caps, Coding, FrameWriter, Kind, PatternUpdate, Record, UploadHead, MAX_UPLOAD_FRAME,
};
use omega_tv_sync::{Category, Embedding, Method, PatternId, Request, Transport};
use omega_tv_sync_bench::data::{data_dir, drift, read_rows, Row};
use omega_tv_sync_http::HttpTransport;

mod attack;
mod load;
mod nodes;
use load::*;

/// Versions in each pattern's drift chain (the chain wraps around).
const CHAIN: usize = 8;

struct Args {
    clients: usize,
    seconds: f64,
    patterns: usize,
    changed: usize,
    aggregate_ms: u64,
    postgres: Vec<String>,
    max_batch: usize,
    attack: bool,
    serve_bin: Option<std::path::PathBuf>,
    /// First device id of a run (runs on one database use distinct ids).
    id_base: usize,
}

fn args() -> Args {
    let mut a = Args {
        clients: 32,
        seconds: 5.0,
        patterns: 16,
        changed: 5,
        aggregate_ms: 1000,
        postgres: Vec::new(),
        max_batch: 1024,
        attack: false,
        serve_bin: None,
        id_base: 0,
    };
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = argv.iter().position(|s| s == "--attack") {
        a.attack = true;
        argv.remove(i);
    }
    let mut i = 0;
    while i + 1 < argv.len() {
        let v = &argv[i + 1];
        match argv[i].as_str() {
            "--clients" => a.clients = v.parse().unwrap_or(a.clients),
            "--seconds" => a.seconds = v.parse().unwrap_or(a.seconds),
            "--patterns" => a.patterns = v.parse().unwrap_or(a.patterns),
            "--changed" => a.changed = v.parse().unwrap_or(a.changed),
            "--aggregate-ms" => a.aggregate_ms = v.parse().unwrap_or(a.aggregate_ms),
            "--postgres" => a.postgres.push(v.clone()),
            "--serve-bin" => a.serve_bin = Some(v.into()),
            "--max-batch" => a.max_batch = v.parse().unwrap_or(a.max_batch),
            other => eprintln!("ignoring {other}"),
        }
        i += 2;
    }
    a.patterns = a.patterns.clamp(1, 64);
    a.changed = a.changed.clamp(1, a.patterns);
    a
}

fn pct(v: &[u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    f64::from(v[i.min(v.len() - 1)]) / 1000.0
}

async fn bare_server(reply: Vec<u8>) -> SocketAddr {
    let reply = Bytes::from(reply);
    let app = axum::Router::new().route(
        "/api/v1/sync",
        axum::routing::post(move |_body: Bytes| {
            let r = reply.clone();
            async move { r }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    addr
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(a));
}

async fn run(a: Args) {
    let dir = data_dir();
    let patterns = read_rows(&dir.join("patterns_public.f32")).expect("patterns");
    let items = read_rows(&dir.join("items_public.f32")).expect("items");
    let book = minilm_v1().expect("codebook");
    let codebook = book.id();
    // Eight distinct pattern sets; clients share them eight ways, so the
    // aggregation sees >= k devices per pattern and publishes.
    let ch: Arc<Vec<Chains>> = Arc::new(
        (0..8)
            .map(|s| chains(&book, &patterns, &items, a.patterns, s * 101))
            .collect(),
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = Config::new();
    cfg.db = Some(tmp.path().join("bench.redb"));
    cfg.max_batch = a.max_batch.max(1);
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.codebooks = constellation::codebooks::default_codebooks();
    cfg.min_sync_interval_s = 0; // load clients sync back to back
    cfg.aggregate.interval = Duration::from_millis(a.aggregate_ms.max(1));
    // Its clients send hand-made frames without signatures: this measures
    // the sync path itself (one HMAC per request is not the bottleneck).
    cfg.auth = constellation::AuthConfig::disabled();
    let srv = Server::start(cfg.clone()).await.expect("server");
    if a.attack {
        attack::run(&a, &srv, &ch, codebook).await;
        srv.shutdown().await;
        return;
    }

    // A representative response of the real server, for the bare handler.
    let fixture = {
        let mut t = HttpTransport::new(&srv.url()).expect("url");
        let mut dev = Device::new(100_000, a.patterns);
        let mut body = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        dev.initial(codebook, &ch[0], &mut body);
        let (_, n) = post(&mut t, &dev, &body, &mut buf).await;
        dev.acked_all();
        dev.cursor(&buf[..n]);
        let js = dev.next(codebook, &ch[0], a.changed, &mut body);
        let (_, n) = post(&mut t, &dev, &body, &mut buf).await;
        let _ = js;
        buf[..n].to_vec()
    };
    let bare = bare_server(fixture.clone()).await;

    println!(
        "server throughput: {} clients (keep-alive), {} patterns per device, {} changed per sync (closed-loop deltas on real vectors), {} s per server",
        a.clients, a.patterns, a.changed, a.seconds
    );
    let real = drive(&srv.url(), &a, &ch, codebook, 0).await;
    let (commits0, items0) = srv.state().store.commit_stats();
    let bare_r = drive(&format!("http://{bare}"), &a, &ch, codebook, 0).await;
    // The same load on a PostgreSQL node (give an empty database: device
    // ids repeat from run to run).
    let pg = match a.postgres.first() {
        Some(url) => {
            let mut c = cfg.clone();
            c.db = None;
            c.postgres = vec![url.clone()];
            let node = Server::start(c).await.expect("postgres server");
            let r = drive(&node.url(), &a, &ch, codebook, 0).await;
            let stats = node.state().store.commit_stats();
            node.shutdown().await;
            Some((r, stats))
        }
        None => None,
    };
    let rate = |r: &RunResult| r.syncs as f64 / r.elapsed.max(1e-9);
    println!();
    println!("| server | syncs/s | p50 ms | p99 ms | up B/sync | down B/sync | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = vec![
        ("constellation (redb, group commit, aggregation on)", &real),
        ("bare axum handler, same response bytes", &bare_r),
    ];
    if let Some((r, _)) = &pg {
        rows.push(("constellation (PostgreSQL, 1 node, aggregation on)", r));
    }
    for (name, r) in rows {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {} |",
            rate(r),
            pct(&r.lat_us, 0.5),
            pct(&r.lat_us, 0.99),
            r.up as f64 / r.syncs.max(1) as f64,
            r.down as f64 / r.syncs.max(1) as f64,
            r.errors
        );
    }
    println!();
    println!(
        "ratio constellation / bare: {:.3} ({:.1}x slower); group commits: {} for {} writes (mean group {:.1})",
        rate(&real) / rate(&bare_r).max(1e-9),
        rate(&bare_r) / rate(&real).max(1e-9),
        commits0,
        items0,
        items0 as f64 / commits0.max(1) as f64
    );
    if let Some((r, (commits, items))) = &pg {
        println!(
            "ratio PostgreSQL / redb: {:.3}; PostgreSQL transactions: {} for {} writes (mean group {:.1})",
            rate(r) / rate(&real).max(1e-9),
            commits,
            items,
            *items as f64 / (*commits).max(1) as f64
        );
    }

    // Bytes per sync for typical syncs, on a fresh device.
    println!();
    println!("bytes per sync (real vectors, minilm-v1; frame = header + records + CRC):");
    println!();
    println!("| sync | up bytes | down bytes | up bytes/pattern |");
    println!("|---|---:|---:|---:|");
    let mut t = HttpTransport::new(&srv.url()).expect("url");
    let mut buf = vec![0u8; 1 << 20];
    let mut body = Vec::new();
    let full = 64usize;
    let ch64 = chains(&book, &patterns, &items, full, 7);
    let mut dev = Device::new(200_000, full);
    dev.initial(codebook, &ch64, &mut body);
    let (s, n) = post(&mut t, &dev, &body, &mut buf).await;
    assert_eq!(s, 200, "initial upload");
    dev.acked_all();
    dev.cursor(&buf[..n]);
    println!(
        "| first sync, {full} patterns absolute | {} | {n} | {:.1} |",
        body.len(),
        body.len() as f64 / full as f64
    );
    for changed in [1usize, 5, 20] {
        let js = dev.next(codebook, &ch64, changed, &mut body);
        let (s, n) = post(&mut t, &dev, &body, &mut buf).await;
        assert_eq!(s, 200);
        dev.acked(&js);
        dev.cursor(&buf[..n]);
        println!(
            "| {changed} changed, closed-loop delta | {} | {n} | {:.1} |",
            body.len(),
            body.len() as f64 / changed as f64
        );
    }
    let _ = srv.aggregate_now().await;
    let mut req_buf = vec![0u8; 1 << 20];
    let feed = t
        .send(
            Request {
                method: Method::Get,
                path: "/api/v1/global?since=0&limit=1000",
                headers: &[],
                body: &[],
            },
            &mut req_buf,
        )
        .await
        .expect("feed");
    let globals = omega_tv_sync::wire::FrameReader::parse(&req_buf[..feed.body_len])
        .map(|f| {
            f.records()
                .filter(|r| matches!(r, Ok(Record::GlobalUpsert(_))))
                .count()
        })
        .unwrap_or(0);
    let trends = omega_tv_sync::wire::FrameReader::parse(&req_buf[..feed.body_len])
        .map(|f| {
            f.records()
                .filter(|r| matches!(r, Ok(Record::Trend(_))))
                .count()
        })
        .unwrap_or(0);
    println!(
        "| global feed since 0: {globals} global patterns + {trends} trends | 0 | {} | |",
        feed.body_len
    );
    srv.shutdown().await;
    if let (Some(bin), Some(_)) = (&a.serve_bin, a.postgres.first()) {
        nodes::run(&a, bin, &ch, codebook).await;
    }
}
