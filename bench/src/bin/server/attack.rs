//! `--attack`: the fleet's sync rate on one server without and then with
//! hostile clients, in the same run: 20 concurrent public feed requests
//! `GET /api/v1/global?limit=0&since=<random>` in a loop (over a changelog
//! of 100,000 entries, so each request has the most entries to pass over),
//! 400 idle connections and 50 connections trickling a request head one
//! byte every 500 ms (reconnecting when the server closes them). Prints
//! both rates, their ratio, the CPU the server, the fleet's clients and the
//! attackers each spent (the attackers run on a runtime of their own,
//! threads `atk-rt`, so that their CPU reads apart: on this bench they share
//! the machine's cores with the server, which a remote attacker would not)
//! and the process's peak RSS (`VmHWM`; server and clients share the
//! process).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use constellation::store::{self, GlobalChange};
use constellation::ServerHandle;
use omega_tv_sync::{Method, Request, Transport};
use omega_tv_sync_http::HttpTransport;

use super::cpu::ATTACK_THREADS;
use super::load::{drive, Chains, RunResult};
use super::Args;
use omega_tv_sync_bench::procfs::status_kib;

/// Changelog entries written before the runs.
const CHANGELOG: u64 = 100_000;
/// Concurrent feed requesters.
const FEED_CLIENTS: usize = 20;
/// Idle connections.
const IDLE: usize = 400;
/// Trickling connections.
const TRICKLE: usize = 50;

/// The hostile clients, until `stop`; returns the feed requests answered
/// `200` (a `429` of the pace is not counted).
fn start_attack(
    rt: &tokio::runtime::Handle,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> Arc<AtomicU64> {
    let feeds = Arc::new(AtomicU64::new(0));
    for i in 0..FEED_CLIENTS {
        let (stop, feeds) = (stop.clone(), feeds.clone());
        rt.spawn(async move {
            let url = format!("http://{addr}");
            let mut t = HttpTransport::new(&url).expect("url");
            let mut buf = vec![0u8; 1 << 20];
            let mut z = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1);
            while !stop.load(Ordering::Relaxed) {
                z ^= z << 13;
                z ^= z >> 7;
                z ^= z << 17;
                let path = format!("/api/v1/global?limit=0&since={}", z % (CHANGELOG * 2));
                let req = Request {
                    method: Method::Get,
                    path: &path,
                    headers: &[],
                    body: &[],
                };
                match t.send(req, &mut buf).await {
                    Ok(r) => {
                        if r.status == 200 {
                            feeds.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        t = HttpTransport::new(&url).expect("url");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    for _ in 0..IDLE {
        let stop = stop.clone();
        rt.spawn(async move {
            let _s = tokio::net::TcpStream::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    for _ in 0..TRICKLE {
        let stop = stop.clone();
        rt.spawn(async move {
            let head = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            while !stop.load(Ordering::Relaxed) {
                let Ok(s) = tokio::net::TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                for b in head.iter().cycle() {
                    if stop.load(Ordering::Relaxed) || s.writable().await.is_err() {
                        break;
                    }
                    if s.try_write(std::slice::from_ref(b)).is_err() {
                        break; // closed by the server: connect again
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
    }
    feeds
}

/// The attack run (module docs).
pub(super) async fn run(a: &Args, srv: &ServerHandle, ch: &Arc<Vec<Chains>>, codebook: u32) {
    store::write(&*srv.state().store, |t| {
        for i in 0..CHANGELOG {
            t.publish(&GlobalChange::Trend {
                content_id: format!("bench-item-{i}"),
                score: 1.5,
                region: *b"US",
                category: "drama".into(),
                calculated_at: 1_700_000_000,
            })?;
        }
        Ok(())
    })
    .await
    .expect("changelog");
    println!(
        "attack: {} clients, {} patterns, {} changed per sync, {} s per run; changelog {CHANGELOG} entries",
        a.clients, a.patterns, a.changed, a.seconds
    );
    let rss_before = status_kib("VmHWM:");
    let quiet = drive(&srv.url(), a, ch, codebook, 10_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let atk_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name(ATTACK_THREADS)
        .enable_all()
        .build()
        .expect("attack runtime");
    let feeds = start_attack(atk_rt.handle(), srv.local_addr(), stop.clone());
    // Let the idle and trickling connections open before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loud = drive(&srv.url(), a, ch, codebook, 20_000).await;
    stop.store(true, Ordering::Relaxed);
    atk_rt.shutdown_background();
    let fed = feeds.load(Ordering::Relaxed);
    let conns = srv.metrics_text();
    let shed = constellation::metrics::scrape(&conns, "constellation_connections_shed_total");
    let visited = constellation::metrics::scrape(&conns, "constellation_feed_visited_max");
    let delayed =
        constellation::metrics::scrape(&conns, "constellation_public_reads_delayed_total");
    let refused =
        constellation::metrics::scrape(&conns, "constellation_public_reads_refused_total");
    let rate = |r: &RunResult| r.syncs as f64 / r.elapsed.max(1e-9);
    let p99 = |r: &RunResult| {
        r.lat_us
            .get((r.lat_us.len().saturating_sub(1) as f64 * 0.99) as usize)
            .map_or(0.0, |v| f64::from(*v) / 1000.0)
    };
    println!();
    println!("| fleet | syncs/s | p99 ms | errors |");
    println!("|---|---:|---:|---:|");
    println!(
        "| without attack | {:.0} | {:.2} | {} |",
        rate(&quiet),
        p99(&quiet),
        quiet.errors
    );
    println!(
        "| with {FEED_CLIENTS} feed limit=0 random-since loops + {IDLE} idle + {TRICKLE} trickling | {:.0} | {:.2} | {} |",
        rate(&loud),
        p99(&loud),
        loud.errors
    );
    println!();
    println!(
        "ratio with / without: {:.3} (goal >= 0.8); feed requests answered during the attack: {fed} ({:.0}/s; {} waited for their turn, {} refused 429); most entries one feed page visited: {}; connections shed: {}",
        rate(&loud) / rate(&quiet).max(1e-9),
        fed as f64 / loud.elapsed.max(1e-9),
        delayed.unwrap_or(0.0),
        refused.unwrap_or(0.0),
        visited.unwrap_or(0.0),
        shed.unwrap_or(0.0)
    );
    // CPU per run: the server's threads, the fleet's clients (the rest of
    // the process but the attackers), the attackers'; in cores.
    let cores = |c: f64, r: &RunResult| c / r.elapsed.max(1e-9);
    println!(
        "CPU in cores (server / fleet clients / attackers): without {:.2} / {:.2} / -, with {:.2} / {:.2} / {:.2}; server CPU per fleet sync {:.0} -> {:.0} µs",
        cores(quiet.cpu.0, &quiet),
        cores(quiet.cpu.1, &quiet),
        cores(loud.cpu.0, &loud),
        cores(loud.cpu.1, &loud),
        cores(loud.cpu.2, &loud),
        quiet.cpu.0 / (quiet.syncs.max(1) as f64) * 1e6,
        loud.cpu.0 / (loud.syncs.max(1) as f64) * 1e6,
    );
    println!(
        "peak RSS (VmHWM, server and clients in one process): {:.1} MiB ({:.1} MiB before the runs)",
        status_kib("VmHWM:") as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
}
