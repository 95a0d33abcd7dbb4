//! One protocol suite, two backends: every test here runs against the redb
//! file and against PostgreSQL (a private cluster, `pg_support`), through
//! the real server on loopback. Then what only PostgreSQL can do: two nodes
//! on one database, and the device commands against a running deployment.
//!
//! Without PostgreSQL binaries the `postgres` cases print one loud line and
//! pass, unless `OTS_REQUIRE_PG=1`.

mod common;
mod pg_support;

use std::sync::Arc;

use common::*;
use constellation::{AuthConfig, Config, MasterSecret, Server, ServerHandle};
use omega_tv_sync::transport::auth::{format_header, sign, HEADER_MAX};
use omega_tv_sync::wire::{crc32, Record};
use omega_tv_sync::DeviceKey;
use omega_tv_sync_http::HttpTransport;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Redb,
    Postgres,
}

/// Where a test's server keeps its data; dropped at the end of the test.
struct Db {
    _dir: tempfile::TempDir,
    _pg: Option<Arc<pg_support::PgCluster>>,
    cfg: Config,
}

/// A server config (that of `common::config`) on a fresh database of
/// `backend`; `None` when PostgreSQL is not installed (skip).
fn db(backend: Backend) -> Option<Db> {
    let (dir, path) = temp_db();
    let mut cfg = config(&path);
    let pg = match backend {
        Backend::Redb => None,
        Backend::Postgres => {
            let pg = pg_support::cluster()?;
            cfg.db = None;
            cfg.postgres = vec![pg.database()];
            Some(pg)
        }
    };
    Some(Db {
        _dir: dir,
        _pg: pg,
        cfg,
    })
}

async fn start(cfg: &Config) -> ServerHandle {
    Server::start(cfg.clone()).await.expect("server starts")
}

/// Runs `$name(Backend)` as two tests, `$name::redb` and `$name::postgres`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redb() {
                super::$name(super::Backend::Redb).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

both!(
    exactly_once,
    conflicts,
    bad_inputs,
    auth,
    feed_paging_and_k_anonymity
);

async fn exactly_once(b: Backend) {
    let Some(db) = db(b) else { return };
    let srv = start(&db.cfg).await;
    let addr = srv.local_addr();
    let mut t = HttpTransport::new(&srv.url()).unwrap();
    let v = patterns();
    let items = [
        Up::abs("p1", quantize(&v[0])),
        Up::abs("p2", quantize(&v[1])),
        Up::abs("p3", quantize(&v[2])),
    ];
    let body = upload(1, 0, &items);
    let (s1, r1) = sync(&mut t, "tv-1", 0, &body).await;
    assert_eq!(s1, 200);
    let (s2, r2) = sync(&mut t, "tv-1", 0, &body).await;
    let raw2 = post_sync(addr, "tv-1", "0", &body);
    assert_eq!((s2, raw2.status), (200, 200));
    assert_eq!(r2, r1, "a retry gets the first response byte for byte");
    assert_eq!(raw2.body, r1);
    assert_eq!(raw2.header("x-replayed"), Some("true"));
    let st = srv.device_state("tv-1").unwrap();
    assert_eq!((st.last_seq, st.syncs, st.patterns.len()), (Some(1), 1, 3));
    for (p, u) in st.patterns.iter().zip(&items) {
        assert_eq!(p.revision, 1, "applied once");
        assert_eq!(p.codes, u.codes.to_vec());
    }
    assert_eq!(metric(admin(&srv), "constellation_syncs_total"), 1.0);
    assert_eq!(
        metric(admin(&srv), "constellation_retries_replayed_total"),
        2.0
    );
    // A delta on the acknowledged codes lands exactly on the new codes.
    let newer = quantize(&v[10]);
    let body = upload(2, 0, &[Up::delta("p1", 1, items[0].codes, newer)]);
    assert_eq!(sync(&mut t, "tv-1", 0, &body).await.0, 200);
    let st = srv.device_state("tv-1").unwrap();
    let p1 = st.patterns.iter().find(|p| p.id == "p1").unwrap();
    assert_eq!((p1.revision, p1.sample_count), (2, 25));
    assert_eq!(p1.codes, newer.to_vec());
    // The same request from many connections at once: applied once.
    let body = upload(3, 0, &[Up::delta("p2", 1, items[1].codes, newer)]);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || post_sync(addr, "tv-1", "0", &body))
        })
        .collect();
    let answers: Vec<Raw> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for a in &answers {
        assert_eq!(a.status, 200);
        assert_eq!(a.body, answers[0].body);
    }
    let st = srv.device_state("tv-1").unwrap();
    assert_eq!((st.last_seq, st.syncs), (Some(3), 3));
    let p2 = st.patterns.iter().find(|p| p.id == "p2").unwrap();
    assert_eq!(p2.revision, 2);
    srv.shutdown().await;
}

