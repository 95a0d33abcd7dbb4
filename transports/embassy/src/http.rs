//! One HTTP/1.1 exchange over any embedded-io-async connection: the request
//! is written here, the response is parsed by reqwless.

use embedded_io_async::{Read, Write};
use omega_tv_sync::ascii::{fmt_u64, U64_DIGITS};
use omega_tv_sync::transport::{auth, parse_retry_after};
use omega_tv_sync::{Method, Request, Response};
use reqwless::response::BodyReader;

use crate::Error;

/// Writes `request` to `conn` and reads the response: the head into
/// `header_buf`, the decoded body into `response_buf`.
///
/// Independent of the network stack (plain TCP, TLS, or an in-memory pipe in
/// tests). Adds `Host: {host}`, `Connection: close`, `Content-Length` for a
/// `POST` or a non-empty body, and `Content-Type: application/octet-stream`
/// for a non-empty body unless `request.headers` names a content type.
///
/// Body framings: `Content-Length`, `Transfer-Encoding: chunked`, and
/// close-delimited. A body longer than `response_buf` is
/// [`Error::ResponseTooLarge`]; a body shorter than its `Content-Length`
/// is [`Error::ConnectionClosed`].
pub async fn exchange<C: Read + Write>(
    conn: &mut C,
    host: &str,
    request: Request<'_>,
    header_buf: &mut [u8],
    response_buf: &mut [u8],
) -> Result<Response, Error> {
    write_request(conn, host, &request).await?;

    let method = match request.method {
        Method::Get => reqwless::request::Method::GET,
        Method::Post => reqwless::request::Method::POST,
    };
    let resp = reqwless::response::Response::read(conn, method, header_buf)
        .await
        .map_err(map_reqwless)?;
    let status = resp.status.0;
    let content_length = resp.content_length;
    let retry_after_s = resp
        .headers()
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, value)| parse_retry_after(value));
    let signature = resp
        .headers()
        .find(|(name, _)| name.eq_ignore_ascii_case(auth::RESPONSE_HEADER))
        .and_then(|(_, value)| auth::parse_response_header(value));

    let limit = response_buf.len();
    if let Some(cl) = content_length {
        if cl > limit {
            return Err(Error::ResponseTooLarge { limit });
        }
    }
    let mut reader = resp.body().reader();
    let mut len = 0;
    loop {
        if len == limit {
            // Full: anything more is an oversize body, never a truncation.
            let mut probe = [0u8; 1];
            match reader.read(&mut probe).await.map_err(map_reqwless)? {
                0 => break,
                _ => return Err(Error::ResponseTooLarge { limit }),
            }
        }
        let dst = response_buf.get_mut(len..).ok_or(Error::Protocol)?;
        let n = reader.read(dst).await.map_err(map_reqwless)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    // A framed body that ended early (the peer closed mid-body) is not a
    // response: reqwless reports that end as a plain end of data.
    let complete = match &reader {
        BodyReader::Empty | BodyReader::ToEnd(_) => true,
        BodyReader::FixedLength(r) => r.remaining == 0,
        BodyReader::Chunked(r) => r.is_done(),
    };
    if !complete {
        return Err(Error::ConnectionClosed);
    }
    Ok(Response {
        status,
        body_len: len,
        retry_after_s,
        signature,
    })
}

fn map_reqwless(e: reqwless::Error) -> Error {
    match e {
        reqwless::Error::Network(embedded_io_async::ErrorKind::TimedOut) => Error::Timeout,
        reqwless::Error::Network(embedded_io_async::ErrorKind::ConnectionAborted) => {
            Error::ConnectionClosed
        }
        reqwless::Error::Network(k) => Error::Network(k),
        reqwless::Error::ConnectionAborted => Error::ConnectionClosed,
        reqwless::Error::BufferTooSmall => Error::HeaderTooLarge,
        _ => Error::Protocol,
    }
}

