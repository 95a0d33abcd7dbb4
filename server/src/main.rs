//! `constellation`: the server binary.

/// The sync path allocates many small, short-lived buffers: with mimalloc
/// the server bench's CPU per sync is lower, at some peak RSS
/// (docs/benchmarks.md, "Server"; feature `mimalloc`, on by default).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use constellation::{Config, Server};

/// Constellation, the omega-tv-sync server.
#[derive(Parser, Debug)]
#[command(name = "constellation", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the sync API.
    Serve(Box<ServeArgs>),
    /// Enrol or revoke devices (request signing). On a redb file: stop the
    /// server first (redb allows one process). On PostgreSQL: works while
    /// the deployment runs.
    #[command(subcommand)]
    Device(DeviceCmd),
}

#[derive(Subcommand, Debug)]
enum DeviceCmd {
    /// Enrol devices and print each one's new key, once (`ID KEY` lines).
    /// Enrolling an enrolled device replaces its key.
    Add(DeviceArgs),
    /// Revoke devices: their requests are refused until enrolled again.
    Remove(DeviceArgs),
    /// Print enrolled devices' TLS pre-shared keys as `ID:HEX` lines, the
    /// `PSKsecrets` format of a TLS 1.3 PSK terminator such as stunnel
    /// (the device derives the same key, `DeviceKey::tls_psk`). Keep the
    /// output as secret as the master secret.
    TlsPsk(DeviceArgs),
}

#[derive(clap::Args, Debug)]
struct DeviceArgs {
    /// The redb database file (created if missing), or the deployment's
    /// PostgreSQL URL (`postgres://USER@HOST:PORT/DB`).
    #[arg(long, required = true)]
    db: Vec<String>,
    /// The master secret file (created, mode 0600, if missing); default:
    /// the redb path with `.master-secret` appended (required with
    /// PostgreSQL).
    #[arg(long)]
    master_secret: Option<PathBuf>,
    /// Device ids.
    #[arg(required = true)]
    ids: Vec<String>,
}

