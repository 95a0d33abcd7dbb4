//! Three `constellation serve` processes on two PostgreSQL clusters
//! (devices partitioned across them with `--db` twice), a fleet of 300 TVs
//! rotating every device's requests across the three nodes, with faults
//! on: SIGKILL of a serving node (restarted), SIGKILL of the aggregation
//! leader (another node takes over; the seconds until global publication
//! resumes are printed), and an immediate stop and restart of the cluster
//! that holds the global tables. Afterwards the checker reads every device
//! back through the nodes: nothing acknowledged is lost, nothing applied
//! twice, and every published global pattern is backed by at least k
//! devices.
//!
//! Without PostgreSQL binaries it prints one loud line and passes, unless
//! `OTS_REQUIRE_PG=1`.

mod common;
#[path = "../../server/tests/pg_support/mod.rs"]
mod pg_support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use omega_tv_sync::DeviceKey;
use omega_tv_sync_examples::fleet::{self, check, model, nodes::Nodes, sim, Faults};

const K: u32 = 5;

/// `GET path` on `addr` (HTTP/1.1, `Connection: close`): status and body;
/// `None` when the node does not answer within 2 s.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut body = raw[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Some((status, body))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).ok()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(nl + 2..nl + 2 + n)?);
        b = b.get(nl + 4 + n..)?;
    }
}

/// `constellation_aggregation_leader` of the node whose admin listener is `addr`.
fn leads(addr: SocketAddr) -> Option<bool> {
    let (st, body) = get(addr, "/metrics")?;
    (st == 200).then_some(())?;
    String::from_utf8_lossy(&body).lines().find_map(|l| {
        l.strip_prefix("constellation_aggregation_leader ")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|v| v == 1)
    })
}

/// The global version, as the node at `addr` reads it from the database.
fn version(addr: SocketAddr) -> Option<u64> {
    let (st, body) = get(addr, "/api/v1/sync/version")?;
    (st == 200).then_some(())?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["version"].as_u64()
}

/// The node among `addrs` (admin listeners) that reports holding the
/// aggregation leadership, watched for up to 20 s.
fn leader(addrs: &[SocketAddr]) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(i) = addrs.iter().position(|&a| leads(a) == Some(true)) {
            return Some(i);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The live global patterns through the node at `addr`: id to contributors.
fn live_globals(addr: SocketAddr) -> BTreeMap<u32, u32> {
    use omega_tv_sync::wire::{FrameReader, Record};
    let mut live = BTreeMap::new();
    let mut since = 0u64;
    for _ in 0..10_000 {
        let (st, body) = get(addr, &format!("/api/v1/global?since={since}&limit=256"))
            .expect("the feed answers");
        assert_eq!(st, 200);
        let f = FrameReader::parse(&body).expect("a feed frame");
        let mut more = false;
        for r in f.records() {
            match r.expect("a feed record") {
                Record::DownloadHead(h) => {
                    more = h.more && h.global_version > since;
                    since = h.global_version;
                }
                Record::GlobalUpsert(g) => {
                    live.insert(g.id, g.contributors);
                }
                Record::GlobalRemove(g) => {
                    live.remove(&g.id);
                }
                _ => {}
            }
        }
        if !more {
            return live;
        }
    }
    panic!("the feed did not end");
}

fn db_args(urls: &[String]) -> Vec<String> {
    urls.iter()
        .flat_map(|u| ["--db".to_string(), u.clone()])
        .collect()
}

fn enrol_pg(
    bin: &Path,
    urls: &[String],
    secret: &Path,
    ids: &[String],
) -> HashMap<String, DeviceKey> {
    let out = Command::new(bin)
        .args(["device", "add"])
        .args(db_args(urls))
        .arg("--master-secret")
        .arg(secret)
        .args(ids)
        .stderr(Stdio::inherit())
        .output()
        .expect("run constellation device add");
    assert!(out.status.success(), "constellation device add failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (id, key) = l.split_once(' ').expect("ID KEY");
            (id.to_string(), DeviceKey::from_hex(key).expect("a hex key"))
        })
        .collect()
}

