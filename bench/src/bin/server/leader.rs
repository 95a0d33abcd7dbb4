//! The aggregation leader's throughput, and global patterns under the
//! default differential privacy.
//!
//! Leader: an in-process server with no background pass (interval of an
//! hour) takes a backlog of real changes from many devices (every device
//! uploads 16 patterns, real MiniLM vectors each drifted by a real item, in
//! 8 categories; then every device changes 5 of them). After each round the
//! bench runs passes (`aggregate_now`) until the queue is empty and reads
//! the CPU they took from `/proc` (this process: the server's pass and its
//! store writes, nothing else runs meanwhile; and PostgreSQL's processes).
//!
//! Globals: devices that watch alike (4 shared real patterns, each drifted
//! by a device's own real item) fill a few cohorts past the noisy threshold,
//! and a release forced through `release_now` publishes them.

use constellation::store::{self as cstore, Meta};
use constellation::ServerHandle;

use super::cpu::{self, PgCpu};
use super::pg;
use super::*;

/// Categories of the leader's backlog.
const CATEGORIES: [&str; 8] = [
    "drama",
    "comedy",
    "news",
    "sports",
    "kids",
    "documentary",
    "movies",
    "music",
];

/// Patterns per device in the backlog's first round, and changed in its
/// second.
const FIRST: usize = 16;
const SECOND: usize = 5;

/// One pattern of an upload: (pattern index, base revision, category, code).
type Up<'a> = (usize, u32, &'a str, Vec<u8>);

