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
//!     [--max-batch 1024]
//! ```
//!
//! With `--postgres postgres://USER@HOST:PORT/DB` (an empty database) the
//! same run also drives a node on that PostgreSQL database.

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

/// Versions in each pattern's drift chain (the chain wraps around).
const CHAIN: usize = 8;

struct Args {
    clients: usize,
    seconds: f64,
    patterns: usize,
    changed: usize,
    aggregate_ms: u64,
    postgres: Option<String>,
    max_batch: usize,
}

fn args() -> Args {
    let mut a = Args {
        clients: 32,
        seconds: 5.0,
        patterns: 16,
        changed: 5,
        aggregate_ms: 1000,
        postgres: None,
        max_batch: 1024,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < argv.len() {
        let v = &argv[i + 1];
        match argv[i].as_str() {
            "--clients" => a.clients = v.parse().unwrap_or(a.clients),
            "--seconds" => a.seconds = v.parse().unwrap_or(a.seconds),
            "--patterns" => a.patterns = v.parse().unwrap_or(a.patterns),
            "--changed" => a.changed = v.parse().unwrap_or(a.changed),
            "--aggregate-ms" => a.aggregate_ms = v.parse().unwrap_or(a.aggregate_ms),
            "--postgres" => a.postgres = Some(v.clone()),
            "--max-batch" => a.max_batch = v.parse().unwrap_or(a.max_batch),
            other => eprintln!("ignoring {other}"),
        }
        i += 2;
    }
    a.patterns = a.patterns.clamp(1, 64);
    a.changed = a.changed.clamp(1, a.patterns);
    a
}

/// Per pattern: the absolute code of version 0 and the closed-loop deltas
/// version i -> i+1 (mod CHAIN), each pattern drifting by "+1 watched item".
struct Chains {
    absolute: Vec<Vec<u8>>,
    deltas: Vec<Vec<Vec<u8>>>,
}

fn chains(book: &Codebook<'_>, patterns: &[Row], items: &[Row], n: usize, offset: usize) -> Chains {
    let mut absolute = Vec::new();
    let mut deltas = Vec::new();
    for j in 0..n {
        let mut rows = vec![patterns[(offset + j * 37) % patterns.len()]];
        for i in 1..CHAIN {
            let item = &items[(7 * (j * CHAIN + i) + 3) % items.len()];
            rows.push(drift(&rows[i - 1], item, 10.0));
        }
        let codes: Vec<Codes> = rows
            .iter()
            .map(|r| book.quantize(&Embedding::new(*r).expect("unit row")))
            .collect();
        absolute.push(encode(book, &codes[0], None));
        deltas.push(
            (0..CHAIN)
                .map(|i| encode(book, &codes[(i + 1) % CHAIN], Some(&codes[i])))
                .collect(),
        );
    }
    Chains { absolute, deltas }
}

fn encode(book: &Codebook<'_>, c: &Codes, base: Option<&Codes>) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_CODED_LEN];
    let n = book.encode(c, base, &mut buf).expect("encode");
    buf.truncate(n);
    buf
}

fn caps() -> Caps {
    Caps {
        max_globals: 64,
        max_trends: 32,
        max_bytes: 64 * 1024,
    }
}

/// (pattern index, base revision, coding, code)
type Item<'a> = (usize, u32, Coding, &'a [u8]);

fn frame(codebook: u32, seq: u64, since: u64, items: &[Item<'_>], out: &mut Vec<u8>) {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_UPLOAD_FRAME]);
    }
    SCRATCH.with(|s| frame_in(&mut s.borrow_mut(), codebook, seq, since, items, out));
}

