//! PostgreSQL side of the bench: cluster URLs, WAL positions, scratch
//! databases, and `pgbench` on the same cluster as the physical anchor
//! (its CPU read through [`super::cpu`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use tokio_postgres::NoTls;

use super::cpu::{children_cpu_s, PgCpu};

/// The cluster of `postgres://USER@HOST:PORT/DB`.
#[derive(Clone, Debug)]
pub(super) struct PgUrl {
    pub(super) user: String,
    pub(super) host: String,
    pub(super) port: u16,
}

impl PgUrl {
    pub(super) fn parse(url: &str) -> Option<Self> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))?;
        let (user, rest) = rest.split_once('@')?;
        let (hostport, _db) = rest.split_once('/')?;
        let (host, port) = hostport.rsplit_once(':')?;
        Some(PgUrl {
            user: user.split(':').next()?.to_string(),
            host: host.to_string(),
            port: port.parse().ok()?,
        })
    }

    /// The same cluster, database `db`.
    pub(super) fn with_db(&self, db: &str) -> String {
        format!("postgres://{}@{}:{}/{db}", self.user, self.host, self.port)
    }
}

/// A connection for the bench's own statements.
pub(super) async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Creates (dropping a leftover of the same name) database `name` on the
/// cluster of `url`; returns its URL.
pub(super) async fn scratch_db(url: &str, name: &str) -> Result<String, String> {
    let u = PgUrl::parse(url).ok_or_else(|| format!("not a postgres:// URL: {url}"))?;
    let c = connect(url).await?;
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .map_err(|e| e.to_string())?;
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(u.with_db(name))
}

