//! # omega-tv-sync-http
//!
//! The std transport: [`omega_tv_sync::Transport`] over HTTP/1.1 with hyper,
//! for set-top boxes that run Linux and for host tools and tests.
//!
//! - Connections are kept alive and reused (one pool per [`HttpTransport`]).
//! - Every exchange has a deadline, 30 s by default ([`HttpTransport::with_timeout`]).
//! - The response body is written into the caller's buffer; a body larger
//!   than the buffer is [`HttpError::TooLarge`], never truncated.
//! - `Retry-After` (delay in seconds) is parsed into
//!   [`Response::retry_after_s`](omega_tv_sync::Response) by the core's
//!   [`parse_retry_after`](omega_tv_sync::transport::parse_retry_after), as
//!   the embassy transport does: a value above `u32::MAX` saturates; the
//!   HTTP-date form is not used by Constellation and reads as absent.
//!
//! Needs a tokio runtime.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use omega_tv_sync::transport::parse_retry_after;
use omega_tv_sync::{Method, Request, Response, Transport};

/// Default deadline of one exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong in an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The base URL or a request path/header is not valid.
    InvalidRequest(String),
    /// Connecting, sending or receiving failed.
    Io(String),
    /// No complete response within the deadline.
    Timeout,
    /// The response body does not fit the caller's buffer (`needed` is the
    /// announced length, or a lower bound when none was announced).
    TooLarge {
        /// Bytes the body needs, at least.
        needed: usize,
        /// Bytes the buffer holds.
        capacity: usize,
    },
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::InvalidRequest(s) => write!(f, "invalid request: {s}"),
            HttpError::Io(s) => write!(f, "transport: {s}"),
            HttpError::Timeout => f.write_str("timed out"),
            HttpError::TooLarge { needed, capacity } => {
                write!(
                    f,
                    "response of {needed}+ bytes exceeds the {capacity}-byte buffer"
                )
            }
        }
    }
}

impl std::error::Error for HttpError {}