fn frame_in(
    scratch: &mut [u8],
    codebook: u32,
    seq: u64,
    since: u64,
    items: &[Item<'_>],
    out: &mut Vec<u8>,
) {
    let names: Vec<String> = items.iter().map(|(j, ..)| format!("p{j}")).collect();
    let mut w = FrameWriter::new(scratch, Kind::Upload, codebook).expect("buffer");
    w.push(&Record::UploadHead(UploadHead {
        seq,
        since,
        caps: caps(),
    }))
    .expect("head");
    for ((_, base_rev, coding, code), name) in items.iter().zip(&names) {
        w.push(&Record::Pattern(PatternUpdate {
            id: PatternId::new(name).expect("id"),
            base_rev: *base_rev,
            success_rate: 0.8,
            sample_count: 20,
            category: Category::new("drama").expect("category"),
            coding: *coding,
            code,
        }))
        .expect("record");
    }
    let f = w.finish().expect("finish");
    out.clear();
    out.extend_from_slice(f);
}

/// One simulated device: its id, sequence, revisions and chain positions.
struct Device {
    id: String,
    seq: u64,
    since: u64,
    revs: Vec<u32>,
    pos: Vec<usize>,
    step: usize,
}

impl Device {
    fn new(i: usize, patterns: usize) -> Self {
        Device {
            id: format!("bench-{i}"),
            seq: 0,
            since: 0,
            revs: vec![0; patterns],
            pos: vec![0; patterns],
            step: 0,
        }
    }

    fn initial(&mut self, codebook: u32, ch: &Chains, out: &mut Vec<u8>) {
        self.seq += 1;
        let items: Vec<Item<'_>> = ch
            .absolute
            .iter()
            .enumerate()
            .map(|(j, c)| (j, 0, Coding::Absolute, c.as_slice()))
            .collect();
        frame(codebook, self.seq, self.since, &items, out);
    }

    fn next(
        &mut self,
        codebook: u32,
        ch: &Chains,
        changed: usize,
        out: &mut Vec<u8>,
    ) -> Vec<usize> {
        self.seq += 1;
        let n = self.revs.len();
        let js: Vec<usize> = (0..changed)
            .map(|t| (self.step * changed + t) % n)
            .collect();
        self.step += 1;
        let items: Vec<Item<'_>> = js
            .iter()
            .map(|&j| {
                (
                    j,
                    self.revs[j],
                    Coding::Delta,
                    ch.deltas[j][self.pos[j]].as_slice(),
                )
            })
            .collect();
        frame(codebook, self.seq, self.since, &items, out);
        js
    }

    /// Takes the response's global version as the new cursor.
    fn cursor(&mut self, resp: &[u8]) {
        let head = omega_tv_sync::wire::FrameReader::parse(resp)
            .ok()
            .and_then(|f| f.records().next())
            .and_then(|r| r.ok());
        if let Some(Record::DownloadHead(h)) = head {
            self.since = h.global_version;
        }
    }

    fn acked(&mut self, js: &[usize]) {
        for &j in js {
            self.revs[j] += 1;
            self.pos[j] = (self.pos[j] + 1) % CHAIN;
        }
    }

    fn acked_all(&mut self) {
        for r in self.revs.iter_mut() {
            *r += 1;
        }
    }
}

async fn post(t: &mut HttpTransport, dev: &Device, body: &[u8], buf: &mut [u8]) -> (u16, usize) {
    let since = dev.since.to_string();
    let headers = [
        ("X-Device-ID", dev.id.as_str()),
        ("X-Sync-Version", since.as_str()),
    ];
    match t
        .send(
            Request {
                method: Method::Post,
                path: "/api/v1/sync",
                headers: &headers,
                body,
            },
            buf,
        )
        .await
    {
        Ok(r) => (r.status, r.body_len),
        Err(e) => {
            eprintln!("{}: {e}", dev.id);
            (0, 0)
        }
    }
}

#[derive(Default)]
struct RunResult {
    syncs: u64,
    errors: u64,
    up: u64,
    down: u64,
    lat_us: Vec<u32>,
    elapsed: f64,
}

/// Drives `url` with `clients` devices for `seconds` after their initial upload.
async fn drive(url: &str, a: &Args, ch: &Arc<Vec<Chains>>, codebook: u32) -> RunResult {
    let mut tasks = Vec::new();
    let deadline_after = Duration::from_secs_f64(a.seconds);
    let start_gate = Arc::new(tokio::sync::Barrier::new(a.clients));
    for c in 0..a.clients {
        let url = url.to_string();
        let ch = ch.clone();
        let gate = start_gate.clone();
        let (patterns, changed) = (a.patterns, a.changed);
        tasks.push(tokio::spawn(async move {
            let ch = &ch[c % ch.len()];
            let mut t = HttpTransport::new(&url).expect("url");
            let mut dev = Device::new(c, patterns);
            let mut body = Vec::new();
            let mut buf = vec![0u8; 1 << 20];
            dev.initial(codebook, ch, &mut body);
            let (s, _) = post(&mut t, &dev, &body, &mut buf).await;
            if s == 200 {
                dev.acked_all();
            }
            gate.wait().await;
            // Everyone starts at the current global version: a steady-state sync.
            let v = t
                .send(
                    Request {
                        method: Method::Get,
                        path: "/api/v1/sync/version",
                        headers: &[],
                        body: &[],
                    },
                    &mut buf,
                )
                .await
                .map(|r| r.body_len)
                .unwrap_or(0);
            dev.since = std::str::from_utf8(&buf[..v])
                .ok()
                .and_then(|s| s.split(':').nth(1))
                .and_then(|s| s.trim_end_matches('}').trim().parse().ok())
                .unwrap_or(0);
            let mut r = RunResult::default();
            let started = Instant::now();
            while started.elapsed() < deadline_after {
                let js = dev.next(codebook, ch, changed, &mut body);
                let t0 = Instant::now();
                let (s, n) = post(&mut t, &dev, &body, &mut buf).await;
                r.lat_us.push(t0.elapsed().as_micros() as u32);
                if s == 200 {
                    dev.acked(&js);
                    dev.cursor(&buf[..n]);
                    r.syncs += 1;
                    r.up += body.len() as u64;
                    r.down += n as u64;
                } else {
                    r.errors += 1;
                    dev.seq -= 1;
                    if r.errors > 1000 {
                        break;
                    }
                }
            }
            r.elapsed = started.elapsed().as_secs_f64();
            r
        }));
    }
    let mut total = RunResult::default();
    for t in tasks {
        if let Ok(r) = t.await {
            total.syncs += r.syncs;
            total.errors += r.errors;
            total.up += r.up;
            total.down += r.down;
            total.lat_us.extend(r.lat_us);
            total.elapsed = total.elapsed.max(r.elapsed);
        }
    }
    total.lat_us.sort_unstable();
    total
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
    cfg.aggregate.interval = Duration::from_millis(a.aggregate_ms.max(1));
    // Its clients send hand-made frames without signatures: this measures
    // the sync path itself (one HMAC per request is not the bottleneck).
    cfg.auth = constellation::AuthConfig::disabled();
    let srv = Server::start(cfg.clone()).await.expect("server");

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
    let real = drive(&srv.url(), &a, &ch, codebook).await;
    let (commits0, items0) = srv.state().store.commit_stats();
    let bare_r = drive(&format!("http://{bare}"), &a, &ch, codebook).await;
    // The same load on a PostgreSQL node (give an empty database: device
    // ids repeat from run to run).
    let pg = match &a.postgres {
        Some(url) => {
            let mut c = cfg.clone();
            c.db = None;
            c.postgres = vec![url.clone()];
            let node = Server::start(c).await.expect("postgres server");
            let r = drive(&node.url(), &a, &ch, codebook).await;
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
}
