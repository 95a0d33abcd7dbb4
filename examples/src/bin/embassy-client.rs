//! The firmware-style host client: an embassy executor, embassy-net on a
//! Linux TAP device, and the `omega-tv-sync-embassy` transport, exactly as
//! firmware would wire them (static stack resources, caller-owned buffers),
//! only with a TAP device instead of an Ethernet MAC.
//!
//! ```text
//! embassy-client --tap TAP --addr 10.77.0.2/24 --server 10.77.0.1:8080 [--rounds N]
//!                [--syncs N --key HEX [--device ID] [--tls-port PORT]]
//! ```
//!
//! Run by `scripts/netns-sync.sh` inside a private network namespace (a TAP
//! device needs root and `/dev/net/tun`). Two modes:
//!
//! - `--syncs N` (against the real Constellation server, started with
//!   `--admin`): the real `SyncClient` syncs [`SYNC_PATTERNS`] real
//!   patterns `N` times through `SyncClient::exchange` over the embassy
//!   transport, the patterns drifting between syncs (another real vector
//!   mixed in), then reads the server's state back with
//!   `GET /api/v1/devices/{id}/patterns` and checks that every pattern's
//!   revision and integer codes there equal what the client holds as
//!   acknowledged. Exit code 3 (and nothing else checked) when the server
//!   answers the first sync `422 unknown_codebook`: a server built without
//!   the codec. With `--tls-port`, everything goes through
//!   `EmbassyTlsTransport` (TLS 1.3, the PSK derived from `--key`, identity
//!   the device id, 4 KiB records) to that port of the server's address (a
//!   TLS PSK terminator in front of Constellation); first a handshake with
//!   a wrong key must fail with `Error::Tls`.
//! - otherwise (against `embassy-test-server`): `--rounds` rounds of HTTP
//!   exchanges, each checked: binary POST bodies echoed back, a chunked
//!   response decoded, oversize responses (fixed-length and chunked)
//!   reported as `ResponseTooLarge`, a 503 with its `Retry-After`, a refused
//!   connection.
//!
//! Exits 0 only if every check passes.

