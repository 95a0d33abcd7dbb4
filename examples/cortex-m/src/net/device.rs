//! The device: the real `SyncClient::exchange` over the embassy transport
//! on stack A, once per [`RUNS`] entry; then (feature `tls`) through
//! `EmbassyTlsTransport`, against the plain peer (the handshake must fail)
//! and (feature `tls-peer`) against the TLS peer (a full handshake and a
//! sync).

use core::cell::Cell;
use core::future::poll_fn;
use core::mem::size_of_val;
use core::task::Poll;

use embassy_net::Stack;
use omega_tv_sync::sync::{GlobalSink, Outcome, Summary, SyncClient};
use omega_tv_sync::{GlobalPattern, Method, Request, Transport, TrendSignal};
use omega_tv_sync_embassy::{Buffers, Config, EmbassyTransport};

use crate::runs::{peer, Run, HOST, ROWS, RUNS};
use crate::scenario::*;
use crate::Checks;

/// The client type of the scenario.
pub type Client = SyncClient<'static, N>;

/// Upload buffer (as in the sync-cycle firmware).
pub const TX: usize = 8 * 1024;
/// Response buffer: `caps.max_bytes` of the default config.
pub const RX: usize = 16 * 1024;

/// The device's caller-owned buffers, all static.
pub struct Memory {
    /// The sync client's upload buffer.
    pub tx: [u8; TX],
    /// The sync client's response buffer (the transport's `response_buf`).
    pub rx: [u8; RX],
    /// The transport's TCP receive buffer.
    pub tcp_rx: [u8; omega_tv_sync_embassy::RECOMMENDED_TCP_BUFFER],
    /// The transport's TCP transmit buffer.
    pub tcp_tx: [u8; omega_tv_sync_embassy::RECOMMENDED_TCP_BUFFER],
    /// The transport's response-head buffer.
    pub header: [u8; omega_tv_sync_embassy::RECOMMENDED_HEADER_BUFFER],
    /// TLS: one incoming record (4 KiB fragments).
    #[cfg(feature = "tls")]
    pub record_read: [u8; omega_tv_sync_embassy::tls::RECOMMENDED_READ_BUFFER],
    /// TLS: one outgoing record.
    #[cfg(feature = "tls")]
    pub record_write: [u8; omega_tv_sync_embassy::tls::RECOMMENDED_WRITE_BUFFER],
}

impl Memory {
    /// All zero (const: the memory lands in `.bss`).
    pub const fn new() -> Self {
        Memory {
            tx: [0; TX],
            rx: [0; RX],
            tcp_rx: [0; omega_tv_sync_embassy::RECOMMENDED_TCP_BUFFER],
            tcp_tx: [0; omega_tv_sync_embassy::RECOMMENDED_TCP_BUFFER],
            header: [0; omega_tv_sync_embassy::RECOMMENDED_HEADER_BUFFER],
            #[cfg(feature = "tls")]
            record_read: [0; omega_tv_sync_embassy::tls::RECOMMENDED_READ_BUFFER],
            #[cfg(feature = "tls")]
            record_write: [0; omega_tv_sync_embassy::tls::RECOMMENDED_WRITE_BUFFER],
        }
    }

    fn buffers(&mut self) -> (Buffers<'_>, &mut [u8], &mut [u8]) {
        (
            Buffers {
                tcp_rx: &mut self.tcp_rx,
                tcp_tx: &mut self.tcp_tx,
                header: &mut self.header,
            },
            &mut self.tx,
            &mut self.rx,
        )
    }
}

/// State the poll loop, the device and the peer share (one thread).
pub struct Shared {
    /// What the device is doing (index into the loop's per-phase figures).
    pub phase: Cell<usize>,
    /// Connections the peer has started listening for so far.
    pub listening: Cell<u32>,
}

/// Phases of the run: setup, then per [`RUNS`] entry the harness filling
/// the client and the exchange, then the TLS attempt.
pub const PHASE_SETUP: usize = 0;
/// `PHASE_FILL + 2k`: reset the client and upsert `RUNS[k]`'s patterns.
pub const PHASE_FILL: usize = 1;
/// `PHASE_EXCHANGE + 2k`: exchange `RUNS[k]`.
pub const PHASE_EXCHANGE: usize = 2;
/// The TLS transport against the plain peer (ClientHello only).
pub const PHASE_TLS: usize = 1 + 2 * RUNS.len();
/// Fill the client again for the sync over TLS.
#[cfg(feature = "tls-peer")]
pub const PHASE_TLS_FILL: usize = PHASE_TLS + 1;
/// The sync over TLS: full handshake, then the exchange.
#[cfg(feature = "tls-peer")]
pub const PHASE_TLS_EXCHANGE: usize = PHASE_TLS + 2;
/// Number of phases.
pub const PHASES: usize =
    PHASE_TLS + cfg!(feature = "tls") as usize + 2 * cfg!(feature = "tls-peer") as usize;
