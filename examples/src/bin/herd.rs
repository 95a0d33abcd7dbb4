//! Thundering herd after an outage (see `omega_tv_sync_examples::herd`):
//!
//! ```text
//! cargo run --release -p omega-tv-sync-examples --bin herd -- [--devices N] [--outage S] [--cap-ms MS] [--realtime] [--json FILE]
//! ```
//!
//! Prints the table of docs/reliability.md and exits non-zero when a
//! virtual second of the first minute exceeds the stated bound 3N/C.

use omega_tv_sync_examples::herd::{self, HerdConfig};

fn main() {
    let mut cfg = HerdConfig::default();
    let mut json = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--devices" => cfg.devices = num("--devices") as usize,
            "--outage" => cfg.outage_s = num("--outage"),
            "--seed" => cfg.seed = num("--seed"),
            "--cap-ms" => cfg.backoff.cap_ms = num("--cap-ms"),
            "--realtime" => cfg.realtime = true,
            "--json" => json = it.next(),
            _ => {
                eprintln!(
                    "usage: herd [--devices N] [--outage SECONDS] [--seed S] [--cap-ms MS] [--realtime] [--json FILE]"
                );
                std::process::exit(2);
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let t0 = std::time::Instant::now();
    let r = match rt.block_on(herd::run_embedded(&cfg, dir.path())) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herd: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", herd::table(&r));
    println!("per virtual second: {:?}", r.per_virtual_s);
    if !r.per_wall_s.is_empty() {
        println!("per wall second (server counters): {:?}", r.per_wall_s);
    }
    println!("wall time {:.1} s", t0.elapsed().as_secs_f64());
    if let Some(p) = json {
        let j = serde_json::to_string_pretty(&r).expect("serialises");
        std::fs::write(&p, j + "\n").expect("write json");
    }
    let peak = r.peak_per_virtual_s.max(r.peak_per_wall_s) as f64;
    if peak > r.bound_per_s {
        eprintln!("herd: peak {peak} > bound {:.1}", r.bound_per_s);
        std::process::exit(1);
    }
}