use embassy_executor::Spawner;
use embassy_net::{Ipv4Address, Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_net_tuntap::TunTapDevice;
use embassy_time::{with_timeout, Duration};
use omega_tv_sync::codec::minilm_v1;
use omega_tv_sync::sync::{Config as SyncConfig, Outcome, SyncClient, SyncError};
use omega_tv_sync::{
    Category, DeviceId, Embedding, Method, Pattern, PatternId, Request, Transport, DIM,
};
use omega_tv_sync_embassy::tls::{RECOMMENDED_READ_BUFFER, RECOMMENDED_WRITE_BUFFER};
use omega_tv_sync_embassy::{
    Buffers, Config, EmbassyTlsTransport, EmbassyTransport, Error, Psk, TlsBuffers,
    RECOMMENDED_HEADER_BUFFER, RECOMMENDED_TCP_BUFFER,
};
use omega_tv_sync_examples::{pattern_bytes, BIG_LEN, CHUNKED_LEN};
use static_cell::StaticCell;

/// The response buffer: larger than every expected body, smaller than
/// `BIG_LEN`.
const RESPONSE_BUF: usize = 4096;

struct Args {
    tap: String,
    addr: Ipv4Cidr,
    server: (Ipv4Address, u16),
    rounds: usize,
    syncs: Option<usize>,
    /// The device key (`constellation device add` printed it): requests are
    /// signed with it.
    key: Option<omega_tv_sync::DeviceKey>,
    /// The sync mode's device id.
    device: String,
    /// Sync over TLS (PSK) to this port.
    tls_port: Option<u16>,
}

fn parse_args() -> Result<Args, String> {
    let mut tap = None;
    let mut addr = None;
    let mut server = None;
    let mut rounds = 3usize;
    let mut syncs = None;
    let mut key = None;
    let mut device = SYNC_DEVICE.to_string();
    let mut tls_port = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tap" => tap = Some(value),
            "--addr" => {
                let (ip, len) = value.split_once('/').ok_or("--addr wants IP/LEN")?;
                let ip: std::net::Ipv4Addr = ip.parse().map_err(|e| format!("--addr: {e}"))?;
                let len: u8 = len.parse().map_err(|e| format!("--addr: {e}"))?;
                addr = Some(Ipv4Cidr::new(ip, len));
            }
            "--server" => {
                let sa: std::net::SocketAddrV4 =
                    value.parse().map_err(|e| format!("--server: {e}"))?;
                server = Some((*sa.ip(), sa.port()));
            }
            "--rounds" => {
                rounds = value.parse().map_err(|e| format!("--rounds: {e}"))?;
                if !(1..=100).contains(&rounds) {
                    return Err("--rounds must be in 1..=100".into());
                }
            }
            "--syncs" => {
                let n: usize = value.parse().map_err(|e| format!("--syncs: {e}"))?;
                if !(1..=50).contains(&n) {
                    return Err("--syncs must be in 1..=50".into());
                }
                syncs = Some(n);
            }
            "--key" => {
                key = Some(
                    omega_tv_sync::DeviceKey::from_hex(&value)
                        .map_err(|_| "--key wants 64 hex digits")?,
                );
            }
            "--device" => {
                DeviceId::new(&value).map_err(|e| format!("--device: {e:?}"))?;
                device = value;
            }
            "--tls-port" => {
                tls_port = Some(value.parse().map_err(|e| format!("--tls-port: {e}"))?);
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        tap: tap.ok_or("--tap is required")?,
        addr: addr.ok_or("--addr is required")?,
        server: server.ok_or("--server is required")?,
        rounds,
        syncs,
        key,
        device,
        tls_port,
    })
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, TunTapDevice>) -> ! {
    runner.run().await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    env_logger_lite();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("embassy-client: {e}");
            std::process::exit(2);
        }
    };
    let device = match TunTapDevice::new(&args.tap) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("embassy-client: cannot open TAP device {}: {e}", args.tap);
            std::process::exit(1);
        }
    };
    let config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: args.addr,
        dns_servers: Default::default(),
        gateway: None,
    });
    static RESOURCES: StaticCell<StackResources<2>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        device,
        config,
        RESOURCES.init(StackResources::new()),
        0x6f6d_6567_6174_7673, // fixed seed: the run is reproducible
    );
    match net_task(runner) {
        Ok(token) => spawner.spawn(token),
        Err(e) => {
            eprintln!("embassy-client: spawn: {e:?}");
            std::process::exit(1);
        }
    }
    if with_timeout(Duration::from_secs(5), stack.wait_config_up())
        .await
        .is_err()
    {
        eprintln!("embassy-client: network did not come up in 5 s");
        std::process::exit(1);
    }

    // The caller owns every buffer (on firmware these are statics).
    let mut tcp_rx = [0u8; RECOMMENDED_TCP_BUFFER];
    let mut tcp_tx = [0u8; RECOMMENDED_TCP_BUFFER];
    let mut header = [0u8; RECOMMENDED_HEADER_BUFFER];
    let mut response = [0u8; RESPONSE_BUF];
    let host = format!("{}:{}", args.server.0, args.server.1);
    let mut cfg = Config::new((args.server.0, args.server.1).into(), &host);
    cfg.timeout = Duration::from_secs(5);
    let mut transport = EmbassyTransport::new(
        stack,
        cfg,
        Buffers {
            tcp_rx: &mut tcp_rx,
            tcp_tx: &mut tcp_tx,
            header: &mut header,
        },
    );

    let mut checks = Checks::default();
    if let (Some(n), Some(port)) = (args.syncs, args.tls_port) {
        let Some(key) = args.key.clone() else {
            eprintln!("embassy-client: --tls-port needs --key");
            std::process::exit(2);
        };
        let code = run_tls_sync(stack, &args, port, key, n, &mut checks).await;
        println!(
            "embassy-client: {} passed, {} failed",
            checks.passed, checks.failed
        );
        std::process::exit(code.unwrap_or(if checks.failed == 0 && checks.passed > 0 {
            0
        } else {
            1
        }));
    }
    if let Some(n) = args.syncs {
        let code = run_sync(
            &mut transport,
            &args.device,
            n,
            args.key.clone(),
            &mut checks,
        )
        .await;
        println!(
            "embassy-client: {} passed, {} failed",
            checks.passed, checks.failed
        );
        std::process::exit(code.unwrap_or(if checks.failed == 0 && checks.passed > 0 {
            0
        } else {
            1
        }));
    }
    run_http_checks(&mut transport, &mut response, args.rounds, &mut checks).await;

    // Refused connection: a port nothing listens on in the namespace.
    let mut refused_cfg = *transport.config();
    refused_cfg.remote = (args.server.0, 9).into();
    let (mut r2, mut t2, mut h2) = ([0u8; 536], [0u8; 536], [0u8; 256]);
    let mut refused = EmbassyTransport::new(
        stack,
        refused_cfg,
        Buffers {
            tcp_rx: &mut r2,
            tcp_tx: &mut t2,
            header: &mut h2,
        },
    );
    let r = refused.send(get("/"), &mut response).await;
    checks.check("refused connection -> Connect", r == Err(Error::Connect));

    println!(
        "embassy-client: {} passed, {} failed",
        checks.passed, checks.failed
    );
    std::process::exit(if checks.failed == 0 && checks.passed > 0 {
        0
    } else {
        1
    });
}

