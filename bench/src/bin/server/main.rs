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
//!     [--max-batch 1024] [--attack] [--leader-devices 1000] [--cohort-devices 400]
//!     [--postgres URL2 --serve-bin target/release/constellation]
//!     [--compare-changed 5,1] [--public-read-rate 1000] [--no-journal] [--stores 1] [--rounds 1]
//! ```
//!
//! The comparison runs once per `--compare-changed` value (default: the
//! `--changed` value, then 1). The servers run on a runtime of their own
//! (threads named `srv-rt`) beside the clients' runtime, so the table also
//! gives the server's CPU per sync and the clients', from
//! `/proc/self/task` (the server runtime's threads and the store's writer
//! thread vs the rest), and how often the server's threads slept per sync
//! (their voluntary context switches, the writer's apart).
//!
//! `--stores N` runs the comparison's real server as N servers, each on a
//! database and writer of its own, the clients split over them: an upper
//! bound of what a store sharded by device (N writers, N journals) would
//! answer, against the same bare handler.
//!
//! `--rounds N` runs each comparison's two phases N times, alternating
//! (real, bare, real, bare, ...), each round on fresh devices, and prints
//! every round's ratio and server CPU per sync with their medians: on a
//! shared machine the load drifts within a run, and one pair of phases
//! can land on either side of a drift (the table is round 1).
//!
//! With `--attack` it measures only the fleet under attack (`attack.rs`):
//! the same server, fleet syncs/s without and then with 20 concurrent
//! `limit=0` feed requests at random `since`, 400 idle and 50 trickling
//! connections, the ratio, and the process's peak RSS. `--public-read-rate`
//! sets the server's pace of public reads (`0`: none, the server before it;
//! default: the server's default).
//!
//! With `--postgres postgres://USER@HOST:PORT/DB` (an empty database) the
//! same run also drives a node on that PostgreSQL database and reads the
//! WAL it writes per sync (`pg_current_wal_lsn()` before and after,
//! `pg_wal_lsn_diff`). With `--serve-bin` (the `constellation` binary) it
//! then runs nodes as processes of their own, so that their CPU can be read
//! from `/proc`: 1, 2 and 3 nodes on the first database, and with a second
//! `--postgres` (another empty database, ideally on another cluster) 2
//! nodes on the two databases (`--db` twice). Each prints syncs/s, the
//! nodes' CPU per sync, the CPU and WAL bytes per sync of the PostgreSQL
//! servers behind the URLs' ports (postmaster and its children), and the
//! ratio to `pgbench` run with the same client count on a scratch database
//! of the first cluster (its simple-update transaction `-N` and a sync-shaped one).
//!
//! Global patterns: every table says how many are live. Under the default
//! differential privacy the throughput clients are too few per cohort, so
//! before the bytes-per-sync table `--cohort-devices N` (400) devices fill
//! a few cohorts past the noisy threshold and a release is forced
//! (`release_now`): the first sync and the feed rows then carry globals.
//!
//! Last, the aggregation leader's throughput (`leader.rs`,
//! `--leader-devices N`, 1,000; 0 skips it): a backlog of real changes from
//! N devices drained by passes, CPU per change from `/proc`, in the private
//! and the exact mode, on redb and on a scratch database of the first
//! PostgreSQL cluster.

/// The `constellation` binary's allocator, so that the server in this
/// process runs as it is deployed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
use std::path::Path;

mod attack;
mod cpu;
mod leader;
mod load;
mod nodes;
mod pg;
use load::*;

/// Versions in each pattern's drift chain (the chain wraps around).
const CHAIN: usize = 8;

