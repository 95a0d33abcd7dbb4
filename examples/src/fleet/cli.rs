//! The fleet's command line (clap), turned into [`Args`].

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};

use super::{Args, Faults};

/// fleet: simulate a fleet of TVs syncing with Constellation
#[derive(Parser, Debug)]
#[command(name = "fleet", version, args_override_self = true)]
struct Cli {
    /// TVs to simulate
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = at_least_one)]
    devices: usize,
    /// Applied syncs per TV, at least
    #[arg(long, value_name = "R", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Run seed; with the embedded server the same seed gives the same TV
    /// behaviour, the same published global patterns and the same byte
    /// counts on any machine (timings differ); with --server, what the
    /// server published by when depends on its wall clock
    #[arg(long, value_name = "S", default_value_t = 42)]
    seed: u64,
    /// Use a running server instead of the embedded one; several nodes of
    /// one deployment as URL1,URL2,...: each TV's syncs, retries and stale
    /// twins rotate across them
    #[arg(long, value_name = "URL[,URL...]")]
    server: Option<String>,
    /// With --server: the TVs' keys as `constellation device add --db DB
    /// tv-000000 tv-000001 ...` printed them (ID KEY lines); without it
    /// requests go unsigned (server run with --insecure-no-auth)
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// Read the state back from this URL, or these URL1,URL2,... (default:
    /// the server's)
    #[arg(long, value_name = "URL")]
    check_server: Option<String>,
    /// With --server: the server's admin listener (`http://host:port` of
    /// `constellation serve --admin-listen`), where the checker reads each
    /// device's state back
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// With --server: the file holding the admin bearer token
    /// (`constellation serve --admin-token-file`)
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Route the TVs through a fault-injecting TCP proxy: per exchange,
    /// probability P split evenly over drop, delay, cut response and reset
    /// connection
    #[arg(long, value_name = "P", value_parser = probability)]
    proxy_faults: Option<f64>,
    /// Write report.md and SVG plots there
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write the report as JSON
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Exchanges in flight
    #[arg(long, value_name = "C", default_value_t = 64, value_parser = at_least_one)]
    concurrency: usize,
    /// Probability a response is lost after the server applied it
    #[arg(long = "drop", value_name = "P", default_value_t = 0.01, value_parser = probability)]
    drop_p: f64,
    /// Probability a TV goes offline for 1-4 h after a sync
    #[arg(long, value_name = "P", default_value_t = 0.01, value_parser = probability)]
    offline: f64,
    /// Probability a stale copy of a TV syncs later
    #[arg(long, value_name = "P", default_value_t = 0.002, value_parser = probability)]
    twin: f64,
    /// All fault rates 0 (a rate given after this flag still applies)
    #[arg(long)]
    no_faults: bool,
    /// Watch events per TV per 10 virtual minutes
    #[arg(long, value_name = "W", default_value_t = 1.5)]
    watch_rate: f64,
    /// Share of TVs on the small-flash codebook (minilm-small-v1), spread
    /// evenly over the fleet; they take global patterns through syncs
    #[arg(long, value_name = "S", default_value_t = 0.0, value_parser = probability)]
    small_profile_share: f64,
    /// No progress bar
    #[arg(long)]
    quiet: bool,
    /// Embedded server without differential privacy (exact k-anonymous globals)
    #[arg(long)]
    no_dp: bool,
    /// Virtual seconds between the embedded server's aggregation passes
    /// (driven by the simulation's clock, not the wall clock)
    #[arg(long, value_name = "S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..86_400))]
    pass_interval_s: u64,
    /// Run twice on the same seed, with differential privacy and without
    /// (--no-dp), and print one table of both (published globals, bytes
    /// down per sync, fidelity to the exact centroids)
    #[arg(long, conflicts_with_all = ["no_dp", "server"])]
    compare_dp: bool,
}

fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability in [0, 1]"))
    }
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// Parses the command line (`args` includes the program name). `--help`
/// and `--version` come back as the clap error that prints them.
pub fn parse_args<I, T>(args: I) -> Result<Args, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let m = Cli::command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&m)?;
    let mut a = Args::default();
    a.sim.devices = cli.devices;
    a.sim.rounds = cli.rounds;
    a.sim.seed = cli.seed;
    a.sim.concurrency = cli.concurrency;
    a.sim.watch_rate = cli.watch_rate;
    a.sim.small_profile_share = cli.small_profile_share;
    // `--no-faults` zeroes the rates given before it (or not at all); a
    // rate given after it applies.
    let after_no_faults = |id: &str| {
        m.value_source(id) == Some(ValueSource::CommandLine)
            && m.index_of(id) > m.index_of("no_faults")
    };
    let rate = |id: &str, v: f64| {
        if !cli.no_faults || after_no_faults(id) {
            v
        } else {
            0.0
        }
    };
    a.sim.faults = Faults {
        drop: rate("drop_p", cli.drop_p),
        offline: rate("offline", cli.offline),
        twin: rate("twin", cli.twin),
    };
    a.server = cli.server;
    a.check_server = cli.check_server;
    a.admin = cli.admin;
    a.admin_token_file = cli.admin_token_file;
    a.proxy_faults = cli.proxy_faults;
    a.out = cli.out;
    a.json = cli.json;
    a.keys = cli.keys;
    a.quiet = cli.quiet;
    a.no_dp = cli.no_dp;
    a.pass_interval_ms = cli.pass_interval_s * 1000;
    a.compare_dp = cli.compare_dp;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        parse_args(std::iter::once("fleet").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_the_readme_run() {
        let a = parse(&[]).unwrap();
        let d = Args::default();
        assert_eq!(
            (a.sim.devices, a.sim.rounds, a.sim.seed, a.sim.concurrency),
            (d.sim.devices, d.sim.rounds, d.sim.seed, d.sim.concurrency)
        );
        assert_eq!(
            (a.sim.faults.drop, a.sim.faults.offline, a.sim.faults.twin),
            (0.01, 0.01, 0.002)
        );
        assert_eq!(a.sim.watch_rate, 1.5);
        assert_eq!(a.sim.small_profile_share, 0.0);
        assert!(a.server.is_none() && a.proxy_faults.is_none() && !a.quiet);
    }

    #[test]
    fn flags_set_what_they_name() {
        let a = parse(&[
            "--devices",
            "20",
            "--rounds",
            "3",
            "--seed",
            "7",
            "--server",
            "http://h:1",
            "--check-server",
            "http://h:2",
            "--proxy-faults",
            "0.2",
            "--out",
            "o",
            "--json",
            "j",
            "--keys",
            "k",
            "--concurrency",
            "4",
            "--drop",
            "0.5",
            "--offline",
            "0.25",
            "--twin",
            "1",
            "--watch-rate",
            "3.5",
            "--small-profile-share",
            "0.2",
            "--quiet",
            "--devices",
            "21",
        ])
        .unwrap();
        assert_eq!((a.sim.devices, a.sim.rounds, a.sim.seed), (21, 3, 7));
        assert_eq!(a.sim.small_profile_share, 0.2);
        // 21 TVs at 0.2: exactly floor(21 * 0.2) = 4 on the small profile.
        let small = (0..21)
            .filter(|&i| crate::fleet::config::small_profile(&a.sim, i))
            .count();
        assert_eq!(small, 4);
        assert!(parse(&["--small-profile-share", "1.5"]).is_err());
        assert_eq!(a.server.as_deref(), Some("http://h:1"));
        assert_eq!(a.check_server.as_deref(), Some("http://h:2"));
        assert_eq!(a.proxy_faults, Some(0.2));
        assert_eq!(a.out, Some(PathBuf::from("o")));
        assert_eq!(a.json, Some(PathBuf::from("j")));
        assert_eq!(a.keys, Some(PathBuf::from("k")));
        assert_eq!(a.sim.concurrency, 4);
        assert_eq!(
            (a.sim.faults.drop, a.sim.faults.offline, a.sim.faults.twin),
            (0.5, 0.25, 1.0)
        );
        assert_eq!(a.sim.watch_rate, 3.5);
        assert!(a.quiet);
    }

    #[test]
    fn compare_dp_and_the_pass_interval() {
        let a = parse(&["--compare-dp", "--pass-interval-s", "30"]).unwrap();
        assert!(a.compare_dp && !a.no_dp);
        assert_eq!(a.pass_interval_ms, 30_000);
        assert_eq!(parse(&[]).unwrap().pass_interval_ms, 60_000);
        assert!(parse(&["--compare-dp", "--no-dp"]).is_err());
        assert!(parse(&["--compare-dp", "--server", "http://h:1"]).is_err());
        assert!(parse(&["--pass-interval-s", "0"]).is_err());
    }

    #[test]
    fn no_faults_zeroes_the_rates_given_before_it() {
        let a = parse(&["--drop", "0.5", "--no-faults", "--twin", "0.3"]).unwrap();
        assert_eq!(
            (a.sim.faults.drop, a.sim.faults.offline, a.sim.faults.twin),
            (0.0, 0.0, 0.3)
        );
        let a = parse(&["--no-faults"]).unwrap();
        assert_eq!(
            (a.sim.faults.drop, a.sim.faults.offline, a.sim.faults.twin),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn bad_values_unknown_flags_help_and_version_are_clap_errors() {
        use clap::error::ErrorKind::*;
        let cases = [
            (&["--devices", "0"][..], ValueValidation),
            (&["--rounds", "0"], ValueValidation),
            (&["--concurrency", "0"], ValueValidation),
            (&["--devices", "x"], ValueValidation),
            (&["--drop", "1.5"], ValueValidation),
            (&["--proxy-faults", "2"], ValueValidation),
            (&["--watch-rate", "fast"], ValueValidation),
            (&["--frobnicate"], UnknownArgument),
            (&["--devices"], InvalidValue),
            (&["--help"], DisplayHelp),
            (&["--version"], DisplayVersion),
        ];
        for (args, kind) in cases {
            let got = parse(args).err().map(|e| e.kind());
            assert_eq!(got, Some(kind), "{args:?}");
        }
    }
}