/// The sync mode over TLS: a handshake with a wrong key must fail, then
/// `n` syncs and the read-back, as [`run_sync`], through
/// [`EmbassyTlsTransport`].
async fn run_tls_sync(
    stack: embassy_net::Stack<'static>,
    args: &Args,
    port: u16,
    key: omega_tv_sync::DeviceKey,
    n: usize,
    checks: &mut Checks,
) -> Option<i32> {
    let host = format!("{}:{port}", args.server.0);
    let mut cfg = Config::new((args.server.0, port).into(), &host);
    cfg.timeout = Duration::from_secs(5);
    let mut memory = TlsMemory::default();
    let identity = args.device.as_bytes();

    // A wrong key: the terminator refuses the handshake.
    let wrong = omega_tv_sync::DeviceKey::new([0x5a; 32]).tls_psk();
    match memory.transport(stack, cfg, identity, &wrong) {
        Ok(mut t) => {
            let mut buf = [0u8; 256];
            let r = t.send(get("/api/v1/health"), &mut buf).await;
            checks.check(
                &format!("TLS with a wrong PSK -> Error::Tls ({r:?})"),
                r == Err(Error::Tls),
            );
        }
        Err(e) => checks.check(&format!("TLS transport: {e:?}"), false),
    }

    let psk = key.tls_psk();
    let mut transport = match memory.transport(stack, cfg, identity, &psk) {
        Ok(t) => t,
        Err(e) => {
            checks.check(&format!("TLS transport: {e:?}"), false);
            return None;
        }
    };
    checks.check(
        &format!(
            "TLS asks for {:?} records ({} B read buffer)",
            transport.max_fragment_length(),
            RECOMMENDED_READ_BUFFER
        ),
        transport.max_fragment_length().is_some(),
    );
    run_sync(&mut transport, &args.device, n, Some(key), checks).await
}

/// The TLS transport's caller memory (on firmware these are statics).
struct TlsMemory {
    tcp_rx: [u8; RECOMMENDED_TCP_BUFFER],
    tcp_tx: [u8; RECOMMENDED_TCP_BUFFER],
    header: [u8; RECOMMENDED_HEADER_BUFFER],
    record_read: [u8; RECOMMENDED_READ_BUFFER],
    record_write: [u8; RECOMMENDED_WRITE_BUFFER],
}

impl Default for TlsMemory {
    fn default() -> Self {
        TlsMemory {
            tcp_rx: [0; RECOMMENDED_TCP_BUFFER],
            tcp_tx: [0; RECOMMENDED_TCP_BUFFER],
            header: [0; RECOMMENDED_HEADER_BUFFER],
            record_read: [0; RECOMMENDED_READ_BUFFER],
            record_write: [0; RECOMMENDED_WRITE_BUFFER],
        }
    }
}

impl TlsMemory {
    /// A TLS transport on this memory with the PSK `key` for `identity`.
    fn transport<'b>(
        &'b mut self,
        stack: embassy_net::Stack<'static>,
        cfg: Config<'b>,
        identity: &'b [u8],
        key: &'b [u8],
    ) -> Result<EmbassyTlsTransport<'static, 'b, rand_core::OsRng>, Error> {
        EmbassyTlsTransport::new(
            stack,
            cfg,
            Buffers {
                tcp_rx: &mut self.tcp_rx,
                tcp_tx: &mut self.tcp_tx,
                header: &mut self.header,
            },
            TlsBuffers {
                record_read: &mut self.record_read,
                record_write: &mut self.record_write,
            },
            Psk { identity, key },
            rand_core::OsRng,
        )
    }
}

#[derive(Default)]
struct Checks {
    passed: usize,
    failed: usize,
}

impl Checks {
    fn check(&mut self, what: &str, ok: bool) {
        if ok {
            self.passed += 1;
            println!("ok   {what}");
        } else {
            self.failed += 1;
            println!("FAIL {what}");
        }
    }
}

fn get(path: &str) -> Request<'_> {
    Request {
        method: Method::Get,
        path,
        headers: &[("X-Device-ID", "embassy-client-1")],
        body: &[],
    }
}