#[derive(Clone)]
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
    /// Devices of the aggregation leader's backlog (0: not measured).
    leader_devices: usize,
    /// Devices that fill cohorts past the private threshold before the
    /// bytes-per-sync table (0: none).
    cohort_devices: usize,
    /// `--changed` values of the throughput comparison (`--compare-changed 5,1`).
    compare_changed: Vec<usize>,
    /// The server's public read pace (`None`: its default).
    public_read_rate: Option<u32>,
    /// `--no-journal`: a redb commit per group instead of the sync journal.
    no_journal: bool,
    /// `--stores N`: the comparison's real server as N servers on N
    /// databases, the clients split over them (default 1).
    stores: usize,
    /// `--rounds N`: the comparison's two phases run N times each,
    /// alternating (real, bare, real, bare, ...), each round's ratio
    /// printed with their median (default 1).
    rounds: usize,
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
        leader_devices: 1000,
        cohort_devices: 400,
        compare_changed: Vec::new(),
        public_read_rate: None,
        no_journal: false,
        stores: 1,
        rounds: 1,
    };
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = argv.iter().position(|s| s == "--attack") {
        a.attack = true;
        argv.remove(i);
    }
    if let Some(i) = argv.iter().position(|s| s == "--no-journal") {
        a.no_journal = true;
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
            "--leader-devices" => a.leader_devices = v.parse().unwrap_or(a.leader_devices),
            "--cohort-devices" => a.cohort_devices = v.parse().unwrap_or(a.cohort_devices),
            "--public-read-rate" => a.public_read_rate = v.parse().ok(),
            "--stores" => a.stores = v.parse().unwrap_or(a.stores).max(1),
            "--rounds" => a.rounds = v.parse().unwrap_or(a.rounds).clamp(1, 9),
            "--compare-changed" => {
                a.compare_changed = v.split(',').filter_map(|x| x.trim().parse().ok()).collect()
            }
            other => eprintln!("ignoring {other}"),
        }
        i += 2;
    }
    a.patterns = a.patterns.clamp(1, 64);
    a.changed = a.changed.clamp(1, a.patterns);
    if a.compare_changed.is_empty() {
        a.compare_changed = if a.changed == 1 {
            vec![1]
        } else {
            vec![a.changed, 1]
        };
    }
    a
}

