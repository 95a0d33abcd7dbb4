//! # omega-tv-sync-embassy
//!
//! The [`omega_tv_sync::Transport`] for firmware: HTTP/1.1 over an
//! [embassy-net](https://docs.rs/embassy-net) TCP socket, with responses
//! parsed by [reqwless](https://docs.rs/reqwless). `#![no_std]`, no heap, no
//! `unsafe`.
//!
//! ## Memory: everything is passed in
//! The caller owns every byte the transport touches, as [`Buffers`]:
//!
//! | buffer | holds | size |
//! |---|---|---|
//! | `tcp_rx` | the TCP receive window | >= 536 B; [`RECOMMENDED_TCP_BUFFER`] (1024 B) is enough for a sync, more only raises throughput |
//! | `tcp_tx` | unacknowledged request bytes | >= 536 B; [`RECOMMENDED_TCP_BUFFER`] |
//! | `header` | the response status line and headers, plus whatever body bytes arrive in the same segments (they are then served from here before the socket) | >= the longest response head the server sends; [`RECOMMENDED_HEADER_BUFFER`] (1024 B) |
//! | `response_buf` (per call) | the decoded response body (chunked encoding removed) | >= the largest body the server may send; the sync client sizes it from the frame bounds |
//!
//! Nothing is truncated: a response head that does not fit `header` is
//! [`Error::HeaderTooLarge`], a body that does not fit `response_buf` is
//! [`Error::ResponseTooLarge`] (detected from `Content-Length` before a byte
//! of body is read, or by a one-byte probe once the buffer is full for
//! chunked and close-delimited bodies).
//!
//! The future of [`EmbassyTransport::send`] also lives on the caller's stack
//! or in its task arena: 552 B on a Cortex-M4, and the sync client's
//! `exchange` future over it 832 B (4,208 B and 4,488 B with TLS). reqwless
//! parses headers into two 64-entry arrays on the stack during a poll; the
//! sync task's deepest poll is 12.8 KB, most of it the core's `apply`. See
//! `docs/memory.md` (measured under QEMU by `examples/cortex-m`, feature
//! `net`).
//!
//! ## Connections
//! One TCP connection per request, closed afterwards (`Connection: close`).
//! A set-top box syncs every 5-15 minutes; keeping a socket open between syncs
//! would pin the buffers and survive NAT timeouts only by luck. Name
//! resolution is the caller's: the transport connects to an
//! [`embassy_net::IpEndpoint`] and sends the configured `Host` header.
//!
//! ## Timeouts
//! [`Config::timeout`] bounds the whole exchange (connect, request, response);
//! the socket's inactivity timeout is set to the same value. On expiry the
//! connection is aborted and [`Error::Timeout`] returned.
//!
//! ## TLS (feature `tls`)
//! `EmbassyTlsTransport` runs the same [`exchange`] inside a TLS 1.3
//! session with a pre-shared key (embedded-tls 0.19,
//! `TLS_AES_128_GCM_SHA256`, an ephemeral P-256 key exchange, no
//! certificate parsing on the device). It needs two more caller buffers for
//! TLS records; a read buffer smaller than a full record (16,645 B) makes it
//! ask the server for smaller records (`max_fragment_length`). See the
//! `tls` module for the sizes, and `docs/memory.md` for the figures.
//!
//! ## Features
//! | feature | effect |
//! |---|---|
//! | `defmt` | `defmt::Format` for [`Error`]; a `debug` line per exchange (a `warn` line per failed TLS handshake) through defmt |
//! | `log` | the same lines through the `log` crate |
//! | `tls` | `EmbassyTlsTransport`: TLS 1.3 with a pre-shared key |
//! | `proto-ipv4`, `proto-ipv6`, `medium-ethernet`, `medium-ip` (default: all) | the embassy-net protocols and media; an IPv4-only firmware takes `default-features = false` and `proto-ipv4` with its medium: 29 KB less flash on Cortex-M4 (`docs/memory.md`) |
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[macro_use]
mod fmt;

mod http;
#[cfg(feature = "tls")]
pub mod tls;

use embassy_net::tcp::TcpSocket;
use embassy_net::{IpEndpoint, Stack};
use embassy_time::{with_timeout, Duration};
use omega_tv_sync::{Request, Response, Transport};

pub use http::exchange;
#[cfg(feature = "tls")]
pub use tls::{EmbassyTlsTransport, Psk, TlsBuffers};