async fn conflicts(b: Backend) {
    let Some(db) = db(b) else { return };
    let srv = start(&db.cfg).await;
    let mut a = HttpTransport::new(&srv.url()).unwrap();
    let mut bb = HttpTransport::new(&srv.url()).unwrap();
    let v = patterns();
    let base = quantize(&v[0]);
    let first = upload(1, 0, &[Up::abs("p1", base)]);
    assert_eq!(sync(&mut a, "tv-9", 0, &first).await.0, 200);
    let qa = quantize(&v[3]);
    let up = upload(2, 0, &[Up::delta("p1", 1, base, qa)]);
    assert_eq!(sync(&mut a, "tv-9", 0, &up).await.0, 200);
    // A second session still on revision 1.
    let qb = quantize(&v[4]);
    let stale = upload(3, 0, &[Up::delta("p1", 1, base, qb)]);
    let (s, resp) = sync(&mut bb, "tv-9", 0, &stale).await;
    assert_eq!(s, 200);
    let recs = records(&resp);
    let Record::Conflict(c) = &recs[1] else {
        panic!("expected a conflict, got {:?}", recs[1]);
    };
    assert_eq!(c.server_rev, 2);
    let state = c.state.as_ref().expect("server state fits");
    let mut server_codes = [0i16; omega_tv_sync::DIM];
    book().decode(state.code, None, &mut server_codes).unwrap();
    assert_eq!(server_codes, qa, "the conflict carries the server's codes");
    let st = srv.device_state("tv-9").unwrap();
    assert_eq!(
        (st.patterns[0].revision, st.patterns[0].codes.clone()),
        (2, qa.to_vec()),
        "nothing overwritten"
    );
    let merged = upload(4, 0, &[Up::delta("p1", 2, qa, qb)]);
    let (s, resp) = sync(&mut bb, "tv-9", 0, &merged).await;
    assert_eq!(s, 200);
    assert!(matches!(&records(&resp)[1], Record::Ack(a) if a.revision == 3));
    assert_eq!(
        srv.device_state("tv-9").unwrap().patterns[0].codes,
        qb.to_vec()
    );
    assert_eq!(metric(admin(&srv), "constellation_conflicts_total"), 1.0);
    srv.shutdown().await;
}

fn patch_crc(f: &mut [u8]) {
    let n = f.len() - 4;
    let c = crc32(&f[..n]);
    f[n..].copy_from_slice(&c.to_le_bytes());
}