/// What each phase is called in the output.
pub const PHASE_NAMES: [&str; PHASE_TLS + 3] = [
    "setup",
    "fill_v1(harness)",
    "exchange_v1_content_length",
    "fill_small(harness)",
    "exchange_small_chunked",
    "tls_client_hello_vs_plain_peer",
    "fill_v1_tls(harness)",
    "exchange_v1_tls_full_handshake",
];

/// `size_of` of the device's futures on the target.
#[derive(Default)]
pub struct Sizes {
    /// `EmbassyTransport`.
    pub transport: usize,
    /// The future of `EmbassyTransport::send`.
    pub send: usize,
    /// The future of `SyncClient::exchange` over `EmbassyTransport`.
    pub exchange: usize,
    /// `EmbassyTlsTransport<TestRng>`.
    #[cfg(feature = "tls")]
    pub tls_transport: usize,
    /// The future of `EmbassyTlsTransport::send`.
    #[cfg(feature = "tls")]
    pub tls_send: usize,
    /// The future of `SyncClient::exchange` over `EmbassyTlsTransport`.
    #[cfg(feature = "tls")]
    pub tls_exchange: usize,
}

/// Checks what came down and counts it.
struct Sink {
    upserts: usize,
    removed: Option<(u32, u64)>,
    trends: usize,
    ok: bool,
}

impl GlobalSink for Sink {
    fn global_upsert(&mut self, g: &GlobalPattern) {
        let k = self.upserts;
        self.upserts += 1;
        self.ok &= GLOBAL_ROWS.get(k).is_some_and(|&(id, _)| id == g.id)
            && VERSIONS.get(1 + k) == Some(&g.version);
    }

    fn global_remove(&mut self, id: u32, version: u64) {
        self.removed = Some((id, version));
    }

    fn trend(&mut self, signal: &TrendSignal, version: u64) {
        let k = self.trends;
        self.trends += 1;
        self.ok &= trend(k).is_ok_and(|t| &t == signal) && VERSIONS.get(3 + k) == Some(&version);
    }
}

