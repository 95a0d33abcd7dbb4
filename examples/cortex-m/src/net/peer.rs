//! The peer on stack B: a tiny HTTP server that checks each request
//! against what the host recorded and answers with the recorded response.
//!
//! For each entry of [`RUNS`] it accepts one connection on [`PEER_PORT`],
//! reads the request head and body, and checks: `POST /api/v1/sync
//! HTTP/1.1`; exactly the headers `Host`, `Connection: close`,
//! `Content-Type: application/octet-stream`, `Content-Length`,
//! `X-Device-ID`, `X-Sync-Version: 0` and `Authorization` (byte-identical
//! to the signature the host's client computed), each once; and a body
//! byte-identical to the recorded upload. It then answers `200 OK` with the
//! recorded response frame, framed as the run says (`Content-Length` or
//! chunked), or `400 Bad Request` on any mismatch (the device then fails
//! its checks too). With feature `tls` a third connection receives the TLS
//! transport's ClientHello, which is parsed and checked, and answered as a
//! plain HTTP server answers garbage: `400 Bad Request`; with feature
//! `tls-peer` a fourth is served by the TLS peer (`tls_peer.rs`): handshake,
//! then the same checks on the request inside the session.

use embassy_net::tcp::TcpSocket;
use embassy_net::Stack;
use embassy_time::{with_timeout, Duration};
use embedded_io_async::Write;
use omega_tv_sync::ascii::{fmt_u64, U64_DIGITS};

use crate::device::Shared;
use crate::runs::{Framing, Run, CHUNK, HOST, PEER_PORT, RUNS};

/// TCP buffers of the peer's socket.
const TCP: usize = 2048;
/// Holds one request (head and an upload of up to 3.5 KB).
const REQUEST: usize = 4096;

/// The peer's memory, static.
pub struct Memory {
    tcp_rx: [u8; TCP],
    tcp_tx: [u8; TCP],
    request: [u8; REQUEST],
    /// TLS: one incoming record (the device writes records of at most
    /// 1 KiB plus overhead).
    #[cfg(feature = "tls-peer")]
    record: [u8; TCP],
    /// TLS: one outgoing record.
    #[cfg(feature = "tls-peer")]
    out: [u8; TCP],
}

impl Memory {
    /// All zero (const: `.bss`).
    pub const fn new() -> Self {
        Memory {
            tcp_rx: [0; TCP],
            tcp_tx: [0; TCP],
            request: [0; REQUEST],
            #[cfg(feature = "tls-peer")]
            record: [0; TCP],
            #[cfg(feature = "tls-peer")]
            out: [0; TCP],
        }
    }
}

