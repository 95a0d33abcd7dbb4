//! The admin listener: `/metrics` and the device read-back live only there
//! (404 on the sync listener), the read-back needs the bearer token (401
//! without it or with a wrong one), and without a token it is off while
//! `/metrics` stays. The binary prints the admin address it bound and
//! refuses a token file others may read.

mod common;

use common::*;
use constellation::Server;

const PATTERNS: &str = "/api/v1/devices/tv-adm/patterns";

async fn one_synced(srv: &constellation::ServerHandle) {
    let v = patterns();
    let body = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    assert_eq!(
        post_sync(srv.local_addr(), "tv-adm", "0", &body).status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_and_metrics_live_only_on_the_admin_listener_behind_the_token() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    one_synced(&srv).await;
    let (sync, adm) = (srv.local_addr(), admin(&srv));
    assert_ne!(sync, adm);
    assert!(adm.ip().is_loopback());

    // Nothing admin on the sync listener, with or without the token.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for path in [PATTERNS, "/metrics"] {
        let r = raw(sync, "GET", path, &[("Authorization", &bearer)], &[]);
        assert_eq!(r.status, 404, "{path} on the sync listener");
    }

    // The read-back: 401 without the token, with a wrong one, with another
    // scheme; 200 with it.
    let wrong = format!("Bearer {ADMIN_TOKEN}x");
    let basic = format!("Basic {ADMIN_TOKEN}");
    for h in [None, Some(wrong.as_str()), Some(basic.as_str())] {
        let headers: Vec<(&str, &str)> = h.map(|v| ("Authorization", v)).into_iter().collect();
        let r = raw(adm, "GET", PATTERNS, &headers, &[]);
        assert_eq!(r.status, 401, "{h:?}");
        assert_eq!(r.json()["error"], "unauthorized");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(!String::from_utf8_lossy(&r.body).contains("codes"));
    }
    let j = device_json(adm, "tv-adm");
    assert_eq!(j["last_seq"], 1);
    assert_eq!(j["patterns"].as_array().unwrap().len(), 1);

    // /metrics on the admin listener (no token needed), counting the sync.
    let m = raw(adm, "GET", "/metrics", &[], &[]);
    assert_eq!(m.status, 200);
    assert_eq!(metric(adm, "constellation_syncs_total"), 1.0);
    // The sync routes are not on the admin listener; its health check (for
    // probes, unpaced) is.
    for path in ["/api/v1/sync/version", "/api/v1/global"] {
        assert_eq!(raw(adm, "GET", path, &[], &[]).status, 404, "{path}");
    }
    assert_eq!(raw(adm, "GET", "/api/v1/health", &[], &[]).status, 200);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_read_back_is_off_and_metrics_stay() {
    let (_dir, db) = temp_db();
    let mut c = config(&db);
    c.admin_token = None;
    let srv = Server::start(c).await.unwrap();
    one_synced(&srv).await;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let r = raw(
        admin(&srv),
        "GET",
        PATTERNS,
        &[("Authorization", &bearer)],
        &[],
    );
    assert_eq!(r.status, 404);
    assert_eq!(metric(admin(&srv), "constellation_syncs_total"), 1.0);
    srv.shutdown().await;

    // No admin listener at all.
    let mut c = config(&db);
    c.admin_listen = None;
    let srv = Server::start(c).await.unwrap();
    assert_eq!(srv.admin_addr(), None);
    assert_eq!(
        raw(srv.local_addr(), "GET", "/metrics", &[], &[]).status,
        404
    );
    srv.shutdown().await;
}

#[test]
fn the_binary_prints_its_admin_address_and_refuses_a_readable_token_file() {
    let (dir, db) = temp_db();
    let srv = spawn_server(&db);
    let j = device_json(srv.admin, "tv-none");
    assert_eq!(j["patterns"].as_array().unwrap().len(), 0);
    assert_eq!(raw(srv.addr, "GET", "/metrics", &[], &[]).status, 404);
    let mut child = srv.child;
    let _ = child.kill();
    let _ = child.wait();

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_constellation"))
            .args(["serve", "--insecure-no-auth", "--db"])
            .arg(&db)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--admin-token-file")
            .arg(&token)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("chmod 600"), "{err}");
        assert!(out.stdout.is_empty(), "it must not listen");
    }
}
