//! A fault-injecting HTTP/1.1 proxy for loopback tests.
//!
//! It listens on `127.0.0.1`, opens one upstream connection per client
//! connection, and relays exchange by exchange (request head and
//! `Content-Length` body, response head and body). For each exchange it
//! draws one fault from seeded probabilities:
//!
//! | fault | what happens | did the server see the request? |
//! |---|---|---|
//! | `drop` | the client connection is closed before anything is forwarded | no |
//! | `delay` | the request waits `0..=delay_max` before it is forwarded | yes |
//! | `cut` | the full response is read from the server, a random prefix of it (possibly empty) is written, then the connection is closed | yes |
//! | `reset` | as `cut`, but the connection is reset (`SO_LINGER` 0: an RST, not a FIN) | yes |
//!
//! | `forge` | the request is forwarded, the answer replaced by a forged, unsigned `409 {"last_seq": 2^64-2}` | yes |
//! | `replay` | the request is forwarded, the answer replaced by the previous `200` this connection relayed (signed for an earlier request) | yes |
//!
//! `cut` and `reset` are the lost-response cases: the server applied the
//! upload, the device never learns it and must re-send the same bytes.
//! `forge` and `replay` are an attacker on a plaintext hop: a device must
//! refuse both (they are not signed for its request) and re-send.
//! Every fault is counted ([`ProxyCounts`]). Every read and write has a
//! deadline, so no connection task outlives a stuck peer by more than
//! [`IO_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::fleet::rng::Rng;

/// Deadline of each read or write on either side.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest body accepted (the largest frame is 1 MiB).
const MAX_BODY: usize = 4 << 20;

/// Fault probabilities, per exchange (their sum must not exceed 1).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProxyFaults {
    /// Close the connection before forwarding.
    pub drop: f64,
    /// Delay the request by up to `delay_max`.
    pub delay: f64,
    /// Longest injected delay.
    pub delay_max: Duration,
    /// Forward, then write a random prefix of the response and close.
    pub cut: f64,
    /// Forward, then write a random prefix of the response and reset.
    pub reset: f64,
    /// Forward, then answer with a forged, unsigned `409`.
    pub forge: f64,
    /// Forward, then answer with the previous `200` of this connection.
    pub replay: f64,
}

impl ProxyFaults {
    /// `p` split evenly over the four kinds, delays up to 50 ms.
    pub fn even(p: f64) -> Self {
        ProxyFaults {
            drop: p / 4.0,
            delay: p / 4.0,
            delay_max: Duration::from_millis(50),
            cut: p / 4.0,
            reset: p / 4.0,
            forge: 0.0,
            replay: 0.0,
        }
    }
}

/// What the proxy did, so far.
#[derive(Debug, Default)]
pub struct ProxyCounts {
    /// Client connections accepted.
    pub connections: AtomicU64,
    /// Requests read from clients.
    pub exchanges: AtomicU64,
    /// Exchanges whose full response was passed on (delayed ones included).
    pub relayed: AtomicU64,
    /// Requests dropped before forwarding.
    pub dropped: AtomicU64,
    /// Requests delayed.
    pub delayed: AtomicU64,
    /// Responses cut after a prefix.
    pub cut: AtomicU64,
    /// Connections reset after a prefix of the response.
    pub reset: AtomicU64,
    /// Answers replaced by a forged `409`.
    pub forged: AtomicU64,
    /// Answers replaced by an earlier `200`.
    pub replayed: AtomicU64,
    /// Upstream connections that failed (server down or refusing).
    pub upstream_errors: AtomicU64,
}

/// A snapshot of [`ProxyCounts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProxyTotals {
    /// Client connections accepted.
    pub connections: u64,
    /// Requests read from clients.
    pub exchanges: u64,
    /// Exchanges relayed without a fault (delayed ones included).
    pub relayed: u64,
    /// Requests dropped before forwarding.
    pub dropped: u64,
    /// Requests delayed.
    pub delayed: u64,
    /// Responses cut after a prefix.
    pub cut: u64,
    /// Connections reset after a prefix of the response.
    pub reset: u64,
    /// Answers replaced by a forged `409`.
    pub forged: u64,
    /// Answers replaced by an earlier `200`.
    pub replayed: u64,
    /// Upstream connections that failed.
    pub upstream_errors: u64,
}

