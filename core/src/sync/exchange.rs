//! One whole exchange over a [`Transport`]: prepare (or resend), sign,
//! send, apply; and the request signature for callers with their own I/O.

use super::{GlobalSink, Outcome, SyncClient};
use crate::transport::auth;
use crate::{Error, Method, Request, Result, Transport};

/// Path of the sync endpoint.
pub const SYNC_PATH: &str = "/api/v1/sync";

/// An [`exchange`](SyncClient::exchange) failure: the transport's, or the core's.
#[derive(Debug)]
pub enum SyncError<E> {
    /// The request did not complete; it will be resent at `next_sync_at`.
    Transport(E),
    /// Preparing or applying failed (see [`Error`]).
    Core(Error),
}

impl<E> From<Error> for SyncError<E> {
    fn from(e: Error) -> Self {
        SyncError::Core(e)
    }
}

impl<'cb, const N: usize> SyncClient<'cb, N> {
    /// Signs the next request with the configured key, taking the next
    /// counter, and formats the `Authorization` header value into `buf`.
    /// `None` (and no counter used) when the client has no key.
    ///
    /// [`exchange`](Self::exchange) calls it for every request it sends; a
    /// caller with its own transport (after [`prepare`](Self::prepare)) calls
    /// it once per send attempt, resends included, and sends the header
    /// [`auth::HEADER`] with the value.
    pub fn authorization<'b>(
        &mut self,
        method: Method,
        path: &str,
        body: &[u8],
        buf: &'b mut [u8; auth::HEADER_MAX],
    ) -> Result<Option<&'b str>> {
        let Some(key) = &self.cfg.auth_key else {
            return Ok(None);
        };
        let counter = self.auth_counter;
        let sig = auth::sign(
            key,
            auth::method_str(method),
            path,
            self.cfg.device_id.as_str(),
            counter,
            body,
        )?;
        self.auth_counter = counter.saturating_add(1);
        Ok(Some(auth::format_header(counter, &sig, buf)))
    }

    /// Prepares (or resends) a request, sends it over `transport` and applies
    /// the answer. `tx` must stay untouched between calls while a request is
    /// in flight; `rx` must hold `caps.max_bytes`.
    pub async fn exchange<T: Transport, S: GlobalSink>(
        &mut self,
        transport: &mut T,
        tx: &mut [u8],
        rx: &mut [u8],
        now_ms: u64,
        sink: &mut S,
    ) -> core::result::Result<Outcome, SyncError<T::Error>> {
        let len = match self.inflight {
            Some(f) => f.len,
            None => self.prepare(tx)?,
        };
        let body = tx.get(..len).ok_or(Error::BufferTooSmall)?;
        // Every attempt, resends included, is signed with a new counter.
        let mut auth_buf = [0u8; auth::HEADER_MAX];
        let auth = self.authorization(Method::Post, SYNC_PATH, body, &mut auth_buf)?;
        let mut digits = [0u8; 20];
        let version = crate::ascii::fmt_u64(self.global_version, &mut digits);
        let all = [
            ("X-Device-ID", self.cfg.device_id.as_str()),
            ("X-Sync-Version", version),
            ("Content-Type", "application/octet-stream"),
            (auth::HEADER, auth.unwrap_or("")),
        ];
        let headers = if auth.is_some() { &all[..] } else { &all[..3] };
        let request = Request {
            method: Method::Post,
            path: SYNC_PATH,
            headers,
            body,
        };
        let response = match transport.send(request, rx).await {
            Ok(r) => r,
            Err(e) => {
                self.transport_failed(now_ms);
                self.stats.resends += 1;
                return Err(SyncError::Transport(e));
            }
        };
        let body = rx.get(..response.body_len).ok_or(Error::BufferTooSmall)?;
        let sent = tx.get(..len).ok_or(Error::BufferTooSmall)?;
        Ok(self.apply(sent, response, body, now_ms, sink)?)
    }
}