async fn bad_inputs(b: Backend) {
    let Some(db) = db(b) else { return };
    let srv = start(&db.cfg).await;
    let addr = srv.local_addr();
    let v = patterns();
    let ok = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    assert_eq!(post_sync(addr, "tv-2", "0", &ok).status, 200);
    let before = srv.device_state("tv-2").unwrap();
    let version_before = srv.global_version().unwrap();
    let good = upload(2, 0, &[Up::abs("p2", quantize(&v[1]))]);
    let ct = ("Content-Type", "application/octet-stream");
    let hdrs = [("X-Device-ID", "tv-2"), ("X-Sync-Version", "0"), ct];
    let post = |h: &[(&str, &str)], b: &[u8]| raw(addr, "POST", "/api/v1/sync", h, b);
    let mut cases: Vec<(&str, Raw, u16, &str)> = vec![
        (
            "no device id",
            post(&[("X-Sync-Version", "0"), ct], &good),
            400,
            "missing_device_id",
        ),
        (
            "bad version",
            post(
                &[("X-Device-ID", "tv-2"), ("X-Sync-Version", "x1"), ct],
                &good,
            ),
            400,
            "invalid_sync_version",
        ),
        (
            "truncated",
            post(&hdrs, &good[..good.len() / 2]),
            400,
            "checksum",
        ),
    ];
    let mut nan = good.clone();
    let pos = nan
        .windows(4)
        .position(|w| w == 0.8f32.to_le_bytes())
        .expect("rate bytes");
    nan[pos..pos + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    patch_crc(&mut nan);
    cases.push(("nan", post(&hdrs, &nan), 400, "non_finite"));
    let unknown = upload_with(0xdead_beef, 2, 0, caps(), &[Up::abs("p2", quantize(&v[1]))]);
    cases.push((
        "unknown codebook",
        post(&hdrs, &unknown),
        422,
        "unknown_codebook",
    ));
    let reused = upload(1, 0, &[Up::abs("p1", quantize(&v[5]))]);
    cases.push(("reused seq", post(&hdrs, &reused), 409, "sequence_reused"));
    let stale = upload(0, 0, &[Up::abs("p1", quantize(&v[5]))]);
    cases.push(("stale seq", post(&hdrs, &stale), 409, "stale_sequence"));
    // A delta against a revision the server never had.
    let ghost = upload(
        2,
        0,
        &[Up::delta("p9", 4, quantize(&v[2]), quantize(&v[3]))],
    );
    let g = post(&hdrs, &ghost);
    for (name, r, status, code) in &cases {
        assert_eq!(r.status, *status, "{name}: status");
        assert_eq!(r.json()["error"], *code, "{name}: code");
        if *status == 409 {
            assert_eq!(r.json()["last_seq"], 1, "{name}: last_seq");
        }
    }
    // The ghost delta is answered per record (not applied) or refused;
    // either way the pattern does not appear.
    assert!(
        g.status == 200 || (400..500).contains(&g.status),
        "{}",
        g.status
    );
    let after = srv.device_state("tv-2").unwrap();
    assert!(after.patterns.iter().all(|p| p.id != "p9"));
    if g.status != 200 {
        assert_eq!(after, before, "nothing stored");
    }
    assert_eq!(srv.global_version().unwrap(), version_before);
    let h = raw(addr, "GET", "/api/v1/health", &[], &[]);
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));
    let next = srv.device_state("tv-2").unwrap().last_seq.unwrap() + 1;
    let good = upload(next, 0, &[Up::abs("p2", quantize(&v[1]))]);
    assert_eq!(post_sync(addr, "tv-2", "0", &good).status, 200);
    assert!(srv
        .device_state("tv-2")
        .unwrap()
        .patterns
        .iter()
        .any(|p| p.id == "p2"));
    srv.shutdown().await;
}

fn authz(key: &DeviceKey, device: &str, counter: u64, body: &[u8]) -> String {
    let sig = sign(key, "POST", "/api/v1/sync", device, counter, body).unwrap();
    let mut buf = [0u8; HEADER_MAX];
    format_header(counter, &sig, &mut buf).to_string()
}

fn post_signed(addr: std::net::SocketAddr, device: &str, auth: Option<&str>, body: &[u8]) -> Raw {
    let mut h = vec![
        ("X-Device-ID", device),
        ("X-Sync-Version", "0"),
        ("Content-Type", "application/octet-stream"),
    ];
    if let Some(a) = auth {
        h.push(("Authorization", a));
    }
    raw(addr, "POST", "/api/v1/sync", &h, body)
}