/// `ID:HEX` for each enrolled, unrevoked device in `args.ids`; fails (and
/// prints nothing) if any is not enrolled or the master secret is missing.
fn print_tls_psks(
    store: &dyn constellation::store::Store,
    args: &DeviceArgs,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let path = match master_path(&args.db, &args.master_secret) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("constellation: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !path.exists() {
        eprintln!(
            "constellation: no master secret at {}: enrol devices first",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    let master = match constellation::MasterSecret::load_or_create(&path) {
        Ok((m, _)) => m,
        Err(e) => {
            eprintln!("constellation: master secret {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let mut lines = Vec::with_capacity(args.ids.len());
    for id in &args.ids {
        match constellation::auth::enrolment(store, id) {
            Ok(Some(e)) if !e.revoked => {
                let psk = master.device_key(id, e.generation).tls_psk();
                lines.push(format!("{id}:{}", constellation::auth::hex(&psk)));
            }
            Ok(_) => {
                eprintln!("constellation: {id} is not enrolled (or revoked)");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("constellation: reading {id}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for l in lines {
        println!("{l}");
    }
    ExitCode::SUCCESS
}

/// Where the database is: one redb file, or PostgreSQL URLs.
enum Db {
    Redb(PathBuf),
    Postgres(Vec<String>),
}

fn is_pg_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

fn parse_db(dbs: &[String]) -> Result<Db, String> {
    match dbs {
        [] => Err("--db is required".into()),
        [one] if !is_pg_url(one) => Ok(Db::Redb(PathBuf::from(one))),
        _ if dbs.iter().all(|d| is_pg_url(d)) => Ok(Db::Postgres(dbs.to_vec())),
        _ => Err("give one redb file, or PostgreSQL URLs only, to --db".into()),
    }
}

fn master_path(db: &[String], flag: &Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = flag {
        return Ok(p.clone());
    }
    match parse_db(db)? {
        Db::Redb(path) => {
            let mut p = path.into_os_string();
            p.push(".master-secret");
            Ok(PathBuf::from(p))
        }
        Db::Postgres(_) => Err(
            "--master-secret FILE is required with PostgreSQL (every node of a deployment \
             uses the same file)"
                .into(),
        ),
    }
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// The redb database file (created if missing), or a PostgreSQL URL
    /// (`postgres://USER@HOST:PORT/DB`; the schema is created or upgraded
    /// at start).
    #[arg(long, required = true)]
    db: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Distinct devices needed to publish a global pattern.
    #[arg(long, default_value_t = 5)]
    k: u32,
    /// Range `next_sync_s` is drawn from, seconds, as `MIN..MAX` (inclusive).
    #[arg(long, default_value = "300..900", value_parser = parse_range)]
    sync_interval: (u32, u32),
    /// Minimum seconds between two applied syncs of one device (429 for a
    /// new sequence sooner; a retry still gets its replay); 0 = off.
    #[arg(long, default_value_t = constellation::DEFAULT_MIN_SYNC_INTERVAL_S)]
    min_sync_interval: u32,
    /// Most pattern ids one device may have stored (403
    /// pattern_quota_exceeded past it); 0 = no quota.
    #[arg(long, default_value_t = constellation::DEFAULT_MAX_PATTERNS_PER_DEVICE)]
    max_patterns_per_device: u32,
    /// Cosine similarity at which a device pattern joins a global pattern.
    #[arg(long, default_value_t = 0.92)]
    similarity: f32,
    /// Milliseconds between aggregation passes.
    #[arg(long, default_value_t = 1000)]
    aggregate_interval_ms: u64,
    /// Keep tombstones for this many versions (0 = forever).
    #[arg(long, default_value_t = 0)]
    retention_versions: u64,
    /// Exact mode (--no-dp): most aggregates one device may hold alone
    /// (no second device in them); the oldest are evicted past it; 0 = no
    /// bound.
    #[arg(long, default_value_t = constellation::aggregate::DEFAULT_MAX_LONE_PER_DEVICE)]
    max_lone_aggregates_per_device: u32,
    /// Exact mode (--no-dp): most global patterns published per category
    /// (the best supported: most contributors, then weight); others are
    /// withdrawn; 0 = no bound.
    #[arg(long, default_value_t = constellation::aggregate::DEFAULT_MAX_GLOBALS_PER_CATEGORY)]
    max_globals_per_category: u32,
    /// Exact mode (--no-dp): seconds a published global pattern waits
    /// before it is republished (a change that comes sooner is held, then
    /// sent); a first publication or a withdrawal never waits; 0 = no wait.
    #[arg(long, default_value_t = constellation::aggregate::DEFAULT_REPUBLISH_INTERVAL.as_secs())]
    republish_interval_s: u64,
    /// Turn differential privacy off: publish exact aggregates of `k`
    /// devices (k-anonymity only; closed test fleets).
    #[arg(long)]
    no_dp: bool,
    /// Minutes between differentially private releases.
    #[arg(long, default_value_t = 60)]
    dp_epoch_min: u64,
    /// Hours the cumulative epsilon is stated over.
    #[arg(long, default_value_t = 24)]
    dp_window_h: u64,
    /// Most global patterns one device contributes to per release.
    #[arg(long, default_value_t = 4)]
    dp_max_globals: u32,
    /// Noise on each coordinate of a global pattern's vector sum.
    #[arg(long, default_value_t = 12.0)]
    dp_sigma_vector: f64,
    /// Noise on a global pattern's count, samples and weight.
    #[arg(long, default_value_t = 24.0)]
    dp_sigma_scalar: f64,
    /// Noisy device count from which a global pattern is published.
    #[arg(long, default_value_t = 180.0)]
    dp_threshold: f64,
    /// Delta the epsilons are stated at.
    #[arg(long, default_value_t = 1e-10)]
    dp_delta: f64,
    /// Refuse to start when the window epsilon exceeds this.
    #[arg(long, default_value_t = 10.0)]
    dp_budget: f64,
    /// Writes queued before syncs are answered 503.
    #[arg(long, default_value_t = 4096)]
    queue_limit: usize,
    /// Commit every group of syncs to the redb file instead of appending it
    /// to the sync journal (`<db>.journal`) and folding the journal into the
    /// file twice a second.
    #[arg(long)]
    no_journal: bool,
    /// The longest a sync waits in the journal before it is folded into the
    /// redb file, in milliseconds: a longer wait writes fewer pages per sync
    /// but pauses the writer longer at each fold.
    #[arg(long, default_value_t = constellation::store::redb::FOLD_EVERY.as_millis() as u64)]
    fold_every_ms: u64,
    /// Address of the admin listener: GET /metrics, and GET
    /// /api/v1/devices/{id}/patterns (raw device state) when
    /// --admin-token-file is given; `off`: no admin listener. Keep it on
    /// loopback or a private network.
    #[arg(long, default_value = "127.0.0.1:8081", value_parser = parse_admin_listen)]
    admin_listen: AdminListen,
    /// File holding the bearer token (at least 16 printable characters) the
    /// admin device routes require; mode 0600 (refused when group or others
    /// may access it). Without it those routes are off.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// The master secret file device keys derive from (created, mode 0600,
    /// if missing); default: the redb path with `.master-secret` appended
    /// (required with PostgreSQL).
    #[arg(long)]
    master_secret: Option<PathBuf>,
    /// Serve HTTPS: PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Serve HTTPS: PEM private key (needs --tls-cert).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// DEVELOPMENT ONLY: accept unsigned sync requests. Anyone who knows a
    /// device id can then write its patterns.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Catalogue vectors (little-endian f32 rows) for trend attribution.
    #[arg(long, requires = "catalogue_meta")]
    catalogue: Option<PathBuf>,
    /// Catalogue metadata TSV with a `movie_name` column.
    #[arg(long)]
    catalogue_meta: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
    /// Connection limits.
    #[command(flatten)]
    limits: constellation::listen::LimitArgs,
    /// Pace of the public reads.
    #[command(flatten)]
    public_reads: constellation::http::pacer::PublicReadArgs,
}

/// `--admin-listen`: an address, or `off`.
#[derive(Clone, Copy, Debug)]
struct AdminListen(Option<SocketAddr>);

fn parse_admin_listen(s: &str) -> Result<AdminListen, String> {
    if s == "off" {
        return Ok(AdminListen(None));
    }
    s.parse()
        .map(|a| AdminListen(Some(a)))
        .map_err(|e| format!("{e} (expected ADDR:PORT or off)"))
}

fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| "expected MIN..MAX".to_string())?;
    let a: u32 = a.trim().parse().map_err(|e| format!("{e}"))?;
    let b: u32 = b
        .trim_start_matches('=')
        .trim()
        .parse()
        .map_err(|e| format!("{e}"))?;
    if a > b {
        return Err("MIN must not exceed MAX".into());
    }
    Ok((a, b))
}

fn device_cmd(cmd: DeviceCmd) -> std::process::ExitCode {
    use constellation::store::postgres::{PgOptions, PgStore};
    use constellation::store::redb::{RedbOptions, RedbStore};
    use constellation::store::Store;
    use std::process::ExitCode;
    #[derive(PartialEq)]
    enum Op {
        Add,
        Remove,
        TlsPsk,
    }
    let (op, args) = match cmd {
        DeviceCmd::Add(a) => (Op::Add, a),
        DeviceCmd::Remove(a) => (Op::Remove, a),
        DeviceCmd::TlsPsk(a) => (Op::TlsPsk, a),
    };
    for id in &args.ids {
        if let Err(e) = constellation::sync::check_device_id(Some(id.as_bytes())) {
            eprintln!("constellation: device id {id:?}: {}", e.detail);
            return ExitCode::FAILURE;
        }
    }
    let db = match parse_db(&args.db) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("constellation: {e}");
            return ExitCode::FAILURE;
        }
    };
    let store: Box<dyn Store> = match &db {
        Db::Redb(path) => match constellation::files::prepare_db(path)
            .map_err(|e| e.to_string())
            .and_then(|()| RedbStore::open(path, RedbOptions::default()).map_err(|e| e.to_string()))
        {
            Ok(s) => Box::new(s),
            Err(e) => {
                eprintln!(
                    "constellation: cannot open {} ({e}); is the server running? Stop it first.",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
        },
        Db::Postgres(urls) => match PgStore::open_all(urls, PgOptions::default()) {
            Ok(s) => Box::new(s),
            Err(e) => {
                eprintln!("constellation: cannot open the database: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("constellation: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async {
        if op == Op::TlsPsk {
            return print_tls_psks(&*store, &args);
        }
        if op == Op::Add {
            let path = match master_path(&args.db, &args.master_secret) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("constellation: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let master = match constellation::MasterSecret::load_or_create(&path) {
                Ok((m, created)) => {
                    if created {
                        eprintln!("created the master secret {}", path.display());
                    }
                    m
                }
                Err(e) => {
                    eprintln!("constellation: master secret {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            };
            match constellation::auth::enrol_many(&*store, &master, &args.ids).await {
                Ok(keys) => {
                    for (id, k) in args.ids.iter().zip(keys) {
                        println!("{id} {}", constellation::auth::hex(k.as_bytes()));
                    }
                }
                Err(e) => {
                    eprintln!("constellation: enrolling: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            for id in &args.ids {
                match constellation::auth::revoke(&*store, id).await {
                    Ok(true) => println!("{id} revoked"),
                    Ok(false) => println!("{id} was not enrolled"),
                    Err(e) => {
                        eprintln!("constellation: revoking {id}: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
        ExitCode::SUCCESS
    });
    drop(store);
    code
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let args = match cli.cmd {
        Cmd::Serve(args) => *args,
        Cmd::Device(cmd) => return device_cmd(cmd),
    };
    tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_target(false)
        .init();
    let mut config = Config::new();
    match parse_db(&args.db) {
        Ok(Db::Redb(path)) => config.db = Some(path),
        Ok(Db::Postgres(urls)) => config.postgres = urls,
        Err(e) => {
            eprintln!("constellation: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    config.listen = args.listen;
    config.codebooks = constellation::codebooks::default_codebooks();
    config.sync_interval = args.sync_interval.0..=args.sync_interval.1;
    config.min_sync_interval_s = args.min_sync_interval;
    config.max_patterns_per_device = args.max_patterns_per_device;
    config.queue_limit = args.queue_limit;
    config.journal = !args.no_journal;
    config.fold_every = Duration::from_millis(args.fold_every_ms.max(1));
    config.admin_listen = args.admin_listen.0;
    if let Some(path) = &args.admin_token_file {
        match constellation::AdminToken::load(path) {
            Ok(t) => config.admin_token = Some(t),
            Err(e) => {
                eprintln!("constellation: admin token {}: {e}", path.display());
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    config.limits = args.limits.limits();
    config.public_reads = args.public_reads.public_reads();
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(constellation::tls::TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    if args.insecure_no_auth {
        config.auth = constellation::AuthConfig::disabled();
    } else {
        let path = match master_path(&args.db, &args.master_secret) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("constellation: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        match constellation::MasterSecret::load_or_create(&path) {
            Ok((m, created)) => {
                if created {
                    tracing::info!(path = %path.display(), "created the master secret");
                }
                config.auth = constellation::AuthConfig::with_master(m);
            }
            Err(e) => {
                eprintln!("constellation: master secret {}: {e}", path.display());
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    config.aggregate.k = args.k;
    config.aggregate.similarity = args.similarity;
    config.aggregate.interval = Duration::from_millis(args.aggregate_interval_ms.max(1));
    config.aggregate.retention_versions = args.retention_versions;
    config.aggregate.max_lone_per_device = args.max_lone_aggregates_per_device;
    config.aggregate.max_globals_per_category = args.max_globals_per_category;
    config.aggregate.republish_interval = Duration::from_secs(args.republish_interval_s);
    config.aggregate.dp = constellation::aggregate::dp::DpConfig {
        enabled: !args.no_dp,
        epoch: Duration::from_secs(args.dp_epoch_min.max(1) * 60),
        window: Duration::from_secs(args.dp_window_h.max(1) * 3600),
        max_globals: args.dp_max_globals,
        sigma_vector: args.dp_sigma_vector,
        sigma_scalar: args.dp_sigma_scalar,
        threshold: args.dp_threshold,
        delta: args.dp_delta,
        budget_epsilon: args.dp_budget,
        ..Default::default()
    };
    if let (Some(v), Some(m)) = (&args.catalogue, &args.catalogue_meta) {
        match constellation::aggregate::trends::Catalogue::load(v, m) {
            Ok(c) => config.trends.catalogue = Some(Arc::new(c)),
            Err(e) => {
                eprintln!("constellation: cannot load the catalogue: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("constellation: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let handle = match Server::start(config).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("constellation: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        // The lines tests and scripts wait for (the admin one first).
        if let Some(a) = handle.admin_addr() {
            println!("admin listening on {a}");
        }
        println!("listening on {}", handle.local_addr());
        let sig = constellation::shutdown::signal().await;
        tracing::info!(signal = sig, "shutting down");
        handle.shutdown().await;
        std::process::ExitCode::SUCCESS
    })
}
