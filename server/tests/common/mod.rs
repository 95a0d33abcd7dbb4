//! Helpers for the end-to-end tests: real vectors, real codec, frames, a raw
//! HTTP client for malformed requests, and the server in-process or as a
//! child process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use constellation::{Config, Server, ServerHandle};
use omega_tv_sync::codec::{minilm_v1, Codebook, Codes};
use omega_tv_sync::wire::{
    Caps, Coding, FrameReader, FrameWriter, Kind, PatternUpdate, Record, UploadHead,
    MAX_UPLOAD_FRAME,
};
use omega_tv_sync::{Category, Embedding, PatternId, Transport, DIM};
use omega_tv_sync_http::HttpTransport;

/// The real MiniLM pattern vectors shipped in `data/minilm/`.
pub fn patterns() -> Vec<Embedding> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/minilm/patterns_public.f32");
    let raw = std::fs::read(&path).expect("patterns_public.f32");
    raw.chunks_exact(DIM * 4)
        .map(|r| Embedding::from_le_bytes(r).expect("unit vector"))
        .collect()
}

pub fn book() -> Codebook<'static> {
    minilm_v1().expect("codebook")
}

pub fn caps() -> Caps {
    Caps {
        max_globals: 64,
        max_trends: 64,
        max_bytes: 256 * 1024,
    }
}

/// One pattern record to upload.
pub struct Up {
    pub id: &'static str,
    pub base_rev: u32,
    pub rate: f32,
    pub samples: u32,
    pub codes: Codes,
    /// Delta against these codes (the acknowledged base), else absolute.
    pub base: Option<Codes>,
}

impl Up {
    pub fn abs(id: &'static str, codes: Codes) -> Self {
        Up {
            id,
            base_rev: 0,
            rate: 0.8,
            samples: 20,
            codes,
            base: None,
        }
    }
    pub fn delta(id: &'static str, base_rev: u32, base: Codes, codes: Codes) -> Self {
        Up {
            id,
            base_rev,
            rate: 0.85,
            samples: 25,
            codes,
            base: Some(base),
        }
    }
}

/// An upload frame in the real codec.
pub fn upload(seq: u64, since: u64, items: &[Up]) -> Vec<u8> {
    upload_with(book().id(), seq, since, caps(), items)
}

pub fn upload_with(codebook: u32, seq: u64, since: u64, caps: Caps, items: &[Up]) -> Vec<u8> {
    let b = book();
    let coded: Vec<Vec<u8>> = items
        .iter()
        .map(|u| {
            let mut buf = vec![0u8; omega_tv_sync::codec::MAX_CODED_LEN];
            let n = b
                .encode(&u.codes, u.base.as_ref(), &mut buf)
                .expect("encode");
            buf.truncate(n);
            buf
        })
        .collect();
    let mut buf = vec![0u8; MAX_UPLOAD_FRAME];
    let mut w = FrameWriter::new(&mut buf, Kind::Upload, codebook).unwrap();
    w.push(&Record::UploadHead(UploadHead { seq, since, caps }))
        .unwrap();
    for (u, code) in items.iter().zip(&coded) {
        w.push(&Record::Pattern(PatternUpdate {
            id: PatternId::new(u.id).unwrap(),
            base_rev: u.base_rev,
            success_rate: u.rate,
            sample_count: u.samples,
            category: Category::new("drama").unwrap(),
            coding: if u.base.is_some() {
                Coding::Delta
            } else {
                Coding::Absolute
            },
            code,
        }))
        .unwrap();
    }
    w.finish().unwrap().to_vec()
}

pub fn quantize(e: &Embedding) -> Codes {
    book().quantize(e)
}

/// Records of a download frame, owned enough to compare.
pub fn records(frame: &[u8]) -> Vec<Record<'_>> {
    FrameReader::parse(frame)
        .expect("download frame")
        .records()
        .map(|r| r.expect("record"))
        .collect()
}

/// Versions of the global and trend records of a download frame.
pub fn versions(frame: &[u8]) -> Vec<u64> {
    records(frame)
        .iter()
        .filter_map(|r| match r {
            Record::GlobalUpsert(g) => Some(g.version),
            Record::GlobalRemove(g) => Some(g.version),
            Record::Trend(t) => Some(t.version),
            _ => None,
        })
        .collect()
}

pub fn head(frame: &[u8]) -> omega_tv_sync::wire::DownloadHead {
    match records(frame).first() {
        Some(Record::DownloadHead(h)) => *h,
        other => panic!("no download head: {other:?}"),
    }
}