/// Recommended size of each TCP buffer (`tcp_rx`, `tcp_tx`).
pub const RECOMMENDED_TCP_BUFFER: usize = 1024;
/// Recommended size of the response-head buffer.
pub const RECOMMENDED_HEADER_BUFFER: usize = 1024;
/// Default bound on one whole exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Everything that can go wrong in one exchange.
///
/// Grouped like the core's error: *transport* (the network failed: retry
/// later), *resource* (a caller buffer is too small: retrying the same
/// request will fail the same way) and *peer* (the server's bytes are not
/// HTTP this transport understands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    // ---- transport ----
    /// The TCP connection could not be opened (refused, no route, timed out).
    Connect,
    /// A read or write on the connection failed.
    Network(embedded_io_async::ErrorKind),
    /// The peer closed the connection before the response was complete.
    ConnectionClosed,
    /// The exchange took longer than [`Config::timeout`].
    Timeout,
    /// The TLS handshake failed: the server refused the pre-shared key (a
    /// wrong key or identity), is not a TLS 1.3 PSK server, or sent a
    /// record larger than the read buffer. Feature `tls` only.
    Tls,

    // ---- resource ----
    /// The response head (status line + headers) does not fit the header
    /// buffer.
    HeaderTooLarge,
    /// The response body is larger than the caller's response buffer.
    /// `limit` is the buffer's length; nothing was truncated.
    ResponseTooLarge {
        /// Size of the caller's buffer.
        limit: usize,
    },
    /// The request line and headers do not fit the TCP transmit path, or a
    /// request field is not valid HTTP (a path that does not start with `/`,
    /// a header holding CR, LF or NUL).
    InvalidRequest,
    /// A TLS record buffer is below its minimum (see the `tls` module).
    /// Feature `tls` only.
    TlsBufferTooSmall,

    // ---- peer ----
    /// The response is not valid HTTP/1.1 (bad status line, bad chunk
    /// framing, bad `Content-Length`, too many headers).
    Protocol,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Connect => f.write_str("connect failed"),
            Error::Network(k) => write!(f, "network error: {k:?}"),
            Error::ConnectionClosed => f.write_str("connection closed early"),
            Error::Timeout => f.write_str("timed out"),
            Error::Tls => f.write_str("TLS handshake failed"),
            Error::HeaderTooLarge => f.write_str("response head larger than the header buffer"),
            Error::ResponseTooLarge { limit } => {
                write!(f, "response body larger than the {limit} B buffer")
            }
            Error::InvalidRequest => f.write_str("invalid request"),
            Error::TlsBufferTooSmall => f.write_str("TLS record buffer too small"),
            Error::Protocol => f.write_str("malformed HTTP response"),
        }
    }
}

impl core::error::Error for Error {}

impl Error {
    /// True when a bigger caller buffer would have made the exchange work.
    pub const fn is_resource(self) -> bool {
        matches!(
            self,
            Error::HeaderTooLarge
                | Error::ResponseTooLarge { .. }
                | Error::InvalidRequest
                | Error::TlsBufferTooSmall
        )
    }
}

/// Where to connect and how long to wait.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a> {
    /// The server's address and port.
    pub remote: IpEndpoint,
    /// The `Host` header value, e.g. `sync.example.com` or `10.0.0.1:8080`.
    pub host: &'a str,
    /// Bound on one whole exchange, also used as the socket's inactivity
    /// timeout. Default [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
}

impl<'a> Config<'a> {
    /// A configuration with the default timeout.
    pub const fn new(remote: IpEndpoint, host: &'a str) -> Self {
        Config {
            remote,
            host,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The caller's memory for the transport; see the crate docs for sizes.
pub struct Buffers<'b> {
    /// TCP receive buffer.
    pub tcp_rx: &'b mut [u8],
    /// TCP transmit buffer.
    pub tcp_tx: &'b mut [u8],
    /// Response status line and headers.
    pub header: &'b mut [u8],
}

/// HTTP over one embassy-net TCP connection per request.
///
/// ```ignore
/// let mut rx = [0; RECOMMENDED_TCP_BUFFER];
/// let mut tx = [0; RECOMMENDED_TCP_BUFFER];
/// let mut hdr = [0; RECOMMENDED_HEADER_BUFFER];
/// let mut t = EmbassyTransport::new(stack, Config::new(server, "tv-sync.local"),
///     Buffers { tcp_rx: &mut rx, tcp_tx: &mut tx, header: &mut hdr });
/// let resp = t.send(request, &mut body_buf).await?;
/// ```
pub struct EmbassyTransport<'d, 'b> {
    stack: Stack<'d>,
    config: Config<'b>,
    buffers: Buffers<'b>,
}

impl<'d, 'b> EmbassyTransport<'d, 'b> {
    /// A transport that sends through `stack` with the caller's `buffers`.
    pub fn new(stack: Stack<'d>, config: Config<'b>, buffers: Buffers<'b>) -> Self {
        EmbassyTransport {
            stack,
            config,
            buffers,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config<'b> {
        &self.config
    }

    async fn send_inner(
        &mut self,
        request: Request<'_>,
        response_buf: &mut [u8],
    ) -> Result<Response, Error> {
        let mut socket = TcpSocket::new(
            self.stack,
            &mut *self.buffers.tcp_rx,
            &mut *self.buffers.tcp_tx,
        );
        socket.set_timeout(Some(self.config.timeout));
        let result = async {
            socket
                .connect(self.config.remote)
                .await
                .map_err(|_| Error::Connect)?;
            exchange(
                &mut socket,
                self.config.host,
                request,
                &mut *self.buffers.header,
                response_buf,
            )
            .await
        }
        .await;
        close(&mut socket, result.is_ok()).await;
        debug!(
            "{:?} {} -> {:?}",
            request.method,
            request.path,
            result.as_ref().map(|r| (r.status, r.body_len))
        );
        result
    }
}

/// Closes `socket`: a graceful FIN after a complete exchange (bounded to
/// 1 s), an abort otherwise, so the next request starts from a clean socket.
async fn close(socket: &mut TcpSocket<'_>, graceful: bool) {
    if graceful {
        socket.close();
    } else {
        socket.abort();
    }
    let _ = with_timeout(Duration::from_secs(1), socket.flush()).await;
    socket.abort();
}

impl Transport for EmbassyTransport<'_, '_> {
    type Error = Error;

    async fn send(
        &mut self,
        request: Request<'_>,
        response_buf: &mut [u8],
    ) -> Result<Response, Error> {
        let timeout = self.config.timeout;
        match with_timeout(timeout, self.send_inner(request, response_buf)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        }
    }
}
