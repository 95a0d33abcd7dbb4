//! Device authentication end to end: a real server on loopback with a temp
//! redb file; every refused request is checked to leave the store unchanged
//! and to be counted in `constellation_auth_failures_total{code=...}`.

mod cli;
#[path = "../common/mod.rs"]
mod common;
mod hostile;

use common::*;
use constellation::{AuthConfig, MasterSecret, Server, ServerHandle};
use omega_tv_sync::transport::auth::{format_header, sign, HEADER_MAX};
use omega_tv_sync::DeviceKey;

pub(crate) async fn start_auth(db: &std::path::Path) -> ServerHandle {
    let mut c = config(db);
    c.auth = AuthConfig::with_master(MasterSecret::from_bytes([0x5a; 32]));
    Server::start(c).await.expect("server starts")
}

pub(crate) fn authz(key: &DeviceKey, device: &str, counter: u64, body: &[u8]) -> String {
    let sig = sign(key, "POST", "/api/v1/sync", device, counter, body).unwrap();
    let mut buf = [0u8; HEADER_MAX];
    format_header(counter, &sig, &mut buf).to_string()
}

pub(crate) fn post_signed(
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
pub(crate) fn wire_code(reason: &str) -> &str {
    match reason {
        "unknown_device" | "revoked" | "bad_signature" | "key_replaced" => "unauthorized",
        c => c,
    }
}

/// The whole body of every `401 unauthorized`.
pub(crate) const UNAUTHORIZED_BODY: &[u8] =
    br#"{"detail":"the request is not authorized","error":"unauthorized"}"#;

pub(crate) fn auth_failures(addr: std::net::SocketAddr, code: &str) -> f64 {
    metric(
        addr,
        &format!("constellation_auth_failures_total{{code=\"{code}\"}}"),
    )
}

/// Everything a refused request must leave alone: the device's state, its
/// enrolment (counter) and the metric of applied syncs.
pub(crate) fn snapshot(srv: &ServerHandle, device: &str) -> String {
    let st = srv.device_state(device).unwrap();
    let en = constellation::auth::enrolment(&*srv.state().store, device).unwrap();
    format!(
        "{st:?} {en:?} {}",
        metric(admin(srv), "constellation_syncs_total")
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
        let m0 = auth_failures(admin(&srv), code);
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
        assert_eq!(auth_failures(admin(&srv), code), m0 + 1.0, "{what}: metric");
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
    assert_eq!(metric(admin(&srv), "constellation_auth_disabled"), 0.0);
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
    assert_eq!(metric(admin(&srv), "constellation_auth_disabled"), 1.0);
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
