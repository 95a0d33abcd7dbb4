//! Privacy of what the server publishes, against the real server on
//! loopback: k-anonymity of global patterns (k = 5, the default) in every
//! download (sync responses and the public feed from version 0), distinct
//! devices rather than pattern ids, no trend signal from fewer than k
//! devices, and the clipping of one contribution's weight and samples.

mod common;

use std::net::SocketAddr;

use common::*;
use omega_tv_sync::wire::Record;

/// Global upserts and trend signals a download frame carries.
fn published(frame: &[u8]) -> (Vec<(u32, u32, f32, u32)>, usize) {
    let mut g = Vec::new();
    let mut trends = 0;
    for r in records(frame) {
        match r {
            Record::GlobalUpsert(u) => {
                g.push((u.id, u.contributors, u.success_rate, u.sample_count))
            }
            Record::Trend(_) => trends += 1,
            _ => {}
        }
    }
    (g, trends)
}

/// Every page of `GET /api/v1/global` from version 0: live global upserts
/// (id, contributors, rate, samples) and trend records.
fn feed_from_zero(addr: SocketAddr) -> (Vec<(u32, u32, f32, u32)>, usize) {
    let (mut since, mut all, mut trends) = (0u64, Vec::new(), 0);
    for _ in 0..1000 {
        let r = raw(
            addr,
            "GET",
            &format!("/api/v1/global?since={since}&limit=64"),
            &[],
            &[],
        );
        assert_eq!(r.status, 200);
        let (g, t) = published(&r.body);
        all.extend(g);
        trends += t;
        let h = head(&r.body);
        if !h.more || h.global_version <= since {
            return (all, trends);
        }
        since = h.global_version;
    }
    panic!("the feed did not end");
}

/// What a device's sync (download only, from version 0) brings down.
fn sync_download(addr: SocketAddr, device: &str, seq: u64) -> (Vec<(u32, u32, f32, u32)>, usize) {
    let r = post_sync(addr, device, "0", &upload(seq, 0, &[]));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    published(&r.body)
}

fn contribute(addr: SocketAddr, device: &str, seq: u64, items: &[Up]) {
    let r = post_sync(addr, device, "0", &upload(seq, 0, items));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_from_four_devices_is_never_downloaded_and_a_fifth_publishes_it() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let addr = srv.local_addr();
    let q = quantize(&patterns()[1500]);
    for d in 0..4 {
        contribute(addr, &format!("tv-{d}"), 1, &[Up::abs("secret", q)]);
    }
    // Several passes, and the same devices syncing again with more samples.
    srv.aggregate_now().await.unwrap();
    for d in 0..4 {
        let mut u = Up::delta("secret", 1, q, q);
        u.samples = 200;
        contribute(addr, &format!("tv-{d}"), 2, &[u]);
    }
    srv.aggregate_now().await.unwrap();
    srv.aggregate_now().await.unwrap();
    assert_eq!(feed_from_zero(addr), (vec![], 0), "feed below k");
    for d in 0..4 {
        assert_eq!(sync_download(addr, &format!("tv-{d}"), 3), (vec![], 0));
    }
    assert_eq!(sync_download(addr, "observer", 1), (vec![], 0));
    assert_eq!(srv.global_version().unwrap(), 0, "nothing was published");

    // A fifth distinct device: now it is published, with 5 contributors.
    contribute(addr, "tv-4", 1, &[Up::abs("secret", q)]);
    srv.aggregate_now().await.unwrap();
    let (g, _) = feed_from_zero(addr);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0].1, 5, "contributors");
    let (g2, _) = sync_download(addr, "observer", 2);
    assert_eq!(g2.len(), 1);
    assert_eq!(g2[0].0, g[0].0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_under_many_pattern_ids_counts_once() {
    const IDS: [&str; 12] = [
        "c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11",
    ];
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let addr = srv.local_addr();
    let q = quantize(&patterns()[1550]);
    // One device uploads the same vector under 12 ids; three others once.
    let many: Vec<Up> = IDS.iter().map(|id| Up::abs(id, q)).collect();
    contribute(addr, "tv-sybil", 1, &many);
    for d in 0..3 {
        contribute(addr, &format!("tv-{d}"), 1, &[Up::abs("c", q)]);
    }
    srv.aggregate_now().await.unwrap();
    srv.aggregate_now().await.unwrap();
    // 15 contributions, 4 distinct devices: below k.
    assert_eq!(feed_from_zero(addr), (vec![], 0));
    assert_eq!(sync_download(addr, "tv-sybil", 2), (vec![], 0));
    assert_eq!(sync_download(addr, "observer", 1), (vec![], 0));
    // A fifth device: published, and it says 5 contributors, not 16.
    contribute(addr, "tv-3", 1, &[Up::abs("c", q)]);
    srv.aggregate_now().await.unwrap();
    let (g, _) = feed_from_zero(addr);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0].1, 5, "distinct devices");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contribution_is_clipped_to_max_weight_samples() {
    let (_dir, db) = temp_db();
    let cfg = config(&db);
    let clip = cfg.aggregate.max_weight_samples;
    assert_eq!(clip, 1000, "the documented default");
    let srv = constellation::Server::start(cfg).await.unwrap();
    let addr = srv.local_addr();
    let q = quantize(&patterns()[1590]);
    // Four ordinary devices at the clip, rate 0.7; one claims u32::MAX
    // samples at rate 1.0.
    for d in 0..4 {
        let mut u = Up::abs("p", q);
        u.rate = 0.7;
        u.samples = clip;
        contribute(addr, &format!("tv-{d}"), 1, &[u]);
    }
    let mut loud = Up::abs("p", q);
    loud.rate = 1.0;
    loud.samples = u32::MAX;
    contribute(addr, "tv-loud", 1, &[loud]);
    srv.aggregate_now().await.unwrap();
    let (g, _) = feed_from_zero(addr);
    assert_eq!(g.len(), 1, "{g:?}");
    let (_, contributors, rate, samples) = g[0];
    assert_eq!(contributors, 5);
    // Weights min(samples, clip) * rate: the loud device weighs 1000, each
    // other 700; the rate is the weighted mean of rates.
    let w_loud = clip as f32;
    let w = 0.7 * clip as f32;
    let expected = (w_loud * 1.0 + 4.0 * w * 0.7) / (w_loud + 4.0 * w);
    assert!(
        (rate - expected).abs() < 0.01,
        "rate {rate}, expected {expected} (unclipped it would be ~1.0)"
    );
    // The published samples count each contribution at most `clip`.
    assert_eq!(samples, 5 * clip, "published samples");
    srv.shutdown().await;
}
