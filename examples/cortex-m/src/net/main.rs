//! Cortex-M4F firmware that runs the embassy transport on the target under
//! QEMU (`mps2-an386`) and measures it: `cargo run --release --features net
//! --bin omega-tv-sync-cortex-m-net` (add `tls` for the TLS transport).
//!
//! Two embassy-net stacks run in one firmware, joined by an in-memory cable
//! ([`cable`]: IP packets in two bounded queues). Stack A is the device: the
//! real `SyncClient::exchange` over `EmbassyTransport`, replaying the
//! scenario of `src/scenario.rs` for both codebook profiles. Stack B is a
//! small HTTP peer ([`peer`]) that checks each request byte for byte against
//! what the host recorded at build time (`build.rs`) and answers with the
//! recorded response, once with `Content-Length` and once chunked.
//!
//! With feature `tls` the device then uses `EmbassyTlsTransport` (4 KiB
//! records, a deterministic test-only RNG, `rng.rs`) against the plain
//! peer: the ClientHello (P-256 key generation included) runs on the target
//! and the handshake must fail with `Error::Tls`. With feature `tls-peer`
//! it also syncs through a minimal TLS 1.3 PSK peer (`tls_peer.rs`, test
//! only): the whole handshake (ECDH, key schedule, both Finished messages)
//! and a sync inside the session run on the target.
//!
//! No executor, no interrupt, no heap: `run` polls the two stack runners,
//! the peer and the device with a no-op waker in one bounded loop and moves
//! embassy-time's software clock ([`clock`]) by [`STEP`] after each round.
//! Every poll runs under [`stack::deepest`], so the stack each future needs
//! is measured per future and per phase. Prints `stack_peak_bytes=N` and the
//! `size_of` of the futures and resources a device keeps in static memory;
//! exits through semihosting: 0 when every check passed, 1 otherwise.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
#![deny(missing_docs)]

use core::cell::Cell;
use core::future::Future;
use core::mem::{size_of, size_of_val};
use core::pin::pin;
use core::task::{Context, Poll, Waker};

use cortex_m as _;
use cortex_m_rt::entry;
use cortex_m_semihosting::hprintln;
use embassy_net::{Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_time::Duration;
use static_cell::{ConstStaticCell, StaticCell};

mod cable;
mod clock;
mod device;
#[path = "../exit.rs"]
mod exit;
mod peer;
#[cfg(feature = "tls")]
mod rng;
mod runs;
#[path = "../scenario.rs"]
#[allow(dead_code)]
mod scenario;
#[path = "../stack.rs"]
#[allow(dead_code)]
mod stack;
#[cfg(feature = "tls-peer")]
mod tls_peer;

use device::{Shared, PHASES, PHASE_NAMES, PHASE_SETUP};

/// Counts checks and prints each one.
pub struct Checks {
    passed: u32,
    failed: u32,
}

impl Checks {
    /// Records one check.
    pub fn check(&mut self, what: &str, ok: bool) {
        if ok {
            self.passed += 1;
            hprintln!("ok   {}", what);
        } else {
            self.failed += 1;
            hprintln!("FAIL {}", what);
        }
    }
}

/// Sockets of each stack: the device needs one TCP socket per request
/// (one connection at a time), the peer one.
const SOCKETS: usize = 1;
/// Simulated time per round of the poll loop.
const STEP: Duration = Duration::from_millis(1);
/// Bound on the rounds: 180 s of simulated time; a run takes a few
/// seconds of it.
const MAX_ROUNDS: u32 = 180_000;
/// Search window of the per-poll stack measurement.
const WINDOW: usize = 48 * 1024;

static CABLE: ConstStaticCell<cable::Cable> = ConstStaticCell::new(cable::Cable::new());
static RESOURCES_A: ConstStaticCell<StackResources<SOCKETS>> =
    ConstStaticCell::new(StackResources::new());
static RESOURCES_B: ConstStaticCell<StackResources<SOCKETS>> =
    ConstStaticCell::new(StackResources::new());
static DEVICE: ConstStaticCell<device::Memory> = ConstStaticCell::new(device::Memory::new());
static PEER: ConstStaticCell<peer::Memory> = ConstStaticCell::new(peer::Memory::new());
static CLIENT: StaticCell<device::Client> = StaticCell::new();

/// Deepest poll of each future, per phase (bytes below the poll loop).
#[derive(Clone, Copy, Default)]
struct Depth {
    runner_a: usize,
    device: usize,
    runner_b: usize,
    peer: usize,
}

fn net_config(addr: embassy_net::Ipv4Address) -> embassy_net::Config {
    embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(addr, 24),
        gateway: None,
        dns_servers: Default::default(),
    })
}