async fn auth(b: Backend) {
    let Some(mut db) = db(b) else { return };
    db.cfg.auth = AuthConfig::with_master(MasterSecret::from_bytes([0x5a; 32]));
    let srv = start(&db.cfg).await;
    let addr = srv.local_addr();
    let key = srv.enrol("tv-a").await.unwrap();
    let v = patterns();
    let body1 = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    let r = post_signed(addr, "tv-a", Some(&authz(&key, "tv-a", 5, &body1)), &body1);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body2 = upload(2, 0, &[Up::abs("p2", quantize(&v[1]))]);
    let other = DeviceKey::new([1; 32]);
    let before = srv.device_state("tv-a").unwrap();
    for (what, dev, auth, body, code) in [
        ("missing", "tv-a", None, &body2, "missing_auth"),
        (
            "unknown device",
            "tv-zz",
            Some(authz(&key, "tv-zz", 6, &body2)),
            &body2,
            "unauthorized",
        ),
        (
            "wrong key",
            "tv-a",
            Some(authz(&other, "tv-a", 6, &body2)),
            &body2,
            "unauthorized",
        ),
        (
            "replayed counter",
            "tv-a",
            Some(authz(&key, "tv-a", 5, &body1)),
            &body1,
            "replayed_counter",
        ),
    ] {
        let r = post_signed(addr, dev, auth.as_deref(), body);
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (401, Some(code)),
            "{what}"
        );
        assert_eq!(srv.device_state("tv-a").unwrap(), before, "{what}");
    }
    // Racing copies of one signed request: exactly one applies.
    for i in 0..10u64 {
        let seq = i + 2;
        let body = upload(seq, 0, &[Up::abs("p1", quantize(&v[i as usize + 3]))]);
        let a = authz(&key, "tv-a", seq + 5, &body);
        let (a2, b2) = (a.clone(), body.clone());
        let t = std::thread::spawn(move || post_signed(addr, "tv-a", Some(&a2), &b2));
        let r1 = post_signed(addr, "tv-a", Some(&a), &body);
        let r2 = t.join().unwrap();
        let mut st = [r1.status, r2.status];
        st.sort();
        assert_eq!(st, [200, 401], "round {i}");
        let s = srv.device_state("tv-a").unwrap();
        assert_eq!((s.syncs, s.last_seq), (seq, Some(seq)), "applied once");
    }
    assert!(srv.revoke("tv-a").await.unwrap());
    let body = upload(20, 0, &[]);
    let r = post_signed(addr, "tv-a", Some(&authz(&key, "tv-a", 100, &body)), &body);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("unauthorized"))
    );
    srv.shutdown().await;
}