/// The current WAL insert position of the cluster behind `url` (text form).
pub(super) async fn wal_lsn(url: &str) -> Result<String, String> {
    let c = connect(url).await?;
    let row = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// WAL bytes written on the cluster behind `url` since position `before`
/// (`pg_wal_lsn_diff`).
pub(super) async fn wal_since(url: &str, before: &str) -> Result<u64, String> {
    let c = connect(url).await?;
    let row = c
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint",
            &[&before],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// WAL positions of several clusters (one URL per cluster).
pub(super) struct Wal(Vec<(String, String)>);

impl Wal {
    /// Reads the current position of each cluster in `urls`.
    pub(super) async fn start(urls: &[String]) -> Self {
        let mut v = Vec::new();
        for u in urls {
            match wal_lsn(u).await {
                Ok(l) => v.push((u.clone(), l)),
                Err(e) => eprintln!("WAL position of {u}: {e}"),
            }
        }
        Wal(v)
    }

    /// WAL bytes written since [`Wal::start`], summed over the clusters.
    pub(super) async fn bytes(&self) -> u64 {
        let mut n = 0;
        for (u, l) in &self.0 {
            n += wal_since(u, l).await.unwrap_or(0);
        }
        n
    }
}

/// One URL per distinct cluster (host and port) of `urls`.
pub(super) fn one_per_cluster(urls: &[String]) -> Vec<String> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for u in urls {
        if let Some(p) = PgUrl::parse(u) {
            let key = (p.host.clone(), p.port);
            if !seen.contains(&key) {
                seen.push(key);
                out.push(u.clone());
            }
        }
    }
    out
}

/// Debian's PostgreSQL binaries (`$OTS_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` with `pgbench`).
pub(super) fn pg_bin() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("OTS_PG_BIN") {
        let d = PathBuf::from(d);
        return d.join("pgbench").exists().then_some(d);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let b = e.path().join("bin");
            b.join("pgbench").exists().then_some((v, b))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// What one `pgbench` run measured.
pub(super) struct PgbenchResult {
    pub(super) tps: f64,
    pub(super) transactions: u64,
    /// CPU of the cluster's processes during the run, seconds.
    pub(super) pg_cpu: f64,
    /// CPU of `pgbench` itself (the client), seconds.
    pub(super) client_cpu: f64,
    /// WAL bytes written during the run.
    pub(super) wal: u64,
}

/// A sync-shaped transaction for `pgbench -f`: lock the device row, upsert
/// 5 patterns with 388-byte codes (the stored code size measured in
/// docs/scale.md), insert 5 change rows, update the device row with a
/// 60-byte response.
pub(super) const SYNC_SCRIPT: &str = r#"\set d random(1, 100000)
\set p random(0, 11)
BEGIN;
INSERT INTO devices (device_id) VALUES ('dev-' || :d) ON CONFLICT DO NOTHING;
SELECT last_seq FROM devices WHERE device_id = 'dev-' || :d FOR UPDATE;
INSERT INTO patterns (device_id, pattern_id, revision, codes) SELECT 'dev-' || :d, 'p' || (:p + i), 1, decode(repeat(md5(random()::text), 24) || 'aabbccdd', 'hex') FROM generate_series(0, 4) i ON CONFLICT (device_id, pattern_id) DO UPDATE SET revision = patterns.revision + 1, codes = excluded.codes;
INSERT INTO device_changes (device_id, pattern_id) SELECT 'dev-' || :d, 'p' || (:p + i) FROM generate_series(0, 4) i;
UPDATE devices SET last_seq = coalesce(last_seq, 0) + 1, response = decode(repeat(md5(random()::text), 3) || 'aabbccddeeff112233445566', 'hex') WHERE device_id = 'dev-' || :d;
END;
"#;

/// The tables [`SYNC_SCRIPT`] writes (the shapes of the server's own).
const SYNC_SCHEMA: &str = "
CREATE TABLE devices (device_id text COLLATE \"C\" PRIMARY KEY, last_seq bigint, response bytea);
CREATE TABLE patterns (device_id text COLLATE \"C\", pattern_id text COLLATE \"C\",
    revision bigint NOT NULL, codes bytea NOT NULL, PRIMARY KEY (device_id, pattern_id));
CREATE TABLE device_changes (seq bigserial PRIMARY KEY, device_id text COLLATE \"C\" NOT NULL,
    pattern_id text COLLATE \"C\" NOT NULL);
";

/// Which transaction `pgbench` runs.
#[derive(Clone, Copy)]
pub(super) enum Workload {
    /// The built-in TPC-B-like script without the branch and teller
    /// updates (`-N`, simple-update: no hot rows at scale 1), after
    /// `pgbench -i -s 1`.
    TpcB,
    /// [`SYNC_SCRIPT`].
    SyncShaped,
}

/// Runs `pgbench` with `clients` clients for `seconds` on a scratch
/// database of the cluster behind `url`, reading the cluster's CPU from
/// `/proc` and its WAL position before and after.
pub(super) async fn pgbench(
    bin: &Path,
    url: &str,
    workload: Workload,
    clients: usize,
    seconds: u64,
    scratch_dir: &Path,
) -> Result<PgbenchResult, String> {
    let u = PgUrl::parse(url).ok_or_else(|| format!("not a postgres:// URL: {url}"))?;
    let name = match workload {
        Workload::TpcB => "ots_pgbench_tpcb",
        Workload::SyncShaped => "ots_pgbench_sync",
    };
    let db_url = scratch_db(url, name).await?;
    let port = u.port.to_string();
    let conn = [
        "-h",
        u.host.as_str(),
        "-p",
        port.as_str(),
        "-U",
        u.user.as_str(),
    ];
    let mut run_args: Vec<String> = Vec::new();
    match workload {
        Workload::TpcB => {
            run_args.push("-N".into());
            let out = Command::new(bin.join("pgbench"))
                .args(conn)
                .args(["-i", "-q", "-s", "1", name])
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
        }
        Workload::SyncShaped => {
            connect(&db_url)
                .await?
                .batch_execute(SYNC_SCHEMA)
                .await
                .map_err(|e| e.to_string())?;
            let script = scratch_dir.join("sync.sql");
            std::fs::write(&script, SYNC_SCRIPT).map_err(|e| e.to_string())?;
            run_args.extend(["-n".into(), "-f".into(), script.display().to_string()]);
        }
    }
    let jobs = clients.clamp(1, 2).to_string();
    let clients_s = clients.max(1).to_string();
    let secs = seconds.max(1).to_string();
    let wal = Wal::start(std::slice::from_ref(&db_url)).await;
    let mut cpu = PgCpu::start(&[u.port]);
    let child0 = children_cpu_s();
    let mut child = Command::new(bin.join("pgbench"))
        .args(conn)
        .args(["-c", &clients_s, "-j", &jobs, "-T", &secs])
        .args(&run_args)
        .arg(name)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    // Its backends end with it: read their CPU while it runs.
    let t0 = std::time::Instant::now();
    while child.try_wait().map_err(|e| e.to_string())?.is_none()
        && t0.elapsed().as_secs() < seconds + 60
    {
        cpu.poll();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let client_cpu = children_cpu_s() - child0;
    let pg_cpu = cpu.elapsed();
    let wal = wal.bytes().await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let field = |key: &str| pgbench_field(&text, key);
    let tps = field("tps").ok_or_else(|| format!("no tps in: {text}"))?;
    let transactions = field("number of transactions actually processed").unwrap_or(0.0) as u64;
    if let Ok(c) = connect(url).await {
        let _ = c
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await;
    }
    Ok(PgbenchResult {
        tps,
        transactions,
        pg_cpu,
        client_cpu,
        wal,
    })
}

/// The number after `key =` or `key:` on the first line of `pgbench`'s
/// output that starts with `key`.
fn pgbench_field(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.trim_start().starts_with(key))?
        .split(['=', ':'])
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_clusters() {
        let u = PgUrl::parse("postgres://postgres@127.0.0.1:56551/r3").expect("url");
        assert_eq!(
            (u.user.as_str(), u.host.as_str(), u.port),
            ("postgres", "127.0.0.1", 56551)
        );
        assert_eq!(u.with_db("x"), "postgres://postgres@127.0.0.1:56551/x");
        assert!(PgUrl::parse("redb.file").is_none());
        assert!(PgUrl::parse("postgres://127.0.0.1:5432/db").is_none());
        let urls = [
            "postgres://postgres@127.0.0.1:1/a".to_string(),
            "postgres://postgres@127.0.0.1:1/b".to_string(),
            "postgres://postgres@127.0.0.1:2/a".to_string(),
        ];
        assert_eq!(
            one_per_cluster(&urls),
            vec![urls[0].clone(), urls[2].clone()]
        );
    }

    #[test]
    fn pgbench_output() {
        // PostgreSQL 15's pgbench summary.
        let out = "transaction type: <builtin: simple update>\n\
                   number of clients: 32\n\
                   number of transactions actually processed: 20148\n\
                   latency average = 7.9 ms\n\
                   initial connection time = 40.1 ms\n\
                   tps = 4070.123456 (without initial connection time)\n";
        assert_eq!(pgbench_field(out, "tps"), Some(4070.123456));
        assert_eq!(
            pgbench_field(out, "number of transactions actually processed"),
            Some(20148.0)
        );
        assert_eq!(pgbench_field(out, "latency stddev"), None);
    }
}
