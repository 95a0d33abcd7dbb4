//! The fleet simulation: thousands of TVs, each a real sync client over the
//! std HTTP transport, learning from real MiniLM vectors and syncing with a
//! real Constellation server when its pacing says so, with faults on.
//!
//! ```text
//! cargo run --release -p omega-tv-sync-examples --bin fleet -- --help
//! ```

pub mod check;
pub mod cli;
pub mod config;
pub mod exchange;
pub mod faults;
pub mod fidelity;
pub mod globals;
pub mod ledger;
pub mod model;
pub mod nodes;
pub mod report;
pub mod rng;
pub mod settle;
pub mod sim;
pub mod svg;
pub mod tv;
pub mod twin;

use std::path::PathBuf;
use std::sync::Arc;

use nodes::Nodes;

pub use cli::parse_args;
pub use config::{device_id, Faults, SimConfig};
use globals::global_summary;
pub use globals::{compare_globals, LiveGlobals};
pub use report::Report;

/// Command-line options.
#[derive(Clone, Debug)]
pub struct Args {
    /// Simulation settings.
    pub sim: SimConfig,
    /// An external server (`http://host:port`), or several nodes of one
    /// deployment separated by commas (each TV's requests rotate across
    /// them: [`nodes::Nodes`]); default: start the embedded
    /// server on loopback with a redb file in a temporary directory.
    pub server: Option<String>,
    /// Where the end-of-run settle, checker and global summary talk to the
    /// server; default: `server` (or the embedded server). Set it when
    /// `server` is a proxy, so the read-back does not pass through faults.
    pub check_server: Option<String>,
    /// With `server`: the admin listener's URL (`http://host:port`), where
    /// the checker reads device state back (`GET /api/v1/devices/{id}/patterns`).
    pub admin: Option<String>,
    /// With `server`: the file holding the admin bearer token.
    pub admin_token_file: Option<PathBuf>,
    /// Put a fault-injecting TCP proxy ([`crate::proxy`]) between the TVs
    /// and the server, with this total fault probability per exchange split
    /// evenly over drop, delay, cut and reset. The checker reads back
    /// directly from the server.
    pub proxy_faults: Option<f64>,
    /// Where to write `report.md` and the SVG plots.
    pub out: Option<PathBuf>,
    /// Where to write the JSON report.
    pub json: Option<PathBuf>,
    /// With `--server`: the TVs' keys, as `constellation device add` printed
    /// them (`ID KEY` lines). The embedded server enrols its TVs itself.
    pub keys: Option<PathBuf>,
    /// No progress bar.
    pub quiet: bool,
    /// The embedded server publishes exact aggregates of k devices instead
    /// of differentially private releases (to measure what privacy costs).
    pub no_dp: bool,
    /// The embedded server's aggregation passes, in virtual milliseconds
    /// (the simulation's clock drives them: [`sim::Passes`]).
    pub pass_interval_ms: u64,
    /// The embedded server's differential-privacy settings, when not the
    /// default (`no_dp` wins); library API only, e.g. a test fleet too small
    /// for the default threshold. The noise seed is always the run's.
    pub dp: Option<constellation::aggregate::dp::DpConfig>,
    /// Run twice on the same seed, with differential privacy (the default)
    /// and without (`--no-dp`), and print both in one table ([`compare_dp`]).
    pub compare_dp: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            sim: SimConfig {
                devices: 1000,
                rounds: 10,
                seed: 42,
                concurrency: 64,
                faults: Faults {
                    drop: 0.01,
                    offline: 0.01,
                    twin: 0.002,
                },
                watch_rate: 1.5,
                patterns: (8, 20),
                keys: None,
                small_profile_share: 0.0,
            },
            server: None,
            check_server: None,
            admin: None,
            admin_token_file: None,
            proxy_faults: None,
            out: None,
            json: None,
            keys: None,
            quiet: false,
            no_dp: false,
            pass_interval_ms: 60_000,
            dp: None,
            compare_dp: false,
        }
    }
}

/// Unix time of the simulation's virtual time 0: 2026-01-01T00:00:00Z, a
/// whole hour, so release epochs begin at whole virtual hours.
pub const SIM_ORIGIN_S: u64 = 1_767_225_600;

/// The Unix time of virtual time `t` (ms since the run's start).
pub fn sim_time(t: u64) -> std::time::Duration {
    std::time::Duration::from_secs(SIM_ORIGIN_S) + std::time::Duration::from_millis(t)
}

/// The embedded server, when the run starts one.
struct Embedded {
    handle: constellation::ServerHandle,
    /// The admin bearer token it was started with.
    token: String,
    _dir: tempfile::TempDir,
}

