//! Generates a codebook blob from the catalogue items, reproducibly.
//!
//! ```text
//! gen-codebook --items data/minilm/items_public.f32 --profile minilm-v1 --out core/codebooks/minilm-v1.bin
//! gen-codebook --items ITEMS --out FILE [--small] [--step S] [--alpha A] [--n-train N] [--seed S]
//! gen-codebook --items data/minilm/items_public.f32 --tune [--small]
//! ```
//!
//! `--tune` fits codebooks for a grid of steps and weightings and prints
//! bytes and recall@10 on *synthetic* validation patterns (never the public
//! patterns), to choose the arguments `scripts/gen-codebook.sh` passes.

use omega_tv_sync::codec::{Codebook, MAX_CODED_LEN};
use omega_tv_sync::Embedding;
use omega_tv_sync_bench::data::read_rows;
use omega_tv_sync_bench::fit::{self, Options};
use omega_tv_sync_bench::metrics::{rank, recall10};
use omega_tv_sync_bench::synth::Synth;
use std::path::PathBuf;

fn main() {
    let mut items = None;
    let mut out = None;
    let mut tune = false;
    let mut opts = Options {
        basis: true,
        step: 1.0 / 512.0,
        alpha: 0.0,
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
            "--n-train" => opts.n_train = parse(&val()),
            "--seed" => opts.seed = parse(&val()),
            _ => die(&format!("unknown argument {a}")),
        }
    }
    let items_path = items.unwrap_or_else(|| die("--items is required"));
    let items = read_rows(&items_path).unwrap_or_else(|e| die(&e.to_string()));
    if tune {
        return run_tune(&items, &opts);
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

fn run_tune(items: &[[f32; 384]], opts: &Options) {
    let prep = fit::prepare(items, opts.basis, opts.n_train, opts.seed);
    // Validation: other synthetic patterns, another seed.
    let mut synth = Synth::new(items, opts.seed ^ 0x05ee_d0f7_a11d);
    let val = synth.patterns(2000);
    let val_new: Vec<_> = val.iter().map(|p| synth.drift(p)).collect();
    let rk: Vec<_> = val.iter().map(|p| rank(p, items)).collect();
    let rk_new: Vec<_> = val_new.iter().map(|p| rank(p, items)).collect();
    println!("step_x512 alpha abs_B delta_B recall_abs recall_delta cos_mean");
    let steps = [0.9, 1.0, 1.1, 1.2];
    let alphas = [0.0, 0.15, 0.25, 0.35];
    for &s in &steps {
        for &al in &alphas {
            let f = fit::fit(&prep, s / 512.0, al);
            let cb = Codebook::from_bytes(&f.blob).expect("valid");
            let (mut ab, mut db, mut ra, mut rd, mut cs) = (0usize, 0usize, 0.0, 0.0, 0.0);
            let mut buf = [0u8; MAX_CODED_LEN];
            for i in 0..val.len() {
                let e = Embedding::new(val[i]).expect("unit");
                let q = cb.quantize(&e);
                ab += cb.encode(&q, None, &mut buf).expect("fits");
                let d = *cb.reconstruct(&q).expect("ok").as_array();
                ra += recall10(&val[i], &rk[i], &d, items);
                cs += omega_tv_sync_bench::metrics::cos(&val[i], &d);
                let en = Embedding::new(val_new[i]).expect("unit");
                let qn = cb.quantize(&en);
                db += cb.encode(&qn, Some(&q), &mut buf).expect("fits");
                let dn = *cb.reconstruct(&qn).expect("ok").as_array();
                rd += recall10(&val_new[i], &rk_new[i], &dn, items);
            }
            let n = val.len() as f64;
            println!(
                "{s:.2} {al:.2} {:.1} {:.1} {:.4} {:.4} {:.6}",
                ab as f64 / n,
                db as f64 / n,
                ra / n,
                rd / n,
                cs / n
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
