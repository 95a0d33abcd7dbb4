//! Attacks on what the server publishes, against the real server on
//! loopback with real MiniLM vectors, and a statistical test of the
//! mechanism:
//! - the k-1 Sybil attack: four enrolled boxes upload a probe near a
//!   household's pattern `v` at the least weight the quality filter lets
//!   through (10 samples at rate 0.7); with every number the server
//!   publishes, the attacker's best estimate of `v` must be no closer to `v`
//!   than its own probe (`cos(estimate, v) <= cos(probe, v) + 0.02`), or
//!   nothing is published for the cohort;
//! - differencing: a global pattern is formed, one more household joins,
//!   the attacker differences the releases: the same criterion, with the
//!   attacker's prior the exact centroid of the cohort without the newcomer;
//! - a single household cannot make a trend;
//! - the empirical privacy loss of the mechanism on neighbouring datasets
//!   stays within the accountant's epsilon.
//!
//! Each attack also runs against the exact mode (`DpConfig::disabled()`,
//! the aggregation this server had before differential privacy): there it
//! succeeds, so these tests fail on that code.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use constellation::aggregate::accountant::Accountant;
use constellation::aggregate::dp::{cell_of, perturb, Cohort, DpConfig, Noise};
use constellation::{Config, Server, ServerHandle};
use omega_tv_sync::wire::Record;
use omega_tv_sync::{Embedding, DIM};

/// A published global pattern: direction, contributors, rate, samples.
#[derive(Clone, Debug)]
struct Pub {
    id: u32,
    unit: Vec<f32>,
    contributors: u32,
    rate: f32,
    samples: u32,
}

/// Every live global pattern and the number of trend records in the feed.
fn feed(addr: SocketAddr) -> (Vec<Pub>, Vec<String>) {
    let (mut since, mut out, mut trends) = (0u64, Vec::new(), Vec::new());
    for _ in 0..1000 {
        let r = raw(
            addr,
            "GET",
            &format!("/api/v1/global?since={since}&limit=64"),
            &[],
            &[],
        );
        assert_eq!(r.status, 200);
        for rec in records(&r.body) {
            match rec {
                Record::GlobalUpsert(u) => {
                    let mut codes = [0i16; DIM];
                    book().decode(u.code, None, &mut codes).unwrap();
                    let e = book().reconstruct(&codes).unwrap();
                    out.push(Pub {
                        id: u.id,
                        unit: e.as_array().to_vec(),
                        contributors: u.contributors,
                        rate: u.success_rate,
                        samples: u.sample_count,
                    });
                }
                Record::Trend(t) => trends.push(t.signal.content_id.as_str().to_string()),
                _ => {}
            }
        }
        let h = head(&r.body);
        if !h.more || h.global_version <= since {
            return (out, trends);
        }
        since = h.global_version;
    }
    panic!("the feed did not end");
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        ab += f64::from(*x) * f64::from(*y);
        aa += f64::from(*x) * f64::from(*x);
        bb += f64::from(*y) * f64::from(*y);
    }
    (ab / (aa.sqrt() * bb.sqrt()).max(1e-30)) as f32
}

/// What the server merges for `e`: its uploaded codes, reconstructed.
fn back(e: &Embedding) -> Vec<f32> {
    book()
        .reconstruct(&quantize(e))
        .unwrap()
        .as_array()
        .to_vec()
}

fn cell(e: &Embedding) -> u32 {
    cell_of(&quantize(e)[..], DpConfig::default().cell_bits)
}

/// `normalize(a + t b)`.
fn mix(a: &Embedding, b: &Embedding, t: f32) -> Embedding {
    let mut m = [0f32; DIM];
    for (m, (x, y)) in m.iter_mut().zip(a.as_array().iter().zip(b.as_array())) {
        *m = x + t * y;
    }
    Embedding::normalize(m).unwrap()
}

/// The victim `v` (a real pattern) and a probe near it in the same cohort,
/// with cosine in [0.925, 0.95] (so the exact mode's similarity 0.92 merges
/// them too).
fn victim_and_probe() -> (Embedding, Embedding) {
    let ps = patterns();
    let v = ps[1500].clone();
    for other in ps.iter().step_by(7) {
        for k in 1..40 {
            let p = mix(&v, other, k as f32 * 0.02);
            let c = cos(&back(&p), &back(&v));
            if (0.925..=0.95).contains(&c) && cell(&p) == cell(&v) {
                return (v, p);
            }
        }
    }
    panic!("no probe found");
}