/// What the peer saw.
pub struct Report {
    /// Per run: `Ok` when the request was exactly the recorded one (and the
    /// response went out), else what was wrong.
    pub http: [Result<(), &'static str>; RUNS.len()],
    /// The ClientHello of the TLS attempt against the plain server.
    #[cfg(feature = "tls")]
    pub hello: Result<Hello, &'static str>,
    /// The TLS session (full handshake and a sync inside it).
    #[cfg(feature = "tls-peer")]
    pub tls: crate::tls_peer::Outcome,
}

/// Serves every connection of the run, in order.
pub async fn serve(stack: Stack<'static>, m: &'static mut Memory, shared: &Shared) -> Report {
    let mut http = [Err("not served"); RUNS.len()];
    for (k, run) in RUNS.iter().enumerate() {
        let Memory {
            tcp_rx,
            tcp_tx,
            request,
            ..
        } = &mut *m;
        let mut s = TcpSocket::new(stack, tcp_rx, tcp_tx);
        http[k] = match accept(&mut s, shared).await {
            Ok(()) => http_exchange(&mut s, request, run).await,
            Err(e) => Err(e),
        };
        finish(&mut s, request).await;
    }
    #[cfg(feature = "tls")]
    let hello = {
        let Memory {
            tcp_rx,
            tcp_tx,
            request,
            ..
        } = &mut *m;
        let mut s = TcpSocket::new(stack, tcp_rx, tcp_tx);
        let hello = match accept(&mut s, shared).await {
            Ok(()) => client_hello(&mut s, request).await,
            Err(e) => Err(e),
        };
        finish(&mut s, request).await;
        hello
    };
    #[cfg(feature = "tls-peer")]
    let tls = {
        let Memory {
            tcp_rx,
            tcp_tx,
            request,
            record,
            out,
        } = &mut *m;
        let mut s = TcpSocket::new(stack, tcp_rx, tcp_tx);
        let outcome = match accept(&mut s, shared).await {
            Ok(()) => crate::tls_peer::serve(&mut s, record, out, request, &RUNS[0]).await,
            Err(e) => crate::tls_peer::Outcome {
                hello: Err(e),
                client_finished: false,
                http: Err(e),
            },
        };
        finish(&mut s, request).await;
        outcome
    };
    Report {
        http,
        #[cfg(feature = "tls")]
        hello,
        #[cfg(feature = "tls-peer")]
        tls,
    }
}

/// Listens on [`PEER_PORT`] and waits (bounded) for one connection.
async fn accept(s: &mut TcpSocket<'_>, shared: &Shared) -> Result<(), &'static str> {
    s.set_timeout(Some(Duration::from_secs(10)));
    shared.listening.set(shared.listening.get() + 1);
    match with_timeout(Duration::from_secs(60), s.accept(PEER_PORT)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("accept failed"),
        Err(_) => Err("no connection within 60 s"),
    }
}

/// Closes the connection: a FIN, whatever the device still sends is read
/// and dropped (bounded), then the socket is reset so that the next
/// connection starts from a closed one.
async fn finish(s: &mut TcpSocket<'_>, scratch: &mut [u8]) {
    s.close();
    let _ = with_timeout(Duration::from_secs(2), async {
        while let Ok(1..) = s.read(scratch).await {}
    })
    .await;
    s.abort();
    let _ = with_timeout(Duration::from_secs(1), s.flush()).await;
}

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Reads and checks one sync request, then answers it.
async fn http_exchange(
    s: &mut TcpSocket<'_>,
    buf: &mut [u8],
    run: &Run,
) -> Result<(), &'static str> {
    let verdict = read_request(s, buf, run).await;
    let sent = match verdict {
        Ok(()) => respond(s, run).await,
        Err(_) => write(s, BAD_REQUEST).await,
    };
    verdict.and(sent)
}

async fn read_request(
    s: &mut TcpSocket<'_>,
    buf: &mut [u8],
    run: &Run,
) -> Result<(), &'static str> {
    let mut n = 0;
    loop {
        if let Some(end) = complete(&buf[..n], run)? {
            if n >= end {
                return body_ok(&buf[..n], end, run);
            }
        }
        n += read_some(s, buf, n).await?;
    }
}

/// The request's total length once its head has arrived (and passed
/// [`check_head`]); `None` while the head is incomplete.
pub fn complete(buf: &[u8], run: &Run) -> Result<Option<usize>, &'static str> {
    let Some(p) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let end = p + 4 + check_head(&buf[..p + 4], run)?;
    Ok(Some(end))
}

/// The complete request `buf` (`end` bytes long) carries the recorded
/// upload as its body, and nothing after it.
pub fn body_ok(buf: &[u8], end: usize, run: &Run) -> Result<(), &'static str> {
    if buf.len() != end {
        return Err("bytes after the request body");
    }
    let body = end
        .checked_sub(run.upload.len())
        .and_then(|start| buf.get(start..end));
    if body != Some(run.upload) {
        return Err("body differs from the recorded upload");
    }
    Ok(())
}

