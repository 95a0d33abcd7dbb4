//! The firmware-style host client: an embassy executor, embassy-net on a
//! Linux TAP device, and the `omega-tv-sync-embassy` transport, exactly as
//! firmware would wire them (static stack resources, caller-owned buffers),
//! only with a TAP device instead of an Ethernet MAC.
//!
//! ```text
//! embassy-client --tap TAP --addr 10.77.0.2/24 --server 10.77.0.1:8080 [--rounds N]
//! ```
//!
//! Run by `scripts/netns-sync.sh` inside a private network namespace (a TAP
//! device needs root and `/dev/net/tun`). It makes a bounded number of HTTP
//! exchanges against `embassy-test-server` and checks each outcome: binary
//! POST bodies echoed back, a chunked response decoded, oversize responses
//! (fixed-length and chunked) reported as `ResponseTooLarge`, a 503 with its
//! `Retry-After`, a refused connection. Exits 0 only if every check passes.
//!
//! When the sync client and the Constellation server land, the same wiring
//! runs the real sync cycle against the real server (see `run_sync` below).

use embassy_executor::Spawner;
use embassy_net::{Ipv4Address, Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_net_tuntap::TunTapDevice;
use embassy_time::{with_timeout, Duration};
use omega_tv_sync::{Method, Request, Transport};
use omega_tv_sync_embassy::{
    Buffers, Config, EmbassyTransport, Error, RECOMMENDED_HEADER_BUFFER, RECOMMENDED_TCP_BUFFER,
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
}

fn parse_args() -> Result<Args, String> {
    let mut tap = None;
    let mut addr = None;
    let mut server = None;
    let mut rounds = 3usize;
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
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        tap: tap.ok_or("--tap is required")?,
        addr: addr.ok_or("--addr is required")?,
        server: server.ok_or("--server is required")?,
        rounds,
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

    // run_sync(&mut transport, ...) goes here once the sync client exists.

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
            m.level() <= log::max_level()
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
