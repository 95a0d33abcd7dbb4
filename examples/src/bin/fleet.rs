//! The fleet simulation (the project's main job). See `--help`.

use omega_tv_sync_examples::fleet;

fn main() {
    // --help and --version print and exit 0; a bad flag or value exits 2.
    let args = fleet::parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if args.compare_dp {
        let started = std::time::Instant::now();
        match rt.block_on(fleet::compare_dp(args)) {
            Ok((dp, exact)) => {
                println!("{}", fleet::report::compare_table(&dp, &exact));
                println!(
                    "wall clock of both runs: {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                let bad = [&dp, &exact].iter().any(|r| {
                    r.lost_updates + r.duplicates_applied + r.stuck > 0 || r.unsettled > 0
                });
                if bad {
                    eprintln!("fleet: CHECK FAILED in one of the runs");
                    std::process::exit(1);
                }
            }
            Err(e) => {
                eprintln!("fleet: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    match rt.block_on(fleet::run(args)) {
        Ok(report) => {
            println!("{}", fleet::report::table(&report));
            let ok = report.lost_updates == 0
                && report.duplicates_applied == 0
                && report.unsettled == 0
                && report.stuck == 0;
            if !ok {
                eprintln!(
                    "fleet: CHECK FAILED: lost {} / duplicated {} / unsettled {} / stuck {}",
                    report.lost_updates, report.duplicates_applied, report.unsettled, report.stuck
                );
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("fleet: {e}");
            std::process::exit(1);
        }
    }
}