impl ProxyCounts {
    /// The counts now.
    pub fn totals(&self) -> ProxyTotals {
        ProxyTotals {
            connections: self.connections.load(Relaxed),
            exchanges: self.exchanges.load(Relaxed),
            relayed: self.relayed.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            delayed: self.delayed.load(Relaxed),
            cut: self.cut.load(Relaxed),
            reset: self.reset.load(Relaxed),
            forged: self.forged.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            upstream_errors: self.upstream_errors.load(Relaxed),
        }
    }
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    counts: Arc<ProxyCounts>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and relays to `upstream` with `faults`,
    /// drawing from a generator seeded with `seed` and the connection's
    /// number.
    pub async fn start(
        upstream: SocketAddr,
        faults: ProxyFaults,
        seed: u64,
    ) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(ProxyCounts::default());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            let mut n = 0u64;
            loop {
                tokio::select! {
                    acc = listener.accept() => {
                        let Ok((client, _)) = acc else { continue };
                        n += 1;
                        c.connections.fetch_add(1, Relaxed);
                        let rng = Rng::new(seed, n);
                        conns.spawn(connection(client, upstream, faults, rng, c.clone()));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(FaultProxy { addr, counts, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The counts so far.
    pub fn totals(&self) -> ProxyTotals {
        self.counts.totals()
    }
}

async fn timed<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// One HTTP/1.1 message read off a stream: head and body bytes, verbatim.
struct Message {
    bytes: Vec<u8>,
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads one message. `carry` holds bytes read past the previous message.
/// `Ok(None)`: the peer closed cleanly before a new message began.
async fn read_message(
    s: &mut TcpStream,
    carry: &mut Vec<u8>,
    response: bool,
) -> std::io::Result<Option<Message>> {
    use std::io::{Error, ErrorKind};
    let mut buf = std::mem::take(carry);
    let mut chunk = vec![0u8; 16 * 1024];
    let head_end = loop {
        if let Some(e) = find_head_end(&buf) {
            break e;
        }
        if buf.len() > MAX_HEAD {
            return Err(Error::new(ErrorKind::InvalidData, "head too large"));
        }
        let n = timed(s.read(&mut chunk)).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let chunked = header(&head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return Err(Error::new(
            ErrorKind::InvalidData,
            "chunked bodies are not relayed",
        ));
    }
    let len = match header(&head, "content-length") {
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| Error::new(ErrorKind::InvalidData, "bad content-length"))?,
        None => {
            let status = head.split(' ').nth(1).unwrap_or("");
            if response && !matches!(status, "204" | "304") && !status.starts_with('1') {
                return Err(Error::new(
                    ErrorKind::InvalidData,
                    "response without length",
                ));
            }
            0
        }
    };
    if len > MAX_BODY {
        return Err(Error::new(ErrorKind::InvalidData, "body too large"));
    }
    let total = head_end + len;
    while buf.len() < total {
        let n = timed(s.read(&mut chunk)).await?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    *carry = buf.split_off(total);
    Ok(Some(Message { bytes: buf }))
}

/// Resets `s`: `SO_LINGER` 0 makes the close send an RST.
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    faults: ProxyFaults,
    mut rng: Rng,
    counts: Arc<ProxyCounts>,
) {
    let _ = client.set_nodelay(true);
    let mut server: Option<TcpStream> = None;
    let (mut c_carry, mut s_carry) = (Vec::new(), Vec::new());
    // The last 200 relayed on this connection, for `replay`.
    let mut last_ok: Option<Vec<u8>> = None;
    // Bounded: a keep-alive connection carries at most this many exchanges.
    for _ in 0..100_000 {
        let req = match read_message(&mut client, &mut c_carry, false).await {
            Ok(Some(m)) => m,
            _ => return,
        };
        counts.exchanges.fetch_add(1, Relaxed);
        let roll = rng.f64();
        let (p_drop, p_delay, p_cut) = (
            faults.drop,
            faults.drop + faults.delay,
            faults.drop + faults.delay + faults.cut,
        );
        let p_reset = p_cut + faults.reset;
        let p_forge = p_reset + faults.forge;
        let p_replay = p_forge + faults.replay;
        if roll < p_drop {
            counts.dropped.fetch_add(1, Relaxed);
            return; // closes the client connection: nothing forwarded
        }
        if roll < p_delay {
            counts.delayed.fetch_add(1, Relaxed);
            let max = faults.delay_max.as_millis() as u64;
            tokio::time::sleep(Duration::from_millis(rng.range(0, max))).await;
        }
        if server.is_none() {
            match timed(TcpStream::connect(upstream)).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    server = Some(s);
                }
                Err(_) => {
                    counts.upstream_errors.fetch_add(1, Relaxed);
                    reset(client);
                    return;
                }
            }
        }
        let Some(up) = server.as_mut() else { return };
        if timed(up.write_all(&req.bytes)).await.is_err() {
            counts.upstream_errors.fetch_add(1, Relaxed);
            reset(client);
            return;
        }
        let resp = match read_message(up, &mut s_carry, true).await {
            Ok(Some(m)) => m,
            _ => {
                counts.upstream_errors.fetch_add(1, Relaxed);
                reset(client);
                return;
            }
        };
        if roll >= p_delay && roll < p_reset {
            // A strict prefix: the client never gets a complete response.
            let keep = rng.range(0, resp.bytes.len().saturating_sub(1) as u64) as usize;
            let _ = timed(client.write_all(&resp.bytes[..keep])).await;
            if roll < p_cut {
                counts.cut.fetch_add(1, Relaxed);
                let _ = client.shutdown().await;
            } else {
                counts.reset.fetch_add(1, Relaxed);
                reset(client);
            }
            return;
        }
        let answer = if roll >= p_reset && roll < p_forge {
            counts.forged.fetch_add(1, Relaxed);
            FORGED_409.to_vec()
        } else if roll >= p_forge && roll < p_replay && last_ok.is_some() {
            counts.replayed.fetch_add(1, Relaxed);
            last_ok.clone().unwrap_or_default()
        } else {
            counts.relayed.fetch_add(1, Relaxed);
            if resp.bytes.starts_with(b"HTTP/1.1 200") {
                last_ok = Some(resp.bytes.clone());
            }
            resp.bytes
        };
        if timed(client.write_all(&answer)).await.is_err() {
            return;
        }
    }
}

/// What an attacker on a plaintext hop would send to wedge a device: a `409`
/// naming the largest sequence, without the server's signature.
const FORGED_409: &[u8] = b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: 58\r\n\r\n{\"error\":\"stale_sequence\",\"last_seq\":18446744073709551614}";

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789";

    /// An upstream that answers every request with `RESPONSE` and counts
    /// the requests it received.
    async fn upstream() -> (SocketAddr, Arc<AtomicU64>) {
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let s2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let seen = s2.clone();
                tokio::spawn(async move {
                    let mut carry = Vec::new();
                    while let Ok(Some(_)) = read_message(&mut s, &mut carry, false).await {
                        seen.fetch_add(1, Relaxed);
                        if s.write_all(RESPONSE).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    /// Sends one request and reads until the proxy closes: the bytes that
    /// came back, and whether the read ended in an error (a reset).
    async fn exchange(proxy: SocketAddr) -> (Vec<u8>, bool) {
        exchange_until(proxy, RESPONSE.len()).await
    }

    /// As [`exchange`], reading until `want` bytes came back (or the end).
    async fn exchange_until(proxy: SocketAddr, want: usize) -> (Vec<u8>, bool) {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match timed(s.read(&mut buf)).await {
                Ok(0) => return (got, false),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.len() >= want {
                        return (got, false);
                    }
                }
                Err(_) => return (got, true),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_fault_does_what_it_says() {
        let (up, seen) = upstream().await;
        let only = |f: &dyn Fn(&mut ProxyFaults)| {
            let mut p = ProxyFaults {
                delay_max: Duration::from_millis(5),
                ..ProxyFaults::default()
            };
            f(&mut p);
            p
        };
        // No faults: the full response, relayed.
        let p = FaultProxy::start(up, ProxyFaults::default(), 1)
            .await
            .unwrap();
        assert_eq!(exchange(p.addr()).await.0, RESPONSE);
        assert_eq!(p.totals().relayed, 1);
        // Drop: nothing back, the server never saw it.
        let before = seen.load(Relaxed);
        let p = FaultProxy::start(up, only(&|f| f.drop = 1.0), 1)
            .await
            .unwrap();
        for _ in 0..5 {
            assert!(exchange(p.addr()).await.0.is_empty());
        }
        assert_eq!(seen.load(Relaxed), before, "dropped requests reach nobody");
        assert_eq!(p.totals().dropped, 5);
        // Delay: the full response.
        let p = FaultProxy::start(up, only(&|f| f.delay = 1.0), 1)
            .await
            .unwrap();
        assert_eq!(exchange(p.addr()).await.0, RESPONSE);
        assert_eq!(p.totals().delayed, 1);
        // Cut and reset: the server saw every request, the client never
        // got a whole response.
        for kind in ["cut", "reset"] {
            let before = seen.load(Relaxed);
            let f = if kind == "cut" {
                only(&|f| f.cut = 1.0)
            } else {
                only(&|f| f.reset = 1.0)
            };
            let p = FaultProxy::start(up, f, 7).await.unwrap();
            for _ in 0..20 {
                let (got, _) = exchange(p.addr()).await;
                assert!(got.len() < RESPONSE.len(), "{kind}: {got:?}");
                assert_eq!(&RESPONSE[..got.len()], &got[..], "{kind}: a prefix");
            }
            assert_eq!(seen.load(Relaxed), before + 20, "{kind}: forwarded");
            let t = p.totals();
            assert_eq!(if kind == "cut" { t.cut } else { t.reset }, 20);
        }
        // Forge: the server saw the request, the client got the forged 409.
        let before = seen.load(Relaxed);
        let p = FaultProxy::start(up, only(&|f| f.forge = 1.0), 3)
            .await
            .unwrap();
        assert_eq!(
            exchange_until(p.addr(), FORGED_409.len()).await.0,
            FORGED_409
        );
        assert_eq!(seen.load(Relaxed), before + 1, "forge: forwarded");
        assert_eq!(p.totals().forged, 1);
        // Replay with nothing to replay yet (a new connection): relayed.
        let p = FaultProxy::start(up, only(&|f| f.replay = 1.0), 3)
            .await
            .unwrap();
        assert_eq!(exchange(p.addr()).await.0, RESPONSE);
        assert_eq!((p.totals().replayed, p.totals().relayed), (0, 1));
    }
}