/// A field may not carry bytes that would end a line or the head early.
fn valid_field(s: &str) -> bool {
    !s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

async fn write_request<C: Write>(conn: &mut C, host: &str, r: &Request<'_>) -> Result<(), Error> {
    if !r.path.starts_with('/') || r.path.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(Error::InvalidRequest);
    }
    if !valid_field(host) || host.is_empty() {
        return Err(Error::InvalidRequest);
    }
    if r.headers
        .iter()
        .any(|(n, v)| !valid_name(n) || !valid_field(v))
    {
        return Err(Error::InvalidRequest);
    }
    let method = match r.method {
        Method::Get => "GET ",
        Method::Post => "POST ",
    };
    let w = &mut *conn;
    put(w, method).await?;
    put(w, r.path).await?;
    put(w, " HTTP/1.1\r\nHost: ").await?;
    put(w, host).await?;
    put(w, "\r\nConnection: close\r\n").await?;
    let has_type = r
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    if !r.body.is_empty() && !has_type {
        put(w, "Content-Type: application/octet-stream\r\n").await?;
    }
    if r.method == Method::Post || !r.body.is_empty() {
        let mut digits = [0u8; U64_DIGITS];
        put(w, "Content-Length: ").await?;
        put(w, fmt_u64(r.body.len() as u64, &mut digits)).await?;
        put(w, "\r\n").await?;
    }
    for (name, value) in r.headers {
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("host")
            || name.eq_ignore_ascii_case("connection")
        {
            // The transport owns the framing headers.
            continue;
        }
        put(w, name).await?;
        put(w, ": ").await?;
        put(w, value).await?;
        put(w, "\r\n").await?;
    }
    put(w, "\r\n").await?;
    w.write_all(r.body).await.map_err(io_err)?;
    w.flush().await.map_err(io_err)
}

async fn put<C: Write>(w: &mut C, s: &str) -> Result<(), Error> {
    w.write_all(s.as_bytes()).await.map_err(io_err)
}

