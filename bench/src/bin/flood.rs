//! Flood figures (`docs/reliability.md`): the real server (redb file,
//! authentication on, default pattern quota 1,024, default lone-aggregate
//! and per-category bounds) on 127.0.0.1 in this process, once in the exact
//! mode (`--no-dp`) and once in the default differentially private mode.
//! One enrolled device uploads 64 fresh random-id real patterns (MiniLM
//! patterns and catalogue items through the real codec) per sync for
//! `--syncs` syncs, while 5 honest enrolled devices sharing one pattern sync
//! after every flood sync. The minimum sync interval is 0 (off) so the run
//! takes seconds instead of hours; aggregation runs every
//! `--aggregate-ms` (default 1,000, the server's default).
//!
//! Prints, every few flood syncs: the flooder's stored pattern ids, its
//! refused uploads, the aggregates stored (and how many the flooder holds
//! alone), the process's RSS (`VmRSS`, `VmHWM`; server and clients share
//! the process) and the database file's size; then when the honest group's
//! global was published (exact mode).
//!
//! `cargo run --release -p omega-tv-sync-bench --bin flood [-- --syncs N]`

/// The `constellation` binary's allocator, so that the server in this
/// process runs as it is deployed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use constellation::store::{self, Meta};
use constellation::{AuthConfig, Config, MasterSecret, Server, ServerHandle};
use omega_tv_sync::codec::{minilm_v1, Codebook, Codes};
use omega_tv_sync::transport::auth::{format_header, sign, HEADER_MAX};
use omega_tv_sync::wire::{
    Caps, Coding, FrameWriter, Kind, PatternUpdate, Record, UploadHead, MAX_UPLOAD_FRAME,
};
use omega_tv_sync::{Category, DeviceKey, Embedding, Method, PatternId, Request, Transport};
use omega_tv_sync_bench::procfs::status_kib;
use omega_tv_sync_http::HttpTransport;
use omega_tv_sync_testkit::data::rows;

/// Patterns per flood sync (the most one upload carries).
const PER_SYNC: usize = 64;

struct Args {
    syncs: usize,
    every: usize,
    aggregate_ms: u64,
}

fn args() -> Args {
    let mut a = Args {
        syncs: 48,
        every: 4,
        aggregate_ms: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().and_then(|v| v.parse::<u64>().ok());
        match (k.as_str(), v) {
            ("--syncs", Some(v)) => a.syncs = v as usize,
            ("--every", Some(v)) => a.every = (v as usize).max(1),
            ("--aggregate-ms", Some(v)) => a.aggregate_ms = v.max(1),
            _ => {
                eprintln!("usage: flood [--syncs N] [--every N] [--aggregate-ms MS]");
                std::process::exit(2);
            }
        }
    }
    a
}

/// An enrolled device signing its requests.
struct Dev {
    id: String,
    key: DeviceKey,
    counter: u64,
    seq: u64,
    t: HttpTransport,
}

impl Dev {
    async fn new(srv: &ServerHandle, id: &str) -> Dev {
        Dev {
            id: id.to_string(),
            key: srv.enrol(id).await.expect("enrol"),
            counter: 0,
            seq: 0,
            t: HttpTransport::new(&srv.url()).expect("url"),
        }
    }

    /// Uploads `items` (id, codes, samples) as a new sequence; the status.
    async fn sync(&mut self, book: &Codebook<'_>, items: &[(String, Codes, u32)]) -> u16 {
        self.seq += 1;
        self.counter += 1;
        let body = upload(book, self.seq, items);
        let sig = sign(
            &self.key,
            "POST",
            "/api/v1/sync",
            &self.id,
            self.counter,
            &body,
        )
        .expect("sign");
        let mut hb = [0u8; HEADER_MAX];
        let auth = format_header(self.counter, &sig, &mut hb).to_string();
        let headers = [
            ("X-Device-ID", self.id.as_str()),
            ("X-Sync-Version", "0"),
            ("Authorization", auth.as_str()),
        ];
        let mut buf = vec![0u8; 1 << 20];
        let req = Request {
            method: Method::Post,
            path: "/api/v1/sync",
            headers: &headers,
            body: &body,
        };
        match self.t.send(req, &mut buf).await {
            Ok(r) => r.status,
            Err(_) => 0,
        }
    }
}

fn upload(book: &Codebook<'_>, seq: u64, items: &[(String, Codes, u32)]) -> Vec<u8> {
    let coded: Vec<Vec<u8>> = items
        .iter()
        .map(|(_, c, _)| {
            let mut b = vec![0u8; omega_tv_sync::codec::MAX_CODED_LEN];
            let n = book.encode(c, None, &mut b).expect("encode");
            b.truncate(n);
            b
        })
        .collect();
    let mut buf = vec![0u8; MAX_UPLOAD_FRAME];
    let mut w = FrameWriter::new(&mut buf, Kind::Upload, book.id()).expect("frame");
    w.push(&Record::UploadHead(UploadHead {
        seq,
        since: 0,
        caps: Caps {
            max_globals: 64,
            max_trends: 64,
            max_bytes: 256 * 1024,
        },
    }))
    .expect("head");
    for ((id, _, n), code) in items.iter().zip(&coded) {
        w.push(&Record::Pattern(PatternUpdate {
            id: PatternId::new(id).expect("id"),
            base_rev: 0,
            success_rate: 0.8,
            sample_count: *n,
            category: Category::new("drama").expect("category"),
            coding: Coding::Absolute,
            code,
        }))
        .expect("pattern");
    }
    w.finish().expect("finish").to_vec()
}