/// An upload frame of absolute patterns with `samples` at `rate`.
fn upload(
    codebook: u32,
    seq: u64,
    since: u64,
    items: &[Up<'_>],
    samples: u32,
    rate: f32,
) -> Vec<u8> {
    let mut scratch = vec![0u8; MAX_UPLOAD_FRAME];
    let names: Vec<String> = items.iter().map(|(j, ..)| format!("p{j}")).collect();
    let mut w = FrameWriter::new(&mut scratch, Kind::Upload, codebook).expect("buffer");
    w.push(&Record::UploadHead(UploadHead {
        seq,
        since,
        caps: caps(),
    }))
    .expect("head");
    for ((_, base_rev, category, code), name) in items.iter().zip(&names) {
        w.push(&Record::Pattern(PatternUpdate {
            id: PatternId::new(name).expect("id"),
            base_rev: *base_rev,
            success_rate: rate,
            sample_count: samples,
            category: Category::new(category).expect("category"),
            coding: Coding::Absolute,
            code,
        }))
        .expect("record");
    }
    w.finish().expect("finish").to_vec()
}

/// Real vectors and the codebook, shared by the upload tasks.
pub(super) struct Real {
    pub(super) patterns: Vec<Row>,
    pub(super) items: Vec<Row>,
    pub(super) book: Codebook<'static>,
}

impl Real {
    /// Device `d`'s pattern `j` at version `round`: a real pattern drifted
    /// by a real item (the item changes with the round).
    fn vector(&self, d: usize, j: usize, round: usize) -> Row {
        let base = &self.patterns[(d * 7 + j * 101) % self.patterns.len()];
        let item = &self.items[(d * 13 + j * 29 + round * 997) % self.items.len()];
        drift(base, item, 10.0)
    }

    fn code(&self, v: &Row) -> Vec<u8> {
        let q = self.book.quantize(&Embedding::new(*v).expect("unit row"));
        encode(&self.book, &q, None)
    }
}

/// Sends one upload per device of `devices` from `clients` concurrent
/// tasks; `make(d)` gives the device's frame. Returns the applied uploads.
async fn send_all(
    url: &str,
    devices: std::ops::Range<usize>,
    clients: usize,
    make: Arc<dyn Fn(usize) -> (String, u64, Vec<u8>) + Send + Sync>,
) -> usize {
    let ids: Arc<Vec<usize>> = Arc::new(devices.collect());
    let clients = clients.max(1);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (url, ids, make) = (url.to_string(), ids.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = HttpTransport::new(&url).expect("url");
            let mut buf = vec![0u8; 1 << 20];
            let mut ok = 0usize;
            for &d in ids.iter().skip(c).step_by(clients) {
                let (id, since, body) = make(d);
                let since = since.to_string();
                let headers = [
                    ("X-Device-ID", id.as_str()),
                    ("X-Sync-Version", since.as_str()),
                ];
                // A few tries: a 503 under load is retried as a device would.
                for _ in 0..20 {
                    let r = t
                        .send(
                            Request {
                                method: Method::Post,
                                path: "/api/v1/sync",
                                headers: &headers,
                                body: &body,
                            },
                            &mut buf,
                        )
                        .await;
                    match r {
                        Ok(r) if r.status == 200 => {
                            ok += 1;
                            break;
                        }
                        Ok(_) | Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
            ok
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap_or(0);
    }
    n
}

/// Whether the aggregation queue of `srv` is empty.
fn queue_empty(srv: &ServerHandle) -> bool {
    cstore::read(&*srv.state().store, |t| {
        let cursor = t.meta(Meta::AggregateCursor)?;
        Ok(t.device_changes_after(cursor, 1)?.is_empty())
    })
    .unwrap_or(true)
}

/// What draining a backlog took.
struct Drain {
    passes: usize,
    wall: f64,
    cpu: f64,
    pg_cpu: f64,
}

/// Runs passes until the queue is empty (at most 2,000 passes or 120 s).
async fn drain(srv: &ServerHandle, ports: &[u16]) -> Drain {
    let pgc = PgCpu::start(ports);
    let cpu0 = cpu::self_cpu_s();
    let t0 = Instant::now();
    let mut passes = 0;
    while passes < 2000 && t0.elapsed() < Duration::from_secs(120) {
        if let Err(e) = srv.aggregate_now().await {
            eprintln!("[leader] pass failed: {e}");
        }
        passes += 1;
        if queue_empty(srv) {
            break;
        }
    }
    Drain {
        passes,
        wall: t0.elapsed().as_secs_f64(),
        cpu: cpu::self_cpu_s() - cpu0,
        pg_cpu: pgc.elapsed(),
    }
}

/// A server for the leader measurements: no background pass, `dp` on or off.
async fn leader_server(
    base: &Config,
    pg_url: Option<String>,
    dp: bool,
    dir: &Path,
) -> ServerHandle {
    let mut c = base.clone();
    if let Some(u) = pg_url {
        c.db = None;
        c.postgres = vec![u];
    } else {
        c.db = Some(dir.join(if dp {
            "leader-dp.redb"
        } else {
            "leader-exact.redb"
        }));
        c.postgres = Vec::new();
    }
    c.aggregate.interval = Duration::from_secs(3600);
    c.aggregate.dp = if dp {
        constellation::aggregate::dp::DpConfig::default()
    } else {
        constellation::aggregate::dp::DpConfig::disabled()
    };
    Server::start(c).await.expect("leader server")
}

/// The aggregation leader's throughput: for the private (default) and the
/// exact mode, on redb and (with `--postgres`) on a scratch database of the
/// first cluster.
pub(super) async fn run(a: &Args, base: &Config, real: &Arc<Real>, codebook: u32) {
    let devices = a.leader_devices;
    if devices == 0 {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    println!();
    println!(
        "aggregation leader: a backlog from {devices} devices ({FIRST} patterns each in {} categories, then {SECOND} changed each), drained by passes of at most {} changes; CPU from /proc:",
        CATEGORIES.len(),
        base.aggregate.batch
    );
    println!();
    println!("| mode | store | round | changes | passes | wall s | leader CPU s | changes per leader CPU s | PostgreSQL CPU s | changes per PostgreSQL CPU s | globals live after |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut backends: Vec<(&str, Option<String>)> = vec![("redb", None)];
    if let Some(u) = a.postgres.first() {
        backends.push(("PostgreSQL", Some(u.clone())));
    }
    let ports: Vec<u16> = a
        .postgres
        .first()
        .and_then(|u| pg::PgUrl::parse(u))
        .map(|p| vec![p.port])
        .unwrap_or_default();
    for (mode, dp) in [("private (default)", true), ("exact (--no-dp)", false)] {
        for (store, url) in &backends {
            let url_of_cluster = url.as_deref();
            let pg_url = match url {
                Some(u) => {
                    let name = if dp {
                        "ots_leader_dp"
                    } else {
                        "ots_leader_exact"
                    };
                    match pg::scratch_db(u, name).await {
                        Ok(x) => Some(x),
                        Err(e) => {
                            eprintln!("[leader] scratch database: {e}");
                            continue;
                        }
                    }
                }
                None => None,
            };
            let srv = leader_server(base, pg_url, dp, dir.path()).await;
            let url = srv.url();
            for round in 0..2 {
                eprintln!("[leader] {mode} {store}: round {} uploads", round + 1);
                let r = real.clone();
                let make: Arc<dyn Fn(usize) -> (String, u64, Vec<u8>) + Send + Sync> =
                    Arc::new(move |d| {
                        let js: Vec<usize> = if round == 0 {
                            (0..FIRST).collect()
                        } else {
                            (0..SECOND).map(|i| (d + i * 3) % FIRST).collect()
                        };
                        let ups: Vec<Up<'_>> = js
                            .iter()
                            .map(|&j| {
                                let v = r.vector(d, j, round);
                                (
                                    j,
                                    round as u32,
                                    CATEGORIES[j % CATEGORIES.len()],
                                    r.code(&v),
                                )
                            })
                            .collect();
                        let body = upload(codebook, round as u64 + 1, 0, &ups, 20, 0.8);
                        (format!("leader-{d}"), 0, body)
                    });
                let applied = send_all(&url, 0..devices, a.clients, make).await;
                let changes = applied * if round == 0 { FIRST } else { SECOND };
                eprintln!("[leader] {mode} {store}: {applied} uploads applied, draining");
                let d = drain(&srv, if url_is_pg(store) { &ports } else { &[] }).await;
                let globals = feed(&url).await.globals;
                let pg_cols = if url_is_pg(store) {
                    (
                        format!("{:.2}", d.pg_cpu),
                        format!("{:.0}", changes as f64 / d.pg_cpu.max(1e-9)),
                    )
                } else {
                    ("-".into(), "-".into())
                };
                println!(
                    "| {mode} | {store} | {} | {changes} | {} | {:.2} | {:.2} | {:.0} | {} | {} | {globals} |",
                    if round == 0 { "first contributions" } else { "changes of contributions" },
                    d.passes,
                    d.wall,
                    d.cpu,
                    changes as f64 / d.cpu.max(1e-9),
                    pg_cols.0,
                    pg_cols.1,
                );
            }
            if dp {
                let pgc = PgCpu::start(if url_is_pg(store) { &ports } else { &[] });
                let cpu0 = cpu::self_cpu_s();
                let t0 = Instant::now();
                let published = srv.release_now().await.unwrap_or_else(|e| {
                    eprintln!("[leader] release failed: {e}");
                    0
                });
                println!(
                    "| {mode} | {store} | release forced (release_now): {published} changelog entries | - | 1 | {:.2} | {:.2} | - | {} | - | {} |",
                    t0.elapsed().as_secs_f64(),
                    cpu::self_cpu_s() - cpu0,
                    if url_is_pg(store) { format!("{:.2}", pgc.elapsed()) } else { "-".into() },
                    feed(&url).await.globals,
                );
            }
            srv.shutdown().await;
            // The scratch database goes with the measurement.
            if let (Some(u), true) = (url_of_cluster, url_is_pg(store)) {
                let name = if dp {
                    "ots_leader_dp"
                } else {
                    "ots_leader_exact"
                };
                if let Ok(c) = pg::connect(u).await {
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
                        .await;
                }
            }
        }
    }
}

fn url_is_pg(store: &str) -> bool {
    store == "PostgreSQL"
}

/// Fills a few cohorts past the noisy threshold: `n` devices, each with 4
/// patterns (4 shared real patterns, each drifted by the device's own real
/// item; 50 samples at rate 0.9, full weight), then one release forced
/// through `release_now`. Returns (globals live, changelog entries of the
/// release).
pub(super) async fn seed_cohorts(
    srv: &ServerHandle,
    real: &Arc<Real>,
    codebook: u32,
    n: usize,
) -> (usize, usize) {
    if n == 0 {
        return (0, 0);
    }
    let r = real.clone();
    let make: Arc<dyn Fn(usize) -> (String, u64, Vec<u8>) + Send + Sync> = Arc::new(move |d| {
        let ups: Vec<Up<'_>> = (0..4)
            .map(|j| {
                let base = &r.patterns[(j * 400) % r.patterns.len()];
                let item = &r.items[(d * 4 + j) % r.items.len()];
                (j, 0, "drama", r.code(&drift(base, item, 10.0)))
            })
            .collect();
        (
            format!("cohort-{d}"),
            0,
            upload(codebook, 1, 0, &ups, 50, 0.9),
        )
    });
    let applied = send_all(&srv.url(), 0..n, 32, make).await;
    // The queue holds the throughput run's changes before these (a pass
    // takes at most `batch` of the oldest): drain it, then release.
    let d = drain(srv, &[]).await;
    eprintln!(
        "[globals] {applied} cohort devices uploaded; queue drained in {} passes; forcing a release",
        d.passes
    );
    let published = match srv.release_now().await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("[globals] release failed: {e}");
            0
        }
    };
    (feed(&srv.url()).await.globals, published)
}
