//! A transport wrapper that measures every exchange and injects faults.

use omega_tv_sync::wire::{FrameReader, Record};
use omega_tv_sync::{Request, Response, Transport};

use super::rng::Rng;

/// What one exchange looked like on the wire.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    /// Request body bytes.
    pub up: usize,
    /// Response body bytes (0 when nothing came back).
    pub down: usize,
    /// Wall-clock time of the HTTP exchange, µs.
    pub latency_us: u64,
    /// The response was thrown away after the server had answered.
    pub dropped: bool,
    /// Pattern updates in the request.
    pub patterns_up: usize,
    /// Ids acknowledged by a delivered 200 (a dropped one delivers nothing).
    pub acked: Vec<String>,
    /// Revisions of the acks in `acked`, in the same order.
    pub acked_revs: Vec<u32>,
    /// Sequence number of the request (0 when not an upload).
    pub seq: u64,
    /// The request body's CRC-32 trailer (debug).
    pub body_crc: u32,
    /// Ids that came back as conflicts in a delivered 200.
    pub conflicts: Vec<String>,
    /// HTTP status of a delivered response (0 when none was delivered).
    pub status: u16,
    /// The body of a delivered 4xx other than 409/429 (the error JSON).
    pub error_body: String,
}

/// Errors of [`Faulty`].
#[derive(Debug)]
pub enum FaultError<E> {
    /// The inner transport failed.
    Inner(E),
    /// Injected: the server answered, the answer was lost.
    Dropped,
}

/// Wraps a transport: drops a fraction of responses after the server has
/// processed the request (so the device must retry the same sequence), and
/// records an [`Exchange`] for each call.
pub struct Faulty<T> {
    /// The real transport.
    pub inner: T,
    /// Probability of losing a response.
    pub drop_p: f64,
    /// Fault decisions.
    pub rng: Rng,
    /// The last exchange.
    pub last: Exchange,
}

impl<T: Transport> Transport for Faulty<T> {
    type Error = FaultError<T::Error>;

    async fn send(&mut self, req: Request<'_>, buf: &mut [u8]) -> Result<Response, Self::Error> {
        let patterns_up = FrameReader::parse(req.body)
            .map(|f| {
                f.records()
                    .filter(|r| matches!(r, Ok(Record::Pattern(_))))
                    .count()
            })
            .unwrap_or(0);
        let seq = FrameReader::parse(req.body)
            .ok()
            .and_then(|f| {
                f.records().find_map(|r| match r {
                    Ok(Record::UploadHead(h)) => Some(h.seq),
                    _ => None,
                })
            })
            .unwrap_or(0);
        let body_crc = req.body.len().checked_sub(4).map_or(0, |n| {
            u32::from_le_bytes(req.body[n..].try_into().unwrap_or([0; 4]))
        });
        self.last = Exchange {
            up: req.body.len(),
            patterns_up,
            seq,
            body_crc,
            ..Exchange::default()
        };
        let t0 = std::time::Instant::now();
        let r = self.inner.send(req, buf).await;
        self.last.latency_us = t0.elapsed().as_micros() as u64;
        let resp = r.map_err(FaultError::Inner)?;
        self.last.down = resp.body_len;
        self.last.status = resp.status;
        if (400..500).contains(&resp.status) && resp.status != 409 && resp.status != 429 {
            self.last.error_body =
                String::from_utf8_lossy(&buf[..resp.body_len.min(512)]).into_owned();
        }
        if self.drop_p > 0.0 && self.rng.chance(self.drop_p) {
            self.last.dropped = true;
            return Err(FaultError::Dropped);
        }
        if resp.status == 200 {
            if let Ok(f) = FrameReader::parse(&buf[..resp.body_len]) {
                for r in f.records().flatten() {
                    match r {
                        Record::Ack(a) if a.revision > 0 => {
                            self.last.acked.push(a.id.as_str().to_string());
                            self.last.acked_revs.push(a.revision);
                        }
                        Record::Conflict(c) => self.last.conflicts.push(c.id.as_str().to_string()),
                        _ => {}
                    }
                }
            }
        }
        Ok(resp)
    }
}