async fn run_http_checks<T: Transport<Error = Error>>(
    t: &mut T,
    buf: &mut [u8],
    rounds: usize,
    checks: &mut Checks,
) {
    let chunked_expected = pattern_bytes(CHUNKED_LEN);
    for round in 0..rounds {
        // Binary POST bodies of several sizes, each echoed back exactly.
        for len in [0usize, 1, 1460, 3000 + round] {
            let body: Vec<u8> = pattern_bytes(len).iter().map(|b| b ^ round as u8).collect();
            let req = Request {
                method: Method::Post,
                path: "/echo",
                headers: &[("X-Device-ID", "embassy-client-1")],
                body: &body,
            };
            let r = t.send(req, buf).await;
            let ok =
                matches!(r, Ok(resp) if resp.status == 200 && buf[..resp.body_len] == body[..]);
            checks.check(&format!("round {round}: POST /echo {len} B"), ok);
        }
        let r = t.send(get("/chunked"), buf).await;
        let ok = matches!(r, Ok(resp) if resp.status == 200 && buf[..resp.body_len] == chunked_expected[..]);
        checks.check(
            &format!("round {round}: chunked {CHUNKED_LEN} B decoded"),
            ok,
        );
    }
    let limit = buf.len();
    let r = t.send(get("/big"), buf).await;
    checks.check(
        &format!("{BIG_LEN} B Content-Length body -> ResponseTooLarge"),
        r == Err(Error::ResponseTooLarge { limit }),
    );
    let r = t.send(get("/big-chunked"), buf).await;
    checks.check(
        &format!("{BIG_LEN} B chunked body -> ResponseTooLarge"),
        r == Err(Error::ResponseTooLarge { limit }),
    );
    let r = t.send(get("/busy"), buf).await;
    checks.check(
        "503 with Retry-After: 7",
        matches!(r, Ok(resp) if resp.status == 503 && resp.retry_after_s == Some(7) && resp.body_len == 0),
    );
    // After the errors the transport still works.
    let r = t.send(get("/chunked"), buf).await;
    checks.check(
        "chunked again after errors",
        matches!(r, Ok(resp) if buf[..resp.body_len] == chunked_expected[..]),
    );
}