/// An HTTP/1.1 transport to one server.
#[derive(Clone, Debug)]
pub struct HttpTransport {
    scheme: String,
    authority: String,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl HttpTransport {
    /// A transport to `base_url`, e.g. `http://127.0.0.1:8080` (path ignored;
    /// `http` only: TLS is terminated in front of the server or left to
    /// another transport).
    pub fn new(base_url: &str) -> Result<Self, HttpError> {
        let uri: Uri = base_url
            .parse()
            .map_err(|e| HttpError::InvalidRequest(format!("{base_url}: {e}")))?;
        let scheme = uri.scheme_str().unwrap_or("http").to_string();
        if scheme != "http" {
            return Err(HttpError::InvalidRequest(format!(
                "scheme {scheme} is not supported"
            )));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| HttpError::InvalidRequest(format!("{base_url}: no host")))?
            .to_string();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(DEFAULT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(HttpTransport {
            scheme,
            authority,
            client,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the deadline of one exchange (connect, send, receive).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The deadline of one exchange.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn build(&self, request: &Request<'_>) -> Result<hyper::Request<Full<Bytes>>, HttpError> {
        let uri = format!("{}://{}{}", self.scheme, self.authority, request.path);
        let mut b = hyper::Request::builder()
            .method(match request.method {
                Method::Get => hyper::Method::GET,
                Method::Post => hyper::Method::POST,
            })
            .uri(uri);
        let mut has_ct = false;
        for (k, v) in request.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| HttpError::InvalidRequest(format!("header {k}: {e}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| HttpError::InvalidRequest(format!("header {k}: {e}")))?;
            has_ct |= name == CONTENT_TYPE;
            b = b.header(name, value);
        }
        if !request.body.is_empty() && !has_ct {
            b = b.header(CONTENT_TYPE, "application/octet-stream");
        }
        b.body(Full::new(Bytes::copy_from_slice(request.body)))
            .map_err(|e| HttpError::InvalidRequest(e.to_string()))
    }

    async fn exchange(
        &self,
        req: hyper::Request<Full<Bytes>>,
        buf: &mut [u8],
    ) -> Result<Response, HttpError> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| HttpError::Io(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let retry_after_s = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| parse_retry_after(v.as_bytes()));
        let signature = resp
            .headers()
            .get(omega_tv_sync::transport::auth::RESPONSE_HEADER)
            .and_then(|v| omega_tv_sync::transport::auth::parse_response_header(v.as_bytes()));
        let capacity = buf.len();
        if let Some(n) = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
        {
            if n > capacity {
                return Err(HttpError::TooLarge {
                    needed: n,
                    capacity,
                });
            }
        }
        let mut body = resp.into_body();
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| HttpError::Io(error_chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                let end = len + data.len();
                let dst = buf.get_mut(len..end).ok_or(HttpError::TooLarge {
                    needed: end,
                    capacity,
                })?;
                dst.copy_from_slice(&data);
                len = end;
            }
        }
        Ok(Response {
            status,
            body_len: len,
            retry_after_s,
            signature,
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

impl Transport for HttpTransport {
    type Error = HttpError;

    async fn send(
        &mut self,
        request: Request<'_>,
        response_buf: &mut [u8],
    ) -> Result<Response, HttpError> {
        let req = self.build(&request)?;
        match tokio::time::timeout(self.timeout, self.exchange(req, response_buf)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot HTTP server that answers every connection with `reply`.
    async fn serve(reply: &'static [u8], delay: Duration) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..8 {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut b = [0u8; 4096];
                    let _ = s.read(&mut b).await;
                    tokio::time::sleep(delay).await;
                    let _ = s.write_all(reply).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn get() -> Request<'static> {
        Request {
            method: Method::Get,
            path: "/x",
            headers: &[],
            body: &[],
        }
    }

    #[tokio::test]
    async fn reads_body_and_retry_after() {
        let url = serve(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            Duration::ZERO,
        )
        .await;
        let mut t = HttpTransport::new(&url).unwrap();
        let mut buf = [0u8; 16];
        let r = t.send(get(), &mut buf).await.unwrap();
        assert_eq!((r.status, r.body_len, r.retry_after_s), (503, 5, Some(7)));
        assert_eq!(&buf[..5], b"hello");
    }

    /// A `Retry-After` beyond `u32::MAX` seconds is "wait very long", read
    /// the same as by the embassy transport (it once read as no advice here,
    /// so the client retried at its own short backoff).
    #[tokio::test]
    async fn an_overflowing_retry_after_saturates() {
        let url = serve(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After:  99999999999 \r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let mut t = HttpTransport::new(&url).unwrap();
        let mut buf = [0u8; 16];
        let r = t.send(get(), &mut buf).await.unwrap();
        assert_eq!((r.status, r.retry_after_s), (429, Some(u32::MAX)));
    }

    #[tokio::test]
    async fn oversize_body_is_an_error_not_a_truncation() {
        let url = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789",
            Duration::ZERO,
        )
        .await;
        let mut t = HttpTransport::new(&url).unwrap();
        let mut buf = [0u8; 4];
        let e = t.send(get(), &mut buf).await.unwrap_err();
        assert!(matches!(
            e,
            HttpError::TooLarge {
                needed: 10,
                capacity: 4
            }
        ));
        // Without a Content-Length (close-delimited), too.
        let url = serve(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n0123456789",
            Duration::ZERO,
        )
        .await;
        let mut t = HttpTransport::new(&url).unwrap();
        let e = t.send(get(), &mut buf).await.unwrap_err();
        assert!(matches!(e, HttpError::TooLarge { capacity: 4, .. }));
    }

    #[tokio::test]
    async fn times_out() {
        let url = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        let mut t = HttpTransport::new(&url)
            .unwrap()
            .with_timeout(Duration::from_millis(100));
        assert_eq!(t.timeout(), Duration::from_millis(100));
        let mut buf = [0u8; 4];
        assert_eq!(
            t.send(get(), &mut buf).await.unwrap_err(),
            HttpError::Timeout
        );
    }

    #[tokio::test]
    async fn reuses_the_connection() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let a = accepts.clone();
        tokio::spawn(async move {
            for _ in 0..4 {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut b = [0u8; 4096];
                    // One answer per request head, on the same connection.
                    for _ in 0..10 {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                });
            }
        });
        let mut t = HttpTransport::new(&format!("http://{addr}")).unwrap();
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            let r = t.send(get(), &mut buf).await.unwrap();
            assert_eq!((r.status, &buf[..r.body_len]), (200, &b"ok"[..]));
        }
        assert_eq!(
            accepts.load(Ordering::SeqCst),
            1,
            "one connection for three requests"
        );
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(HttpTransport::new("https://example.invalid").is_err());
        assert!(HttpTransport::new("not a url").is_err());
        assert_eq!(
            HttpTransport::new("http://127.0.0.1:1").unwrap().timeout(),
            DEFAULT_TIMEOUT
        );
    }
}
