//! `constellation serve` as a child process on a fixed loopback port, so it
//! can be killed and restarted where the devices expect it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use omega_tv_sync::DeviceKey;

/// Builds (or finds up to date) the `constellation` binary of this
/// workspace and returns its path. `cargo test --workspace` has built it
/// already; then this is a no-op check.
pub fn constellation_bin() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "constellation",
            "--bin",
            "constellation",
        ])
        .status()
        .expect("run cargo build");
    assert!(st.success(), "cargo build -p constellation failed");
    // target/<profile>/deps/<test> -> target/<profile>/constellation
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("constellation");
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server child process, killed (SIGKILL) and reaped when dropped, so a
/// failing test leaves no server behind.
pub struct Served(pub Child, pub SocketAddr);

impl Served {
    /// Its admin listener (`GET /metrics`; the device read-back with
    /// [`ADMIN_TOKEN`]).
    pub fn admin(&self) -> SocketAddr {
        self.1
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Enrols `ids` with `constellation device add --db DB ID...` (the server
/// must not be running: redb allows one process) and returns each device's
/// key, as the command printed it (`ID KEY` lines). The master secret is
/// created next to `db`, where `serve` finds it.
pub fn enrol(bin: &Path, db: &Path, ids: &[String]) -> HashMap<String, DeviceKey> {
    let out = Command::new(bin)
        .args(["device", "add", "--db"])
        .arg(db)
        .args(ids)
        .stderr(Stdio::null())
        .output()
        .expect("run constellation device add");
    assert!(out.status.success(), "constellation device add failed");
    let keys: HashMap<String, DeviceKey> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (id, key) = l.split_once(' ').expect("ID KEY");
            (id.to_string(), DeviceKey::from_hex(key).expect("a hex key"))
        })
        .collect();
    assert_eq!(keys.len(), ids.len(), "one key per device");
    keys
}

/// The admin bearer token [`serve`] starts servers with.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

/// Starts `constellation serve` on `addr` with `db` (authentication on, the
/// default: enrol the devices first with [`enrol`]), its admin listener on a
/// free loopback port with [`ADMIN_TOKEN`] (a mode-0600 file next to `db`),
/// and no minimum sync interval (simulated fleets compress minutes into
/// milliseconds); retries a bind that fails while the previous process's
/// socket goes away (at most 50 tries, 100 ms apart).
pub fn serve(bin: &Path, db: &Path, addr: SocketAddr, extra: &[&str]) -> Served {
    let token = db.with_extension("admin-token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).expect("write the admin token");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the admin token");
    }
    for _ in 0..50 {
        let mut child = Command::new(bin)
            .args(["serve", "--db"])
            .arg(db)
            .args([
                "--listen",
                &addr.to_string(),
                "--admin-listen",
                "127.0.0.1:0",
                "--min-sync-interval",
                "0",
                "--log-level",
                "error",
            ])
            .arg("--admin-token-file")
            .arg(&token)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn constellation");
        let out = child.stdout.take().unwrap();
        // The server prints its admin address, then one line once it
        // listens; EOF means it exited.
        let mut r = BufReader::new(out);
        let mut admin = String::new();
        let _ = r.read_line(&mut admin);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let admin = admin
            .strip_prefix("admin listening on ")
            .and_then(|a| a.trim().parse().ok());
        if let (true, Some(admin)) = (line.starts_with("listening on "), admin) {
            return Served(child, admin);
        }
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("constellation did not start on {addr}");
}
