//! Aggregation into global patterns and the global changes download: since V
//! returns exactly the changes after V, paged, with ETag / 304.

mod common;

use common::*;
use omega_tv_sync::wire::{Caps, Record};

/// Six devices share four patterns (k = 5 publishes them); four devices share
/// a fifth one (below k: never published).
async fn populate(addr: std::net::SocketAddr, seq: u64, samples: u32) {
    let v = patterns();
    for d in 0..6 {
        let mut items = Vec::new();
        for g in 0..4usize {
            let mut u = Up::abs(["p0", "p1", "p2", "p3"][g], quantize(&v[g * 97]));
            u.samples = samples;
            u.base_rev = (seq - 1) as u32;
            if seq > 1 {
                u.base = Some(u.codes);
            }
            items.push(u);
        }
        if d < 4 {
            let mut u = Up::abs("lonely", quantize(&v[1500]));
            u.base_rev = (seq - 1) as u32;
            if seq > 1 {
                u.base = Some(u.codes);
            }
            items.push(u);
        }
        let r = post_sync(addr, &format!("tv-{d}"), "0", &upload(seq, 0, &items));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
}

fn feed(addr: std::net::SocketAddr, q: &str) -> Raw {
    raw(addr, "GET", &format!("/api/v1/global?{q}"), &[], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_since_v_returns_exactly_the_changes_after_v() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let addr = srv.local_addr();
    populate(addr, 1, 20).await;
    let published = srv.aggregate_now().await.unwrap();
    assert!(published >= 4, "published {published}");
    let current = srv.global_version().unwrap();
    assert_eq!(current as usize, published);

    let all = feed(addr, "since=0");
    assert_eq!(all.status, 200);
    let h = head(&all.body);
    assert_eq!(
        (h.seq, h.global_version, h.more, h.reset),
        (0, current, false, false)
    );
    let full = versions(&all.body);
    assert_eq!(full, (1..=current).collect::<Vec<_>>());
    // Only groups with >= k devices are published.
    let upserts: Vec<(u32, u32)> = records(&all.body)
        .iter()
        .filter_map(|r| match r {
            Record::GlobalUpsert(g) => Some((g.id, g.contributors)),
            _ => None,
        })
        .collect();
    assert!(upserts.len() >= 4);
    assert!(upserts.iter().all(|(_, c)| *c >= 5), "{upserts:?}");
    assert!(
        upserts.iter().all(|(_, c)| *c == 6),
        "the four-device group stays private"
    );
    for v in 0..=current {
        let r = feed(addr, &format!("since={v}"));
        let want: Vec<u64> = full.iter().copied().filter(|x| *x > v).collect();
        assert_eq!(versions(&r.body), want, "since={v}");
        assert_eq!(head(&r.body).global_version, current);
    }
    // The same through the sync endpoint: a device at V gets what follows V.
    let v = patterns();
    let mid = current / 2;
    let r = post_sync(
        addr,
        "tv-new",
        &mid.to_string(),
        &upload(1, mid, &[Up::abs("x", quantize(&v[7]))]),
    );
    assert_eq!(r.status, 200);
    assert_eq!(versions(&r.body), (mid + 1..=current).collect::<Vec<_>>());
    assert_eq!(head(&r.body).global_version, current);

    // New changes: exactly those after the old version.
    populate(addr, 2, 40).await;
    // A seventh device joins the first group at a higher rate: its global
    // is republished (more samples alone are not a material change, and no
    // trend signal comes from a group below k).
    let mut joiner = Up::abs("p0", quantize(&v[0]));
    joiner.rate = 1.0;
    joiner.samples = 40;
    let r = post_sync(addr, "tv-6", "0", &upload(1, 0, &[joiner]));
    assert_eq!(r.status, 200);
    let n = srv.aggregate_now().await.unwrap();
    assert!(n > 0);
    let now = srv.global_version().unwrap();
    let r = feed(addr, &format!("since={current}"));
    let got = versions(&r.body);
    assert!(!got.is_empty());
    assert!(got.iter().all(|v| *v > current && *v <= now));
    assert_eq!(got, {
        let all = versions(&feed(addr, "since=0").body);
        all.into_iter().filter(|v| *v > current).collect::<Vec<_>>()
    });
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_follow_caps_and_the_feed_is_cacheable() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let addr = srv.local_addr();
    populate(addr, 1, 20).await;
    srv.aggregate_now().await.unwrap();
    let current = srv.global_version().unwrap();
    let full = versions(&feed(addr, "since=0").body);

    // Paged by limit: every page continues where the last ended.
    let mut since = 0;
    let mut got = Vec::new();
    for _ in 0..100 {
        let r = feed(addr, &format!("since={since}&limit=2"));
        let h = head(&r.body);
        let vs = versions(&r.body);
        assert!(vs.len() <= 4, "two globals and two trends at most");
        got.extend(vs);
        since = h.global_version;
        if !h.more {
            assert_eq!(h.next_sync_s, 300);
            break;
        }
        assert_eq!(h.next_sync_s, 0);
    }
    assert_eq!(since, current);
    assert_eq!(got, full);

    // Paged by bytes through the sync endpoint (max_globals 1).
    let v = patterns();
    let caps1 = Caps {
        max_globals: 1,
        max_trends: 1,
        max_bytes: 4096,
    };
    let mut since = 0;
    let mut got = Vec::new();
    for seq in 1..100u64 {
        let body = upload_with(book().id(), seq, since, caps1, &[]);
        let r = post_sync(addr, "tv-pager", &since.to_string(), &body);
        assert_eq!(r.status, 200);
        assert!(r.body.len() <= 4096);
        let h = head(&r.body);
        got.extend(versions(&r.body));
        since = h.global_version;
        if !h.more {
            break;
        }
    }
    assert_eq!(got, full);
    let _ = v;

    // A bad query is a JSON 400.
    let r = feed(addr, "since=abc");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_query"))
    );

    // ETag / If-None-Match.
    let r = feed(addr, "since=0");
    let etag = r.header("etag").expect("etag").to_string();
    assert!(r.header("cache-control").unwrap().contains("max-age"));
    let r304 = raw(
        addr,
        "GET",
        "/api/v1/global?since=0",
        &[("If-None-Match", &etag)],
        &[],
    );
    assert_eq!(r304.status, 304);
    assert!(r304.body.is_empty());
    assert_eq!(
        metric(admin(&srv), "constellation_feed_not_modified_total"),
        1.0
    );
    // A new version changes the tag: a fifth device brings "lonely" to k = 5,
    // which publishes it. (More samples alone do not: a republication needs
    // a material change, see `GlobalAggregate::material_change`.)
    populate(addr, 2, 40).await;
    srv.aggregate_now().await.unwrap();
    let unchanged = raw(
        addr,
        "GET",
        "/api/v1/global?since=0",
        &[("If-None-Match", &etag)],
        &[],
    );
    assert_eq!(unchanged.status, 304, "more samples alone publish nothing");
    let v = patterns();
    let fifth = Up::abs("lonely", quantize(&v[1500]));
    let r = post_sync(addr, "tv-fifth", "0", &upload(1, 0, &[fifth]));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    srv.aggregate_now().await.unwrap();
    let r = raw(
        addr,
        "GET",
        "/api/v1/global?since=0",
        &[("If-None-Match", &etag)],
        &[],
    );
    assert_eq!(r.status, 200);
    assert_ne!(r.header("etag").unwrap(), etag);
    srv.shutdown().await;
}

/// An upload that removes pattern `id` acknowledged at `base_rev`.
fn removal(seq: u64, id: &str, base_rev: u32) -> Vec<u8> {
    use omega_tv_sync::wire::{FrameWriter, Kind, PatternRemoval, UploadHead};
    let mut buf = vec![0u8; 4096];
    let mut w = FrameWriter::new(&mut buf, Kind::Upload, book().id()).unwrap();
    w.push(&Record::UploadHead(UploadHead {
        seq,
        since: 0,
        caps: caps(),
    }))
    .unwrap();
    w.push(&Record::Removal(PatternRemoval {
        id: omega_tv_sync::PatternId::new(id).unwrap(),
        base_rev,
    }))
    .unwrap();
    w.finish().unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawn_globals_leave_tombstones_and_old_cursors_get_a_snapshot() {
    let (_dir, db) = temp_db();
    let mut cfg = config(&db);
    cfg.aggregate.retention_versions = 1;
    let srv = constellation::Server::start(cfg).await.unwrap();
    let addr = srv.local_addr();
    populate(addr, 1, 20).await;
    srv.aggregate_now().await.unwrap();
    let v1 = srv.global_version().unwrap();
    let before = records(&feed(addr, "since=0").body)
        .iter()
        .filter(|r| matches!(r, Record::GlobalUpsert(_)))
        .count();
    // Two of six devices drop p0: its global falls below k and is withdrawn.
    for d in 0..2 {
        let r = post_sync(addr, &format!("tv-{d}"), "0", &removal(2, "p0", 1));
        assert_eq!(r.status, 200);
    }
    srv.aggregate_now().await.unwrap();
    let v2 = srv.global_version().unwrap();
    assert!(v2 > v1);
    // A device that was at v1 learns of the withdrawal (a removal record) or,
    // if the tombstone is already past the retention horizon, gets a reset.
    let r = feed(addr, &format!("since={v1}"));
    let h = head(&r.body);
    let removed = records(&r.body)
        .iter()
        .any(|x| matches!(x, Record::GlobalRemove(_)));
    assert!(removed || h.reset, "the withdrawal reaches a device at v1");
    // One more publish moves the horizon past the tombstone (retention 1).
    populate(addr, 3, 80).await;
    srv.aggregate_now().await.unwrap();
    let now = srv.global_version().unwrap();
    // An old cursor: a snapshot, paged; applied like a device would, it
    // yields exactly the live global patterns.
    let mut since = 1;
    let mut horizon: Option<String> = None;
    let mut live = std::collections::BTreeSet::new();
    let mut first = true;
    for _ in 0..100 {
        let q = match &horizon {
            Some(h) => format!("since={since}&limit=1&horizon={h}"),
            None => format!("since={since}&limit=1"),
        };
        let r = feed(addr, &q);
        let h = head(&r.body);
        assert_eq!(h.reset, first, "only the first page resets");
        if first {
            horizon = r.header("x-snapshot-horizon").map(str::to_string);
            assert!(horizon.is_some());
        } else {
            assert_eq!(
                r.header("x-snapshot-horizon").map(str::to_string),
                horizon,
                "every snapshot page, the last included, carries the horizon"
            );
        }
        for rec in records(&r.body) {
            match rec {
                Record::GlobalRemove(g) => {
                    assert!(!first, "no tombstones on the page that resets");
                    live.remove(&g.id);
                }
                Record::GlobalUpsert(g) => {
                    live.insert(g.id);
                }
                _ => {}
            }
        }
        first = false;
        since = h.global_version;
        if !h.more {
            break;
        }
    }
    assert_eq!(since, now);
    assert_eq!(live.len(), before - 1, "every live global pattern");
    let mut full = std::collections::BTreeSet::new();
    for rec in records(&feed(addr, "since=0").body) {
        match rec {
            Record::GlobalRemove(g) => {
                full.remove(&g.id);
            }
            Record::GlobalUpsert(g) => {
                full.insert(g.id);
            }
            _ => {}
        }
    }
    assert_eq!(live, full);
    // A fresh device (since 0) is never reset.
    assert!(!head(&feed(addr, "since=0").body).reset);
    srv.shutdown().await;
}
