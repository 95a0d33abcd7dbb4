//! A private PostgreSQL cluster for the tests: `initdb` into a temp dir,
//! `pg_ctl start` on a free loopback port with its socket in that dir, one
//! fresh database per test, `pg_ctl stop -m immediate` and the dir removed
//! when the last test of the binary lets go of it.
//!
//! Without PostgreSQL binaries the tests print one loud line and pass,
//! unless `OTS_REQUIRE_PG=1` (then they fail). Binaries are looked up in
//! `$OTS_PG_BIN`, then Debian's `/usr/lib/postgresql/*/bin`. As root,
//! `initdb` and `pg_ctl` run as the `postgres` user (`runuser`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};

/// A running cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
    opts: String,
}

static SHARED: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
static SKIP: Once = Once::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("OTS_PG_BIN") {
        let d = PathBuf::from(d);
        return d.join("initdb").exists().then_some(d);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The shared cluster, started on first use; `None` (after one loud line)
/// when PostgreSQL is not installed and `OTS_REQUIRE_PG` is not `1`.
pub fn cluster() -> Option<Arc<PgCluster>> {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = shared.upgrade() {
        return Some(c);
    }
    let c = Arc::new(private_cluster()?);
    *shared = Arc::downgrade(&c);
    Some(c)
}

/// A cluster of its own (one a test may stop and restart), or `None` as
/// for [`cluster`].
pub fn private_cluster() -> Option<PgCluster> {
    let Some(bin) = bin_dir() else {
        if std::env::var("OTS_REQUIRE_PG").as_deref() == Ok("1") {
            panic!(
                "PostgreSQL not found and OTS_REQUIRE_PG=1 (install postgresql or set OTS_PG_BIN)"
            );
        }
        // Straight to the process's stderr: the test harness captures
        // `eprintln!`, and this line must be seen.
        SKIP.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIP: PostgreSQL not found (set OTS_REQUIRE_PG=1 to fail)"
            );
        });
        return None;
    };
    Some(PgCluster::start(&bin, &[]))
}

impl PgCluster {
    /// `initdb` and `pg_ctl start` a new cluster with `settings`
    /// (`name=value` server options) on top of the test defaults.
    pub fn start(bin: &Path, settings: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ots-pg-")
            .tempdir()
            .expect("temp dir");
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()));
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().unwrap().port()
        };
        let mut opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100 \
             -c shared_buffers=32MB",
            dir.path().display()
        );
        for s in settings {
            opts.push_str(&format!(" -c {s}"));
        }
        let c = PgCluster {
            dir,
            bin: bin.to_path_buf(),
            port,
            as_postgres,
            opts,
        };
        let data = c.data();
        c.run_pg(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        c.pg_ctl_start();
        c
    }

    fn pg_ctl_start(&self) {
        let data = self.data();
        let log = self.dir.path().join("log");
        self.run_pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "-o",
                &self.opts,
                "start",
            ],
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run_pg(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {tool}: {e}"));
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
            panic!(
                "{tool} failed: {}\n{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// A new empty database; its URL.
    pub fn database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let port = self.port.to_string();
        run(Command::new(self.bin.join("createdb")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            &name,
        ]));
        self.url(&name)
    }

    /// `pg_ctl stop -m immediate` (a crash, as far as the database is
    /// concerned); [`restart`](Self::restart) brings it back.
    pub fn stop_immediate(&self) {
        let data = self.data();
        self.run_pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        );
    }

    /// Starts the cluster again after [`stop_immediate`](Self::stop_immediate).
    pub fn restart(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let args = [
            "-D",
            data.to_str().unwrap_or(""),
            "-m",
            "immediate",
            "-w",
            "-t",
            "60",
            "stop",
        ];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(exe)
                .args(args)
                .output()
        } else {
            Command::new(exe).args(args).output()
        };
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
