//! Hostile clients against a real server on loopback: idle connections,
//! trickled request heads, stalled bodies and connection floods, while a
//! signed device syncs. Every loop is bounded in count and time; the only
//! deadlines asserted are "closed by the server within 45 s".

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use constellation::{AuthConfig, MasterSecret, Server, ServerHandle};
use omega_tv_sync::transport::auth::{format_header, sign, HEADER_MAX};
use omega_tv_sync::DeviceKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any hostile connection may stay open.
const DEADLINE: Duration = Duration::from_secs(45);

fn authz(key: &DeviceKey, device: &str, counter: u64, body: &[u8]) -> String {
    let sig = sign(key, "POST", "/api/v1/sync", device, counter, body).unwrap();
    let mut buf = [0u8; HEADER_MAX];
    format_header(counter, &sig, &mut buf).to_string()
}

fn metric_of(srv: &ServerHandle, name: &str) -> f64 {
    constellation::metrics::scrape(&srv.metrics_text(), name).unwrap_or(0.0)
}

async fn start_hostile(
    db: &std::path::Path,
    f: impl FnOnce(&mut constellation::Config),
) -> ServerHandle {
    let mut c = config(db);
    c.auth = AuthConfig::with_master(MasterSecret::from_bytes([0x42; 32]));
    f(&mut c);
    Server::start(c).await.expect("server starts")
}

