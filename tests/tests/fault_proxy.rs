//! A fleet run through a fault-injecting TCP proxy (drop before forwarding,
//! delay, response cut after a random prefix, connection reset after a
//! random prefix) in front of the real server on loopback. The checker reads
//! every device back directly from the server: nothing acknowledged may be
//! lost, nothing applied twice, and every kind of fault must have happened.
//! Authentication is on (the server's default): every TV is enrolled and
//! signs its requests, so each retry through the proxy is signed again with
//! a new counter.

use omega_tv_sync_examples::fleet::{self, Faults};
use omega_tv_sync_examples::proxy::{FaultProxy, ProxyFaults};
use std::time::Duration;

/// Writes the admin token of these tests to a mode-0600 file in `dir`.
fn admin_token_file(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("admin-token");
    std::fs::write(&p, "fault-proxy-admin-token\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_through_a_faulty_proxy_loses_nothing_and_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = constellation::Config::new();
    cfg.db = Some(dir.path().join("constellation.redb"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.codebooks = constellation::codebooks::default_codebooks();
    cfg.admin_token = Some(constellation::AdminToken::new("fault-proxy-admin-token").unwrap());
    cfg.min_sync_interval_s = 0;
    assert!(cfg.auth.required, "authentication is on by default");
    let srv = constellation::Server::start(cfg).await.unwrap();
    let faults = ProxyFaults {
        drop: 0.03,
        delay: 0.03,
        delay_max: Duration::from_millis(20),
        cut: 0.03,
        reset: 0.03,
        ..ProxyFaults::default()
    };
    let proxy = FaultProxy::start(srv.local_addr(), faults, 11)
        .await
        .unwrap();

    let mut a = fleet::Args::default();
    // The fleet goes through the proxy as an external server: its TVs are
    // enrolled here and their keys handed over as `constellation device
    // add` prints them (`--keys`).
    let ids: Vec<String> = (0..200).map(fleet::device_id).collect();
    let keys = srv.enrol_many(&ids).await.unwrap();
    let lines: String = ids
        .iter()
        .zip(&keys)
        .map(|(id, k)| format!("{id} {}\n", constellation::auth::hex(k.as_bytes())))
        .collect();
    let keys_file = dir.path().join("keys.txt");
    std::fs::write(&keys_file, lines).unwrap();
    a.keys = Some(keys_file);
    a.sim.devices = 200;
    a.sim.rounds = 4;
    a.sim.seed = 5;
    a.sim.concurrency = 16;
    // Every lost response comes from the proxy; offline periods and stale
    // twins stay on so conflicts meet the faults.
    a.sim.faults = Faults {
        drop: 0.0,
        offline: 0.02,
        twin: 0.02,
    };
    a.server = Some(proxy.url());
    a.check_server = Some(srv.url());
    a.admin = Some(format!("http://{}", srv.admin_addr().unwrap()));
    a.admin_token_file = Some(admin_token_file(dir.path()));
    a.quiet = true;
    let r = fleet::run(a).await.expect("the run completes");
    let p = proxy.totals();
    eprintln!("proxy: {p:?}");
    eprintln!("{}", fleet::report::table(&r));

    assert_eq!(r.lost_updates, 0, "acknowledged updates lost");
    assert_eq!(r.duplicates_applied, 0, "updates applied twice");
    assert_eq!(r.unsettled, 0);
    assert_eq!(r.stuck, 0);
    assert!(
        r.syncs >= 200 * 3,
        "every TV synced its rounds: {}",
        r.syncs
    );
    assert!(r.checked_patterns > 800, "checked {}", r.checked_patterns);
    assert_eq!(r.conflicts_detected, r.conflicts_resolved);
    // Every kind of fault was injected, and the TVs saw them as failures.
    for (kind, n) in [
        ("drop", p.dropped),
        ("delay", p.delayed),
        ("cut", p.cut),
        ("reset", p.reset),
    ] {
        assert!(n >= 5, "{kind}: only {n} injected");
    }
    assert_eq!(p.upstream_errors, 0);
    assert!(r.transport_errors > 0);
    // Cut and reset responses were applied by the server before they were
    // lost: their retries must have been answered from the idempotency
    // record, not applied again.
    let replayed = srv
        .state()
        .metrics
        .retries_replayed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(replayed > 0, "no retry was replayed");
    // Every request was signed, and the signatures held through the faults:
    // the only authentication refusals are `replayed_counter`, which a
    // stale twin's original meets once (the twin, restored from a snapshot,
    // signs ahead of it) and resolves by continuing after `last_counter`.
    let auth = &srv.state().metrics.auth;
    for code in [
        "missing_auth",
        "malformed_auth",
        "unknown_device",
        "revoked",
        "key_replaced",
        "bad_signature",
    ] {
        assert_eq!(auth.failures_for(code), 0, "{code}");
    }
    eprintln!(
        "replayed_counter refusals: {}",
        auth.failures_for("replayed_counter")
    );
    srv.shutdown().await;
}

/// An attacker on the plaintext hop: some answers are replaced by a forged,
/// unsigned `409 {"last_seq": 2^64-2}` (which used to wedge a device in a
/// 409 loop for good), others by an earlier signed `200` of the same
/// connection (forged acks and globals). Every TV refuses both (they are not
/// signed for its request), re-sends, and the run ends with nothing lost,
/// nothing applied twice and every sequence where the server has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_answers_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = constellation::Config::new();
    cfg.db = Some(dir.path().join("constellation.redb"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.codebooks = constellation::codebooks::default_codebooks();
    cfg.admin_token = Some(constellation::AdminToken::new("fault-proxy-admin-token").unwrap());
    cfg.min_sync_interval_s = 0;
    let srv = constellation::Server::start(cfg).await.unwrap();
    let faults = ProxyFaults {
        forge: 0.08,
        replay: 0.08,
        ..ProxyFaults::default()
    };
    let proxy = FaultProxy::start(srv.local_addr(), faults, 23)
        .await
        .unwrap();
    let ids: Vec<String> = (0..100).map(fleet::device_id).collect();
    let keys = srv.enrol_many(&ids).await.unwrap();
    let lines: String = ids
        .iter()
        .zip(&keys)
        .map(|(id, k)| format!("{id} {}\n", constellation::auth::hex(k.as_bytes())))
        .collect();
    let keys_file = dir.path().join("keys.txt");
    std::fs::write(&keys_file, lines).unwrap();
    let mut a = fleet::Args {
        keys: Some(keys_file),
        ..Default::default()
    };
    a.sim.devices = 100;
    a.sim.rounds = 4;
    a.sim.seed = 9;
    a.sim.concurrency = 16;
    a.sim.faults = Faults {
        drop: 0.0,
        offline: 0.0,
        twin: 0.0,
    };
    a.server = Some(proxy.url());
    a.check_server = Some(srv.url());
    a.admin = Some(format!("http://{}", srv.admin_addr().unwrap()));
    a.admin_token_file = Some(admin_token_file(dir.path()));
    a.quiet = true;
    let r = fleet::run(a).await.expect("the run completes");
    let p = proxy.totals();
    eprintln!("proxy: {p:?}");
    eprintln!("{}", fleet::report::table(&r));
    assert!(p.forged >= 10, "forged {}", p.forged);
    assert!(p.replayed >= 10, "replayed {}", p.replayed);
    // Forged and replayed answers to syncs were refused by the TVs that got
    // them (the rest met the public feed, which is unsigned by design).
    assert!(r.unauthenticated >= 10, "refused {}", r.unauthenticated);
    assert!(r.unauthenticated <= p.forged + p.replayed);
    assert_eq!(r.resequenced, 0, "a forged 409 moved a sequence");
    assert_eq!(r.lost_updates, 0, "acknowledged updates lost");
    assert_eq!(r.duplicates_applied, 0, "updates applied twice");
    assert_eq!(r.unsettled, 0);
    assert_eq!(r.stuck, 0);
    assert!(
        r.syncs >= 100 * 3,
        "every TV synced its rounds: {}",
        r.syncs
    );
    srv.shutdown().await;
}
