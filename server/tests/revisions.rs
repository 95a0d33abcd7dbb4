//! A revision is never handed out twice for a pattern id, on both backends,
//! through the real server on loopback and the device's real sync state
//! machine: a pattern removed and created again continues above its old
//! revisions, so a stale session (a restored snapshot) holding an old
//! revision gets a conflict for its delta instead of having it decoded
//! against codes it never saw, and after resolving it the device and the
//! server hold the same codes.
//!
//! Without PostgreSQL binaries the `postgres` case prints one loud line and
//! passes, unless `OTS_REQUIRE_PG=1`.

mod common;
mod pg_support;

use std::sync::Arc;

use common::*;
use constellation::{Config, Server};
use omega_tv_sync::sync::{Config as ClientConfig, GlobalSink, Outcome, SyncClient};
use omega_tv_sync::{Category, DeviceId, Embedding, Pattern, PatternId};
use omega_tv_sync_http::HttpTransport;

const N: usize = 8;

/// A server config on a fresh database of either backend; `None` when
/// PostgreSQL is asked for and not installed (skip). The guards keep the
/// temp dir and the cluster alive.
fn db(
    postgres: bool,
) -> Option<(
    tempfile::TempDir,
    Option<Arc<pg_support::PgCluster>>,
    Config,
)> {
    let (dir, path) = temp_db();
    let mut cfg = config(&path);
    let pg = if postgres {
        let pg = pg_support::cluster()?;
        cfg.db = None;
        cfg.postgres = vec![pg.database()];
        Some(pg)
    } else {
        None
    };
    Some((dir, pg, cfg))
}

struct Sink;

impl GlobalSink for Sink {}

fn pattern(id: &str, e: &Embedding, samples: u32) -> Pattern {
    Pattern::new(
        PatternId::new(id).unwrap(),
        e.clone(),
        0.8,
        samples,
        Category::new("drama").unwrap(),
    )
    .unwrap()
}

/// Syncs until nothing is pending and no page waits (at most 50 exchanges).
async fn settle(c: &mut SyncClient<'static, N>, t: &mut HttpTransport, now: &mut u64) {
    let mut tx = vec![0u8; omega_tv_sync::wire::MAX_UPLOAD_FRAME];
    let mut rx = vec![0u8; c.config().caps.max_bytes as usize];
    for _ in 0..50 {
        *now += 1000;
        match c.exchange(t, &mut tx, &mut rx, *now, &mut Sink).await {
            Ok(Outcome::Synced(s)) if !s.more && c.pending() == 0 => return,
            Ok(_) => {}
            Err(e) => panic!("exchange failed: {e:?}"),
        }
    }
    panic!("did not settle");
}

/// The server's revision and codes of `id` on `dev`.
fn server_pattern(
    srv: &constellation::ServerHandle,
    dev: &str,
    id: &str,
) -> Option<(u32, Vec<i16>)> {
    let st = srv.device_state(dev).unwrap();
    st.patterns
        .iter()
        .find(|p| p.id == id)
        .map(|p| (p.revision, p.codes.clone()))
}

/// Every pattern the server holds for `dev` is what the device holds
/// acknowledged: same set, same revisions, same codes.
fn assert_same(srv: &constellation::ServerHandle, c: &SyncClient<'static, N>, dev: &str) {
    let st = srv.device_state(dev).unwrap();
    assert_eq!(st.patterns.len(), c.len(), "{dev}: pattern count");
    for p in &st.patterns {
        let id = PatternId::new(&p.id).unwrap();
        let (rev, codes) = c.acked(&id).expect("device knows the pattern");
        assert_eq!(rev, p.revision, "{dev}/{}: revision", p.id);
        assert_eq!(codes.to_vec(), p.codes, "{dev}/{}: codes", p.id);
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redb() {
                super::$name(false).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(true).await
            }
        }
    )*};
}

both!(a_stale_session_after_remove_and_recreate_conflicts);

async fn a_stale_session_after_remove_and_recreate_conflicts(postgres: bool) {
    let Some((_dir, _pg, cfg)) = db(postgres) else {
        return;
    };
    let srv = Server::start(cfg).await.expect("server starts");
    let v = patterns();
    let dev = "tv-rev";
    let ccfg = || ClientConfig::new(DeviceId::new(dev).unwrap());
    let mut now = 1_000u64;
    let mut t = HttpTransport::new(&srv.url()).unwrap();
    let mut c: SyncClient<'static, N> = SyncClient::new(book(), ccfg());
    c.upsert(&pattern("p", &v[0], 20), now).unwrap();
    c.upsert(&pattern("q", &v[1], 20), now).unwrap();
    settle(&mut c, &mut t, &mut now).await;
    let (rev1, codes_a) = server_pattern(&srv, dev, "p").expect("p stored");
    assert_eq!(rev1, 1);

    // The device's state with p at revision 1, as a backup would keep it.
    let mut snap = vec![0u8; SyncClient::<'static, N>::MAX_SNAPSHOT_LEN];
    let n = c.snapshot(&mut snap).unwrap();
    snap.truncate(n);

    // p removed, then created again with another embedding.
    c.remove(&PatternId::new("p").unwrap(), now).unwrap();
    settle(&mut c, &mut t, &mut now).await;
    assert_eq!(server_pattern(&srv, dev, "p"), None, "p removed");
    c.upsert(&pattern("p", &v[300], 20), now).unwrap();
    settle(&mut c, &mut t, &mut now).await;
    let (rev_new, codes_b) = server_pattern(&srv, dev, "p").expect("p stored again");
    assert_ne!(codes_b, codes_a, "another embedding");
    assert_eq!(
        rev_new, 2,
        "continues above the removed revision, never 1 again"
    );
    assert_same(&srv, &c, dev);

    // The stale session: restored from the snapshot, it still holds p at
    // revision 1 with the old codes, and sends a delta on it.
    let mut stale: SyncClient<'static, N> = SyncClient::restore(book(), ccfg(), &snap).unwrap();
    assert_eq!(stale.acked(&PatternId::new("p").unwrap()).unwrap().0, 1);
    stale.upsert(&pattern("p", &v[600], 30), now).unwrap();
    let conflicts_before = metric(
        srv.admin_addr().expect("admin listener"),
        "constellation_conflicts_total",
    );
    let mut ts = HttpTransport::new(&srv.url()).unwrap();
    settle(&mut stale, &mut ts, &mut now).await;
    // Its delta on revision 1 was refused with a conflict, not applied ...
    assert!(stale.stats().conflicts >= 1, "{:?}", stale.stats());
    assert!(
        metric(
            srv.admin_addr().expect("admin listener"),
            "constellation_conflicts_total"
        ) > conflicts_before,
        "the server answered a conflict"
    );
    // ... and once resolved (merged with the server's revision 2 codes and
    // sent on that revision), both hold the same codes at a later revision.
    assert_same(&srv, &stale, dev);
    let (rev_last, _) = server_pattern(&srv, dev, "p").unwrap();
    assert!(rev_last > rev_new, "revision {rev_last}");
    srv.shutdown().await;
}