/// Reads more bytes into `buf[n..]`.
async fn read_some(s: &mut TcpSocket<'_>, buf: &mut [u8], n: usize) -> Result<usize, &'static str> {
    let rest = buf.get_mut(n..).filter(|r| !r.is_empty());
    let rest = rest.ok_or("request larger than the peer's buffer")?;
    match s.read(rest).await {
        Ok(0) => Err("connection closed before the request ended"),
        Ok(k) => Ok(k),
        Err(_) => Err("read failed"),
    }
}

/// Checks the request line and headers; returns the body length.
fn check_head(head: &[u8], run: &Run) -> Result<usize, &'static str> {
    let head = core::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let path = line
        .strip_prefix("POST ")
        .and_then(|l| l.strip_suffix(" HTTP/1.1"));
    if path != Some(omega_tv_sync::sync::SYNC_PATH) {
        return Err("request line is not POST /api/v1/sync HTTP/1.1");
    }
    let device = crate::scenario::config(false).map_err(|_| "config")?;
    let auth = core::str::from_utf8(run.auth).map_err(|_| "recorded auth")?;
    let mut digits = [0u8; U64_DIGITS];
    let length = fmt_u64(run.upload.len() as u64, &mut digits);
    let expected: [(&str, &str); 7] = [
        ("Host", HOST),
        ("Connection", "close"),
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", length),
        ("X-Device-ID", device.device_id.as_str()),
        ("X-Sync-Version", "0"),
        ("Authorization", auth),
    ];
    let mut seen = [false; 7];
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or("header line without a colon")?;
        let i = expected
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
            .ok_or("unexpected header")?;
        if seen[i] {
            return Err("header sent twice");
        }
        seen[i] = true;
        if value.trim_matches(' ') != expected[i].1 {
            return Err(match i {
                0 => "wrong Host",
                1 => "wrong Connection",
                2 => "wrong Content-Type",
                3 => "wrong Content-Length",
                4 => "wrong X-Device-ID",
                5 => "wrong X-Sync-Version",
                _ => "Authorization differs from the host's signature",
            });
        }
    }
    if seen.iter().all(|&s| s) {
        Ok(run.upload.len())
    } else {
        Err("a header is missing")
    }
}