fn contribute(
    addr: SocketAddr,
    device: &str,
    seq: u64,
    id: &'static str,
    e: &Embedding,
    samples: u32,
    rate: f32,
) {
    let mut u = Up::abs(id, quantize(e));
    (u.samples, u.rate) = (samples, rate);
    let r = post_sync(addr, device, "0", &upload(seq, 0, &[u]));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn server_config(db: &std::path::Path, dp: DpConfig) -> Config {
    let mut c = config(db);
    c.aggregate.dp = dp;
    c
}

async fn start_with(db: &std::path::Path, dp: DpConfig) -> ServerHandle {
    Server::start(server_config(db, dp))
        .await
        .expect("server starts")
}

/// Default parameters, noise from a fixed seed (so a test that needs a
/// published cohort is repeatable; the parameters are the defaults).
fn seeded(seed: u64) -> DpConfig {
    DpConfig {
        seed: Some(seed),
        ..Default::default()
    }
}

/// Real patterns in `v`'s cohort other than `v` (background households).
fn same_cell(v: &Embedding) -> Vec<Embedding> {
    let c = cell(v);
    let bv = back(v);
    patterns()
        .into_iter()
        .filter(|p| cell(p) == c && cos(&back(p), &bv) < 0.999)
        .collect()
}

/// `n` background households in `v`'s cohort, from device number `from`.
fn background(addr: SocketAddr, v: &Embedding, from: usize, n: usize) -> Vec<Vec<f32>> {
    let pool = same_cell(v);
    assert!(pool.len() >= 5, "cohort pool {}", pool.len());
    let mut exact = Vec::new();
    for i in 0..n {
        let e = &pool[i % pool.len()];
        contribute(addr, &format!("bg-{}", from + i), 1, "p", e, 200, 0.8);
        exact.push(back(e));
    }
    exact
}

/// The attacker's best estimate of `v` from one published global pattern:
/// the published direction scaled by every reading of its published
/// numbers, minus the attacker's own four probes at their known weight.
fn sybil_estimate(p: &Pub, probe: &[f32], v: &[f32], clip: f32) -> f32 {
    let attacker_w = 4.0 * 7.0; // four boxes, 10 samples at rate 0.7
                                // Readings of the sum's length: weight = samples * rate, in samples
                                // and in units of the clip, and a wide grid around them.
    let w = p.samples as f32 * p.rate;
    let mut scales = vec![w, w / clip, p.contributors as f32, p.samples as f32];
    for k in 1..200 {
        scales.push(attacker_w * k as f32 * 0.05);
    }
    let mut best = cos(&p.unit, v);
    for s in scales {
        for div in [1.0, clip] {
            let e: Vec<f32> = p
                .unit
                .iter()
                .zip(probe)
                .map(|(c, q)| c * s - attacker_w / div * q)
                .collect();
            best = best.max(cos(&e, v));
        }
    }
    best
}

async fn sybil_attack(dp: DpConfig, background_households: usize) -> (f32, f32, usize) {
    let (_dir, db) = temp_db();
    let clip = if dp.enabled {
        dp.full_weight_samples
    } else {
        1000
    } as f32;
    let srv = start_with(&db, dp).await;
    let addr = srv.local_addr();
    let (v, probe) = victim_and_probe();
    let (bv, bp) = (back(&v), back(&probe));
    let prior = cos(&bp, &bv);
    background(addr, &v, 0, background_households);
    // The household: a strong, steady pattern.
    contribute(addr, "victim", 1, "p", &v, 1000, 0.9);
    for d in 0..4 {
        contribute(addr, &format!("sybil-{d}"), 1, "probe", &probe, 10, 0.7);
    }
    // Several releases: the attacker reads them all.
    let mut best = f32::NEG_INFINITY;
    let mut seen = 0;
    for _ in 0..3 {
        srv.release_now().await.unwrap();
        let (g, _) = feed(addr);
        seen += g.len();
        for p in &g {
            best = best.max(sybil_estimate(p, &bp, &bv, clip));
        }
    }
    srv.shutdown().await;
    eprintln!("sybil: best estimate cos {best}, probe cos {prior}, {seen} published");
    (best, prior, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_minus_1_sybils_learn_nothing_in_the_default_configuration() {
    let (best, prior, seen) = sybil_attack(DpConfig::default(), 0).await;
    assert_eq!(
        seen, 0,
        "a cohort of 5 is never published (best estimate {best})"
    );
    let _ = prior;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_minus_1_sybils_in_a_published_cohort_learn_no_more_than_their_probe() {
    let (best, prior, seen) = sybil_attack(seeded(1), 300).await;
    assert!(seen > 0, "the cohort of 305 is published");
    assert!(
        best <= prior + 0.02,
        "attacker's estimate cos {best} vs probe's {prior}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_minus_1_sybils_recover_the_household_in_the_exact_mode() {
    // The aggregation before differential privacy: the attack works, so the
    // criterion above fails there.
    let (best, prior, seen) = sybil_attack(DpConfig::disabled(), 0).await;
    assert!(seen > 0);
    assert!(
        best > prior + 0.02,
        "exact mode: estimate cos {best} vs probe's {prior}"
    );
}

/// Six households form a cohort (plus `extra` more), a release, the
/// newcomer joins, another release; the attacker's best estimate of the
/// newcomer from every pair of releases, and the prior: the exact centroid
/// without it.
async fn differencing_attack(dp: DpConfig, extra: usize) -> (f32, f32, usize, usize) {
    let (_dir, db) = temp_db();
    let exact = !dp.enabled;
    let mut cfg = server_config(&db, dp);
    // The exact mode holds a republication for `republish_interval`: the
    // attacker just waits, on the aggregation clock here, past it.
    if exact {
        cfg.aggregate.republish_interval = constellation::aggregate::DEFAULT_REPUBLISH_INTERVAL;
        cfg.aggregation_clock = constellation::AggregationClock::External;
    }
    let wait = cfg.aggregate.republish_interval + std::time::Duration::from_secs(1);
    let srv = Server::start(cfg).await.expect("server starts");
    let t0 = std::time::Duration::from_secs(1_000_000);
    let release = |at: std::time::Duration| {
        let srv = &srv;
        async move {
            if exact {
                srv.release_at(at).await
            } else {
                srv.release_now().await
            }
        }
    };
    let addr = srv.local_addr();
    // Six households sharing a taste `u` near the newcomer's `v` (cosine
    // 0.925..0.95, same cohort; the exact mode merges them at 0.92).
    let (v, u) = victim_and_probe();
    let bv = back(&v);
    let mut exact = background(addr, &v, 0, extra);
    for i in 0..6 {
        contribute(addr, &format!("tv-{i}"), 1, "p", &u, 200, 0.8);
        exact.push(back(&u));
    }
    let mut sum = vec![0f32; DIM];
    for e in &exact {
        for (s, x) in sum.iter_mut().zip(e) {
            *s += x;
        }
    }
    let prior = cos(&sum, &bv);
    release(t0).await.unwrap();
    let (before, _) = feed(addr);
    contribute(addr, "newcomer", 1, "p", &v, 200, 0.8);
    release(t0 + wait).await.unwrap();
    let (after, _) = feed(addr);
    let mut best = f32::NEG_INFINITY;
    for a in &after {
        best = best.max(cos(&a.unit, &bv));
        for b in before.iter().filter(|b| b.id == a.id) {
            // The sums' lengths from the published weights, and a grid.
            let (wa, wb) = (a.samples as f32 * a.rate, b.samples as f32 * b.rate);
            let mut ratios = vec![wb / wa.max(1e-9)];
            for k in 0..=100 {
                ratios.push(0.5 + k as f32 * 0.01);
            }
            for r in ratios {
                let e: Vec<f32> = a.unit.iter().zip(&b.unit).map(|(x, y)| x - r * y).collect();
                best = best.max(cos(&e, &bv));
            }
        }
    }
    srv.shutdown().await;
    eprintln!(
        "differencing: best estimate cos {best}, cohort cos {prior}, published {} then {}",
        before.len(),
        after.len()
    );
    (best, prior, before.len(), after.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differencing_releases_reveals_nothing_in_the_default_configuration() {
    let (best, _, before, after) = differencing_attack(DpConfig::default(), 0).await;
    assert_eq!(
        (before, after),
        (0, 0),
        "cohorts of 6 and 7 are never published ({best})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differencing_a_published_cohort_learns_no_more_than_the_cohort() {
    let (best, prior, before, after) = differencing_attack(seeded(2), 300).await;
    assert!(
        before > 0 && after > 0,
        "published before and after the join"
    );
    assert!(
        best <= prior + 0.02,
        "attacker's estimate cos {best} vs the cohort's own {prior}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differencing_isolates_the_newcomer_in_the_exact_mode() {
    let (best, prior, before, after) = differencing_attack(DpConfig::disabled(), 0).await;
    assert!(before > 0 && after > 0);
    assert!(
        best > prior + 0.02,
        "exact mode: estimate cos {best} vs the cohort's {prior}"
    );
}

/// One household with a distinct taste among four others: does a trend
/// name the catalogue item nearest to its vector?
async fn single_household_trend(dp: DpConfig) -> (Vec<String>, String) {
    let (_dir, db) = temp_db();
    let mut cfg = server_config(&db, dp);
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/minilm");
    let cat = constellation::aggregate::trends::Catalogue::load(
        &data.join("items_public.f32"),
        &data.join("items_public.meta.tsv"),
    )
    .unwrap();
    cfg.trends.min_recent = 1.0;
    let (v, probe) = victim_and_probe();
    let household_item = cat.nearest(&back(&v)).unwrap().to_string();
    cfg.trends.catalogue = Some(Arc::new(cat));
    let srv = Server::start(cfg).await.unwrap();
    let addr = srv.local_addr();
    for d in 0..4 {
        contribute(addr, &format!("tv-{d}"), 1, "p", &probe, 20, 0.8);
    }
    contribute(addr, "household", 1, "p", &v, u32::MAX, 1.0);
    let mut trends = Vec::new();
    for _ in 0..3 {
        srv.release_now().await.unwrap();
        trends.extend(feed(addr).1);
    }
    srv.shutdown().await;
    (trends, household_item)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_household_cannot_make_a_trend_in_the_default_configuration() {
    let (trends, item) = single_household_trend(DpConfig::default()).await;
    assert!(trends.is_empty(), "{trends:?} (household's item {item})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_household_names_the_trend_in_the_exact_mode() {
    let (trends, item) = single_household_trend(DpConfig::disabled()).await;
    assert!(trends.contains(&item), "{trends:?} vs {item}");
}

/// The optimal (likelihood-ratio) statistic of one release of four cohorts
/// along the difference `diff` between neighbouring datasets.
fn statistic(cohorts: &[Cohort], diff: &[Cohort], cfg: &DpConfig, noise: &mut Noise) -> f64 {
    let (sv2, ss2) = (cfg.sigma_vector.powi(2), cfg.sigma_scalar.powi(2));
    let mut t = 0.0;
    for (c, d) in cohorts.iter().zip(diff) {
        let o = perturb(c, cfg, noise);
        t += o.sum.iter().zip(&d.sum).map(|(x, y)| x * y).sum::<f64>() / sv2;
        t += (o.count * d.count + o.samples * d.samples + o.weight * d.weight) / ss2;
    }
    t
}

/// The largest empirical privacy loss `|ln P(bin | D) / P(bin | D')|` over
/// the histogram bins of the statistic holding at least 100 of `trials`
/// releases under both datasets.
fn empirical_loss(cfg: &DpConfig, trials: usize, seed: u64) -> f64 {
    // Four cohorts of 150 households from real vectors; the neighbour D'
    // lacks one household that is in all four (m = 4, full weight, rate 0.9).
    let ps = patterns();
    let mut with = Vec::new();
    let mut diff = Vec::new();
    for k in 0..4 {
        let mut c = Cohort {
            sum: vec![0.0; DIM],
            count: 150.0,
            samples: 150.0 * 0.6,
            weight: 150.0 * 0.6 * 0.8,
        };
        for p in ps.iter().skip(k * 150).take(150) {
            for (s, x) in c.sum.iter_mut().zip(p.as_array()) {
                *s += 0.48 * f64::from(*x);
            }
        }
        let v = &ps[1000 + k];
        let d = Cohort {
            sum: v.as_array().iter().map(|x| 0.9 * f64::from(*x)).collect(),
            count: 1.0,
            samples: 1.0,
            weight: 0.9,
        };
        for (s, x) in c.sum.iter_mut().zip(&d.sum) {
            *s += x;
        }
        c.count += 1.0;
        c.samples += 1.0;
        c.weight += 0.9;
        with.push(c);
        diff.push(d);
    }
    let without: Vec<Cohort> = with
        .iter()
        .zip(&diff)
        .map(|(c, d)| Cohort {
            sum: c.sum.iter().zip(&d.sum).map(|(a, b)| a - b).collect(),
            count: c.count - d.count,
            samples: c.samples - d.samples,
            weight: c.weight - d.weight,
        })
        .collect();
    let mut noise = Noise::new(Some(seed)).unwrap();
    let a: Vec<f64> = (0..trials)
        .map(|_| statistic(&with, &diff, cfg, &mut noise))
        .collect();
    let b: Vec<f64> = (0..trials)
        .map(|_| statistic(&without, &diff, cfg, &mut noise))
        .collect();
    // Bins a quarter of the statistic's standard deviation wide.
    let mean = b.iter().sum::<f64>() / trials as f64;
    let sd = (b.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / trials as f64).sqrt();
    let bin = |x: f64| ((x - mean) / (0.25 * sd)).floor() as i64;
    let mut h = std::collections::BTreeMap::<i64, (u64, u64)>::new();
    for x in &a {
        h.entry(bin(*x)).or_default().0 += 1;
    }
    for x in &b {
        h.entry(bin(*x)).or_default().1 += 1;
    }
    h.values()
        .filter(|(x, y)| *x >= 100 && *y >= 100)
        .map(|(x, y)| (*x as f64 / *y as f64).ln().abs())
        .fold(0.0, f64::max)
}

#[test]
fn empirical_privacy_loss_stays_within_the_claimed_epsilon() {
    let cfg = DpConfig::default();
    let claimed = Accountant::new(&cfg).unwrap().epsilon_release();
    let loss = empirical_loss(&cfg, 6000, 7);
    assert!(loss <= claimed, "empirical loss {loss} > claimed {claimed}");
    // The test has power: with a tenth of the noise (a mis-scaled
    // mechanism) the same measurement exceeds the default's claim.
    let weak = DpConfig {
        sigma_vector: cfg.sigma_vector / 10.0,
        sigma_scalar: cfg.sigma_scalar / 10.0,
        ..cfg.clone()
    };
    let weak_loss = empirical_loss(&weak, 6000, 7);
    eprintln!("empirical loss {loss} (claimed {claimed}); a tenth of the noise: {weak_loss}");
    assert!(
        weak_loss > claimed,
        "a tenth of the noise: loss {weak_loss}, claimed {claimed}"
    );
    // A cohort held by one device alone is never published.
    let mut noise = Noise::new(Some(3)).unwrap();
    let alone = Cohort {
        sum: patterns()[5]
            .as_array()
            .iter()
            .map(|x| f64::from(*x))
            .collect(),
        count: 1.0,
        samples: 1.0,
        weight: 1.0,
    };
    let published = (0..20_000)
        .filter(|_| perturb(&alone, &cfg, &mut noise).publish(&cfg).is_some())
        .count();
    assert_eq!(published, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_the_privacy_loss_and_a_config_over_budget_is_refused() {
    let (_dir, db) = temp_db();
    let srv = start_with(&db, DpConfig::default()).await;
    let a = Accountant::new(&DpConfig::default()).unwrap();
    assert_eq!(
        metric(
            srv.admin_addr().expect("admin listener"),
            "constellation_dp_enabled"
        ),
        1.0
    );
    let w = metric(
        srv.admin_addr().expect("admin listener"),
        "constellation_dp_epsilon_window",
    );
    assert!((w - a.epsilon_window()).abs() < 1e-9, "{w}");
    let r = metric(
        srv.admin_addr().expect("admin listener"),
        "constellation_dp_epsilon_release",
    );
    assert!((r - a.epsilon_release()).abs() < 1e-9, "{r}");
    srv.release_now().await.unwrap();
    assert_eq!(
        metric(
            srv.admin_addr().expect("admin listener"),
            "constellation_dp_releases_in_window"
        ),
        1.0
    );
    let spent = metric(
        srv.admin_addr().expect("admin listener"),
        "constellation_dp_epsilon_spent",
    );
    assert!((spent - r).abs() < 1e-9, "one release spent {spent}");
    srv.shutdown().await;

    // Releases every minute: over the daily budget of 10: refused.
    let (_dir2, db2) = temp_db();
    let dp = DpConfig {
        epoch: std::time::Duration::from_secs(60),
        threshold: 250.0,
        ..Default::default()
    };
    match Server::start(server_config(&db2, dp)).await {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("exceeds the budget"), "{msg}");
        }
        Ok(_) => panic!("a configuration over budget started"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_stays_within_its_cohorts_and_the_honest_global_appears() {
    // A small test deployment (little noise, low threshold, a large budget):
    // five honest households must be enough to publish.
    let dp = DpConfig {
        sigma_vector: 0.05,
        sigma_scalar: 0.3,
        threshold: 4.0,
        delta: 1e-6,
        budget_epsilon: 1e9,
        seed: Some(5),
        ..Default::default()
    };
    let m = dp.max_globals as usize;
    let (_dir, db) = temp_db();
    let srv = start_with(&db, dp).await;
    let addr = srv.local_addr();
    let ps = patterns();
    let honest = &ps[1500];
    // The flood: 4 syncs of 64 distinct real patterns from other cohorts.
    let honest_cell = cell(honest);
    let flood: Vec<(&Embedding, u32)> = ps
        .iter()
        .map(|p| (p, cell(p)))
        .filter(|(_, c)| *c != honest_cell)
        .take(256)
        .collect();
    let mut n_cells = std::collections::BTreeSet::new();
    for (s, chunk) in flood.chunks(64).enumerate() {
        let ups: Vec<Up> = chunk
            .iter()
            .enumerate()
            .map(|(i, (e, c))| {
                n_cells.insert(*c);
                let id: &'static str = Box::leak(format!("f{s}-{i}").into_boxed_str());
                Up::abs(id, quantize(e))
            })
            .collect();
        let r = post_sync(addr, "flooder", "0", &upload(s as u64 + 1, 0, &ups));
        assert_eq!(r.status, 200);
        srv.aggregate_now().await.unwrap();
    }
    assert!(
        n_cells.len() > 4 * m,
        "the flood spans {} cohorts",
        n_cells.len()
    );
    for d in 0..5 {
        contribute(addr, &format!("tv-{d}"), 1, "p", honest, 200, 0.8);
    }
    srv.release_now().await.unwrap();
    // The flooder counts in at most m cohorts; the rest was left out.
    let aggs = constellation::store::read(&*srv.state().store, |t| t.aggregates()).unwrap();
    let flooder_in = aggs
        .iter()
        .filter(|(_, a)| a.devices.contains_key("flooder"))
        .count();
    assert!(flooder_in <= m, "flooder in {flooder_in} cohorts");
    assert!(aggs.len() <= m + 1, "{} aggregates", aggs.len());
    // At most the m largest cohorts of the flood were taken in.
    let mut sizes: Vec<usize> = n_cells
        .iter()
        .map(|c| flood.iter().filter(|(_, k)| k == c).count())
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let most_in: usize = sizes.iter().take(m).sum();
    let bounded = metric(
        srv.admin_addr().expect("admin listener"),
        "constellation_dp_bounded_contributions_total",
    );
    assert!(
        bounded >= (256 - most_in) as f64,
        "left out {bounded}, most taken in {most_in}"
    );
    // The honest cohort is published in this release.
    let (g, _) = feed(addr);
    let honest_unit = back(honest);
    assert!(
        g.iter()
            .any(|p| cos(&p.unit, &honest_unit) > 0.95 && (4..=7).contains(&p.contributors)),
        "{:?}",
        g.iter().map(|p| p.contributors).collect::<Vec<_>>()
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_changes_of_one_pattern_coalesce_within_a_pass() {
    let (_dir, db) = temp_db();
    let srv = start_with(&db, DpConfig::default()).await;
    let addr = srv.local_addr();
    let ps = patterns();
    // 20 syncs, each changing the same pattern (a new absolute vector),
    // before one pass.
    let mut base = quantize(&ps[0]);
    for seq in 1..=20u64 {
        let next = quantize(&ps[seq as usize]);
        let u = if seq == 1 {
            Up::abs("p", next)
        } else {
            Up::delta("p", seq as u32 - 1, base, next)
        };
        let r = post_sync(addr, "tv-busy", "0", &upload(seq, 0, &[u]));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        base = next;
    }
    srv.aggregate_now().await.unwrap();
    assert_eq!(
        metric(
            srv.admin_addr().expect("admin listener"),
            "constellation_aggregation_coalesced_total"
        ),
        19.0,
        "one read for 20 changes"
    );
    let aggs = constellation::store::read(&*srv.state().store, |t| t.aggregates()).unwrap();
    assert_eq!(aggs.len(), 1, "one cohort: the pattern's last state");
    srv.shutdown().await;
}
