//! The one trait every transport implements.
//!
//! The sync logic builds request bytes and consumes response bytes; it never
//! knows whether they travel over hyper on Linux, reqwless on embassy-net, or
//! a loopback in a unit test.
//!
//! [`auth`] signs requests (HMAC-SHA256 over a canonical message); the sync
//! client calls it for every request it sends. Nothing here imports the
//! sync, wire or codec stages.

pub mod auth;

/// HTTP method of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Method {
    /// `GET`
    Get,
    /// `POST`
    Post,
}

/// One request, borrowed from the caller: nothing is copied or allocated.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Method.
    pub method: Method,
    /// Path and query, starting with `/`, e.g. `/api/v1/sync`.
    pub path: &'a str,
    /// Extra headers as (name, value) pairs; the transport adds `Host`,
    /// `Content-Length` and, for a non-empty body, `Content-Type:
    /// application/octet-stream` unless given here.
    pub headers: &'a [(&'a str, &'a str)],
    /// Body bytes (empty for `GET`).
    pub body: &'a [u8],
}

/// What came back. The body itself was written into the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Bytes of body written to the start of the response buffer.
    pub body_len: usize,
    /// `Retry-After` in seconds, when the server sent one (429/503). Parse
    /// the header with [`parse_retry_after`].
    pub retry_after_s: Option<u32>,
    /// The server's signature of this response (`X-OTS-Signature`, 64 hex
    /// digits), when it sent one. Parse the header with
    /// [`auth::parse_response_header`]. A client with a key applies nothing
    /// that is not signed for the request it sent.
    pub signature: Option<[u8; 32]>,
}

/// Parses a `Retry-After` header value given in seconds (`delta-seconds`,
/// RFC 9110 10.2.3: one or more digits), spaces and tabs around it allowed.
///
/// A value above `u32::MAX` seconds, with any number of digits, **saturates**
/// to `u32::MAX`: a server asking for a very long pause gets one (the client
/// uses it as the floor of its backoff), never "no advice". The HTTP-date
/// form, an empty value, a sign and anything else give `None`; the client
/// then waits its own backoff. Every transport reads the header with this.
///
/// ```
/// use omega_tv_sync::transport::parse_retry_after;
/// assert_eq!(parse_retry_after(b" 120 "), Some(120));
/// assert_eq!(parse_retry_after(b"99999999999"), Some(u32::MAX));
/// assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
/// ```
pub fn parse_retry_after(value: &[u8]) -> Option<u32> {
    crate::ascii::parse_u32_saturating(crate::ascii::trim_ows(value))
}

/// Sends one request and writes the response body into `response_buf`.
///
/// Implementations must not truncate: a body larger than `response_buf` is
/// an error of the transport's own type (the sync client then treats the
/// exchange as failed and retries the same request later, so nothing is
/// lost). Timeouts are the transport's business (the std transport defaults
/// to 30 s).
#[allow(async_fn_in_trait)] // Executors on the device are single-threaded; no Send bound wanted.
pub trait Transport {
    /// The transport's error: connection, timeout, or a response that does
    /// not fit the buffer.
    type Error: core::fmt::Debug;

    /// Performs the exchange.
    async fn send(
        &mut self,
        request: Request<'_>,
        response_buf: &mut [u8],
    ) -> Result<Response, Self::Error>;
}

#[cfg(test)]
mod tests {
    use super::parse_retry_after;

    #[test]
    fn retry_after_is_delta_seconds_and_saturates() {
        assert_eq!(parse_retry_after(b"0"), Some(0));
        assert_eq!(parse_retry_after(b"7"), Some(7));
        assert_eq!(parse_retry_after(b" \t120\t "), Some(120));
        assert_eq!(parse_retry_after(b"4294967295"), Some(u32::MAX));
        // Overflow saturates, whatever the length.
        assert_eq!(parse_retry_after(b"4294967296"), Some(u32::MAX));
        assert_eq!(parse_retry_after(b"99999999999"), Some(u32::MAX));
        assert_eq!(
            parse_retry_after(b"184467440737095516150000000000000000000000"),
            Some(u32::MAX)
        );
        for bad in [
            &b""[..],
            b"   ",
            b"-1",
            b"+5",
            b"1.5",
            b"12 34",
            b"0x10",
            b"Wed, 21 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(
                parse_retry_after(bad),
                None,
                "{:?}",
                core::str::from_utf8(bad)
            );
        }
    }
}