/// `200 OK` with the recorded response, framed as the run says.
async fn respond(s: &mut TcpSocket<'_>, run: &Run) -> Result<(), &'static str> {
    let body = run.response;
    write(
        s,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n",
    )
    .await?;
    write(s, b"X-OTS-Signature: ").await?;
    write(s, run.sig).await?;
    write(s, b"\r\n").await?;
    match run.framing {
        Framing::Length => {
            let mut digits = [0u8; U64_DIGITS];
            write(s, b"Content-Length: ").await?;
            write(s, fmt_u64(body.len() as u64, &mut digits).as_bytes()).await?;
            write(s, b"\r\nConnection: close\r\n\r\n").await?;
            write(s, body).await?;
        }
        Framing::Chunked => {
            write(
                s,
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            )
            .await?;
            for chunk in body.chunks(CHUNK) {
                let mut digits = [0u8; 16];
                write(s, hex(chunk.len(), &mut digits)).await?;
                write(s, b"\r\n").await?;
                write(s, chunk).await?;
                write(s, b"\r\n").await?;
            }
            write(s, b"0\r\n\r\n").await?;
        }
    }
    s.flush().await.map_err(|_| "flush failed")
}

async fn write(s: &mut TcpSocket<'_>, bytes: &[u8]) -> Result<(), &'static str> {
    s.write_all(bytes).await.map_err(|_| "write failed")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// What the peer found in the TLS transport's ClientHello.
#[cfg(feature = "tls")]
#[derive(Debug, Default, Clone, Copy)]
pub struct Hello {
    /// Bytes of the record (header included).
    pub len: usize,
    /// `supported_versions` offers TLS 1.3 (0x0304).
    pub tls13: bool,
    /// `TLS_AES_128_GCM_SHA256` is among the cipher suites.
    pub aes128gcm: bool,
    /// A `key_share` entry for secp256r1 with a 65-byte uncompressed point.
    pub p256_share: bool,
    /// `psk_key_exchange_modes` offers `psk_dhe_ke`.
    pub psk_dhe: bool,
    /// `pre_shared_key` names the device id as its identity.
    pub psk_identity: bool,
    /// The `max_fragment_length` code (4 = 2^12 = 4 KiB), if sent.
    pub max_fragment: Option<u8>,
}

/// Key material of a ClientHello, for the TLS peer.
#[cfg(feature = "tls")]
#[cfg_attr(not(feature = "tls-peer"), allow(dead_code))]
pub struct HelloKeys {
    /// x-coordinate of the P-256 key share.
    pub share_x: [u8; 32],
    /// `legacy_session_id`, echoed by the server.
    pub session_id: [u8; 32],
    /// Its length.
    pub session_id_len: usize,
    /// The `max_fragment_length` code, if sent.
    pub max_fragment: Option<u8>,
}

/// Reads one TLS record (bounded by the buffer) and parses the ClientHello
/// in it; then answers `400 Bad Request`, as an HTTP server would.
#[cfg(feature = "tls")]
async fn client_hello(s: &mut TcpSocket<'_>, buf: &mut [u8]) -> Result<Hello, &'static str> {
    let mut n = 0;
    let end = loop {
        if n >= 5 {
            let end = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
            if n >= end {
                break end;
            }
        }
        n += read_some(s, buf, n).await?;
    };
    let hello = parse_client_hello(&buf[..end])
        .map(|(h, _)| h)
        .ok_or("not a ClientHello record");
    write(s, BAD_REQUEST).await?;
    let _ = s.flush().await;
    hello
}

#[cfg(feature = "tls")]
struct Cursor<'a>(&'a [u8]);

#[cfg(feature = "tls")]
impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// Parses a TLS record holding a ClientHello (RFC 8446 4.1.2).
#[cfg(feature = "tls")]
pub fn parse_client_hello(record: &[u8]) -> Option<(Hello, HelloKeys)> {
    let identity = crate::scenario::config(false).ok()?.device_id;
    let mut h = Hello {
        len: record.len(),
        ..Hello::default()
    };
    let mut k = HelloKeys {
        share_x: [0; 32],
        session_id: [0; 32],
        session_id_len: 0,
        max_fragment: None,
    };
    let mut r = Cursor(record);
    // Record header: handshake (22), legacy version, length.
    (r.u8()? == 22).then_some(())?;
    r.u16()?;
    let mut body = Cursor(r.vec16()?);
    (body.u8()? == 1).then_some(())?; // client_hello
    let n = body.u24()?;
    let mut ch = Cursor(body.take(n)?);
    ch.u16()?; // legacy_version
    ch.take(32)?; // random
    let sid = ch.vec8()?; // legacy_session_id
    k.session_id.get_mut(..sid.len())?.copy_from_slice(sid);
    k.session_id_len = sid.len();
    let suites = ch.vec16()?;
    h.aes128gcm = suites.chunks_exact(2).any(|s| s == [0x13, 0x01]);
    ch.vec8()?; // legacy_compression_methods
    let mut exts = Cursor(ch.vec16()?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let mut data = Cursor(exts.vec16()?);
        match kind {
            1 => h.max_fragment = Some(data.u8()? as u8),
            43 => {
                let v = data.vec8()?;
                h.tls13 = v.chunks_exact(2).any(|v| v == [0x03, 0x04]);
            }
            45 => h.psk_dhe = data.vec8()?.contains(&1),
            51 => {
                let mut shares = Cursor(data.vec16()?);
                while !shares.0.is_empty() {
                    let group = shares.u16()?;
                    let key = shares.vec16()?;
                    if group == 0x0017 && key.len() == 65 && key[0] == 4 {
                        h.p256_share = true;
                        k.share_x.copy_from_slice(&key[1..33]);
                    }
                }
            }
            41 => {
                let mut ids = Cursor(data.vec16()?);
                while !ids.0.is_empty() {
                    let id = ids.vec16()?;
                    ids.take(4)?; // obfuscated_ticket_age
                    h.psk_identity |= id == identity.as_str().as_bytes();
                }
            }
            _ => {}
        }
    }
    k.max_fragment = h.max_fragment;
    Some((h, k))
}
