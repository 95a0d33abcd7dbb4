//! Generates a codebook blob from the catalogue items, reproducibly.
//!
//! ```text
//! gen-codebook --items data/minilm/items_public.f32 --profile minilm-v1 --out core/codebooks/minilm-v1.bin
//! gen-codebook --items ITEMS --out FILE [--small] [--step S] [--alpha A] [--gamma G]
//!     [--plain-tables P] [--n-train N] [--seed S]
//! gen-codebook --items data/minilm/items_public.f32 --tune [--small] [--pattern-basis]
//!     [--grid S:A:G[:P],...] [--fit-items N] [--eval-patterns FILE]
//! ```
//!
//! `--tune` fits codebooks for a grid of steps `S` (x 2^-9) and weightings
//! `A` (alpha) and `G` (gamma), and table layouts `P` (raw bits from
//! `2^(P/4 - 3)` steps; default 20), and prints bytes and recall@10 on *synthetic*
//! validation patterns (another seed, never the public patterns), to choose
//! the options of the shipped profiles (`fit::profiles`). `--fit-items N`
//! fits on the first `N` items only (validation still ranks against all of
//! them); `--eval-patterns` adds rows for real patterns, for reporting only.

use omega_tv_sync::codec::{Codebook, MAX_CODED_LEN};
use omega_tv_sync::Embedding;
use omega_tv_sync_bench::data::drift;
use omega_tv_sync_bench::data::read_rows;
use omega_tv_sync_bench::fit::{self, Options};
use omega_tv_sync_bench::metrics::{cos, rank, recall10, Ranked};
use omega_tv_sync_bench::synth::Synth;
use std::path::PathBuf;

fn main() {
    let mut items = None;
    let mut out = None;
    let mut tune = false;
    let mut grid: Option<String> = None;
    let mut fit_items: Option<usize> = None;
    let mut eval_patterns: Option<PathBuf> = None;
    let mut opts = Options {
        basis: true,
        step: 1.0 / 512.0,
        alpha: 0.0,
        gamma: 0.0,
        plain_tables: fit::N_SMALL,
        pattern_basis: false,
        n_train: 8000,
        seed: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--items" => items = Some(PathBuf::from(val())),
            "--out" => out = Some(PathBuf::from(val())),
            "--small" => opts.basis = false,
            "--profile" => {
                let name = val();
                opts = fit::profiles()
                    .into_iter()
                    .find(|p| p.name == name)
                    .unwrap_or_else(|| die(&format!("unknown profile {name}")))
                    .opts;
            }
            "--tune" => tune = true,
            "--step" => opts.step = parse(&val()),
            "--alpha" => opts.alpha = parse(&val()),
            "--gamma" => opts.gamma = parse(&val()),
            "--plain-tables" => opts.plain_tables = parse(&val()),
            "--pattern-basis" => opts.pattern_basis = true,
            "--grid" => grid = Some(val()),
            "--fit-items" => fit_items = Some(parse(&val())),
            "--eval-patterns" => eval_patterns = Some(PathBuf::from(val())),
            "--n-train" => opts.n_train = parse(&val()),
            "--seed" => opts.seed = parse(&val()),
            _ => die(&format!("unknown argument {a}")),
        }
    }
    let items_path = items.unwrap_or_else(|| die("--items is required"));
    let items = read_rows(&items_path).unwrap_or_else(|e| die(&e.to_string()));
    if tune {
        let grid: Vec<(f64, f64, f64, u8)> = match grid {
            None => [0.9, 1.0, 1.1, 1.2]
                .iter()
                .flat_map(|&s| {
                    [0.0, 0.15, 0.25, 0.35].map(|a| (s, a, opts.gamma, opts.plain_tables))
                })
                .collect(),
            Some(g) => g
                .split(',')
                .map(|t| {
                    let v: Vec<f64> = t.split(':').map(parse).collect();
                    match v[..] {
                        [s, a, g] => (s, a, g, opts.plain_tables),
                        [s, a, g, p] if matches!(p, 1.0..=64.0) && p.fract() == 0.0 => {
                            (s, a, g, p as u8)
                        }
                        _ => die("--grid wants S:A:G[:P],..."),
                    }
                })
                .collect(),
        };
        let eval = eval_patterns.map(|p| read_rows(&p).unwrap_or_else(|e| die(&e.to_string())));
        return run_tune(
            &items,
            &items[..fit_items.unwrap_or(items.len())],
            &opts,
            &grid,
            eval.as_deref(),
        );
    }
    let out = out.unwrap_or_else(|| die("--out is required"));
    let f = fit::generate(&items, &opts);
    let cb = Codebook::from_bytes(&f.blob).unwrap_or_else(|e| die(&format!("invalid blob: {e}")));
    std::fs::write(&out, &f.blob).unwrap_or_else(|e| die(&e.to_string()));
    eprintln!(
        "{}: {} bytes, id {:#010x}; training ideal bits/pattern: abs {:.1} (beta {}), delta {:.1} (beta {})",
        out.display(),
        f.blob.len(),
        cb.id(),
        f.abs.bits,
        f.abs.beta,
        f.delta.bits,
        f.delta.beta
    );
}

