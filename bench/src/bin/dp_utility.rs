//! What differential privacy costs a global pattern: for cohorts of 5 to
//! 10,000 households built from the real MiniLM patterns of one cohort key
//! (`data/minilm/patterns_public.f32`; nothing is fitted here, the codebook
//! comes from the catalogue), the release mechanism of the server
//! (`constellation::aggregate::dp`) at the default noise and at two others:
//! how often the cohort is published, the cosine of the published centroid
//! to the exact one, and recall@10 of the catalogue items
//! (`items_public.f32`) nearest to the published centroid against those
//! nearest to the exact one.
//!
//! `cargo run -p omega-tv-sync-bench --release --bin dp_utility`

use std::collections::BTreeMap;

use constellation::aggregate::accountant::Accountant;
use constellation::aggregate::dp::{cell_of, perturb, Cohort, DpConfig, Noise};
use omega_tv_sync::codec::minilm_v1;
use omega_tv_sync::{Embedding, DIM};
use omega_tv_sync_bench::data::{dot, read_rows, Row};
use omega_tv_sync_testkit::data::data_dir;

const SIZES: [usize; 5] = [5, 20, 100, 1000, 10_000];
const TRIALS: usize = 10;
const COHORTS: usize = 8;

fn top10(q: &Row, items: &[Row]) -> Vec<usize> {
    let mut s: Vec<(f32, usize)> = items
        .iter()
        .enumerate()
        .map(|(i, r)| (dot(q, r), i))
        .collect();
    s.select_nth_unstable_by(10, |a, b| b.0.total_cmp(&a.0));
    s.truncate(10);
    s.into_iter().map(|(_, i)| i).collect()
}

fn unit(v: &[f64]) -> Row {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut r = [0f32; DIM];
    for (o, x) in r.iter_mut().zip(v) {
        *o = (x / n) as f32;
    }
    r
}

fn main() {
    let book = minilm_v1().expect("codebook");
    let dir = data_dir();
    let patterns = read_rows(&dir.join("patterns_public.f32")).expect("patterns");
    let items = read_rows(&dir.join("items_public.f32")).expect("items");
    let bits = DpConfig::default().cell_bits;
    let mut cells: BTreeMap<u32, Vec<Row>> = BTreeMap::new();
    for p in &patterns {
        let e = Embedding::normalize(*p).expect("unit");
        cells
            .entry(cell_of(&book.quantize(&e)[..], bits))
            .or_default()
            .push(*p);
    }
    let mut by_size: Vec<Vec<Row>> = cells.into_values().collect();
    by_size.sort_by_key(|c| std::cmp::Reverse(c.len()));
    by_size.truncate(COHORTS);
    println!(
        "{} patterns, the {COHORTS} most populated cohort keys ({}..{} distinct real patterns each, \
         cycled to the cohort size); {TRIALS} releases each; members at full weight, rate 0.8",
        patterns.len(),
        by_size.last().map_or(0, Vec::len),
        by_size.first().map_or(0, Vec::len)
    );
    let base = DpConfig::default();
    let configs = [
        ("default", 1.0),
        ("half the noise", 0.5),
        ("twice the noise", 2.0),
    ];
    println!();
    println!("| noise | eps/release | eps/day | threshold | cohort | published | cos(published, exact) | recall@10 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut noise = Noise::new(Some(42)).expect("noise");
    for (name, f) in configs {
        let sigma_scalar = base.sigma_scalar * f;
        let cfg = DpConfig {
            sigma_vector: base.sigma_vector * f,
            sigma_scalar,
            // 7.5 noise deviations (180 at the default noise, as the server).
            threshold: (7.5 * sigma_scalar).round(),
            budget_epsilon: f64::INFINITY,
            ..base.clone()
        };
        let a = Accountant::new(&cfg).expect("valid");
        for &n in &SIZES {
            let (mut published, mut cos_sum, mut rec_sum) = (0usize, 0f64, 0f64);
            for members in &by_size {
                let mut c = Cohort {
                    sum: vec![0.0; DIM],
                    count: n as f64,
                    samples: n as f64,
                    weight: 0.8 * n as f64,
                };
                for i in 0..n {
                    let r = &members[i % members.len()];
                    for (s, x) in c.sum.iter_mut().zip(r) {
                        *s += 0.8 * f64::from(*x);
                    }
                }
                let exact = unit(&c.sum);
                let truth = top10(&exact, &items);
                for _ in 0..TRIALS {
                    let Some(p) = perturb(&c, &cfg, &mut noise).publish(&cfg) else {
                        continue;
                    };
                    published += 1;
                    let mut u = [0f32; DIM];
                    u.copy_from_slice(&p.unit);
                    cos_sum += f64::from(dot(&u, &exact));
                    let got = top10(&u, &items);
                    rec_sum += got.iter().filter(|i| truth.contains(i)).count() as f64 / 10.0;
                }
            }
            let total = COHORTS * TRIALS;
            let (cs, rs) = if published > 0 {
                (
                    format!("{:.3}", cos_sum / published as f64),
                    format!("{:.2}", rec_sum / published as f64),
                )
            } else {
                ("-".into(), "-".into())
            };
            println!(
                "| {name} ({:.0}/{:.0}) | {:.2} | {:.2} | {} | {n} | {:.0}% | {cs} | {rs} |",
                cfg.sigma_vector,
                cfg.sigma_scalar,
                a.epsilon_release(),
                a.epsilon_window(),
                cfg.threshold,
                100.0 * published as f64 / total as f64,
            );
        }
    }
}