#[entry]
fn main() -> ! {
    let mut checks = Checks {
        passed: 0,
        failed: 0,
    };
    run(&mut checks);
    hprintln!(
        "cortex-m net: {} passed, {} failed",
        checks.passed,
        checks.failed
    );
    exit::exit(checks.failed == 0 && checks.passed > 0)
}

#[inline(never)]
fn run(c: &mut Checks) {
    let cable: &'static cable::Cable = CABLE.take();
    let (port_a, port_b) = cable.ends();
    let (stack_a, mut runner_a) = embassy_net::new(
        port_a,
        net_config(runs::DEVICE_ADDR),
        RESOURCES_A.take(),
        0x0a0a_0a0a,
    );
    let (stack_b, mut runner_b) = embassy_net::new(
        port_b,
        net_config(runs::PEER_ADDR),
        RESOURCES_B.take(),
        0x0b0b_0b0b,
    );
    let (Ok(cb), Ok(cfg)) = (
        omega_tv_sync::codec::minilm_small_v1(),
        scenario::config(false),
    ) else {
        c.check("codebook and config", false);
        return;
    };
    let client = CLIENT.init_with(|| omega_tv_sync::sync::SyncClient::new(cb, cfg));
    let shared = Shared {
        phase: Cell::new(PHASE_SETUP),
        listening: Cell::new(0),
    };

    let mut depth = [Depth::default(); PHASES];
    let mut report = None;
    let mut rounds = 0;
    let mut device_done = None;
    let (runner_future, device_future, peer_future, loop_depth);
    {
        let mut a = pin!(runner_a.run());
        let mut b = pin!(runner_b.run());
        let mut dev = pin!(device::run(c, stack_a, DEVICE.take(), client, &shared));
        let mut peer = pin!(peer::serve(stack_b, PEER.take(), &shared));
        runner_future = size_of_val(&*a);
        device_future = size_of_val(&*dev);
        peer_future = size_of_val(&*peer);
        loop_depth = stack::depth();
        let mut cx = Context::from_waker(Waker::noop());
        while rounds < MAX_ROUNDS {
            rounds += 1;
            let d = &mut depth[shared.phase.get().min(PHASES - 1)];
            let _ = stack::deepest(WINDOW, &mut d.runner_a, || a.as_mut().poll(&mut cx));
            let _ = stack::deepest(WINDOW, &mut d.runner_b, || b.as_mut().poll(&mut cx));
            if report.is_none() {
                if let Poll::Ready(r) =
                    stack::deepest(WINDOW, &mut d.peer, || peer.as_mut().poll(&mut cx))
                {
                    report = Some(r);
                }
            }
            if device_done.is_none() {
                if let Poll::Ready(s) =
                    stack::deepest(WINDOW, &mut d.device, || dev.as_mut().poll(&mut cx))
                {
                    device_done = Some(s);
                }
            }
            if report.is_some() && device_done.is_some() {
                break;
            }
            clock::advance(STEP);
        }
    }
    let sizes = device_done.unwrap_or_else(|| {
        c.check("device finished within the round bound", false);
        device::Sizes::default()
    });
    let (ab, ba) = cable.carried();
    hprintln!(
        "poll loop: {} rounds, {} ms simulated; cable A->B {} packets {} B ({} dropped), B->A {} packets {} B ({} dropped)",
        rounds,
        clock::elapsed().as_millis(),
        ab[0], ab[1], ab[2], ba[0], ba[1], ba[2]
    );

    // The peer's verdicts.
    match &report {
        Some(r) => {
            for (run, verdict) in runs::RUNS.iter().zip(r.http.iter()) {
                if let Err(e) = verdict {
                    hprintln!("  peer: {}: {}", run.name, e);
                }
                c.check(
                    "peer: request line, headers (Authorization = host's), body = recorded upload",
                    verdict.is_ok(),
                );
            }
            #[cfg(feature = "tls")]
            match &r.hello {
                Ok(h) => {
                    hprintln!("  peer: ClientHello record of {} B: {:?}", h.len, h);
                    c.check(
                        "peer: ClientHello offers TLS 1.3, AES-128-GCM, a P-256 share, psk_dhe_ke, the device id as PSK identity, 4 KiB fragments",
                        h.tls13
                            && h.aes128gcm
                            && h.p256_share
                            && h.psk_dhe
                            && h.psk_identity
                            && h.max_fragment == Some(4),
                    );
                }
                Err(e) => {
                    hprintln!("  peer: TLS: {}", e);
                    c.check("peer: ClientHello", false);
                }
            }
            #[cfg(feature = "tls-peer")]
            {
                let t = &r.tls;
                if let Err(e) = t.hello.and(t.http) {
                    hprintln!("  TLS peer: {}", e);
                }
                c.check(
                    "TLS peer: ClientHello parsed, the device's Finished MAC verified",
                    t.hello.is_ok() && t.client_finished,
                );
                c.check(
                    "TLS peer: the request inside the session = the recorded one, response sent",
                    t.http.is_ok(),
                );
            }
        }
        None => c.check("peer finished within the round bound", false),
    }

    // Stack: every poll ran under `stack::deepest`, so the loop's peak is
    // its own depth plus the deepest poll.
    let mut all = Depth::default();
    for d in &depth {
        all.runner_a = all.runner_a.max(d.runner_a);
        all.device = all.device.max(d.device);
        all.runner_b = all.runner_b.max(d.runner_b);
        all.peer = all.peer.max(d.peer);
    }
    let deepest_poll = all.runner_a.max(all.device).max(all.runner_b).max(all.peer);
    c.check(
        "per-poll stack measurement stayed inside its window",
        deepest_poll < WINDOW - 64,
    );
    for (k, d) in depth.iter().enumerate() {
        hprintln!(
            "poll_stack_bytes phase={} device={} runner_a={} peer={} runner_b={}",
            PHASE_NAMES[k],
            d.device,
            d.runner_a,
            d.peer,
            d.runner_b
        );
    }
    let device_stack = all.device.max(all.runner_a);
    hprintln!(
        "device_poll_stack_bytes={} (device task and its stack's runner; below the poll loop's frame)",
        device_stack
    );
    hprintln!(
        "poll_loop_depth_bytes={} (the loop's frame holds the four pinned futures)",
        loop_depth
    );
    let peak = stack::peak_bytes().max(loop_depth + deepest_poll);
    hprintln!("stack_peak_bytes={}", peak);
    hprintln!("stack_size_bytes={}", stack::size_bytes());

    hprintln!(
        "size_of StackResources<1>={} <2>={} <4>={}; Runner<Port>={}; TcpSocket={}",
        size_of::<StackResources<1>>(),
        size_of::<StackResources<2>>(),
        size_of::<StackResources<4>>(),
        size_of::<embassy_net::Runner<'static, cable::Port<'static>>>(),
        size_of::<embassy_net::tcp::TcpSocket<'static>>(),
    );
    hprintln!(
        "size_of futures: runner.run()={} device task={} peer task={}",
        runner_future,
        device_future,
        peer_future
    );
    hprintln!(
        "size_of EmbassyTransport={} send()={} SyncClient::exchange()={}",
        sizes.transport,
        sizes.send,
        sizes.exchange
    );
    #[cfg(feature = "tls")]
    hprintln!(
        "size_of EmbassyTlsTransport={} send()={} SyncClient::exchange()={}",
        sizes.tls_transport,
        sizes.tls_send,
        sizes.tls_exchange
    );
    hprintln!(
        "size_of SyncClient<8>={} device buffers={} peer memory={} cable={}",
        size_of::<device::Client>(),
        size_of::<device::Memory>(),
        size_of::<peer::Memory>(),
        size_of::<cable::Cable>()
    );
}
