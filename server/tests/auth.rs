//! Device authentication end to end: a real server on loopback with a temp
//! redb file; every refused request is checked to leave the store unchanged
//! and to be counted in `constellation_auth_failures_total{code=...}`.

mod common;

use common::*;
use constellation::{AuthConfig, MasterSecret, Server, ServerHandle};
use omega_tv_sync::transport::auth::{format_header, sign, HEADER_MAX};
use omega_tv_sync::DeviceKey;

async fn start_auth(db: &std::path::Path) -> ServerHandle {
    let mut c = config(db);
    c.auth = AuthConfig::with_master(MasterSecret::from_bytes([0x5a; 32]));
    Server::start(c).await.expect("server starts")
}

fn authz(key: &DeviceKey, device: &str, counter: u64, body: &[u8]) -> String {
    let sig = sign(key, "POST", "/api/v1/sync", device, counter, body).unwrap();
    let mut buf = [0u8; HEADER_MAX];
    format_header(counter, &sig, &mut buf).to_string()
}

fn post_signed(
    addr: std::net::SocketAddr,
    device: &str,
    version: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Raw {
    let mut h = vec![
        ("X-Device-ID", device),
        ("X-Sync-Version", version),
        ("Content-Type", "application/octet-stream"),
    ];
    if let Some(a) = auth {
        h.push(("Authorization", a));
    }
    raw(addr, "POST", "/api/v1/sync", &h, body)
}

/// The code a client sees for an authentication failure counted under
/// `reason`: unknown, revoked and wrongly signed devices all get
/// `unauthorized` (the reason is only in the metrics).
fn wire_code(reason: &str) -> &str {
    match reason {
        "unknown_device" | "revoked" | "bad_signature" | "key_replaced" => "unauthorized",
        c => c,
    }
}

/// The whole body of every `401 unauthorized`.
const UNAUTHORIZED_BODY: &[u8] =
    br#"{"detail":"the request is not authorized","error":"unauthorized"}"#;

fn auth_failures(addr: std::net::SocketAddr, code: &str) -> f64 {
    metric(
        addr,
        &format!("constellation_auth_failures_total{{code=\"{code}\"}}"),
    )
}

/// Everything a refused request must leave alone: the device's state, its
/// enrolment (counter) and the metric of applied syncs.
fn snapshot(srv: &ServerHandle, device: &str) -> String {
    let st = srv.device_state(device).unwrap();
    let en = constellation::auth::enrolment(&*srv.state().store, device).unwrap();
    format!(
        "{st:?} {en:?} {}",
        metric(srv.local_addr(), "constellation_syncs_total")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_syncs_are_accepted_and_every_bad_one_is_refused_with_nothing_stored() {
    let (_dir, db) = temp_db();
    let srv = start_auth(&db).await;
    let addr = srv.local_addr();
    let key = srv.enrol("tv-a").await.unwrap();
    let v = patterns();
    let body1 = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);

    // Accepted.
    let r = post_signed(
        addr,
        "tv-a",
        "0",
        Some(&authz(&key, "tv-a", 5, &body1)),
        &body1,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(srv.device_state("tv-a").unwrap().patterns.len(), 1);
    let en = constellation::auth::enrolment(&*srv.state().store, "tv-a")
        .unwrap()
        .unwrap();
    assert_eq!(en.last_counter, 5);

    let body2 = upload(2, 0, &[Up::abs("p2", quantize(&v[1]))]);
    let good = authz(&key, "tv-a", 6, &body2);
    let other = DeviceKey::new([1; 32]);
    let before = snapshot(&srv, "tv-a");
    let mut flipped = good.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == '0' { '1' } else { '0' });
    let mut tampered = body2.clone();
    let n = tampered.len();
    tampered[n - 6] ^= 0x01; // inside the frame: the body hash changes
    type Case<'a> = (&'a str, &'a str, Option<String>, Vec<u8>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing header",
            "tv-a",
            None,
            body2.clone(),
            "missing_auth",
        ),
        (
            "malformed header",
            "tv-a",
            Some("Bearer abc".into()),
            body2.clone(),
            "malformed_auth",
        ),
        (
            "unknown device",
            "tv-zz",
            Some(authz(&key, "tv-zz", 6, &body2)),
            body2.clone(),
            "unknown_device",
        ),
        (
            "wrong key",
            "tv-a",
            Some(authz(&other, "tv-a", 6, &body2)),
            body2.clone(),
            "bad_signature",
        ),
        (
            "flipped signature bit",
            "tv-a",
            Some(flipped),
            body2.clone(),
            "bad_signature",
        ),
        (
            "body changed after signing",
            "tv-a",
            Some(good.clone()),
            tampered,
            "bad_signature",
        ),
        (
            "signed for another device",
            "tv-a",
            Some(authz(&key, "tv-b", 6, &body2)),
            body2.clone(),
            "bad_signature",
        ),
        (
            "replayed counter (same request)",
            "tv-a",
            Some(authz(&key, "tv-a", 5, &body1)),
            body1.clone(),
            "replayed_counter",
        ),
        (
            "reordered counter (older)",
            "tv-a",
            Some(authz(&key, "tv-a", 4, &body2)),
            body2.clone(),
            "replayed_counter",
        ),
    ];
    for (what, dev, auth, body, code) in &cases {
        let m0 = auth_failures(addr, code);
        let r = post_signed(addr, dev, "0", auth.as_deref(), body);
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(r.json()["error"], wire_code(code), "{what}");
        if wire_code(code) == "unauthorized" {
            // One answer, byte for byte, whatever the reason.
            assert_eq!(r.body, UNAUTHORIZED_BODY, "{what}");
            assert_eq!(r.header("x-ots-signature"), None, "{what}");
        }
        assert_eq!(
            r.header("www-authenticate"),
            Some("OTS1-HMAC-SHA256"),
            "{what}"
        );
        assert_eq!(auth_failures(addr, code), m0 + 1.0, "{what}: metric");
        assert_eq!(snapshot(&srv, "tv-a"), before, "{what}: store unchanged");
        assert!(srv.device_state("tv-zz").unwrap().last_seq.is_none());
    }
    // The replayed-counter answer tells the device where to continue.
    let r = post_signed(
        addr,
        "tv-a",
        "0",
        Some(&authz(&key, "tv-a", 5, &body2)),
        &body2,
    );
    assert_eq!(r.json()["last_counter"], 5);
    // The genuine request still goes through afterwards.
    let r = post_signed(addr, "tv-a", "0", Some(&good), &body2);
    assert_eq!(r.status, 200);
    assert_eq!(srv.device_state("tv-a").unwrap().patterns.len(), 2);
    // Health and metrics say authentication is on.
    let h = raw(addr, "GET", "/api/v1/health", &[], &[]);
    assert_eq!(h.json()["auth"], "required");
    assert_eq!(metric(addr, "constellation_auth_disabled"), 0.0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_lost_response_is_replayed_and_applied_once() {
    let (_dir, db) = temp_db();
    let srv = start_auth(&db).await;
    let addr = srv.local_addr();
    let key = srv.enrol("tv-r").await.unwrap();
    let v = patterns();
    let body = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    let first = post_signed(
        addr,
        "tv-r",
        "0",
        Some(&authz(&key, "tv-r", 1, &body)),
        &body,
    );
    assert_eq!(first.status, 200);
    // The response was lost: the device resends the same bytes, signed anew.
    let again = post_signed(
        addr,
        "tv-r",
        "0",
        Some(&authz(&key, "tv-r", 2, &body)),
        &body,
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    let st = srv.device_state("tv-r").unwrap();
    assert_eq!((st.syncs, st.patterns[0].revision), (1, 1), "applied once");
    let en = constellation::auth::enrolment(&*srv.state().store, "tv-r")
        .unwrap()
        .unwrap();
    assert_eq!(en.last_counter, 2, "the replay advanced the counter");
    // A validly signed request refused for another reason stores nothing,
    // not even its counter: 409 sequence_reused, counter stays at 2.
    let other = upload(1, 0, &[Up::abs("p9", quantize(&v[3]))]);
    let r = post_signed(
        addr,
        "tv-r",
        "0",
        Some(&authz(&key, "tv-r", 3, &other)),
        &other,
    );
    assert_eq!(r.status, 409);
    let en = constellation::auth::enrolment(&*srv.state().store, "tv-r")
        .unwrap()
        .unwrap();
    assert_eq!(en.last_counter, 2);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_client_syncs_signed_and_revocation_and_re_enrolment_work() {
    use omega_tv_sync::sync::{Config as ClientConfig, Outcome, SyncClient};
    use omega_tv_sync::{DeviceId, Pattern};
    let (_dir, db) = temp_db();
    let srv = start_auth(&db).await;
    let key = srv.enrol("tv-c").await.unwrap();
    let mut cfg = ClientConfig::new(DeviceId::new("tv-c").unwrap());
    cfg.auth_key = Some(key.clone());
    cfg.caps = caps();
    let mut c: SyncClient<'_, 8> = SyncClient::new(book(), cfg);
    let v = patterns();
    let p = |i: usize| Pattern {
        id: omega_tv_sync::PatternId::new(&format!("p{i}")).unwrap(),
        embedding: v[i].clone(),
        success_rate: 0.9,
        sample_count: 30,
        category: omega_tv_sync::Category::new("drama").unwrap(),
    };
    c.upsert(&p(0), 0).unwrap();
    let mut t = omega_tv_sync_http::HttpTransport::new(&srv.url()).unwrap();
    let (mut tx, mut rx) = (vec![0u8; 8192], vec![0u8; 256 * 1024]);
    let out = c
        .exchange(&mut t, &mut tx, &mut rx, 0, &mut ())
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Synced(s) if s.acked == 1));

    // Revoked: refused, nothing stored.
    assert!(srv.revoke("tv-c").await.unwrap());
    c.upsert(&p(1), 1).unwrap();
    let r = c.exchange(&mut t, &mut tx, &mut rx, 1, &mut ()).await;
    assert!(r.is_err());
    assert_eq!(srv.device_state("tv-c").unwrap().patterns.len(), 1);
    // Enrolled again: a new key; the old one is refused.
    let key2 = srv.enrol("tv-c").await.unwrap();
    assert_ne!(key, key2);
    let r = c.exchange(&mut t, &mut tx, &mut rx, 2, &mut ()).await;
    assert!(r.is_err());
    assert_eq!(srv.state().metrics.auth.failures_for("bad_signature"), 1);
    let mut cfg = c.config().clone();
    cfg.auth_key = Some(key2);
    let mut snap = vec![0u8; SyncClient::<8>::MAX_SNAPSHOT_LEN];
    let n = c.snapshot(&mut snap).unwrap();
    let mut c: SyncClient<'_, 8> = SyncClient::restore(book(), cfg, &snap[..n]).unwrap();
    c.upsert(&p(1), 3).unwrap();
    let out = c
        .exchange(&mut t, &mut tx, &mut rx, 3, &mut ())
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Synced(s) if s.acked == 1), "{out:?}");
    assert_eq!(srv.device_state("tv-c").unwrap().patterns.len(), 2);
    assert_eq!(srv.state().metrics.auth.failures_for("revoked"), 1);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_off_unsigned_requests_are_accepted() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await; // common::config turns it off
    let addr = srv.local_addr();
    let v = patterns();
    let body = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    assert_eq!(post_sync(addr, "tv-u", "0", &body).status, 200);
    let h = raw(addr, "GET", "/api/v1/health", &[], &[]);
    assert_eq!(h.json()["auth"], "DISABLED");
    assert_eq!(metric(addr, "constellation_auth_disabled"), 1.0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_does_not_start_with_auth_on_and_no_secret() {
    let (_dir, db) = temp_db();
    let mut c = config(&db);
    c.auth = AuthConfig {
        required: true,
        master: None,
    };
    assert!(matches!(
        Server::start(c).await,
        Err(constellation::StartError::NoMasterSecret)
    ));
}

/// `constellation device add` prints a key once; `serve` (auth on by
/// default) accepts requests signed with it; `device remove` revokes.
#[test]
fn cli_enrols_and_serve_requires_signatures() {
    use std::process::Command;
    let (dir, db) = temp_db();
    let bin = env!("CARGO_BIN_EXE_constellation");
    let out = Command::new(bin)
        .args(["device", "add", "--db"])
        .arg(&db)
        .args(["tv-1", "tv-2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let keys: Vec<(String, DeviceKey)> = text
        .lines()
        .map(|l| {
            let (id, k) = l.split_once(' ').unwrap();
            (id.to_string(), DeviceKey::from_hex(k).unwrap())
        })
        .collect();
    assert_eq!(keys.len(), 2);
    let secret = dir.path().join("constellation.redb.master-secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The database holds no key.
    let raw_db = std::fs::read(&db).unwrap();
    for (_, k) in &keys {
        assert!(!raw_db.windows(32).any(|w| w == k.as_bytes()));
    }
    // The TLS PSKs the terminator needs: the ones the devices derive.
    let out = Command::new(bin)
        .args(["device", "tls-psk", "--db"])
        .arg(&db)
        .args(["tv-1", "tv-2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let want: Vec<String> = keys
        .iter()
        .map(|(id, k)| format!("{id}:{}", constellation::auth::hex(&k.tls_psk())))
        .collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), want);
    let out = Command::new(bin)
        .args(["device", "remove", "--db"])
        .arg(&db)
        .arg("tv-2")
        .output()
        .unwrap();
    assert!(out.status.success());
    // A revoked (or unknown) device has no PSK, and nothing is printed.
    let out = Command::new(bin)
        .args(["device", "tls-psk", "--db"])
        .arg(&db)
        .args(["tv-1", "tv-2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());

    let mut child = std::process::Command::new(bin)
        .args(["serve", "--db"])
        .arg(&db)
        .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: std::net::SocketAddr = loop {
        let l = lines.next().unwrap().unwrap();
        if let Some(a) = l.strip_prefix("listening on ") {
            break a.trim().parse().unwrap();
        }
    };
    let v = patterns();
    let body = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    assert_eq!(post_sync(addr, "tv-1", "0", &body).status, 401);
    let ok = post_signed(
        addr,
        "tv-1",
        "0",
        Some(&authz(&keys[0].1, "tv-1", 1, &body)),
        &body,
    );
    assert_eq!(ok.status, 200);
    let revoked = post_signed(
        addr,
        "tv-2",
        "0",
        Some(&authz(&keys[1].1, "tv-2", 1, &body)),
        &body,
    );
    assert_eq!(
        (revoked.status, revoked.json()["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The hostile inputs of docs/reliability.md ("Authentication"), each tried
/// many times: every one must be a 401 with its code, counted in the metric,
/// with the store (device state, enrolment counter, applied syncs) unchanged.
/// Prints the table's rows (`cargo test -p constellation --test auth --
/// --nocapture hostile`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_refused_and_store_nothing() {
    let (_dir, db) = temp_db();
    let srv = start_auth(&db).await;
    let addr = srv.local_addr();
    let key = srv.enrol("tv-h").await.unwrap();
    let v = patterns();
    let body1 = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    let r = post_signed(
        addr,
        "tv-h",
        "0",
        Some(&authz(&key, "tv-h", 100, &body1)),
        &body1,
    );
    assert_eq!(r.status, 200);
    let body = upload(2, 0, &[Up::abs("p2", quantize(&v[1]))]);
    let good = authz(&key, "tv-h", 101, &body);
    let sig_at = good.find("sig=").unwrap() + 4;
    let before = snapshot(&srv, "tv-h");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };

    type Case = (String, &'static str, Vec<(String, Option<String>, Vec<u8>)>);
    let mut cases: Vec<Case> = Vec::new();
    cases.push((
        "no Authorization header".into(),
        "missing_auth",
        vec![("tv-h".into(), None, body.clone())],
    ));
    let malformed = [
        "",
        "Bearer abc",
        "OTS1-HMAC-SHA256",
        "OTS1-HMAC-SHA256 counter=101",
        "OTS1-HMAC-SHA256 counter=,sig=00",
        "OTS1-HMAC-SHA256 counter=-1,sig=",
        "OTS1-HMAC-SHA256 counter=99999999999999999999,sig=",
        "ots1-hmac-sha256 counter=101,sig=",
    ];
    let mut m: Vec<(String, Option<String>, Vec<u8>)> = malformed
        .iter()
        .map(|h| {
            let full = if h.ends_with("sig=") {
                format!("{h}{}", &good[sig_at..])
            } else {
                h.to_string()
            };
            ("tv-h".to_string(), Some(full), body.clone())
        })
        .collect();
    m.push(("tv-h".into(), Some(format!("{}0", good)), body.clone())); // 65 hex
    m.push((
        "tv-h".into(),
        Some(good[..good.len() - 1].to_string()),
        body.clone(),
    ));
    m.push((
        "tv-h".into(),
        Some(
            good.replace("sig=", "sig=zz")
                .chars()
                .take(good.len())
                .collect(),
        ),
        body.clone(),
    ));
    cases.push(("malformed header (11 shapes)".into(), "malformed_auth", m));
    cases.push((
        "device never enrolled (random ids, key of another device)".into(),
        "unknown_device",
        (0..50)
            .map(|_| {
                let id = format!("tv-x{:x}", next());
                let a = authz(&key, &id, 101, &body);
                (id, Some(a), body.clone())
            })
            .collect(),
    ));
    cases.push((
        "random signature".into(),
        "bad_signature",
        (0..100)
            .map(|_| {
                let mut k = [0u8; 32];
                for c in k.chunks_mut(8) {
                    c.copy_from_slice(&next().to_le_bytes());
                }
                let a = authz(&DeviceKey::new(k), "tv-h", 101, &body);
                ("tv-h".to_string(), Some(a), body.clone())
            })
            .collect(),
    ));
    cases.push((
        "one signature bit flipped (every bit)".into(),
        "bad_signature",
        (0..256)
            .map(|bit| {
                let mut s = good.clone().into_bytes();
                let at = sig_at + bit / 4;
                let nib = u8::from_str_radix(std::str::from_utf8(&s[at..at + 1]).unwrap(), 16)
                    .unwrap()
                    ^ (1 << (bit % 4));
                s[at] = b"0123456789abcdef"[usize::from(nib)];
                (
                    "tv-h".to_string(),
                    Some(String::from_utf8(s).unwrap()),
                    body.clone(),
                )
            })
            .collect(),
    ));
    cases.push((
        "body changed after signing (one bit, every byte)".into(),
        "bad_signature",
        (0..body.len())
            .map(|i| {
                let mut b = body.clone();
                b[i] ^= 1 << (i % 8);
                ("tv-h".to_string(), Some(good.clone()), b)
            })
            .collect(),
    ));
    cases.push((
        "signed for another device id or counter".into(),
        "bad_signature",
        vec![
            (
                "tv-h".into(),
                Some(authz(&key, "tv-i", 101, &body)),
                body.clone(),
            ),
            (
                "tv-h".into(),
                Some(good.replace("counter=101", "counter=102")),
                body.clone(),
            ),
        ],
    ));
    cases.push((
        "replayed or older counter (0..=100), validly signed".into(),
        "replayed_counter",
        (0..=100)
            .map(|c| {
                (
                    "tv-h".to_string(),
                    Some(authz(&key, "tv-h", c, &body)),
                    body.clone(),
                )
            })
            .collect(),
    ));
    cases.push((
        "the accepted request replayed byte for byte".into(),
        "replayed_counter",
        (0..20)
            .map(|_| {
                (
                    "tv-h".to_string(),
                    Some(authz(&key, "tv-h", 100, &body1)),
                    body1.clone(),
                )
            })
            .collect(),
    ));

    println!("| hostile input | tries | expected | observed |");
    println!("|---|---:|---|---|");
    for (what, code, reqs) in &cases {
        let m0 = auth_failures(addr, code);
        let mut ok = 0usize;
        for (dev, auth, b) in reqs {
            let r = post_signed(addr, dev, "0", auth.as_deref(), b);
            assert_eq!(r.status, 401, "{what}: {auth:?}");
            assert_eq!(r.json()["error"], wire_code(code), "{what}: {auth:?}");
            if wire_code(code) == "unauthorized" {
                assert_eq!(r.body, UNAUTHORIZED_BODY, "{what}: {auth:?}");
            }
            ok += 1;
        }
        assert_eq!(snapshot(&srv, "tv-h"), before, "{what}: store unchanged");
        assert_eq!(auth_failures(addr, code), m0 + reqs.len() as f64, "{what}");
        println!(
            "| {what} | {} | 401 `{}`, nothing stored | {ok} x 401 `{}`; store unchanged; metric `{code}` +{} |",
            reqs.len(),
            wire_code(code),
            wire_code(code),
            reqs.len()
        );
    }
    // And the genuine request still goes through.
    assert_eq!(
        post_signed(addr, "tv-h", "0", Some(&good), &body).status,
        200
    );
    srv.shutdown().await;
}

/// The same signed request sent twice at once (20 rounds): exactly one is
/// applied, the other is refused `replayed_counter` (the counter is checked
/// again inside the write transaction, where the single writer makes it
/// atomic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_copies_of_one_signed_request_apply_once() {
    let (_dir, db) = temp_db();
    let srv = start_auth(&db).await;
    let addr = srv.local_addr();
    let key = srv.enrol("tv-race").await.unwrap();
    let v = patterns();
    for i in 0..20u64 {
        let body = upload(i + 1, 0, &[Up::abs("p1", quantize(&v[i as usize]))]);
        let a = authz(&key, "tv-race", i + 1, &body);
        let (a2, b2) = (a.clone(), body.clone());
        let t = std::thread::spawn(move || post_signed(addr, "tv-race", "0", Some(&a2), &b2));
        let r1 = post_signed(addr, "tv-race", "0", Some(&a), &body);
        let r2 = t.join().unwrap();
        let mut st = [r1.status, r2.status];
        st.sort();
        assert_eq!(st, [200, 401], "round {i}");
        let refused = if r1.status == 401 { &r1 } else { &r2 };
        assert_eq!(refused.json()["error"], "replayed_counter");
        let s = srv.device_state("tv-race").unwrap();
        assert_eq!((s.syncs, s.last_seq), (i + 1, Some(i + 1)), "applied once");
    }
    srv.shutdown().await;
}