/// A server config on a fresh temp redb file, loopback, manual aggregation,
/// authentication off: these tests exercise the sync protocol with
/// hand-made requests; `tests/auth.rs` runs with authentication on.
pub fn config(db: &Path) -> Config {
    let mut c = Config::new();
    c.db = Some(db.to_path_buf());
    c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.codebooks = constellation::codebooks::default_codebooks();
    c.admin_token = Some(constellation::AdminToken::new(ADMIN_TOKEN).unwrap());
    c.aggregate.interval = Duration::from_secs(3600);
    // These tests sync one device back to back; sync.rs tests the limit.
    c.min_sync_interval_s = 0;
    // Protocol tests: the exact mode (k distinct devices, no noise), so what
    // a download carries is predictable; `dp_attacks.rs` runs the default,
    // differentially private configuration.
    c.aggregate.dp = constellation::aggregate::dp::DpConfig::disabled();
    // Every material change published by the next pass (the exact mode's
    // republish interval is tested in `exact_bounds.rs`).
    c.aggregate.republish_interval = Duration::ZERO;
    c.auth = constellation::AuthConfig::disabled();
    c
}

pub async fn start(db: &Path) -> ServerHandle {
    Server::start(config(db)).await.expect("server starts")
}

/// POSTs an upload through the real std transport.
pub async fn sync(t: &mut HttpTransport, device: &str, since: u64, body: &[u8]) -> (u16, Vec<u8>) {
    let v = since.to_string();
    let headers = [("X-Device-ID", device), ("X-Sync-Version", v.as_str())];
    let mut buf = vec![0u8; 1 << 20];
    let r = t
        .send(
            omega_tv_sync::Request {
                method: omega_tv_sync::Method::Post,
                path: "/api/v1/sync",
                headers: &headers,
                body,
            },
            &mut buf,
        )
        .await
        .expect("exchange");
    buf.truncate(r.body_len);
    (r.status, buf)
}

/// A raw HTTP/1.1 exchange (for requests the transport would not send).
pub struct Raw {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

pub fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Raw {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body; ignore a reset.
    let _ = s.write_all(body);
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    let mut headers = Vec::new();
    let mut len = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            }
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).unwrap();
        }
        None => {
            let _ = r.read_to_end(&mut body);
        }
    }
    Raw {
        status,
        headers,
        body,
    }
}

pub fn post_sync(addr: SocketAddr, device: &str, version: &str, body: &[u8]) -> Raw {
    raw(
        addr,
        "POST",
        "/api/v1/sync",
        &[
            ("X-Device-ID", device),
            ("X-Sync-Version", version),
            ("Content-Type", "application/octet-stream"),
        ],
        body,
    )
}

/// The admin bearer token of [`config`] and [`spawn_server`].
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The admin listener of an in-process server.
pub fn admin(srv: &ServerHandle) -> SocketAddr {
    srv.admin_addr().expect("an admin listener")
}

/// `GET path` on the admin listener `admin` with the admin token.
pub fn admin_get(admin: SocketAddr, path: &str) -> Raw {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    raw(
        admin,
        "GET",
        path,
        &[("Authorization", bearer.as_str())],
        &[],
    )
}

/// A device's stored state as the admin read-back shows it.
pub fn device_json(admin: SocketAddr, device: &str) -> serde_json::Value {
    let r = admin_get(admin, &format!("/api/v1/devices/{device}/patterns"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// A metric scraped from `GET /metrics` on the admin listener `admin`.
pub fn metric(admin: SocketAddr, name: &str) -> f64 {
    let r = raw(admin, "GET", "/metrics", &[], &[]);
    assert_eq!(r.status, 200, "/metrics on {admin}");
    let text = String::from_utf8(r.body).unwrap();
    constellation::metrics::scrape(&text, name).unwrap_or(0.0)
}

/// `constellation serve` as a child process.
pub struct Child_ {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener (token [`ADMIN_TOKEN`]).
    pub admin: SocketAddr,
    _token: tempfile::TempDir,
}

/// Writes [`ADMIN_TOKEN`] to a mode-0600 file in a new temporary directory.
pub fn admin_token_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("admin-token");
    std::fs::write(&p, format!("{ADMIN_TOKEN}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (dir, p)
}

pub fn spawn_server(db: &Path) -> Child_ {
    let (token_dir, token) = admin_token_file();
    let mut child = Command::new(env!("CARGO_BIN_EXE_constellation"))
        .args(["serve", "--db"])
        .arg(db)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--admin-token-file")
        .arg(&token)
        .args(["--min-sync-interval", "0", "--log-level", "warn"])
        .arg("--insecure-no-auth")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn constellation");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut admin = None;
    let addr = loop {
        let l = lines.next().expect("server printed its address").unwrap();
        if let Some(a) = l.strip_prefix("admin listening on ") {
            admin = Some(a.trim().parse().unwrap());
        }
        if let Some(a) = l.strip_prefix("listening on ") {
            break a.trim().parse().unwrap();
        }
    };
    Child_ {
        child,
        addr,
        admin: admin.expect("the admin address printed first"),
        _token: token_dir,
    }
}

pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("constellation.redb");
    (dir, p)
}
