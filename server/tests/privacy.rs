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

/// The published centroid of the only global pattern in the feed, its
/// contributors, rate and samples.
fn published_centroid(addr: SocketAddr) -> (Vec<f32>, u32, f32, u32) {
    let r = raw(addr, "GET", "/api/v1/global?since=0&limit=64", &[], &[]);
    assert_eq!(r.status, 200);
    let mut out = Vec::new();
    for rec in records(&r.body) {
        if let Record::GlobalUpsert(u) = rec {
            let mut codes = [0i16; omega_tv_sync::DIM];
            book().decode(u.code, None, &mut codes).unwrap();
            let e = book().reconstruct(&codes).unwrap();
            out.push((
                e.as_array().to_vec(),
                u.contributors,
                u.success_rate,
                u.sample_count,
            ));
        }
    }
    assert_eq!(out.len(), 1, "one global pattern");
    out.pop().unwrap()
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A device's clipped samples (and so its weight) in one global pattern,
/// over all its pattern ids, from the aggregation state.
fn device_samples(srv: &constellation::ServerHandle, device: &str) -> Vec<(u32, u32)> {
    let mut out = constellation::store::read(&*srv.state().store, |t| {
        Ok(t.device_contributions(device)?
            .into_iter()
            .map(|(_, c)| (c.global, c.counted(1000)))
            .collect::<Vec<_>>())
    })
    .unwrap();
    out.sort_unstable();
    let mut per: Vec<(u32, u32)> = Vec::new();
    for (g, n) in out {
        match per.last_mut() {
            Some((lg, ln)) if *lg == g => *ln += n,
            _ => per.push((g, n)),
        }
    }
    per
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_under_many_pattern_ids_does_not_dominate_a_centroid() {
    const IDS: [&str; 12] = [
        "c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11",
    ];
    let (_dir, db) = temp_db();
    let cfg = config(&db);
    let clip = cfg.aggregate.max_weight_samples;
    assert_eq!(clip, 1000, "the documented default");
    let srv = constellation::Server::start(cfg).await.unwrap();
    let addr = srv.local_addr();
    // Two directions close enough to share a global pattern (similarity
    // 0.92): `a`, a real pattern, and `b`, turned from it towards another.
    let ps = patterns();
    let a = &ps[1500];
    let mut mix = [0f32; omega_tv_sync::DIM];
    for (m, (x, y)) in mix
        .iter_mut()
        .zip(a.as_array().iter().zip(ps[100].as_array()))
    {
        *m = x + 0.3 * y;
    }
    let b = omega_tv_sync::Embedding::normalize(mix).unwrap();
    // What the server merges: the uploaded codes, reconstructed.
    let back = |e: &omega_tv_sync::Embedding| {
        let r = book().reconstruct(&quantize(e)).unwrap();
        r.as_array().to_vec()
    };
    let (av, bv) = (back(a), back(&b));
    let ab = cos(&av, &bv);
    assert!((0.93..0.99).contains(&ab), "cos(a, b) = {ab}");

    // One device: `a` under 12 pattern ids, 1,000 samples at rate 1.0 each.
    // Five others (k): `b`, 1,000 samples at rate 0.7.
    let many: Vec<Up> = IDS
        .iter()
        .map(|id| {
            let mut u = Up::abs(id, quantize(a));
            (u.rate, u.samples) = (1.0, clip);
            u
        })
        .collect();
    contribute(addr, "tv-sybil", 1, &many);
    for d in 0..5 {
        let mut u = Up::abs("p", quantize(&b));
        (u.rate, u.samples) = (0.7, clip);
        contribute(addr, &format!("tv-{d}"), 1, &[u]);
    }
    srv.aggregate_now().await.unwrap();
    let (c, contributors, rate, samples) = published_centroid(addr);
    assert_eq!(contributors, 6);
    // The device counts for at most 1,000 samples in the pattern: each of
    // its 12 contributions for floor(1000 * 1000 / 12000) = 83.
    let sybil = 12 * (clip / 12);
    let sybil_samples = device_samples(&srv, "tv-sybil");
    assert_eq!(
        sybil_samples.len(),
        1,
        "one global pattern: {sybil_samples:?}"
    );
    assert_eq!(sybil_samples[0].1, sybil);
    assert_eq!(samples, 5 * clip + sybil, "published samples");
    // Its weight is that of one device at the clip (996 at rate 1.0)
    // against 5 × 700: the centroid leans to the five devices' `b`, and
    // the rate is theirs plus one device's. Without the cap the device
    // would weigh 12,000: the centroid would lean to `a` and the rate be
    // (12000 + 5 * 700 * 0.7) / (12000 + 5 * 700) = 0.93.
    let (wa, wb) = (sybil as f32, 5.0 * 0.7 * clip as f32);
    let expected_rate = (wa * 1.0 + wb * 0.7) / (wa + wb);
    assert!(
        (rate - expected_rate).abs() < 0.01,
        "rate {rate}, expected {expected_rate}"
    );
    assert!(
        cos(&c, &bv) > cos(&c, &av),
        "centroid leans to the one device: cos to a {}, to b {}",
        cos(&c, &av),
        cos(&c, &bv)
    );
    let mut mix = [0f32; omega_tv_sync::DIM];
    for (m, (x, y)) in mix.iter_mut().zip(av.iter().zip(&bv)) {
        *m = wa * x + wb * y;
    }
    let expected = omega_tv_sync::Embedding::normalize(mix).unwrap();
    // Within the codec's error of the capped mean (the mean with the
    // device at 12,000 is about 6 degrees away: cos 0.995).
    let fit = cos(&c, expected.as_array());
    assert!(fit > 0.9998, "published centroid vs the capped mean: {fit}");

    // The device drops 11 of its ids below the quality filter: the one
    // left regains the whole clip, whatever order the changes came in.
    let drops: Vec<Up> = IDS[1..]
        .iter()
        .map(|id| {
            let q = quantize(a);
            let mut u = Up::delta(id, 1, q, q);
            u.rate = 0.5;
            u
        })
        .collect();
    contribute(addr, "tv-sybil", 2, &drops);
    srv.aggregate_now().await.unwrap();
    assert_eq!(device_samples(&srv, "tv-sybil")[0].1, clip);
    srv.shutdown().await;
}