/// Waits until the peer listens for its `n`-th connection (a server
/// listens before clients connect; on one poll loop that needs saying).
async fn peer_listening(shared: &Shared, n: u32) {
    poll_fn(|_| {
        if shared.listening.get() >= n {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Starts phase `k`: the poll ends here, so that every poll of the device
/// belongs to one phase (the loop reads the phase before each poll).
async fn enter(shared: &Shared, k: usize) {
    shared.phase.set(k);
    let mut yielded = false;
    poll_fn(|_| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            Poll::Pending
        }
    })
    .await
}

/// Runs every exchange and checks each outcome.
pub async fn run(
    c: &mut Checks,
    stack: Stack<'static>,
    m: &'static mut Memory,
    client: &'static mut Client,
    shared: &Shared,
) -> Sizes {
    let mut sizes = Sizes::default();
    stack.wait_config_up().await;
    for (k, run) in RUNS.iter().enumerate() {
        enter(shared, PHASE_FILL + 2 * k).await;
        if !fill(c, client, run) {
            continue;
        }
        enter(shared, PHASE_EXCHANGE + 2 * k).await;
        peer_listening(shared, k as u32 + 1).await;
        exchange(c, stack, m, client, &mut sizes).await;
    }
    #[cfg(feature = "tls")]
    tls(c, stack, m, client, shared, &mut sizes).await;
    enter(shared, PHASE_SETUP).await;
    sizes
}

/// One sync over plain HTTP: 8 real patterns up, the recorded response
/// down, the client's state checked as the sync-cycle firmware does.
async fn exchange(
    c: &mut Checks,
    stack: Stack<'static>,
    m: &mut Memory,
    client: &mut Client,
    sizes: &mut Sizes,
) {
    let (buffers, tx, rx) = m.buffers();
    let mut transport = EmbassyTransport::new(stack, Config::new(peer(), HOST), buffers);
    let mut sink = Sink {
        upserts: 0,
        removed: None,
        trends: 0,
        ok: true,
    };
    (sizes.transport, sizes.send, sizes.exchange) =
        future_sizes(client, &mut transport, tx, rx, &mut sink);
    // What a device's sync task runs.
    let r = client
        .exchange(&mut transport, tx, rx, NOW_MS, &mut sink)
        .await;
    check_sync(
        c,
        client,
        &sink,
        r.is_ok_and(|o| o == Outcome::Synced(WANT)),
    );
}

/// What the recorded response brings.
const WANT: Summary = Summary {
    uploaded: PATTERNS as u16,
    acked: PATTERNS as u16 - 1,
    conflicts: 1,
    globals: 3,
    trends: 2,
    more: false,
};

/// Resets the client to `run`'s profile and upserts the 8 real patterns
/// (test set-up: a phase of its own). Not async, and not inlined: the
/// patterns built here take no room in the device task's poll frame.
#[inline(never)]
fn fill(c: &mut Checks, client: &mut Client, run: &Run) -> bool {
    cortex_m_semihosting::hprintln!(
        "sync: {}, response body framed by {:?}",
        run.name,
        run.framing
    );
    let (Ok(cb), Ok(cfg)) = ((run.codebook)(), config(false)) else {
        c.check("  codebook and config", false);
        return false;
    };
    client.reset(cb, cfg);
    let mut upserted = 0;
    for i in 0..PATTERNS {
        if let Ok(p) = pattern(ROWS, i) {
            upserted += usize::from(client.upsert(&p, NOW_MS).is_ok());
        }
    }
    c.check("  upsert 8 real patterns", upserted == PATTERNS);
    upserted == PATTERNS
}

/// Checks the client's state after the exchange, as the sync-cycle
/// firmware does.
#[inline(never)]
fn check_sync(c: &mut Checks, client: &Client, sink: &Sink, synced: bool) {
    c.check(
        "  exchange: 7 acks, 1 conflict, 3 global changes, 2 trends",
        synced,
    );
    c.check(
        "  sequence 2, cursor 42, next sync in 600 s, merge pending",
        client.seq() == 2
            && client.global_version() == GLOBAL_VERSION
            && client.in_flight().is_none()
            && client.pending() == 1
            && client.next_sync_at() == NOW_MS + u64::from(NEXT_SYNC_S) * 1000,
    );
    let acked = (0..PATTERNS)
        .filter(|&i| id(i).is_ok_and(|id| client.acked(&id).is_some_and(|(rev, _)| rev == ACK_REV)))
        .count();
    let conflict =
        id(CONFLICT).is_ok_and(|id| client.acked(&id).is_some_and(|(rev, _)| rev == SERVER_REV));
    c.check(
        "  acked at revision 1, the conflict at the server's revision 5",
        acked == PATTERNS - 1 && conflict,
    );
    c.check(
        "  sink: 1 removal, 2 global patterns, 2 trends",
        sink.ok
            && sink.upserts == 2
            && sink.trends == 2
            && sink.removed == Some((GLOBAL_REMOVED, VERSIONS[0])),
    );
}

/// `size_of` of a transport, its `send` future and the `exchange` future
/// over it. The futures are only built, never polled; a function of its own
/// so that they take no room in the device task's poll frame.
#[inline(never)]
fn future_sizes<T: Transport, S: GlobalSink>(
    client: &mut Client,
    transport: &mut T,
    tx: &mut [u8],
    rx: &mut [u8],
    sink: &mut S,
) -> (usize, usize, usize) {
    let request = Request {
        method: Method::Post,
        path: omega_tv_sync::sync::SYNC_PATH,
        headers: &[],
        body: &[],
    };
    let t = size_of_val(transport);
    let send = size_of_val(&transport.send(request, &mut []));
    let exchange = size_of_val(&client.exchange(transport, tx, rx, NOW_MS, sink));
    (t, send, exchange)
}

/// `EmbassyTlsTransport` over `m`'s buffers (4 KiB records), with the
/// sync client's `tx` and `rx`.
#[cfg(feature = "tls")]
fn tls_transport<'b>(
    stack: Stack<'static>,
    m: &'b mut Memory,
    identity: &'b str,
    psk: &'b [u8; 32],
    seed: u64,
) -> Result<(TlsTransport<'b>, &'b mut [u8], &'b mut [u8]), omega_tv_sync_embassy::Error> {
    use omega_tv_sync_embassy::{EmbassyTlsTransport, Psk, TlsBuffers};
    let Memory {
        tx,
        rx,
        tcp_rx,
        tcp_tx,
        header,
        record_read,
        record_write,
    } = m;
    let t = EmbassyTlsTransport::new(
        stack,
        Config::new(peer(), HOST),
        Buffers {
            tcp_rx,
            tcp_tx,
            header,
        },
        TlsBuffers {
            record_read,
            record_write,
        },
        Psk {
            identity: identity.as_bytes(),
            key: psk,
        },
        crate::rng::TestRng::new(seed),
    )?;
    Ok((t, tx, rx))
}

#[cfg(feature = "tls")]
type TlsTransport<'b> =
    omega_tv_sync_embassy::EmbassyTlsTransport<'static, 'b, crate::rng::TestRng>;

/// The TLS transport against the plain peer: the ClientHello (with its
/// P-256 key generation) runs on the target; the peer answers it with an
/// HTTP 400, which is no TLS record, so the handshake fails with
/// `Error::Tls` and the request stays in flight. Then (feature `tls-peer`)
/// `tls_sync`.
#[cfg(feature = "tls")]
async fn tls(
    c: &mut Checks,
    stack: Stack<'static>,
    m: &mut Memory,
    client: &mut Client,
    shared: &Shared,
    sizes: &mut Sizes,
) {
    use omega_tv_sync::sync::SyncError;
    use omega_tv_sync_embassy::Error;
    let psk = omega_tv_sync::DeviceKey::new(DEVICE_KEY).tls_psk();
    let Ok(cfg) = config(false) else {
        c.check("  config", false);
        return;
    };
    let id = cfg.device_id.as_str();

    enter(shared, PHASE_TLS).await;
    peer_listening(shared, RUNS.len() as u32 + 1).await;
    cortex_m_semihosting::hprintln!(
        "TLS: EmbassyTlsTransport (4 KiB records) against the plain HTTP peer"
    );
    match tls_transport(stack, m, id, &psk, 0x6f6d_6567_612d_7476) {
        Ok((mut t, tx, rx)) => {
            (sizes.tls_transport, sizes.tls_send, sizes.tls_exchange) =
                future_sizes(client, &mut t, tx, rx, &mut ());
            let before = client.pending();
            let r = client.exchange(&mut t, tx, rx, NOW_MS, &mut ()).await;
            if let Err(e) = &r {
                cortex_m_semihosting::hprintln!("  exchange over TLS: {:?}", e);
            }
            c.check(
                "  handshake with a plain HTTP peer fails with Error::Tls, request kept",
                matches!(r, Err(SyncError::Transport(Error::Tls)))
                    && client.in_flight().is_some()
                    && client.pending() == before,
            );
        }
        Err(e) => {
            cortex_m_semihosting::hprintln!("  EmbassyTlsTransport::new: {:?}", e);
            c.check("  TLS transport", false);
        }
    }

    #[cfg(feature = "tls-peer")]
    tls_sync(c, stack, m, client, shared, id, &psk).await;
}

/// A full handshake with the TLS peer, then the sync inside the session.
#[cfg(feature = "tls-peer")]
async fn tls_sync(
    c: &mut Checks,
    stack: Stack<'static>,
    m: &mut Memory,
    client: &mut Client,
    shared: &Shared,
    id: &str,
    psk: &[u8; 32],
) {
    enter(shared, PHASE_TLS_FILL).await;
    let run = &RUNS[0];
    cortex_m_semihosting::hprintln!(
        "TLS: full handshake with the TLS peer, then the sync inside it"
    );
    if !fill(c, client, run) {
        return;
    }
    enter(shared, PHASE_TLS_EXCHANGE).await;
    peer_listening(shared, RUNS.len() as u32 + 2).await;
    match tls_transport(stack, m, id, psk, 0x7473_796e_632d_746c) {
        Ok((mut t, tx, rx)) => {
            let mut sink = Sink {
                upserts: 0,
                removed: None,
                trends: 0,
                ok: true,
            };
            let r = client.exchange(&mut t, tx, rx, NOW_MS, &mut sink).await;
            if let Err(e) = &r {
                cortex_m_semihosting::hprintln!("  exchange over TLS: {:?}", e);
            }
            check_sync(
                c,
                client,
                &sink,
                r.is_ok_and(|o| o == Outcome::Synced(WANT)),
            );
        }
        Err(e) => {
            cortex_m_semihosting::hprintln!("  EmbassyTlsTransport::new: {:?}", e);
            c.check("  TLS transport", false);
        }
    }
}
