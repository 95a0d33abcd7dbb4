//! The server process is killed with SIGKILL repeatedly during a fleet run
//! and restarted on the same redb file and port. The TVs see refused and
//! cut connections and retry the same bytes; afterwards the checker reads
//! every device back: nothing acknowledged is lost, nothing applied twice.
//! A last SIGKILL at rest, then the same check again. Authentication is on
//! (the server's default): every TV is enrolled with `constellation device
//! add` and signs its requests, stale twins included.
//!
//! `KILL_LOOP_SEED=N` runs another fleet seed (default 3), for repeated runs.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use omega_tv_sync_examples::fleet::nodes::Nodes as HttpTransport;
use omega_tv_sync_examples::fleet::{self, check, model, sim, Faults};

const KILLS: u32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_during_a_fleet_run_loses_nothing_and_applies_nothing_twice() {
    let bin = constellation_bin();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("constellation.redb");
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let cat = Arc::new(model::Catalog::load().unwrap());
    let cb = omega_tv_sync::codec::minilm_v1().unwrap();

    // The killer: at 10%, 25%, 40%, 55% and 70% of the run's applied syncs
    // (the fleet cannot progress while the server is down, so every kill
    // falls inside the run), SIGKILL, wait for the process to be gone, stay
    // down 150 ms, restart on the same store and port. Bounded: it gives up
    // waiting after 120 s.
    let mut cfg = fleet::Args::default().sim;
    cfg.devices = 200;
    cfg.rounds = 30;
    cfg.seed = std::env::var("KILL_LOOP_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    cfg.concurrency = 16;
    cfg.faults = Faults {
        drop: 0.01,
        offline: 0.01,
        twin: 0.01,
    };
    let ids: Vec<String> = (0..cfg.devices).map(fleet::device_id).collect();
    cfg.keys = Some(Arc::new(enrol(&bin, &db, &ids)));
    let child = serve(&bin, &db, addr, &[]);
    let url = format!("http://{addr}");
    let http = HttpTransport::new(&url).unwrap();
    assert_eq!(auth_mode(&http).await, "required");
    let total = (cfg.devices as u64) * u64::from(cfg.rounds);
    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, progress2, bin2, db2) = (stop.clone(), progress.clone(), bin.clone(), db.clone());
    let killer = std::thread::spawn(move || {
        let mut child = child;
        let mut kills = 0u32;
        let deadline = Instant::now() + Duration::from_secs(120);
        for pct in [10u64, 25, 40, 55, 70].iter().take(KILLS as usize) {
            while progress2.load(Ordering::Relaxed) < total * pct / 100
                && !stop2.load(Ordering::Relaxed)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            if stop2.load(Ordering::Relaxed) || Instant::now() >= deadline {
                break;
            }
            child.kill();
            kills += 1;
            std::thread::sleep(Duration::from_millis(150));
            child = serve(&bin2, &db2, addr, &[]);
        }
        (child, kills)
    });

    let h = http.clone();
    let p = progress.clone();
    let mut result = sim::run(cat, cb, cfg.clone(), move || h.clone(), &move |n| {
        p.store(n, Ordering::Relaxed)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (mut child, kills) = killer.join().unwrap();
    assert!(
        result.counters.fatal.is_none(),
        "{:?}",
        result.counters.fatal
    );
    let applied = result.samples.iter().filter(|s| s.applied).count();
    eprintln!(
        "kills during the run: {kills}; applied {applied}; transport errors {}; retries {}; wall {:.1} s; virtual {:.0} s",
        result.counters.transport_errors, result.counters.retries, result.wall_s, result.virtual_s
    );
    assert_eq!(kills, KILLS, "every kill fell inside the run");
    assert!(result.counters.twins > 0, "stale twins synced");
    assert!(result.counters.transport_errors > 0);
    assert_eq!(result.counters.stuck, 0);

    // Settle against the live server, then check.
    let h = http.clone();
    let unsettled = fleet::settle::settle(&mut result, move || h.clone(), 8).await;
    assert_eq!(unsettled, 0);
    let mut t = HttpTransport::new(&format!("http://{}", child.admin())).unwrap();
    let v = check::check_all(&result.tvs, &mut t, ADMIN_TOKEN)
        .await
        .unwrap();
    eprintln!(
        "checked {}: lost {}, duplicated {}; twins {}; acks shared by two sessions {}",
        v.checked, v.lost_updates, v.duplicates_applied, result.counters.twins, v.shared_acks
    );
    assert!(v.checked > 1000, "checked {}", v.checked);
    assert_eq!(v.lost_updates, 0, "acknowledged updates lost");
    assert_eq!(v.duplicates_applied, 0, "updates applied twice");

    // Once more at rest: SIGKILL, restart, the same state.
    child.kill();
    let mut child = serve(&bin, &db, addr, &[]);
    let mut t = HttpTransport::new(&format!("http://{}", child.admin())).unwrap();
    let v2 = check::check_all(&result.tvs, &mut t, ADMIN_TOKEN)
        .await
        .unwrap();
    assert_eq!((v2.lost_updates, v2.duplicates_applied), (0, 0));
    assert_eq!(v2.checked, v.checked);
    assert_eq!(
        auth_mode(&HttpTransport::new(&url).unwrap()).await,
        "required"
    );
    child.kill();
}

/// `"auth"` of `GET /api/v1/health`: `"required"`, or `"DISABLED"` when the
/// server runs with `--insecure-no-auth`.
async fn auth_mode(t: &HttpTransport) -> String {
    use omega_tv_sync::Transport;
    use omega_tv_sync_testkit::get;
    let mut t = t.clone();
    let mut buf = vec![0u8; 4096];
    let r = t.send(get("/api/v1/health"), &mut buf).await.unwrap();
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&buf[..r.body_len]).unwrap();
    v["auth"].as_str().unwrap_or("").to_string()
}
