//! The fleet simulation (the project's main job). See `--help`.

use omega_tv_sync_examples::fleet;

fn main() {
    // --help and --version print and exit 0; a bad flag or value exits 2.
    let args = fleet::parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
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
