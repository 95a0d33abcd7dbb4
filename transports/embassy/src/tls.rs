//! TLS 1.3 with a pre-shared key (feature `tls`): [`EmbassyTlsTransport`].
//!
//! The same HTTP exchange as [`crate::EmbassyTransport`], inside a TLS 1.3
//! session opened by [embedded-tls](https://docs.rs/embedded-tls) with an
//! external pre-shared key (`psk_dhe_ke`: the PSK authenticates both ends,
//! an ephemeral P-256 key exchange gives forward secrecy), cipher suite
//! `TLS_AES_128_GCM_SHA256`. No certificate is parsed on the device.
//!
//! The PSK identity is the device id and the key is
//! [`omega_tv_sync::DeviceKey::tls_psk`], derived from the device key; the
//! server side (a TLS 1.3 PSK terminator in front of Constellation, e.g.
//! stunnel) gets the same keys from `constellation device tls-psk`.
//!
//! ## Memory
//! Two more caller buffers, [`TlsBuffers`]:
//!
//! | buffer | holds | size |
//! |---|---|---|
//! | `record_read` | one whole incoming TLS record (it is decrypted in place) | `>= 2^n + 261` for the largest fragment `2^n` the server may send; this length picks the `max_fragment_length` the transport asks for, see [`fragment_for`] |
//! | `record_write` | one outgoing record while it is encrypted; longer requests are split into several records | `>=` [`MIN_WRITE_BUFFER`] (the ClientHello is built here) |
//!
//! With a full-size read buffer ([`FULL_RECORD_BUFFER`], 16,645 B) any
//! TLS 1.3 server works. A smaller one makes the client send the
//! `max_fragment_length` extension (RFC 6066; OpenSSL honours it), so
//! 4,357 B are enough for 4 KiB records, 1,285 B for 1 KiB.
//! [`RECOMMENDED_READ_BUFFER`] and [`RECOMMENDED_WRITE_BUFFER`] are what the
//! netns test and `docs/memory.md` use.

use embassy_net::tcp::TcpSocket;
use embassy_net::Stack;
use embassy_time::with_timeout;
use embedded_tls::{
    Aes128GcmSha256, CryptoRngCore, MaxFragmentLength, TlsConfig, TlsConnection, TlsContext,
    TlsError, UnsecureProvider,
};
use omega_tv_sync::{Request, Response, Transport};

use crate::{close, exchange, Buffers, Config, Error};

/// Bytes a record needs beyond its plaintext fragment: the 5-byte header,
/// the inner content type, the 16-byte tag and the padding TLS 1.3 allows
/// a server to add (RFC 8449: a record may exceed the limit by 256).
pub const RECORD_EXPANSION: usize = 5 + 256;
/// A read buffer that takes any TLS 1.3 record (2^14 + 261 bytes).
pub const FULL_RECORD_BUFFER: usize = (1 << 14) + RECORD_EXPANSION;
/// Smallest `record_write`: the ClientHello with a key share and a PSK
/// binder is about 250 bytes; the rest bounds each request record.
pub const MIN_WRITE_BUFFER: usize = 512;
/// Recommended `record_read`: 4 KiB fragments.
pub const RECOMMENDED_READ_BUFFER: usize = 4096 + RECORD_EXPANSION;
/// Recommended `record_write`.
pub const RECOMMENDED_WRITE_BUFFER: usize = 1024;

/// The fragment limit a read buffer of `len` bytes asks the server for:
/// `None` when it holds full-size records (no extension sent), else the
/// largest of 4096, 2048, 1024 and 512 whose records fit. `Err` when even
/// 512-byte fragments do not fit ([`Error::TlsBufferTooSmall`]).
pub fn fragment_for(len: usize) -> Result<Option<MaxFragmentLength>, Error> {
    if len >= FULL_RECORD_BUFFER {
        return Ok(None);
    }
    let options = [
        (4096, MaxFragmentLength::Bits12),
        (2048, MaxFragmentLength::Bits11),
        (1024, MaxFragmentLength::Bits10),
        (512, MaxFragmentLength::Bits9),
    ];
    options
        .into_iter()
        .find(|(size, _)| len >= size + RECORD_EXPANSION)
        .map(|(_, m)| Some(m))
        .ok_or(Error::TlsBufferTooSmall)
}

/// The caller's TLS record buffers; see the module docs for sizes.
pub struct TlsBuffers<'b> {
    /// One incoming record.
    pub record_read: &'b mut [u8],
    /// One outgoing record.
    pub record_write: &'b mut [u8],
}

/// The pre-shared key and its identity.
#[derive(Clone, Copy)]
pub struct Psk<'a> {
    /// The identity the server looks the key up by: the device id.
    pub identity: &'a [u8],
    /// The key: [`omega_tv_sync::DeviceKey::tls_psk`] (32 bytes).
    pub key: &'a [u8],
}