/// Six devices share four patterns (k = 5 publishes them); four share a
/// fifth (below k: never published).
fn populate(addr: std::net::SocketAddr) {
    let v = patterns();
    for d in 0..6 {
        let mut items: Vec<Up> = (0..4usize)
            .map(|g| Up::abs(["p0", "p1", "p2", "p3"][g], quantize(&v[g * 97])))
            .collect();
        if d < 4 {
            items.push(Up::abs("lonely", quantize(&v[1500])));
        }
        let r = post_sync(addr, &format!("tv-{d}"), "0", &upload(1, 0, &items));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
}

fn feed(addr: std::net::SocketAddr, q: &str) -> Raw {
    raw(addr, "GET", &format!("/api/v1/global?{q}"), &[], &[])
}

async fn feed_paging_and_k_anonymity(b: Backend) {
    let Some(db) = db(b) else { return };
    let srv = start(&db.cfg).await;
    let addr = srv.local_addr();
    populate(addr);
    let published = srv.aggregate_now().await.unwrap();
    let current = srv.global_version().unwrap();
    assert!(published >= 4, "published {published}");
    assert_eq!(current as usize, published);
    let all = feed(addr, "since=0");
    let full = versions(&all.body);
    assert_eq!(full, (1..=current).collect::<Vec<_>>());
    // Only the four groups of >= k devices: "lonely" (4 devices) is not.
    let globals: Vec<u32> = records(&all.body)
        .iter()
        .filter_map(|r| match r {
            Record::GlobalUpsert(g) => {
                assert!(g.contributors >= 5, "{g:?}");
                Some(g.contributors)
            }
            _ => None,
        })
        .collect();
    assert_eq!(globals.len(), 4);
    // Since V: exactly the versions after V.
    for since in 0..=current {
        let r = feed(addr, &format!("since={since}"));
        assert_eq!(
            versions(&r.body),
            ((since + 1)..=current).collect::<Vec<_>>()
        );
    }
    // Paged by limit: nothing lost or repeated.
    let mut since = 0;
    let mut got = Vec::new();
    for _ in 0..100 {
        let r = feed(addr, &format!("since={since}&limit=1"));
        let h = head(&r.body);
        got.extend(versions(&r.body));
        since = h.global_version;
        if !h.more {
            break;
        }
    }
    assert_eq!((since, got), (current, full));
    // A fifth device brings "lonely" to k: published on the next pass.
    let fifth = Up::abs("lonely", quantize(&patterns()[1500]));
    assert_eq!(
        post_sync(addr, "tv-fifth", "0", &upload(1, 0, &[fifth])).status,
        200
    );
    assert!(srv.aggregate_now().await.unwrap() >= 1);
    let r = feed(addr, &format!("since={current}"));
    assert!(records(&r.body)
        .iter()
        .any(|r| matches!(r, Record::GlobalUpsert(g) if g.contributors == 5)));
    srv.shutdown().await;
}

/// Two nodes on one PostgreSQL database: the same request sent to both at
/// once is applied once (one answer is the replay of the other), and a
/// stale session on one node conflicts with what the other applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_stay_exactly_once() {
    let Some(db) = db(Backend::Postgres) else {
        return;
    };
    let a = start(&db.cfg).await;
    let b = start(&db.cfg).await;
    let (aa, ba) = (a.local_addr(), b.local_addr());
    let v = patterns();
    for d in 0..6 {
        let dev = format!("tv-{d}");
        let mut codes = quantize(&v[d]);
        for seq in 1..=5u64 {
            let next = quantize(&v[d + 10 * seq as usize]);
            let up = if seq == 1 {
                Up::abs("p1", next)
            } else {
                Up::delta("p1", seq as u32 - 1, codes, next)
            };
            codes = next;
            let body = upload(seq, 0, &[up]);
            let (d2, b2) = (dev.clone(), body.clone());
            let t = std::thread::spawn(move || post_sync(ba, &d2, "0", &b2));
            let r1 = post_sync(aa, &dev, "0", &body);
            let r2 = t.join().unwrap();
            assert_eq!((r1.status, r2.status), (200, 200), "{dev} seq {seq}");
            assert_eq!(r1.body, r2.body, "{dev} seq {seq}: one answer");
            let replays = [&r1, &r2]
                .iter()
                .filter(|r| r.header("x-replayed") == Some("true"))
                .count();
            assert_eq!(replays, 1, "{dev} seq {seq}: one applied, one replayed");
        }
        // Both nodes read the same state: five revisions, five syncs.
        for srv in [&a, &b] {
            let st = srv.device_state(&dev).unwrap();
            assert_eq!((st.last_seq, st.syncs), (Some(5), 5));
            assert_eq!(st.patterns[0].revision, 5);
            assert_eq!(st.patterns[0].codes, codes.to_vec());
        }
        // A stale twin on the other node conflicts.
        let stale = upload(
            6,
            0,
            &[Up::delta("p1", 4, quantize(&v[0]), quantize(&v[1]))],
        );
        let r = post_sync(ba, &dev, "0", &stale);
        assert_eq!(r.status, 200);
        assert!(
            matches!(&records(&r.body)[1], Record::Conflict(c) if c.server_rev == 5),
            "{dev}"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// `constellation serve --db postgres://...` and the device commands
/// against the running deployment (no stop needed): enrolled while
/// serving, a signed sync is accepted; revoked while serving, refused.
#[test]
fn device_commands_work_against_a_running_postgres_deployment() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let Some(pg) = pg_support::cluster() else {
        return;
    };
    let url = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("master-secret");
    let bin = env!("CARGO_BIN_EXE_constellation");
    let mut child = Command::new(bin)
        .args(["serve", "--db", &url, "--master-secret"])
        .arg(&secret)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--log-level", "warn"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: std::net::SocketAddr = loop {
        let l = lines.next().expect("server printed its address").unwrap();
        if let Some(a) = l.strip_prefix("listening on ") {
            break a.trim().parse().unwrap();
        }
    };
    let device = |op: &str| {
        Command::new(bin)
            .args(["device", op, "--db", &url, "--master-secret"])
            .arg(&secret)
            .arg("tv-1")
            .output()
            .unwrap()
    };
    // Without --master-secret, PostgreSQL has no default path: refused.
    let out = Command::new(bin)
        .args(["device", "add", "--db", &url, "tv-1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = device("add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (_, k) = text.trim().split_once(' ').unwrap();
    let key = DeviceKey::from_hex(k).unwrap();
    let out = device("tls-psk");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("tv-1:{}", constellation::auth::hex(&key.tls_psk()))
    );
    let v = patterns();
    let body = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    assert_eq!(post_sync(addr, "tv-1", "0", &body).status, 401);
    let r = post_signed(addr, "tv-1", Some(&authz(&key, "tv-1", 1, &body)), &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let out = device("remove");
    assert!(out.status.success());
    let body = upload(2, 0, &[]);
    let r = post_signed(addr, "tv-1", Some(&authz(&key, "tv-1", 2, &body)), &body);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The database stops (immediate shutdown, as in a crash) under a running
/// node: a sync gets `503` with `Retry-After` and nothing is stored; once
/// the database is back, the same request is applied exactly once and its
/// retry is a replay. The feed, the version and health answer 503 while
/// it is down, without the database's error text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_while_the_database_is_down_gets_503_and_applies_once_after() {
    let Some(pg) = pg_support::private_cluster() else {
        return;
    };
    let (_dir, path) = temp_db();
    let mut cfg = config(&path);
    cfg.db = None;
    cfg.postgres = vec![pg.database()];
    let srv = start(&cfg).await;
    let addr = srv.local_addr();
    let v = patterns();
    let q0 = quantize(&v[0]);
    let first = upload(1, 0, &[Up::abs("p1", q0)]);
    assert_eq!(post_sync(addr, "tv-1", "0", &first).status, 200);
    pg.stop_immediate();
    let body = upload(2, 0, &[Up::delta("p1", 1, q0, quantize(&v[7]))]);
    for _ in 0..3 {
        let r = post_sync(addr, "tv-1", "0", &body);
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.header("retry-after").is_some());
    }
    // The feed, the version and health answer 503 too, without error text.
    for path in [
        "/api/v1/global?limit=0&since=12345",
        "/api/v1/global",
        "/api/v1/sync/version",
        "/api/v1/health",
    ] {
        let r = raw(addr, "GET", path, &[], &[]);
        let text = String::from_utf8_lossy(&r.body).to_lowercase();
        assert_eq!(r.status, 503, "{path}: {text}");
        if path != "/api/v1/health" {
            assert!(r.header("retry-after").is_some(), "{path}");
        }
        for leak in ["postgres", "connection", "error:", "db error", "closed"] {
            assert!(!text.contains(leak), "{path} leaks {leak:?}: {text}");
        }
    }
    pg.restart();
    // Connections are re-established on demand; a request that still meets
    // a dead one is another 503, never a 500.
    let mut applied = None;
    for _ in 0..100 {
        let r = post_sync(addr, "tv-1", "0", &body);
        if r.status == 200 {
            applied = Some(r);
            break;
        }
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let applied = applied.expect("the sync applies once the database is back");
    assert_eq!(
        applied.header("x-replayed"),
        None,
        "applied now, not before"
    );
    let st = srv.device_state("tv-1").unwrap();
    assert_eq!((st.last_seq, st.syncs), (Some(2), 2));
    assert_eq!(st.patterns[0].revision, 2);
    assert_eq!(st.patterns[0].codes, quantize(&v[7]).to_vec());
    let again = post_sync(addr, "tv-1", "0", &body);
    assert_eq!(
        (again.status, again.header("x-replayed")),
        (200, Some("true"))
    );
    assert_eq!(again.body, applied.body);
    srv.shutdown().await;
}

/// Devices partitioned across two PostgreSQL clusters (`--db` twice), two
/// nodes with the same list: devices land on both databases (their rows are
/// on their own database and nowhere else), the same request sent to both
/// nodes at once is applied once, a stale twin conflicts, and globals
/// backed by devices of both databases are aggregated and published
/// through either node. A list in another order is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_partitioned_across_two_databases() {
    use constellation::store::postgres::{shard, PgOptions, PgStore};
    let Some(pg1) = pg_support::private_cluster() else {
        return;
    };
    let Some(pg2) = pg_support::private_cluster() else {
        return;
    };
    let urls = vec![pg1.database(), pg2.database()];
    let (_dir, path) = temp_db();
    let mut cfg = config(&path);
    cfg.db = None;
    cfg.postgres = urls.clone();
    let a = start(&cfg).await;
    let b = start(&cfg).await;
    let (aa, ba) = (a.local_addr(), b.local_addr());
    let v = patterns();
    let devices: Vec<String> = (0..8).map(|d| format!("tv-{d}")).collect();
    let on: Vec<usize> = devices.iter().map(|d| shard::database_of(d, 2)).collect();
    assert!(on.contains(&0) && on.contains(&1), "{on:?}");
    // Each device: the same request to both nodes at once, then a stale twin.
    for dev in &devices {
        let items: Vec<Up> = (0..2usize)
            .map(|g| Up::abs(["p0", "p1"][g], quantize(&v[g * 97])))
            .collect();
        let body = upload(1, 0, &items);
        let (d2, b2) = (dev.clone(), body.clone());
        let t = std::thread::spawn(move || post_sync(ba, &d2, "0", &b2));
        let r1 = post_sync(aa, dev, "0", &body);
        let r2 = t.join().unwrap();
        assert_eq!((r1.status, r2.status), (200, 200), "{dev}");
        assert_eq!(r1.body, r2.body, "{dev}: one answer");
        let replays = [&r1, &r2]
            .iter()
            .filter(|r| r.header("x-replayed") == Some("true"))
            .count();
        assert_eq!(replays, 1, "{dev}: one applied, one replayed");
        let next = quantize(&v[300]);
        let up = upload(2, 0, &[Up::delta("p0", 1, items[0].codes, next)]);
        assert_eq!(post_sync(ba, dev, "0", &up).status, 200);
        let stale = upload(3, 0, &[Up::delta("p0", 1, items[0].codes, next)]);
        let r = post_sync(aa, dev, "0", &stale);
        assert_eq!(r.status, 200);
        assert!(
            matches!(&records(&r.body)[1], Record::Conflict(c) if c.server_rev == 2),
            "{dev}"
        );
        for srv in [&a, &b] {
            let st = srv.device_state(dev).unwrap();
            assert_eq!((st.last_seq, st.syncs), (Some(3), 3), "{dev}");
        }
    }
    // The rows are on the device's database, and only there.
    for (i, url) in urls.iter().enumerate() {
        let one = PgStore::open(url, PgOptions::default()).unwrap();
        for (dev, &db) in devices.iter().zip(&on) {
            let rec = constellation::store::read(&one, |t| t.device(dev)).unwrap();
            assert_eq!(rec.is_some(), db == i, "{dev} on database {i}");
        }
        one.close();
    }
    // Globals from devices on both databases: one pass, through either
    // node's aggregator (whichever holds the leader lock), publishes both
    // patterns with all 8 contributors.
    let published = a.aggregate_now().await.unwrap() + b.aggregate_now().await.unwrap();
    assert!(published >= 2, "published {published}");
    for addr in [aa, ba] {
        let all = feed(addr, "since=0");
        let contributors: Vec<u32> = records(&all.body)
            .iter()
            .filter_map(|r| match r {
                Record::GlobalUpsert(g) => Some(g.contributors),
                _ => None,
            })
            .collect();
        assert_eq!(contributors.len(), 2, "{contributors:?}");
        assert!(contributors.iter().all(|&c| c == 8), "{contributors:?}");
    }
    a.shutdown().await;
    b.shutdown().await;
    // Every node must get the same list in the same order.
    let reversed = vec![urls[1].clone(), urls[0].clone()];
    let e = PgStore::open_all(&reversed, PgOptions::default())
        .err()
        .expect("a reordered --db list is refused");
    assert!(e.to_string().contains("same --db list"), "{e}");
}