/// `constellation serve` on `addr` over `urls`, its admin listener on
/// `admin` with the bearer token in `token` ([`ADMIN_TOKEN`]), aggregating
/// in the exact mode (k distinct devices, no noise: the checker counts
/// them), with no minimum sync interval (at most 50 tries, 100 ms apart,
/// while the previous process's socket goes away).
fn serve_pg(
    bin: &Path,
    urls: &[String],
    secret: &Path,
    addr: SocketAddr,
    admin: SocketAddr,
    token: &Path,
) -> Served {
    for _ in 0..50 {
        let mut child = Command::new(bin)
            .arg("serve")
            .args(db_args(urls))
            .arg("--master-secret")
            .arg(secret)
            .args([
                "--listen",
                &addr.to_string(),
                "--admin-listen",
                &admin.to_string(),
                "--min-sync-interval",
                "0",
                "--no-dp",
                "--log-level",
                "error",
            ])
            .arg("--admin-token-file")
            .arg(token)
            .args(["--k", &K.to_string(), "--aggregate-interval-ms", "500"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn constellation");
        let out = child.stdout.take().unwrap();
        // The admin address first, then one line once it listens.
        let mut r = BufReader::new(out);
        let (mut first, mut line) = (String::new(), String::new());
        let _ = r.read_line(&mut first);
        let _ = r.read_line(&mut line);
        if first.starts_with("admin listening on ") && line.starts_with("listening on ") {
            return Served(child, admin);
        }
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("constellation did not start on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_two_databases_survive_node_leader_and_database_faults() {
    let Some(pg1) = pg_support::private_cluster() else {
        return;
    };
    let Some(pg2) = pg_support::private_cluster() else {
        return;
    };
    let pg1 = Arc::new(pg1);
    let urls = vec![pg1.database(), pg2.database()];
    let bin = constellation_bin();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("master-secret");
    let cat = Arc::new(model::Catalog::load().unwrap());
    let cb = omega_tv_sync::codec::minilm_v1().unwrap();

    let mut cfg = fleet::Args::default().sim;
    cfg.devices = 300;
    cfg.rounds = 12;
    cfg.seed = 5;
    cfg.concurrency = 16;
    cfg.faults = Faults {
        drop: 0.01,
        offline: 0.01,
        twin: 0.02,
    };
    let ids: Vec<String> = (0..cfg.devices).map(fleet::device_id).collect();
    cfg.keys = Some(Arc::new(enrol_pg(&bin, &urls, &secret, &ids)));
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|_| ([127, 0, 0, 1], free_port()).into())
        .collect();
    let admins: Vec<SocketAddr> = (0..3)
        .map(|_| ([127, 0, 0, 1], free_port()).into())
        .collect();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let nodes: Vec<Served> = addrs
        .iter()
        .zip(&admins)
        .map(|(&a, &m)| serve_pg(&bin, &urls, &secret, a, m, &token))
        .collect();
    let list: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    let net = Nodes::new(&list.join(",")).unwrap();

    // The faults, each at a share of the run's applied syncs, with the
    // fleet gated so that none can fall after its end however fast the
    // machine: the fleet may run up to `allowed` percent of its syncs; each
    // fault, once started, lets it run on to the next fault's gate. The
    // leader fault lets it on right after the kill, since a new leader shows
    // by publishing what the fleet uploads after it; the last gate (95%)
    // opens once the database fault is done. Bounded: the thread gives up
    // waiting after 240 s, and so does every hold.
    let total = (cfg.devices as u64) * u64::from(cfg.rounds);
    let progress = Arc::new(AtomicU64::new(0));
    let allowed = Arc::new(AtomicU64::new(20));
    let allowed2 = allowed.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, progress2, bin2, urls2, secret2, addrs2, pg1b) = (
        stop.clone(),
        progress.clone(),
        bin.clone(),
        urls.clone(),
        secret.clone(),
        addrs.clone(),
        pg1.clone(),
    );
    let (admins2, token2) = (admins.clone(), token.clone());
    let faults = std::thread::spawn(move || {
        // Opens every gate when the thread ends, by a panic too.
        struct OpenOnDrop(Arc<AtomicU64>);
        impl Drop for OpenOnDrop {
            fn drop(&mut self) {
                self.0.store(100, Ordering::Relaxed);
            }
        }
        let _open = OpenOnDrop(allowed2.clone());
        let mut nodes = nodes;
        let mut done: Vec<&'static str> = Vec::new();
        let mut takeover_s: Option<f64> = None;
        let mut lead_s: Option<f64> = None;
        let deadline = Instant::now() + Duration::from_secs(240);
        let wait_for = |pct: u64| {
            while progress2.load(Ordering::Relaxed) < total * pct / 100
                && !stop2.load(Ordering::Relaxed)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            !stop2.load(Ordering::Relaxed) && Instant::now() < deadline
        };
        // 1. SIGKILL a node that is not the leader; restart it.
        if wait_for(15) {
            let l = leader(&admins2).expect("a node aggregates");
            let victim = (l + 1) % 3;
            nodes[victim].kill();
            allowed2.store(40, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(300));
            nodes[victim] = serve_pg(
                &bin2,
                &urls2,
                &secret2,
                addrs2[victim],
                admins2[victim],
                &token2,
            );
            done.push("node");
        }
        // 2. SIGKILL the leader; another node takes over. Measured: from
        // the kill to the first new global version, read through a
        // surviving node. The old leader is restarted after that.
        if wait_for(35) {
            let l = leader(&admins2).expect("a node aggregates");
            let other = addrs2[(l + 1) % 3];
            let v0 = version(other).expect("the version answers");
            nodes[l].kill();
            allowed2.store(95, Ordering::Relaxed);
            let t0 = Instant::now();
            let survivors: Vec<SocketAddr> =
                (0..3).filter(|&i| i != l).map(|i| admins2[i]).collect();
            while t0.elapsed() < Duration::from_secs(60) && takeover_s.is_none() {
                if lead_s.is_none() && survivors.iter().any(|&a| leads(a) == Some(true)) {
                    lead_s = Some(t0.elapsed().as_secs_f64());
                }
                if version(other).is_some_and(|v| v > v0) {
                    takeover_s = Some(t0.elapsed().as_secs_f64());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(leader(&survivors).is_some(), "a surviving node leads");
            nodes[l] = serve_pg(&bin2, &urls2, &secret2, addrs2[l], admins2[l], &token2);
            done.push("leader");
        }
        // 3. Immediate stop of the cluster with the global tables (a crash,
        // as far as PostgreSQL is concerned), down 1 s, restarted.
        if wait_for(60) {
            pg1b.stop_immediate();
            std::thread::sleep(Duration::from_secs(1));
            pg1b.restart();
            done.push("database");
        }
        allowed2.store(100, Ordering::Relaxed);
        (nodes, done, lead_s, takeover_s)
    });

    let h = net.clone();
    let p = progress.clone();
    let hold_deadline = Instant::now() + Duration::from_secs(240);
    let mut result = sim::run(cat, cb, cfg.clone(), move || h.clone(), &move |n| {
        p.store(n, Ordering::Relaxed);
        while n > total * allowed.load(Ordering::Relaxed) / 100 && Instant::now() < hold_deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (nodes, done, lead_s, takeover_s) = faults.join().unwrap();
    assert!(
        result.counters.fatal.is_none(),
        "{:?}",
        result.counters.fatal
    );
    let applied = result.samples.iter().filter(|s| s.applied).count();
    eprintln!(
        "faults during the run: {done:?}; leader killed -> a survivor leads: {:?} s, \
         -> the next global version: {:?} s; \
         applied {applied}; transport errors {}; retries {}; twins {}; wall {:.1} s",
        lead_s.map(|s| (s * 10.0).round() / 10.0),
        takeover_s.map(|s| (s * 10.0).round() / 10.0),
        result.counters.transport_errors,
        result.counters.retries,
        result.counters.twins,
        result.wall_s
    );
    assert_eq!(
        done,
        ["node", "leader", "database"],
        "every fault fell inside the run"
    );
    assert!(
        takeover_s.is_some(),
        "global publication resumed after the leader died"
    );
    assert!(result.counters.twins > 0, "stale twins synced");
    assert_eq!(result.counters.stuck, 0);

    let h = net.clone();
    let unsettled = fleet::settle::settle(&mut result, move || h.clone(), 8).await;
    assert_eq!(unsettled, 0);
    let admin_list: Vec<String> = admins.iter().map(|a| format!("http://{a}")).collect();
    let mut t = Nodes::new(&admin_list.join(",")).unwrap();
    let v = check::check_all(&result.tvs, &mut t, ADMIN_TOKEN)
        .await
        .unwrap();
    eprintln!(
        "checked {}: lost {}, duplicated {}; acks shared by two sessions {}",
        v.checked, v.lost_updates, v.duplicates_applied, v.shared_acks
    );
    assert!(v.checked > 1000, "checked {}", v.checked);
    assert_eq!(v.lost_updates, 0, "acknowledged updates lost");
    assert_eq!(v.duplicates_applied, 0, "updates applied twice");

    // The leader drains both databases' queues; then every live global,
    // read through each node, is backed by at least k devices.
    std::thread::sleep(Duration::from_secs(3));
    let globals = live_globals(addrs[0]);
    assert!(!globals.is_empty(), "globals were published");
    for &a in &addrs[1..] {
        assert_eq!(live_globals(a), globals, "every node serves the same feed");
    }
    let thin: Vec<_> = globals.iter().filter(|(_, &c)| c < K).collect();
    assert!(thin.is_empty(), "globals below k devices: {thin:?}");
    eprintln!("live globals: {} (each >= {K} devices)", globals.len());
    drop(nodes);
}