fn io_err<E: embedded_io_async::Error>(e: E) -> Error {
    match e.kind() {
        embedded_io_async::ErrorKind::TimedOut => Error::Timeout,
        embedded_io_async::ErrorKind::ConnectionAborted
        | embedded_io_async::ErrorKind::ConnectionReset
        | embedded_io_async::ErrorKind::BrokenPipe => Error::ConnectionClosed,
        k => Error::Network(k),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::future::Future;
    use core::pin::pin;
    use core::task::{Context, Poll, Waker};
    use std::vec::Vec;

    /// An in-memory connection: reads come from a script (in the given
    /// pieces, to exercise partial reads), writes are recorded.
    struct Pipe<'a> {
        pieces: &'a [&'a [u8]],
        next: usize,
        offset: usize,
        written: Vec<u8>,
    }

    impl<'a> Pipe<'a> {
        fn new(pieces: &'a [&'a [u8]]) -> Self {
            Pipe {
                pieces,
                next: 0,
                offset: 0,
                written: Vec::new(),
            }
        }
    }

    impl embedded_io_async::ErrorType for Pipe<'_> {
        type Error = embedded_io_async::ErrorKind;
    }
    impl Read for Pipe<'_> {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let Some(piece) = self.pieces.get(self.next) else {
                return Ok(0);
            };
            let rest = &piece[self.offset..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.offset += n;
            if self.offset == piece.len() {
                self.next += 1;
                self.offset = 0;
            }
            Ok(n)
        }
    }
    impl Write for Pipe<'_> {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        async fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    fn run(
        pieces: &[&[u8]],
        req: Request<'_>,
        out: &mut [u8],
    ) -> (Result<Response, Error>, Vec<u8>) {
        let mut pipe = Pipe::new(pieces);
        let mut header = [0u8; 512];
        let r = block_on(exchange(&mut pipe, "dev.test", req, &mut header, out));
        (r, pipe.written)
    }

    const GET: Request<'static> = Request {
        method: Method::Get,
        path: "/api/v1/global?since=3",
        headers: &[("X-Device-ID", "tv-1")],
        body: &[],
    };

    #[test]
    fn writes_request_head_and_binary_body() {
        let body = [0u8, 1, 2, 0xff, b'\r', b'\n'];
        let req = Request {
            method: Method::Post,
            path: "/api/v1/sync",
            headers: &[("X-Device-ID", "tv-1"), ("Content-Length", "999")],
            body: &body,
        };
        let mut out = [0u8; 16];
        let (r, written) = run(
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
            req,
            &mut out,
        );
        assert_eq!(r.unwrap().status, 200);
        let head = b"POST /api/v1/sync HTTP/1.1\r\nHost: dev.test\r\nConnection: close\r\n\
Content-Type: application/octet-stream\r\nContent-Length: 6\r\nX-Device-ID: tv-1\r\n\r\n";
        assert_eq!(&written[..head.len()], head);
        assert_eq!(&written[head.len()..], &body);
    }

    #[test]
    fn get_has_no_length_and_fixed_body_is_read_across_pieces() {
        let mut out = [0u8; 8];
        let (r, written) = run(
            &[
                b"HTTP/1.1 200 OK\r\nContent-Le",
                b"ngth: 5\r\n\r\n\x00\x01",
                b"\x02\x03\xff",
            ],
            GET,
            &mut out,
        );
        let r = r.unwrap();
        assert_eq!((r.status, r.body_len, r.retry_after_s), (200, 5, None));
        assert_eq!(&out[..5], &[0, 1, 2, 3, 0xff]);
        let w = std::str::from_utf8(&written).unwrap();
        assert!(w.starts_with("GET /api/v1/global?since=3 HTTP/1.1\r\n"));
        assert!(!w.contains("Content-Length"));
        assert!(!w.contains("Content-Type"));
    }

    #[test]
    fn chunked_body_is_decoded() {
        let mut out = [0u8; 16];
        let (r, _) = run(
            &[
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
                b"A\r\n0123456789\r\n",
                b"0\r\n\r\n",
            ],
            GET,
            &mut out,
        );
        let r = r.unwrap();
        assert_eq!(r.body_len, 13);
        assert_eq!(&out[..13], b"abc0123456789");
    }

    #[test]
    fn chunked_body_that_exactly_fits_is_accepted() {
        let mut out = [0u8; 13];
        let (r, _) = run(
            &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n"],
            GET,
            &mut out,
        );
        assert_eq!(r.unwrap().body_len, 13);
    }

    #[test]
    fn oversize_bodies_are_errors_not_truncations() {
        let mut out = [0u8; 12];
        let (r, _) = run(
            &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n"],
            GET,
            &mut out,
        );
        assert_eq!(r, Err(Error::ResponseTooLarge { limit: 12 }));
        let (r, _) = run(
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n0123456789abc"],
            GET,
            &mut out,
        );
        assert_eq!(r, Err(Error::ResponseTooLarge { limit: 12 }));
        // Close-delimited body.
        let (r, _) = run(&[b"HTTP/1.1 200 OK\r\n\r\n0123456789abc"], GET, &mut out);
        assert_eq!(r, Err(Error::ResponseTooLarge { limit: 12 }));
        let (r, _) = run(&[b"HTTP/1.1 200 OK\r\n\r\n0123456789ab"], GET, &mut out);
        assert_eq!(r.unwrap().body_len, 12);
    }

    #[test]
    fn short_body_is_an_error() {
        let mut out = [0u8; 32];
        let (r, _) = run(
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"],
            GET,
            &mut out,
        );
        assert_eq!(r, Err(Error::ConnectionClosed));
        let (r, _) = run(
            &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n012"],
            GET,
            &mut out,
        );
        assert!(r.is_err());
    }

    #[test]
    fn retry_after_is_parsed() {
        let mut out = [0u8; 32];
        let (r, _) = run(
            &[b"HTTP/1.1 503 Service Unavailable\r\nRetry-After:  120 \r\nContent-Length: 0\r\n\r\n"],
            GET,
            &mut out,
        );
        let r = r.unwrap();
        assert_eq!((r.status, r.retry_after_s), (503, Some(120)));
        assert_eq!(parse_retry_after(b"0"), Some(0));
        assert_eq!(parse_retry_after(b"99999999999"), Some(u32::MAX));
        assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after(b""), None);
        assert_eq!(parse_retry_after(b"-1"), None);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut out = [0u8; 32];
        for bad in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n123456789\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
            b"HTTP/1.1 200",
            b"",
        ] {
            let (r, _) = run(&[bad], GET, &mut out);
            assert!(r.is_err(), "{:?}", std::str::from_utf8(bad));
        }
        // A head larger than the header buffer.
        let mut big = Vec::from(&b"HTTP/1.1 200 OK\r\nX-Pad: "[..]);
        big.resize(2000, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        let (r, _) = run(&[&big], GET, &mut out);
        assert_eq!(r, Err(Error::HeaderTooLarge));
    }

    #[test]
    fn header_injection_is_refused() {
        let mut out = [0u8; 8];
        for req in [
            Request {
                headers: &[("X-A", "b\r\nX-Evil: 1")],
                ..GET
            },
            Request {
                headers: &[("X A", "b")],
                ..GET
            },
            Request {
                path: "no-slash",
                ..GET
            },
            Request {
                path: "/a b",
                ..GET
            },
        ] {
            let (r, written) = run(&[b"HTTP/1.1 200 OK\r\n\r\n"], req, &mut out);
            assert_eq!(r, Err(Error::InvalidRequest));
            assert!(written.is_empty());
        }
    }

    #[test]
    fn usize_formatting() {
        // Content-Length is written with the core's formatter.
        let mut b = [0u8; U64_DIGITS];
        assert_eq!(fmt_u64(0, &mut b), "0");
        assert_eq!(fmt_u64(1536, &mut b), "1536");
        assert_eq!(
            fmt_u64(usize::MAX as u64, &mut b),
            std::format!("{}", usize::MAX)
        );
    }
}
