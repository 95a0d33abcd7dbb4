//! The firmware-style host client: an embassy executor, embassy-net on a
//! Linux TAP device, and the `omega-tv-sync-embassy` transport, exactly as
//! firmware would wire them (static stack resources, caller-owned buffers),
//! only with a TAP device instead of an Ethernet MAC.
//!
//! ```text
//! embassy-client --tap TAP --addr 10.77.0.2/24 --server 10.77.0.1:8080 [--rounds N]
//!                [--syncs N --key HEX --admin-port PORT --admin-token TOKEN
//!                 [--device ID] [--tls-port PORT]]
//! ```
//!
//! Run by `scripts/netns-sync.sh` inside a private network namespace (a TAP
//! device needs root and `/dev/net/tun`). Two modes:
//!
//! - `--syncs N --admin-port PORT --admin-token TOKEN` (against the real
//!   Constellation server, its admin listener on PORT of the same address
//!   with that bearer token): the real `SyncClient` syncs [`SYNC_PATTERNS`](sync::SYNC_PATTERNS) real
//!   patterns `N` times through `SyncClient::exchange` over the embassy
//!   transport, the patterns drifting between syncs (another real vector
//!   mixed in), then reads the server's state back with
//!   `GET /api/v1/devices/{id}/patterns` on the admin listener and checks that every pattern's
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

mod args;
mod checks;
mod http_checks;
mod sync;
mod tls;

use embassy_executor::Spawner;
use embassy_net::{StackResources, StaticConfigV4};
use embassy_net_tuntap::TunTapDevice;
use embassy_time::{with_timeout, Duration};
use omega_tv_sync::Transport;
use omega_tv_sync_embassy::{
    Buffers, Config, EmbassyTransport, Error, RECOMMENDED_HEADER_BUFFER, RECOMMENDED_TCP_BUFFER,
};
use static_cell::StaticCell;

use args::parse_args;
use checks::{env_logger_lite, Checks};
use http_checks::{get, run_http_checks};
use sync::run_sync;
use tls::run_tls_sync;

/// The response buffer: larger than every expected body, smaller than
/// `BIG_LEN`.
const RESPONSE_BUF: usize = 4096;

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
        let Some((admin_port, token)) = &args.admin else {
            eprintln!("embassy-client: --syncs needs --admin-port and --admin-token");
            std::process::exit(2);
        };
        let admin = sync::Admin {
            stack,
            ip: args.server.0,
            port: *admin_port,
            token,
        };
        let code = run_sync(
            &mut transport,
            &admin,
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
