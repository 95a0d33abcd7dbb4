//! The privacy accountant counts the deployment's releases, not one
//! process's: the releases of the trailing window are kept in the store
//! with each release, so a restarted server (the same redb file), another
//! node of a PostgreSQL deployment, or its next leader report and continue
//! the same count on `/metrics`.
//!
//! Without PostgreSQL binaries the `postgres` case prints one loud line and
//! passes, unless `OTS_REQUIRE_PG=1`.

mod common;
mod pg_support;

use common::*;
use constellation::aggregate::accountant::Accountant;
use constellation::aggregate::dp::DpConfig;
use constellation::{Config, Server, ServerHandle};

/// `common::config` with the default, differentially private aggregation.
fn private(mut c: Config) -> Config {
    c.aggregate.dp = DpConfig::default();
    c
}

fn spent(srv: &ServerHandle) -> (f64, f64) {
    let admin = srv.admin_addr().expect("admin listener");
    (
        metric(admin, "constellation_dp_releases_in_window"),
        metric(admin, "constellation_dp_epsilon_spent"),
    )
}

/// The epsilon of `k` releases of the default configuration.
fn epsilon(k: u64) -> f64 {
    Accountant::new(&DpConfig::default()).unwrap().epsilon_of(k)
}

fn assert_spent(srv: &ServerHandle, k: u64) {
    let (n, eps) = spent(srv);
    assert_eq!(n, k as f64, "releases in the window");
    assert!(
        (eps - epsilon(k)).abs() < 1e-9,
        "epsilon spent {eps}, want {}",
        epsilon(k)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_continues_the_windows_epsilon() {
    let (_dir, db) = temp_db();
    let cfg = private(config(&db));
    let srv = Server::start(cfg.clone()).await.unwrap();
    assert_spent(&srv, 0);
    for _ in 0..3 {
        srv.release_now().await.unwrap();
    }
    assert_spent(&srv, 3);
    srv.shutdown().await;

    // The same redb file: the three releases are still in the window.
    let srv = Server::start(cfg.clone()).await.unwrap();
    assert_spent(&srv, 3);
    srv.release_now().await.unwrap();
    assert_spent(&srv, 4);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_postgres_node_and_the_next_leader_report_the_deployments_epsilon() {
    let Some(pg) = pg_support::cluster() else {
        return;
    };
    let (_dir, db) = temp_db();
    let mut cfg = private(config(&db));
    cfg.db = None;
    cfg.postgres = vec![pg.database()];
    let a = Server::start(cfg.clone()).await.unwrap();
    for _ in 0..2 {
        a.release_now().await.unwrap();
    }
    assert_spent(&a, 2);
    // A second node of the deployment reports what the leader released.
    let b = Server::start(cfg.clone()).await.unwrap();
    assert_spent(&b, 2);
    a.shutdown().await;
    b.shutdown().await;
    // The whole deployment restarted: its next leader continues the count.
    let c = Server::start(cfg.clone()).await.unwrap();
    assert_spent(&c, 2);
    c.release_now().await.unwrap();
    assert_spent(&c, 3);
    c.shutdown().await;
}