/// Minimal stderr logger for `RUST_LOG=debug`-style output without a
/// dependency: level from `EMBASSY_CLIENT_LOG` (error, warn, info, debug,
/// trace), default warn.
fn env_logger_lite() {
    struct L;
    impl log::Log for L {
        fn enabled(&self, m: &log::Metadata) -> bool {
            // embedded-tls warns on every connection that the read buffer is
            // below 16,640 B; the transport asks the server for records
            // that fit it (max_fragment_length), so that warning is noise.
            m.level() <= log::max_level() && m.target() != "embedded_tls::record_reader"
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: L = L;
    let level = match std::env::var("EMBASSY_CLIENT_LOG").as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("info") => log::LevelFilter::Info,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        _ => log::LevelFilter::Warn,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Patterns the sync mode keeps (real vectors, rows `0..SYNC_PATTERNS`).
const SYNC_PATTERNS: usize = 6;
/// Device id of the sync mode (default of `--device`).
const SYNC_DEVICE: &str = "stb-netns-embassy-0001";

fn rows(path: &str, n: usize) -> Result<Vec<Embedding>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    bytes
        .chunks_exact(DIM * 4)
        .take(n)
        .map(|c| Embedding::from_le_bytes(c).map_err(|e| format!("{path}: {e:?}")))
        .collect()
}

/// Pattern `i` at sync `k`: row `i`, pulled towards item `k` (one more
/// watched item per sync), with more samples each time.
fn drifted(pats: &[Embedding], items: &[Embedding], i: usize, k: usize) -> Option<Pattern> {
    let mut v = [0f32; DIM];
    let w = if k == 0 { 0.0 } else { 0.25 };
    for (d, x) in v.iter_mut().enumerate() {
        *x = pats[i].as_array()[d] + w * items[(i * 7 + k) % items.len()].as_array()[d];
    }
    Pattern::new(
        PatternId::new(&format!("pattern-{i}")).ok()?,
        Embedding::normalize(v).ok()?,
        0.8,
        20 + k as u32,
        Category::new("drama").ok()?,
    )
    .ok()
}

/// The real sync cycle against Constellation: `n` syncs with drifting
/// patterns, then the server's stored state read back and compared.
/// Returns `Some(3)` when the server has no codec yet.
async fn run_sync<T: Transport<Error = Error>>(
    t: &mut T,
    device: &str,
    n: usize,
    key: Option<omega_tv_sync::DeviceKey>,
    checks: &mut Checks,
) -> Option<i32> {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/minilm/");
    let (pats, items) = match (
        rows(&format!("{data}patterns_public.f32"), SYNC_PATTERNS),
        rows(&format!("{data}items_public.f32"), 64),
    ) {
        (Ok(p), Ok(i)) => (p, i),
        (Err(e), _) | (_, Err(e)) => {
            checks.check(&format!("real vectors: {e}"), false);
            return None;
        }
    };
    let (Ok(cb), Ok(id)) = (minilm_v1(), DeviceId::new(device)) else {
        checks.check("codebook and device id", false);
        return None;
    };
    let mut sync_cfg = SyncConfig::new(id);
    sync_cfg.auth_key = key;
    let mut client: Box<SyncClient<'static, 16>> = Box::new(SyncClient::new(cb, sync_cfg));
    let mut tx = vec![0u8; 32 * 1024];
    let mut rx = vec![0u8; client.config().caps.max_bytes as usize];
    let start = embassy_time::Instant::now();
    for k in 0..n {
        for i in 0..SYNC_PATTERNS {
            match drifted(&pats, &items, i, k) {
                Some(p) => {
                    if client.upsert(&p, start.elapsed().as_millis()).is_err() {
                        checks.check("upsert", false);
                    }
                }
                None => checks.check("pattern", false),
            }
        }
        let pending = client.pending();
        // A bounded number of attempts per sync (a 503 is retried at once:
        // the timing is not what is tested here).
        let mut done = false;
        for _attempt in 0..3 {
            let now = start.elapsed().as_millis();
            match client.exchange(t, &mut tx, &mut rx, now, &mut ()).await {
                Ok(Outcome::Synced(s)) => {
                    checks.check(
                        &format!(
                            "sync {k}: {} uploaded, {} acked, {} conflicts, seq now {}",
                            s.uploaded,
                            s.acked,
                            s.conflicts,
                            client.seq()
                        ),
                        s.uploaded as usize == pending
                            && s.acked as usize == pending
                            && s.conflicts == 0
                            && client.pending() == 0,
                    );
                    done = true;
                    break;
                }
                Ok(other) => println!("sync {k}: {other:?}, again"),
                Err(SyncError::Core(omega_tv_sync::Error::Rejected))
                    if k == 0 && rx.windows(16).any(|w| w == b"unknown_codebook") =>
                {
                    // The error body is still in `rx`.
                    println!("sync {k}: the server has no codec (422 unknown_codebook)");
                    return Some(3);
                }
                Err(e) => {
                    checks.check(&format!("sync {k}: {e:?}"), false);
                    break;
                }
            }
        }
        if !done {
            checks.check(&format!("sync {k} completed"), false);
        }
    }

    // Read back what the server holds.
    let path = format!("/api/v1/devices/{device}/patterns");
    let mut buf = vec![0u8; 256 * 1024];
    let r = t
        .send(
            Request {
                method: Method::Get,
                path: &path,
                headers: &[],
                body: &[],
            },
            &mut buf,
        )
        .await;
    let body = match r {
        Ok(resp) if resp.status == 200 => &buf[..resp.body_len],
        other => {
            checks.check(&format!("admin read-back: {other:?}"), false);
            return None;
        }
    };
    let state: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            checks.check(&format!("admin read-back JSON: {e}"), false);
            return None;
        }
    };
    let stored = state["patterns"].as_array().cloned().unwrap_or_default();
    checks.check(
        &format!(
            "server holds {} patterns ({} B read back)",
            stored.len(),
            body.len()
        ),
        stored.len() == SYNC_PATTERNS,
    );
    for i in 0..SYNC_PATTERNS {
        let Ok(pid) = PatternId::new(&format!("pattern-{i}")) else {
            continue;
        };
        let mine = client.acked(&pid);
        let theirs = stored.iter().find(|p| p["id"] == pid.as_str());
        let same = match (mine, theirs) {
            (Some((rev, codes)), Some(p)) => {
                let srv: Vec<i64> = p["codes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|c| c.as_i64()).collect())
                    .unwrap_or_default();
                p["revision"].as_u64() == Some(u64::from(rev))
                    && srv.len() == DIM
                    && srv
                        .iter()
                        .zip(codes.iter())
                        .all(|(a, b)| *a == i64::from(*b))
            }
            _ => false,
        };
        checks.check(
            &format!(
                "{}: server revision and codes = the client's acked (rev {:?})",
                pid.as_str(),
                mine.map(|m| m.0)
            ),
            same,
        );
    }
    checks.check(
        &format!("server's last_seq = {} syncs", n),
        state["last_seq"].as_u64() == Some(n as u64) && client.seq() == n as u64 + 1,
    );
    None
}