/// Bytes and recall of a codebook on patterns and their drifts.
struct Eval {
    pats: Vec<[f32; 384]>,
    news: Vec<[f32; 384]>,
    rk: Vec<Ranked>,
    rk_new: Vec<Ranked>,
    /// Lowest absolute cos of the first 300 patterns (what the core's test checks).
    min300: std::cell::Cell<f64>,
}

impl Eval {
    fn new(pats: Vec<[f32; 384]>, news: Vec<[f32; 384]>, items: &[[f32; 384]]) -> Self {
        let rk = pats.iter().map(|p| rank(p, items)).collect();
        let rk_new = news.iter().map(|p| rank(p, items)).collect();
        Eval {
            pats,
            news,
            rk,
            rk_new,
            min300: std::cell::Cell::new(1.0),
        }
    }

    /// (abs B, delta B, recall abs, recall delta, cos mean, cos min)
    fn run(&self, cb: &Codebook<'_>, items: &[[f32; 384]]) -> (f64, f64, f64, f64, f64, f64) {
        let (mut ab, mut db, mut ra, mut rd, mut cs) = (0usize, 0usize, 0.0, 0.0, 0.0);
        let mut cmin = 1f64;
        let mut buf = [0u8; MAX_CODED_LEN];
        for i in 0..self.pats.len() {
            let e = Embedding::new(self.pats[i]).expect("unit");
            let q = cb.quantize(&e);
            ab += cb.encode(&q, None, &mut buf).expect("fits");
            let d = *cb.reconstruct(&q).expect("ok").as_array();
            ra += recall10(&self.pats[i], &self.rk[i], &d, items);
            cs += cos(&self.pats[i], &d);
            cmin = cmin.min(cos(&self.pats[i], &d));
            if i < 300 {
                self.min300
                    .set(self.min300.get().min(cos(&self.pats[i], &d)));
            }
            let en = Embedding::new(self.news[i]).expect("unit");
            let qn = cb.quantize(&en);
            db += cb.encode(&qn, Some(&q), &mut buf).expect("fits");
            let dn = *cb.reconstruct(&qn).expect("ok").as_array();
            rd += recall10(&self.news[i], &self.rk_new[i], &dn, items);
            cmin = cmin.min(cos(&self.news[i], &dn));
        }
        let n = self.pats.len() as f64;
        (ab as f64 / n, db as f64 / n, ra / n, rd / n, cs / n, cmin)
    }
}

fn run_tune(
    items: &[[f32; 384]],
    fit_items: &[[f32; 384]],
    opts: &Options,
    grid: &[(f64, f64, f64, u8)],
    eval: Option<&[[f32; 384]]>,
) {
    let prep = fit::prepare_with(
        fit_items,
        opts.basis,
        opts.pattern_basis,
        opts.n_train,
        opts.seed,
    );
    // Validation: other synthetic patterns, another seed, from all items.
    let mut synth = Synth::new(items, opts.seed ^ 0x05ee_d0f7_a11d);
    let val = synth.patterns(2000);
    let val_new: Vec<_> = val.iter().map(|p| synth.drift(p)).collect();
    let val = Eval::new(val, val_new, items);
    let real = eval.map(|pats| {
        let n = items.len();
        let news = pats
            .iter()
            .enumerate()
            .map(|(i, p)| drift(p, &items[(7 * i + 3) % n], (5 + i % 16) as f64))
            .collect();
        Eval::new(pats.to_vec(), news, items)
    });
    println!(
        "fit on {} of {} items; basis from {}",
        fit_items.len(),
        items.len(),
        if opts.pattern_basis {
            "patterns"
        } else {
            "items"
        }
    );
    println!("set step_x512 alpha gamma P abs_B delta_B recall_abs recall_delta cos_mean cos_min cos_min_first300");
    for &(s, al, g, p) in grid {
        let f = fit::fit_weighted(&prep, s / 512.0, al, g, p);
        let cb = Codebook::from_bytes(&f.blob).expect("valid");
        for (name, set) in [("val", Some(&val)), ("real", real.as_ref())] {
            let Some(set) = set else { continue };
            set.min300.set(1.0);
            let (ab, db, ra, rd, cs, cm) = set.run(&cb, items);
            println!(
                "{name} {s:.3} {al:.2} {g:.3} {p} {ab:.1} {db:.1} {ra:.4} {rd:.4} {cs:.6} {cm:.6} {:.6}",
                set.min300.get()
            );
        }
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> T {
    s.parse()
        .unwrap_or_else(|_| die(&format!("bad number {s}")))
}

fn die(msg: &str) -> ! {
    eprintln!("gen-codebook: {msg}");
    std::process::exit(2)
}