fn pct(v: &[u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    f64::from(v[i.min(v.len() - 1)]) / 1000.0
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
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
    // The servers of the throughput comparison run on threads of their
    // own, so that their CPU per sync reads apart from the clients'.
    let srv_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name(cpu::SERVER_THREADS)
        .thread_keep_alive(Duration::from_secs(24 * 3600))
        .enable_all()
        .build()
        .expect("server runtime");
    rt.block_on(run(a, srv_rt.handle().clone()));
}

async fn run(a: Args, srv_rt: tokio::runtime::Handle) {
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
    cfg.journal = !a.no_journal;
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.codebooks = constellation::codebooks::default_codebooks();
    cfg.min_sync_interval_s = 0; // load clients sync back to back
    cfg.aggregate.interval = Duration::from_millis(a.aggregate_ms.max(1));
    if let Some(rate) = a.public_read_rate {
        cfg.public_reads.rate = rate;
    }
    // Its clients send hand-made frames without signatures: this measures
    // the sync path itself (one HMAC per request is not the bottleneck).
    cfg.auth = constellation::AuthConfig::disabled();
    let srv = srv_rt
        .spawn(Server::start(cfg.clone()))
        .await
        .expect("server task")
        .expect("server");
    if a.attack {
        attack::run(&a, &srv, &ch, codebook).await;
        srv.shutdown().await;
        return;
    }

    // `--stores N`: N - 1 more real servers, each on its own database, the
    // clients of the comparison split over all N (client c talks to server
    // c % N): what a store sharded by device, N writers and N journals,
    // could answer at most.
    let mut extra = Vec::new();
    let mut extra_dirs = Vec::new();
    for i in 1..a.stores.max(1) {
        let d = tempfile::tempdir().expect("tempdir");
        let mut c = cfg.clone();
        c.db = Some(d.path().join(format!("bench-{i}.redb")));
        extra.push(
            srv_rt
                .spawn(Server::start(c))
                .await
                .expect("server task")
                .expect("server"),
        );
        extra_dirs.push(d);
    }
    let urls = std::iter::once(srv.url())
        .chain(extra.iter().map(|s| s.url()))
        .collect::<Vec<_>>()
        .join(",");

    // Each `--changed` value of the comparison (5, then 1, by default):
    // the real server, then a bare handler answering the real server's
    // bytes for that sync, the same clients, fresh devices each time.
    let mut compared = Vec::new();
    for (k, &changed) in a.compare_changed.iter().enumerate() {
        let mut ak = a.clone();
        ak.changed = changed.clamp(1, a.patterns);
        // A representative response of the real server, for the bare handler.
        let fixture = {
            let mut t = HttpTransport::new(&srv.url()).expect("url");
            let mut dev = Device::new(100_000 + k, ak.patterns);
            let mut body = Vec::new();
            let mut buf = vec![0u8; 1 << 20];
            dev.initial(codebook, &ch[0], &mut body);
            let (_, n) = post(&mut t, &dev, &body, &mut buf).await;
            dev.acked_all();
            dev.cursor(&buf[..n]);
            let _ = dev.next(codebook, &ch[0], ak.changed, &mut body);
            let (_, n) = post(&mut t, &dev, &body, &mut buf).await;
            buf[..n].to_vec()
        };
        let bare = srv_rt
            .spawn(bare_server(fixture))
            .await
            .expect("bare server task");
        println!(
            "server throughput: {} clients (keep-alive), {} patterns per device, {} changed per sync (closed-loop deltas on real vectors), {} s per server{}",
            ak.clients,
            ak.patterns,
            ak.changed,
            ak.seconds,
            if a.stores > 1 {
                format!("; the real server as {} stores, the clients split over them (globals live: the first store's)", a.stores)
            } else {
                String::new()
            }
        );
        // Round r's devices are fresh: ids from 1,000 k + 10,000 r.
        let mut rounds = Vec::new();
        for r in 0..a.rounds {
            let ids = 1_000 * k + 10_000 * r;
            let of = if a.rounds > 1 {
                format!(", round {} of {}", r + 1, a.rounds)
            } else {
                String::new()
            };
            eprintln!(
                "[server] redb, {} changed: {} s{of}",
                ak.changed, ak.seconds
            );
            let real = drive(&urls, &ak, &ch, codebook, ids).await;
            eprintln!(
                "[server] bare axum, {} changed: {} s{of}",
                ak.changed, ak.seconds
            );
            let bare_r = drive(&format!("http://{bare}"), &ak, &ch, codebook, ids).await;
            rounds.push((real, bare_r));
        }
        let real_globals = feed(&srv.url()).await.globals;
        compared.push((ak.changed, rounds, real_globals));
    }
    let (commits0, items0) = std::iter::once(&srv)
        .chain(extra.iter())
        .map(|s| s.state().store.commit_stats())
        .fold((0, 0), |(c, i), (c1, i1)| (c + c1, i + i1));
    for s in extra {
        s.shutdown().await;
    }
    drop(extra_dirs);
    // The same load on a PostgreSQL node (give an empty database: device
    // ids repeat from run to run), with the WAL it writes.
    let pg = match a.postgres.first() {
        Some(url) => {
            eprintln!("[server] PostgreSQL in-process node: {} s", a.seconds);
            let mut c = cfg.clone();
            c.db = None;
            c.postgres = vec![url.clone()];
            let node = Server::start(c).await.expect("postgres server");
            let wal = pg::Wal::start(std::slice::from_ref(url)).await;
            let r = drive(&node.url(), &a, &ch, codebook, 0).await;
            let wal = wal.bytes().await;
            let globals = feed(&node.url()).await.globals;
            let stats = node.state().store.commit_stats();
            node.shutdown().await;
            Some((r, stats, wal, globals))
        }
        None => None,
    };
    let rate = |r: &RunResult| r.syncs as f64 / r.elapsed.max(1e-9);
    let us_per_sync = |cpu: f64, r: &RunResult| cpu * 1e6 / r.syncs.max(1) as f64;
    println!();
    println!("| server | changed | syncs/s | p50 ms | p99 ms | up B/sync | down B/sync | errors | server CPU µs/sync | client CPU µs/sync | WAL B/sync | globals live |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (changed, rounds, real_globals) in &compared {
        let (real, bare_r) = &rounds[0];
        rows.push((
            "constellation (redb, group commit, aggregation on)",
            *changed,
            real,
            "-".to_string(),
            real_globals.to_string(),
        ));
        rows.push((
            "bare axum handler, same response bytes",
            *changed,
            bare_r,
            "-".to_string(),
            "-".to_string(),
        ));
    }
    if let Some((r, _, wal, globals)) = &pg {
        // WAL is charged to the timed syncs plus each client's initial
        // upload (both are in the WAL range).
        let charged = r.syncs as f64 + a.clients as f64;
        rows.push((
            "constellation (PostgreSQL, 1 node, aggregation on)",
            a.changed,
            r,
            format!("{:.0}", *wal as f64 / charged),
            globals.to_string(),
        ));
    }
    for (name, changed, r, wal, globals) in rows {
        // The PostgreSQL node runs on the clients' runtime: its CPU is not
        // split from theirs.
        let (srv_cpu, cli_cpu) = if name.contains("PostgreSQL") {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.0}", us_per_sync(r.cpu.0, r)),
                format!("{:.0}", us_per_sync(r.cpu.1, r)),
            )
        };
        println!(
            "| {name} | {changed} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {} | {srv_cpu} | {cli_cpu} | {wal} | {globals} |",
            rate(r),
            pct(&r.lat_us, 0.5),
            pct(&r.lat_us, 0.99),
            r.up as f64 / r.syncs.max(1) as f64,
            r.down as f64 / r.syncs.max(1) as f64,
            r.errors
        );
    }
    println!();
    for (changed, rounds, _) in &compared {
        if rounds.len() > 1 {
            // Every round's ratio and server CPU per sync, in run order,
            // and their medians (the table and the line below are round 1).
            let all: Vec<(f64, f64)> = rounds
                .iter()
                .map(|(r, b)| (rate(r) / rate(b).max(1e-9), us_per_sync(r.cpu.0, r)))
                .collect();
            let list =
                |f: fn(&(f64, f64)) -> String| all.iter().map(f).collect::<Vec<_>>().join(" / ");
            println!(
                "{changed} changed, {} alternating rounds: ratios {} (median {:.3}); server CPU µs per sync {} (median {:.0})",
                all.len(),
                list(|x| format!("{:.3}", x.0)),
                median(all.iter().map(|x| x.0).collect()),
                list(|x| format!("{:.0}", x.1)),
                median(all.iter().map(|x| x.1).collect()),
            );
        }
        let (real, bare_r) = &rounds[0];
        println!(
            "{changed} changed: ratio constellation / bare {:.3} ({:.1}x slower); server CPU per sync {:.0} µs vs {:.0} µs (x{:.1}), clients' {:.0} µs vs {:.0} µs; the writer thread(s) {:.0} µs per sync, on a CPU {:.0}% of the run; the server threads slept {:.2} times per sync ({:.2} of them the writer(s)) vs {:.2}",
            rate(real) / rate(bare_r).max(1e-9),
            rate(bare_r) / rate(real).max(1e-9),
            us_per_sync(real.cpu.0, real),
            us_per_sync(bare_r.cpu.0, bare_r),
            us_per_sync(real.cpu.0, real) / us_per_sync(bare_r.cpu.0, bare_r).max(1e-9),
            us_per_sync(real.cpu.1, real),
            us_per_sync(bare_r.cpu.1, bare_r),
            us_per_sync(real.cpu.3, real),
            100.0 * real.cpu.3 / real.elapsed.max(1e-9),
            real.switches.0 as f64 / real.syncs.max(1) as f64,
            real.switches.1 as f64 / real.syncs.max(1) as f64,
            bare_r.switches.0 as f64 / bare_r.syncs.max(1) as f64,
        );
    }
    println!(
        "group commits: {} for {} writes (mean group {:.1})",
        commits0,
        items0,
        items0 as f64 / commits0.max(1) as f64
    );
    if let Some((r, (commits, items), _, _)) = &pg {
        println!(
            "ratio PostgreSQL / redb ({} changed): {:.3}; PostgreSQL transactions: {} for {} writes (mean group {:.1})",
            a.changed,
            rate(r) / rate(&compared[0].1[0].0).max(1e-9),
            commits,
            items,
            *items as f64 / (*commits).max(1) as f64
        );
    }
    println!(
        "global patterns live after the runs, differential privacy on (default: hourly releases, noisy threshold {}): the throughput clients are {} devices over {} pattern sets, too few per cohort",
        cfg.aggregate.dp.threshold,
        a.clients,
        ch.len()
    );

    // Cohorts that pass the private threshold, so that the first sync and
    // the feed below carry global patterns under the default privacy.
    let real_data = Arc::new(leader::Real {
        patterns,
        items,
        book: minilm_v1().expect("codebook"),
    });
    let (globals, published) =
        leader::seed_cohorts(&srv, &real_data, codebook, a.cohort_devices).await;
    println!(
        "cohort devices: {} (4 shared real patterns, each drifted by a real item per device); release forced (release_now): {published} changelog entries, {globals} global patterns live",
        a.cohort_devices
    );

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
    let ch64 = chains(&book, &real_data.patterns, &real_data.items, full, 7);
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
    let f = feed(&srv.url()).await;
    println!(
        "| global feed since 0: {} global patterns + {} trends | 0 | {} | |",
        f.globals, f.trends, f.bytes
    );
    srv.shutdown().await;
    if let (Some(bin), Some(_)) = (&a.serve_bin, a.postgres.first()) {
        nodes::run(&a, bin, &ch, codebook).await;
    }
    leader::run(&a, &cfg, &real_data, codebook).await;
}