async fn start_embedded(
    seed: u64,
    no_dp: bool,
    dp: Option<constellation::aggregate::dp::DpConfig>,
) -> Result<Embedded, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let mut cfg = constellation::Config::new();
    cfg.db = Some(dir.path().join("constellation.redb"));
    cfg.listen = "127.0.0.1:0".parse().expect("loopback address");
    let token = format!("fleet-{seed:016x}-{:016x}", std::process::id());
    cfg.admin_token =
        Some(constellation::AdminToken::new(&token).map_err(|e| format!("admin token: {e}"))?);
    // The simulation runs virtual 5-15 min intervals in real seconds.
    cfg.min_sync_interval_s = 0;
    cfg.codebooks = constellation::codebooks::default_codebooks();
    cfg.pacing_seed = Some(seed);
    if let Some(dp) = dp {
        cfg.aggregate.dp = dp;
    }
    if no_dp {
        cfg.aggregate.dp = constellation::aggregate::dp::DpConfig::disabled();
    }
    // Aggregation on the simulation's clock ([`sim::Passes`]): no wall-clock
    // loop; each pass takes every change since the last one (one batch, so
    // the pass does not depend on the order the syncs were committed in);
    // the privacy noise comes from the run seed (library API only: the
    // served binary always seeds it from the operating system).
    cfg.aggregation_clock = constellation::AggregationClock::External;
    cfg.aggregate.batch = usize::MAX;
    cfg.aggregate.dp.seed = Some(seed ^ 0xD1FF_5EED);
    let handle = constellation::Server::start(cfg)
        .await
        .map_err(|e| format!("starting the server: {e}"))?;
    Ok(Embedded {
        handle,
        token,
        _dir: dir,
    })
}

/// Reads `ID KEY` lines (the output of `constellation device add`).
fn read_keys(
    path: &std::path::Path,
) -> Result<std::collections::HashMap<String, omega_tv_sync::DeviceKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut keys = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (id, key) = line
            .split_once(' ')
            .ok_or_else(|| format!("{}:{}: expected `ID KEY`", path.display(), n + 1))?;
        let key = omega_tv_sync::DeviceKey::from_hex(key.trim()).map_err(|_| {
            format!(
                "{}:{}: the key must be 64 hex digits",
                path.display(),
                n + 1
            )
        })?;
        keys.insert(id.to_string(), key);
    }
    Ok(keys)
}

/// `host:port` of an `http://` URL, resolved.
fn upstream_addr(url: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs can be proxied"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))
}

/// Runs the fleet twice on the same seed and settings, with the default
/// differential privacy and in the exact mode (`--no-dp`); returns both
/// reports, the private one first.
pub async fn compare_dp(args: Args) -> Result<(Report, Report), String> {
    let mut dp = args.clone();
    dp.no_dp = false;
    let mut exact = args;
    exact.no_dp = true;
    let a = run(dp).await?;
    let b = run(exact).await?;
    Ok((a, b))
}

