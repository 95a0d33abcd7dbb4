//! The pace of the public read endpoints (`constellation::http::pacer`): a
//! flood of feed, version and health requests gets its share of turns and
//! `429 rate_limited` with `Retry-After` past them, while syncs are never
//! paced, nor is the health check on the admin listener (for probes).
//! Without the pace (`rate: 0`, the old server) every flooding
//! request is answered `200` at once, and the first test fails.
//! Asserted through counts and metrics; the only time it reads is the
//! length of the flood, to bound the turns it could have been given.

mod common;

use std::time::{Duration, Instant};

use common::*;
use constellation::http::pacer::PublicReads;

/// Turns given: 5 at once, then 10 per second; a request waits at most
/// 300 ms (three more turns), so 60 requests arriving within ~5 s always
/// meet refusals.
fn paced() -> PublicReads {
    PublicReads {
        rate: 10,
        burst: 5,
        max_wait: Duration::from_millis(300),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_public_reads_gets_its_turns_and_429_past_them_while_syncs_pass() {
    let (_dir, db) = temp_db();
    let mut cfg = config(&db);
    cfg.public_reads = paced();
    let srv = constellation::Server::start(cfg)
        .await
        .expect("server starts");
    let (addr, adm) = (srv.local_addr(), admin(&srv));
    let paths = [
        "/api/v1/global?limit=0&since=12345",
        "/api/v1/sync/version",
        "/api/v1/health",
    ];
    // 60 requests from 60 threads at once, over the three endpoints.
    let started = Instant::now();
    let flood: Vec<_> = (0..60)
        .map(|i| {
            let path = paths[i % paths.len()];
            std::thread::spawn(move || raw(addr, "GET", path, &[], &[]))
        })
        .collect();
    // A device syncs during the flood: never paced, never refused.
    let body = upload(1, 0, &[]);
    let s = tokio::task::spawn_blocking(move || post_sync(addr, "tv-paced", "0", &body))
        .await
        .unwrap();
    assert_eq!(s.status, 200, "the sync during the flood");
    let answers: Vec<Raw> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let ok = answers.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Raw> = answers.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + refused.len(), 60, "only 200 or 429");
    // The burst and the waits within max_wait are admitted: 5 + 0.3 s x 10
    // at least; at most what the pace could give over the flood's length.
    let most = 5.0 + 10.0 * (elapsed + 0.3) + 1.0;
    assert!(ok >= 8, "admitted {ok}");
    assert!(
        (ok as f64) <= most,
        "admitted {ok} in {elapsed:.2} s (most {most:.0})"
    );
    assert!(!refused.is_empty(), "nothing refused: no pace");
    for r in &refused {
        assert_eq!(r.json()["error"], "rate_limited");
        assert_eq!(r.json()["detail"], "public reads over the server's pace");
        let after: u32 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(after >= 1);
    }
    assert_eq!(
        metric(adm, "constellation_public_reads_refused_total"),
        refused.len() as f64
    );
    assert!(metric(adm, "constellation_public_reads_delayed_total") >= 3.0);
    // Turns come back with time.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(raw(addr, "GET", "/api/v1/health", &[], &[]).status, 200);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listeners_health_check_is_not_paced() {
    let (_dir, db) = temp_db();
    let mut cfg = config(&db);
    // One turn per second, no waiting: the second public read within the
    // second is refused.
    cfg.public_reads = PublicReads {
        rate: 1,
        burst: 1,
        max_wait: Duration::ZERO,
    };
    let srv = constellation::Server::start(cfg)
        .await
        .expect("server starts");
    let (addr, adm) = (srv.local_addr(), admin(&srv));
    assert_eq!(raw(addr, "GET", "/api/v1/health", &[], &[]).status, 200);
    assert_eq!(raw(addr, "GET", "/api/v1/health", &[], &[]).status, 429);
    for _ in 0..5 {
        let probe = raw(adm, "GET", "/api/v1/health", &[], &[]);
        assert_eq!(probe.status, 200, "the probe on the admin listener");
        assert_eq!(probe.json()["status"], "ok");
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_pace_off_every_public_read_is_answered() {
    let (_dir, db) = temp_db();
    let mut cfg = config(&db);
    cfg.public_reads = PublicReads { rate: 0, ..paced() };
    let srv = constellation::Server::start(cfg)
        .await
        .expect("server starts");
    let addr = srv.local_addr();
    let flood: Vec<_> = (0..60)
        .map(|_| std::thread::spawn(move || raw(addr, "GET", "/api/v1/health", &[], &[]).status))
        .collect();
    for t in flood {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(
        metric(admin(&srv), "constellation_public_reads_delayed_total"),
        0.0
    );
    srv.shutdown().await;
}