/// splitmix64.
fn next(z: &mut u64) -> u64 {
    *z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut x = *z;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn file_kib(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len() / 1024)
}

async fn run(mode: &str, dp: bool, a: &Args, codes: &[Codes], book: &Codebook<'_>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("flood.redb");
    let mut cfg = Config::new();
    cfg.db = Some(db.clone());
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.codebooks = constellation::codebooks::default_codebooks();
    cfg.auth = AuthConfig::with_master(MasterSecret::from_bytes([0x5a; 32]));
    // Off so the run takes seconds: the flooder and the honest devices
    // sync back to back.
    cfg.min_sync_interval_s = 0;
    cfg.aggregate.interval = Duration::from_millis(a.aggregate_ms);
    if !dp {
        cfg.aggregate.dp = constellation::aggregate::dp::DpConfig::disabled();
    }
    let quota = cfg.max_patterns_per_device;
    let lone_max = cfg.aggregate.max_lone_per_device;
    let srv = Server::start(cfg).await.expect("server");
    let mut flooder = Dev::new(&srv, "tv-flood").await;
    let mut honest = Vec::new();
    for i in 0..5 {
        honest.push(Dev::new(&srv, &format!("tv-honest-{i}")).await);
    }
    let shared = codes[codes.len() - 1];
    println!();
    println!(
        "{mode}: quota {quota} ids per device, at most {lone_max} lone aggregates per device (exact mode), \
         {PER_SYNC} fresh ids per flood sync, aggregation every {} ms, min sync interval 0",
        a.aggregate_ms
    );
    println!();
    println!("| flood syncs | ids sent | stored ids (flooder) | refused syncs | aggregates | held alone by flooder | published | VmRSS MiB | VmHWM MiB | db file KiB | s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let start = Instant::now();
    let mut z = 0xF100_D5EE_D000_0001u64;
    let (mut sent, mut refused) = (0usize, 0usize);
    let mut honest_published: Option<Duration> = None;
    for s in 1..=a.syncs {
        let items: Vec<(String, Codes, u32)> = (0..PER_SYNC)
            .map(|_| {
                let r = next(&mut z);
                let id = format!("f{:012x}", r >> 16);
                (id, codes[(r % (codes.len() as u64 - 1)) as usize], 20)
            })
            .collect();
        sent += items.len();
        let st = flooder.sync(book, &items).await;
        if st != 200 {
            refused += 1;
        }
        for (i, h) in honest.iter_mut().enumerate() {
            let st = h
                .sync(
                    book,
                    &[("mine".to_string(), shared, 20 + s as u32 + i as u32)],
                )
                .await;
            assert_eq!(st, 200, "honest sync");
        }
        if !dp && honest_published.is_none() {
            let aggs = store::read(&*srv.state().store, |t| t.aggregates()).expect("read");
            if aggs.iter().any(|(_, a)| {
                a.published
                    && a.devices
                        .keys()
                        .filter(|d| d.starts_with("tv-honest"))
                        .count()
                        == 5
            }) {
                honest_published = Some(start.elapsed());
            }
        }
        if s % a.every == 0 || s == a.syncs {
            // Let the aggregation take in what was sent.
            tokio::time::sleep(Duration::from_millis(a.aggregate_ms + 200)).await;
            let (aggs, stored, published) = store::read(&*srv.state().store, |t| {
                let aggs = t.aggregates()?;
                let stored = t.device_patterns("tv-flood")?.len();
                let published = t.meta(Meta::GlobalVersion)?;
                Ok((aggs, stored, published))
            })
            .expect("read");
            let alone = aggs
                .iter()
                .filter(|(_, a)| a.devices.len() == 1 && a.devices.contains_key("tv-flood"))
                .count();
            let pubs = aggs.iter().filter(|(_, a)| a.published).count();
            let _ = published;
            println!(
                "| {s} | {sent} | {stored} | {refused} | {} | {alone} | {pubs} | {:.1} | {:.1} | {} | {:.1} |",
                aggs.len(),
                status_kib("VmRSS:") as f64 / 1024.0,
                status_kib("VmHWM:") as f64 / 1024.0,
                file_kib(&db),
                start.elapsed().as_secs_f64()
            );
        }
    }
    println!();
    match (dp, honest_published) {
        (false, Some(t)) => println!(
            "the honest group's global was published {:.2} s after the run began",
            t.as_secs_f64()
        ),
        (false, None) => println!("the honest group's global was NOT published during the run"),
        (true, _) => println!(
            "(differentially private mode: globals are released once per epoch, 60 min by default; \
             the flooder counts in at most dp.max_globals = 4 cohorts)"
        ),
    }
    srv.shutdown().await;
}

fn main() {
    let a = args();
    let book = minilm_v1().expect("codebook");
    let mut vs = rows("patterns_public.f32");
    vs.extend(rows("items_public.f32"));
    let codes: Vec<Codes> = vs
        .iter()
        .filter_map(|r| Embedding::normalize(*r).ok())
        .map(|e| book.quantize(&e))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "flood: {} flood syncs of {PER_SYNC} fresh random-id real patterns ({} real vectors), 5 honest devices",
        a.syncs,
        codes.len()
    );
    rt.block_on(async {
        run("exact mode (--no-dp)", false, &a, &codes, &book).await;
        run(
            "default mode (differential privacy)",
            true,
            &a,
            &codes,
            &book,
        )
        .await;
    });
}