/// Runs the whole job: server, simulation, settle, checker, report.
pub async fn run(args: Args) -> Result<Report, String> {
    let cat = Arc::new(model::Catalog::load().map_err(|e| format!("loading data/minilm: {e}"))?);
    let cb = omega_tv_sync::codec::minilm_v1().map_err(|e| format!("codebook: {e}"))?;
    let embedded = match &args.server {
        Some(_) => None,
        None => Some(start_embedded(args.sim.seed, args.no_dp, args.dp.clone()).await?),
    };
    let mut args = args;
    let ids: Vec<String> = (0..args.sim.devices).map(device_id).collect();
    let keys = match (&embedded, &args.keys) {
        // The embedded server enrols every TV (authentication is on).
        (Some(e), _) => {
            let keys = e
                .handle
                .enrol_many(&ids)
                .await
                .map_err(|e| format!("enrolling the TVs: {e}"))?;
            Some(ids.iter().cloned().zip(keys).collect())
        }
        (None, Some(path)) => Some(read_keys(path)?),
        (None, None) => None,
    };
    args.sim.keys = keys.map(Arc::new);
    let url = match (&args.server, &embedded) {
        (Some(u), _) => u.clone(),
        (None, Some(e)) => e.handle.url(),
        (None, None) => unreachable!("one of them is set"),
    };
    let check_url = args.check_server.clone().unwrap_or_else(|| url.clone());
    let (admin_url, admin_token) = match (&embedded, &args.admin, &args.admin_token_file) {
        (Some(e), _, _) => match e.handle.admin_addr() {
            Some(a) => (format!("http://{a}"), e.token.clone()),
            None => return Err("the embedded server has no admin listener".into()),
        },
        (None, Some(u), Some(f)) => {
            let t = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            (u.clone(), t.trim().to_string())
        }
        _ => {
            return Err(
                "with --server, give --admin URL and --admin-token-file FILE: the checker \
                 reads device state from the admin listener"
                    .into(),
            )
        }
    };
    let proxy = match args.proxy_faults {
        Some(_) if url.contains(',') => {
            return Err("--proxy-faults takes one --server URL".into());
        }
        Some(p) => {
            let upstream = upstream_addr(&url)?;
            let faults = crate::proxy::ProxyFaults::even(p);
            Some(
                crate::proxy::FaultProxy::start(upstream, faults, args.sim.seed)
                    .await
                    .map_err(|e| format!("starting the proxy: {e}"))?,
            )
        }
        None => None,
    };
    let url = proxy.as_ref().map_or(url, |p| p.url());
    let http = Nodes::new(&url).map_err(|e| format!("{url}: {e}"))?;
    let direct = Nodes::new(&check_url).map_err(|e| format!("{check_url}: {e}"))?;
    let target = (args.sim.devices as u64) * u64::from(args.sim.rounds);
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(target);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} syncs ({per_sec}, eta {eta})",
            )
            .expect("valid template"),
        );
        b
    };
    if !args.quiet {
        eprintln!(
            "fleet: {} TVs x {} syncs against {} ({})",
            args.sim.devices,
            args.sim.rounds,
            url,
            if embedded.is_some() {
                "embedded server, redb in a temp dir"
            } else {
                "external server"
            }
        );
    }
    let bar2 = bar.clone();
    let h = http.clone();
    let passes = embedded.as_ref().map(|e| {
        let st = e.handle.state().clone();
        sim::Passes {
            every_ms: args.pass_interval_ms.max(1),
            run: Box::new(move |t| {
                let st = st.clone();
                Box::pin(async move {
                    constellation::aggregate::run_at(&st, sim_time(t), false)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }),
        }
    });
    let mut result = sim::run_with_passes(
        cat.clone(),
        cb,
        args.sim.clone(),
        move || h.clone(),
        &move |n| bar2.set_position(n.min(target)),
        passes,
    )
    .await;
    bar.finish_and_clear();
    if let Some(fatal) = &result.counters.fatal {
        return Err(fatal.clone());
    }
    let h = direct.clone();
    let unsettled = settle::settle(&mut result, move || h.clone(), 8).await;
    if let Some(e) = &embedded {
        // Publish what the last syncs (and the settle phase) contributed
        // before reading the totals: a pass and a release at the time of
        // the next pass, whatever the epoch.
        let end = result
            .next_pass_ms
            .unwrap_or((result.virtual_s * 1000.0) as u64);
        e.handle
            .release_at(sim_time(end))
            .await
            .map_err(|e| format!("aggregation: {e}"))?;
    }
    // Every TV takes what that aggregation published (feed pages, or syncs
    // for small-profile TVs), so that the global sets can be compared.
    let h = direct.clone();
    let behind = settle::catch_up(&mut result, move || h.clone(), 64).await;
    let mut t = direct.clone();
    let mut adm = Nodes::new(&admin_url).map_err(|e| format!("{admin_url}: {e}"))?;
    let verdict = check::check_all(&result.tvs, &mut adm, &admin_token).await?;
    let (global_version, live) = global_summary(&mut t, &cb).await?;
    let mut rep = report::build(
        &args.sim,
        &result,
        &verdict,
        unsettled + behind,
        live.len() as u64,
        global_version,
    );
    (rep.global_set_mismatches, rep.small_global_cos_min) = compare_globals(&result.tvs, &live);
    rep.published = live.iter().map(|(id, (v, _))| (*id, *v)).collect();
    if let Some(e) = &embedded {
        // Each published global against the exact centroid of its group
        // (the server's exact, clipped sums).
        let st = e.handle.state();
        let exact: Vec<(u32, Vec<f32>)> =
            constellation::store::read(&*st.store, |t| t.aggregates())
                .map_err(|e| format!("reading the aggregates: {e}"))?
                .into_iter()
                .filter(|(_, a)| a.published)
                .map(|(id, a)| (id, a.sum))
                .collect();
        rep.fidelity = Some(fidelity::measure(&cat, &live, &exact));
    }
    rep.proxy = proxy.as_ref().map(|p| p.totals());
    if let Some(dir) = &args.out {
        report::write_dir(dir, &args.sim, &rep, &result)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if let Some(path) = &args.json {
        let j = serde_json::to_string_pretty(&rep).expect("a report serialises");
        std::fs::write(path, j + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(e) = embedded {
        e.handle.shutdown().await;
    }
    Ok(rep)
}