/// Reads until the server closes the connection (EOF or reset); returns
/// when, or `None` when still open after `DEADLINE`. Bytes the server sends
/// before closing (an error answer) are returned too.
async fn closed_within(s: &mut TcpStream, since: Instant) -> (Option<Duration>, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = DEADLINE.saturating_sub(since.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (None, got),
            Ok(Ok(0)) | Ok(Err(_)) => return (Some(since.elapsed()), got),
            Ok(Ok(n)) => {
                if got.len() < 64 * 1024 {
                    got.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
}

/// Connects; counts as closed by the server if that happens first.
async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// An idle connection: sends nothing.
async fn idle(addr: SocketAddr) -> Option<Duration> {
    let mut s = connect(addr).await;
    let t = Instant::now();
    closed_within(&mut s, t).await.0
}

/// Trickles a request head, one byte every 200 ms, never finishing it.
async fn trickle(addr: SocketAddr) -> Option<Duration> {
    let s = connect(addr).await;
    let t = Instant::now();
    let (mut r, mut w) = s.into_split();
    let head = b"POST /api/v1/sync HTTP/1.1\r\nHost: x\r\nX-Filler: ";
    let writer = async {
        // At most DEADLINE / 200 ms bytes: bounded.
        for i in 0..(DEADLINE.as_millis() / 200) as usize {
            let b = head.get(i).copied().unwrap_or(b'a');
            if w.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Still writing after the deadline: the server never closed.
        std::future::pending::<()>().await;
    };
    let mut buf = [0u8; 1024];
    let reader = async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
        _ = tokio::time::sleep(DEADLINE) => return None,
    }
    (t.elapsed() < DEADLINE).then(|| t.elapsed())
}

/// Sends a complete signed-looking head for a 100,000-byte body, then 10
/// bytes of it, then nothing. Returns when the server closed and what it
/// answered.
async fn stalled_body(addr: SocketAddr, auth: String) -> (Option<Duration>, Vec<u8>) {
    let mut s = connect(addr).await;
    let head = format!(
        "POST /api/v1/sync HTTP/1.1\r\nHost: x\r\nX-Device-ID: tv-stall\r\nX-Sync-Version: 0\r\n\
         Content-Type: application/octet-stream\r\nAuthorization: {auth}\r\nContent-Length: 100000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[0u8; 10]).await.unwrap();
    let t = Instant::now();
    closed_within(&mut s, t).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_trickling_and_stalled_connections_are_closed_while_a_signed_device_syncs() {
    const IDLE: usize = 400;
    const TRICKLE: usize = 50;
    const STALLED: usize = 20;
    const SYNCS: u64 = 50;
    let (_dir, db) = temp_db();
    let srv = start_hostile(&db, |c| {
        c.limits.header_read_timeout = Duration::from_secs(2);
        c.limits.idle_timeout = Duration::from_secs(3);
        c.limits.body_read_timeout = Duration::from_secs(3);
        c.limits.max_connections = 1000;
    })
    .await;
    let addr = srv.local_addr();
    let key = srv.enrol("tv-honest").await.unwrap();
    let stall_key = srv.enrol("tv-stall").await.unwrap();
    let started = Instant::now();

    // Connect in chunks of 50, each seen accepted by the server (bounded
    // wait) before the next: the kernel's accept queue never overflows.
    let mut idles = Vec::new();
    for chunk in 0..IDLE / 50 {
        for _ in 0..50 {
            idles.push(tokio::spawn(idle(addr)));
        }
        let want = ((chunk + 1) * 50) as f64;
        for _ in 0..200 {
            if metric_of(&srv, "constellation_connections_accepted_total") >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut trickles = Vec::new();
    for _ in 0..TRICKLE {
        trickles.push(tokio::spawn(trickle(addr)));
    }
    let mut stalls = Vec::new();
    for i in 0..STALLED {
        let a = authz(&stall_key, "tv-stall", i as u64 + 1, b"never sent in full");
        stalls.push(tokio::spawn(stalled_body(addr, a)));
    }
    // Let the attackers connect before the device starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut peak_open = metric_of(&srv, "constellation_connections_open");

    // The signed device: 50 real syncs, each a new pattern, on fresh
    // connections, while the attack runs.
    let v = patterns();
    let honest = tokio::task::spawn_blocking(move || {
        let mut latencies = Vec::new();
        for seq in 1..=SYNCS {
            let id: &'static str = Box::leak(format!("p{seq}").into_boxed_str());
            let body = upload(seq, 0, &[Up::abs(id, quantize(&v[seq as usize % v.len()]))]);
            let t = Instant::now();
            let r = raw(
                addr,
                "POST",
                "/api/v1/sync",
                &[
                    ("X-Device-ID", "tv-honest"),
                    ("X-Sync-Version", "0"),
                    ("Content-Type", "application/octet-stream"),
                    ("Authorization", &authz(&key, "tv-honest", seq, &body)),
                ],
                &body,
            );
            latencies.push(t.elapsed());
            assert_eq!(
                r.status,
                200,
                "sync {seq}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        latencies
    });
    // Sample the open-connection gauge while the device syncs.
    while !honest.is_finished() {
        peak_open = peak_open.max(metric_of(&srv, "constellation_connections_open"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut latencies = honest.await.unwrap();
    assert_eq!(
        srv.device_state("tv-honest").unwrap().patterns.len(),
        SYNCS as usize
    );

    let mut worst = [Duration::ZERO; 3];
    for (i, set) in [idles, trickles].into_iter().enumerate() {
        for h in set {
            let closed = h.await.unwrap();
            let d = closed.unwrap_or_else(|| {
                let m = srv.metrics_text();
                let m: Vec<&str> = m
                    .lines()
                    .filter(|l| {
                        l.starts_with("constellation_conn")
                            || l.starts_with("constellation_idle")
                            || l.starts_with("constellation_header")
                    })
                    .collect();
                panic!("a hostile connection (kind {i}) was still open after 45 s: {m:?}")
            });
            worst[i] = worst[i].max(d);
        }
    }
    for h in stalls {
        let (closed, answer) = h.await.unwrap();
        let d = closed.expect("a stalled body was still open after 45 s");
        worst[2] = worst[2].max(d);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 408") && text.contains("body_timeout"),
            "stalled body answer: {text}"
        );
    }
    // Nothing of the stalled device was stored, nor its counter moved.
    assert!(srv.device_state("tv-stall").unwrap().patterns.is_empty());
    assert!(metric_of(&srv, "constellation_idle_closed_total") >= IDLE as f64);
    assert!(metric_of(&srv, "constellation_header_timeouts_total") >= TRICKLE as f64);
    // Every connection is gone once the attack is over.
    let mut open = metric_of(&srv, "constellation_connections_open");
    for _ in 0..100 {
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        open = metric_of(&srv, "constellation_connections_open");
    }
    assert_eq!(open, 0.0, "connections left open");
    assert!(peak_open <= 1000.0);
    // Memory: the peak of this whole test process (the server, its 470
    // hostile connections and their clients, and whatever other test of
    // this file runs beside it) stays under the 200 MiB goal, so the
    // server's own does too.
    let hwm_kib: u64 = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    assert!(hwm_kib > 0, "VmHWM readable");
    assert!(hwm_kib < 200 * 1024, "peak RSS {hwm_kib} KiB");
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    println!(
        "figures: {IDLE} idle, {TRICKLE} trickling, {STALLED} stalled; peak open {peak_open}; \
         closed within idle {:?}, trickling {:?}, stalled {:?}; {SYNCS} syncs ok, p99 {p99:?}, max {:?}; \
         whole run {:?}; peak RSS of the test process {:.1} MiB",
        worst[0],
        worst[1],
        worst[2],
        latencies.last().unwrap(),
        started.elapsed(),
        hwm_kib as f64 / 1024.0
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_shed_and_oversized_heads_refused() {
    const CAP: usize = 20;
    const FLOOD: usize = 60;
    let (_dir, db) = temp_db();
    let srv = start_hostile(&db, |c| {
        // Long timeouts: only the cap can close these connections early.
        c.limits.header_read_timeout = Duration::from_secs(120);
        c.limits.idle_timeout = Duration::from_secs(120);
        c.limits.max_connections = CAP;
    })
    .await;
    let addr = srv.local_addr();
    let mut held = Vec::new();
    for _ in 0..FLOOD {
        held.push(connect(addr).await);
    }
    // Wait (bounded) until the server has seen every one of them.
    for _ in 0..200 {
        let seen = metric_of(&srv, "constellation_connections_open")
            + metric_of(&srv, "constellation_connections_shed_total");
        if seen >= FLOOD as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Shed connections are closed without an answer; the others stay.
    let mut shed = 0;
    let mut kept = Vec::new();
    for mut s in held {
        let mut b = [0u8; 16];
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => shed += 1,
            Ok(Ok(n)) => panic!("unexpected answer {:?}", &b[..n]),
            Err(_) => kept.push(s),
        }
    }
    assert_eq!(kept.len(), CAP, "held connections");
    assert_eq!(shed, FLOOD - CAP);
    assert_eq!(
        metric_of(&srv, "constellation_connections_open"),
        CAP as f64
    );
    assert_eq!(
        metric_of(&srv, "constellation_connections_shed_total"),
        (FLOOD - CAP) as f64
    );
    drop(kept);
    // The cap frees as soon as they are gone.
    let mut status = 0;
    for _ in 0..100 {
        if metric_of(&srv, "constellation_connections_open") == 0.0 {
            status = tokio::task::spawn_blocking(move || {
                raw(addr, "GET", "/api/v1/health", &[], &[]).status
            })
            .await
            .unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);

    // A head over max_header_bytes (16 KiB) is refused, the connection closed.
    let mut s = connect(addr).await;
    let big = format!(
        "GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let (closed, answer) = closed_within(&mut s, Instant::now()).await;
    assert!(closed.is_some());
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "oversized head answer: {text}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_beyond_the_cap_are_shed_and_silent_ones_time_out() {
    const CAP: usize = 5;
    const FLOOD: usize = 15;
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let db = dir.path().join("c.redb");
    let srv = start_hostile(&db, |c| {
        c.tls = Some(constellation::tls::TlsConfig { cert, key });
        c.limits.max_tls_handshakes = CAP;
        c.limits.tls_handshake_timeout = Duration::from_secs(2);
    })
    .await;
    let addr = srv.local_addr();
    let t = Instant::now();
    let mut held = Vec::new();
    for _ in 0..FLOOD {
        held.push(connect(addr).await);
    }
    // Silent clients: CAP wait in a handshake, the rest are shed at once;
    // all are closed by the server within the deadline.
    let mut closed = Vec::new();
    for mut s in held {
        closed.push(
            closed_within(&mut s, t)
                .await
                .0
                .expect("closed within 45 s"),
        );
    }
    assert_eq!(
        metric_of(&srv, "constellation_tls_handshakes_shed_total"),
        (FLOOD - CAP) as f64
    );
    // The counter follows the close: wait for it (bounded).
    let mut failed = 0.0;
    for _ in 0..100 {
        failed = metric_of(&srv, "constellation_tls_handshakes_failed_total");
        if failed >= CAP as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(failed, CAP as f64);
    println!(
        "figures: TLS silent handshakes closed within {:?}",
        closed.iter().max().unwrap()
    );
    srv.shutdown().await;
}

#[test]
fn limits_defaults_are_documented_values() {
    let l = constellation::Limits::default();
    assert_eq!(l.header_read_timeout, Duration::from_secs(10));
    assert_eq!(l.max_header_bytes, 16 * 1024);
    assert_eq!(l.body_read_timeout, Duration::from_secs(30));
    assert_eq!(l.idle_timeout, Duration::from_secs(30));
    assert_eq!(l.max_connections, 4096);
    assert_eq!(l.max_tls_handshakes, 256);
    assert_eq!(l.tls_handshake_timeout, Duration::from_secs(10));
}

/// Unknown, revoked and wrongly signed devices get one answer, byte for
/// byte (no `X-OTS-Signature`); only the metrics tell them apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_revoked_and_wrongly_signed_devices_get_one_answer() {
    let (_dir, db) = temp_db();
    let srv = start_hostile(&db, |_| {}).await;
    let addr = srv.local_addr();
    let key = srv.enrol("tv-ok").await.unwrap();
    let gone = srv.enrol("tv-gone").await.unwrap();
    assert!(srv.revoke("tv-gone").await.unwrap());
    let v = patterns();
    let body = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    let post = move |dev: &'static str, auth: String, body: Vec<u8>| {
        tokio::task::spawn_blocking(move || {
            raw(
                addr,
                "POST",
                "/api/v1/sync",
                &[
                    ("X-Device-ID", dev),
                    ("X-Sync-Version", "0"),
                    ("Content-Type", "application/octet-stream"),
                    ("Authorization", &auth),
                ],
                &body,
            )
        })
    };
    let answers = [
        post(
            "tv-nobody",
            authz(&key, "tv-nobody", 1, &body),
            body.clone(),
        )
        .await
        .unwrap(),
        post("tv-gone", authz(&gone, "tv-gone", 1, &body), body.clone())
            .await
            .unwrap(),
        post("tv-ok", authz(&gone, "tv-ok", 1, &body), body.clone())
            .await
            .unwrap(),
    ];
    for r in &answers {
        assert_eq!(r.status, 401);
        assert_eq!(r.body, answers[0].body);
        assert_eq!(r.header("x-ots-signature"), None);
        assert_eq!(r.header("www-authenticate"), Some("OTS1-HMAC-SHA256"));
    }
    assert_eq!(answers[0].json()["error"], "unauthorized");
    let auth = &srv.state().metrics.auth;
    for reason in ["unknown_device", "revoked", "bad_signature"] {
        assert_eq!(auth.failures_for(reason), 1, "{reason}");
    }
    // The genuine device still syncs.
    let ok = post("tv-ok", authz(&key, "tv-ok", 1, &body), body.clone())
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    srv.shutdown().await;
}

/// A request verified under one key generation is refused by the writer
/// when the device was enrolled again (a new key) before its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_refuses_a_request_whose_key_was_replaced_after_its_check() {
    use constellation::auth::{self, Presented};
    use constellation::store;
    use omega_tv_sync::transport::auth::body_hash;
    let (_dir, db) = temp_db();
    let srv = start_hostile(&db, |_| {}).await;
    let master = srv.state().config.auth.master.clone().unwrap();
    let key = srv.enrol("tv-k").await.unwrap();
    let body = b"any body".to_vec();
    let sig = sign(&key, "POST", "/api/v1/sync", "tv-k", 1, &body).unwrap();
    let presented = Presented { counter: 1, sig };
    let hash = body_hash(&body);
    let mut signer = None;
    let verified = store::read(&*srv.state().store, |t| {
        auth::verify(t, &master, "tv-k", &presented, &hash, &mut signer)
    })
    .unwrap()
    .expect("the signature verifies under generation 1");
    // Between the check and the commit: enrolled again.
    srv.enrol("tv-k").await.unwrap();
    let r = store::write(&*srv.state().store, move |txn| {
        auth::guarded(txn, "tv-k", Some(verified), |_| Ok(Ok(())))
    })
    .await
    .unwrap();
    let e = r.expect_err("refused");
    assert_eq!(
        (e.status, e.code, e.reason),
        (401, "unauthorized", Some("key_replaced"))
    );
    // Nothing moved: the new generation's counter is still 0.
    let en = auth::enrolment(&*srv.state().store, "tv-k")
        .unwrap()
        .unwrap();
    assert_eq!((en.generation, en.last_counter), (2, 0));
    srv.shutdown().await;
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `constellation serve` on `db`, its address once it listens.
fn serve_child(db: &std::path::Path) -> (std::process::Child, SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_constellation"))
        .args(["serve", "--db"])
        .arg(db)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--log-level", "warn"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn constellation");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let l = lines.next().expect("server printed its address").unwrap();
        if let Some(a) = l.strip_prefix("listening on ") {
            break a.trim().parse().unwrap();
        }
    };
    (child, addr)
}

/// Database, its sync journal and master secret are created 0600; SIGTERM
/// drains and exits 0 with the acknowledged sync on disk and the journal
/// empty; a master secret readable by group or others stops the server
/// from starting.
#[test]
fn sigterm_drains_files_are_0600_and_an_exposed_secret_is_refused() {
    let bin = env!("CARGO_BIN_EXE_constellation");
    let (dir, db) = temp_db();
    let out = std::process::Command::new(bin)
        .args(["device", "add", "--db"])
        .arg(&db)
        .arg("tv-1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let key = DeviceKey::from_hex(line.split_whitespace().nth(1).unwrap()).unwrap();
    let secret = dir.path().join("constellation.redb.master-secret");
    assert_eq!(mode_of(&db), 0o600, "database mode");
    assert_eq!(mode_of(&secret), 0o600, "master secret mode");

    let (mut child, addr) = serve_child(&db);
    let v = patterns();
    let body = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    let r = raw(
        addr,
        "POST",
        "/api/v1/sync",
        &[
            ("X-Device-ID", "tv-1"),
            ("X-Sync-Version", "0"),
            ("Content-Type", "application/octet-stream"),
            ("Authorization", &authz(&key, "tv-1", 1, &body)),
        ],
        &body,
    );
    assert_eq!(r.status, 200);
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let mut status = None;
    for _ in 0..450 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("still running 45 s after SIGTERM")
    });
    assert!(
        status.success(),
        "SIGTERM must drain and exit 0: {status:?}"
    );
    // The sync journal holds the same rows: private too; a clean stop
    // folded it into the database and emptied it.
    let journal = constellation::store::redb::journal::journal_path(&db);
    assert_eq!(mode_of(&journal), 0o600, "journal mode");
    assert_eq!(
        std::fs::metadata(&journal).unwrap().len(),
        0,
        "journal after a clean stop"
    );
    // The store was closed cleanly and holds the sync.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let srv = Server::start(config(&db)).await.unwrap();
        assert_eq!(srv.device_state("tv-1").unwrap().patterns.len(), 1);
        srv.shutdown().await;
    });

    // A master secret group or others may read: refused at start.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(bin)
        .args(["serve", "--db"])
        .arg(&db)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(out.stdout.is_empty(), "it must not listen");
}

/// A commit that fails (the file size limit of the process is reached:
/// `ulimit -f`, SIGXFSZ ignored, so writes fail with "File too large") is
/// answered `503 storage_unavailable` with `Retry-After` and a generic
/// message: no storage error text reaches the client.
#[test]
fn a_failed_commit_answers_503_with_retry_after_and_no_error_text() {
    use std::io::BufRead;
    let (_dir, db) = temp_db();
    let bin = env!("CARGO_BIN_EXE_constellation");
    let script = format!(
        "trap '' XFSZ; ulimit -f 8192; exec '{bin}' serve --db '{}' --listen 127.0.0.1:0 \
         --admin-listen off --min-sync-interval 0 --max-patterns-per-device 0 \
         --insecure-no-auth --log-level error",
        db.display()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let l = lines.next().expect("server printed its address").unwrap();
        if let Some(a) = l.strip_prefix("listening on ") {
            break a.trim().parse().unwrap();
        }
    };
    let v = patterns();
    let mut refused = None;
    // Bounded: 64 new patterns per sync until a commit fails.
    for seq in 1..=600u64 {
        let ups: Vec<Up> = (0..64)
            .map(|i| {
                let id: &'static str = Box::leak(format!("s{seq}-{i}").into_boxed_str());
                Up::abs(id, quantize(&v[(seq as usize * 64 + i) % v.len()]))
            })
            .collect();
        let body = upload(seq, 0, &ups);
        let r = post_sync(addr, "tv-fill", "0", &body);
        if r.status != 200 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the size limit was never reached");
    let text = String::from_utf8_lossy(&r.body).to_string();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r.status, 503, "{text}");
    assert_eq!(r.json()["error"], "storage_unavailable");
    assert!(r
        .header("retry-after")
        .is_some_and(|v| v.parse::<u32>().is_ok()));
    for leak in [
        "too large",
        "I/O",
        "io error",
        "Previous",
        "os error",
        "redb",
    ] {
        assert!(
            !text.to_lowercase().contains(&leak.to_lowercase()),
            "leaks {leak:?}: {text}"
        );
    }
}