impl core::fmt::Debug for Psk<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Psk")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// HTTP over TLS 1.3 (PSK) over one embassy-net TCP connection per request.
///
/// `R` is the random source for the handshake (the client random and the
/// ephemeral key): a hardware RNG on a device, anything implementing
/// `rand_core` 0.6 `CryptoRng + RngCore`.
///
/// ```ignore
/// let psk = device_key.tls_psk();
/// let mut t = EmbassyTlsTransport::new(stack, config, buffers,
///     TlsBuffers { record_read: &mut rd, record_write: &mut wr },
///     Psk { identity: b"stb-0001", key: &psk }, hw_rng)?;
/// let resp = t.send(request, &mut body_buf).await?;
/// ```
pub struct EmbassyTlsTransport<'d, 'b, R> {
    stack: Stack<'d>,
    config: Config<'b>,
    buffers: Buffers<'b>,
    tls: TlsBuffers<'b>,
    psk: Psk<'b>,
    fragment: Option<MaxFragmentLength>,
    rng: R,
}

impl<'d, 'b, R: CryptoRngCore> EmbassyTlsTransport<'d, 'b, R> {
    /// A TLS transport; [`Error::TlsBufferTooSmall`] if `tls.record_read`
    /// cannot hold 512-byte fragments or `tls.record_write` is shorter than
    /// [`MIN_WRITE_BUFFER`].
    pub fn new(
        stack: Stack<'d>,
        config: Config<'b>,
        buffers: Buffers<'b>,
        tls: TlsBuffers<'b>,
        psk: Psk<'b>,
        rng: R,
    ) -> Result<Self, Error> {
        let fragment = fragment_for(tls.record_read.len())?;
        if tls.record_write.len() < MIN_WRITE_BUFFER {
            return Err(Error::TlsBufferTooSmall);
        }
        Ok(EmbassyTlsTransport {
            stack,
            config,
            buffers,
            tls,
            psk,
            fragment,
            rng,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config<'b> {
        &self.config
    }

    /// The fragment limit asked of the server (`None`: full records).
    pub fn max_fragment_length(&self) -> Option<MaxFragmentLength> {
        self.fragment
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
        if socket.connect(self.config.remote).await.is_err() {
            close(&mut socket, false).await;
            return Err(Error::Connect);
        }
        let result = {
            let mut tls_config = TlsConfig::new().with_psk(self.psk.key, &[self.psk.identity]);
            if let Some(f) = self.fragment {
                tls_config = tls_config.with_max_fragment_length(f);
            }
            let mut conn = TlsConnection::new(
                &mut socket,
                &mut *self.tls.record_read,
                &mut *self.tls.record_write,
            );
            let provider = UnsecureProvider::new::<Aes128GcmSha256>(&mut self.rng);
            match conn.open(TlsContext::new(&tls_config, provider)).await {
                Err(e) => Err(handshake_error(e)),
                Ok(()) => {
                    let r = exchange(
                        &mut conn,
                        self.config.host,
                        request,
                        &mut *self.buffers.header,
                        response_buf,
                    )
                    .await;
                    if r.is_ok() {
                        // close_notify; the response is complete either way.
                        let _ = conn.close().await;
                    }
                    r
                }
            }
        };
        close(&mut socket, result.is_ok()).await;
        debug!(
            "tls {:?} {} -> {:?}",
            request.method,
            request.path,
            result.as_ref().map(|r| (r.status, r.body_len))
        );
        result
    }
}

/// A failed handshake: network errors keep their meaning, everything else
/// (an alert such as a wrong key, a peer that is not a TLS 1.3 PSK server,
/// a record larger than the read buffer) is [`Error::Tls`].
fn handshake_error(e: TlsError) -> Error {
    warn!("TLS handshake failed: {:?}", e);
    match e {
        TlsError::Io(embedded_io_async::ErrorKind::TimedOut) => Error::Timeout,
        TlsError::Io(k) => Error::Network(k),
        TlsError::ConnectionClosed => Error::ConnectionClosed,
        _ => Error::Tls,
    }
}

impl<R: CryptoRngCore> Transport for EmbassyTlsTransport<'_, '_, R> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_buffer_picks_the_fragment_limit() {
        assert!(fragment_for(FULL_RECORD_BUFFER).unwrap().is_none());
        assert_eq!(
            fragment_for(FULL_RECORD_BUFFER - 1).unwrap(),
            Some(MaxFragmentLength::Bits12)
        );
        assert_eq!(
            fragment_for(RECOMMENDED_READ_BUFFER).unwrap(),
            Some(MaxFragmentLength::Bits12)
        );
        assert_eq!(
            fragment_for(RECOMMENDED_READ_BUFFER - 1).unwrap(),
            Some(MaxFragmentLength::Bits11)
        );
        assert_eq!(
            fragment_for(1024 + RECORD_EXPANSION).unwrap(),
            Some(MaxFragmentLength::Bits10)
        );
        assert_eq!(
            fragment_for(512 + RECORD_EXPANSION).unwrap(),
            Some(MaxFragmentLength::Bits9)
        );
        assert_eq!(
            fragment_for(512 + RECORD_EXPANSION - 1),
            Err(Error::TlsBufferTooSmall)
        );
    }
}
