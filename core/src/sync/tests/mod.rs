//! State-machine tests over a loopback transport with a minimal in-memory
//! peer. (End-to-end tests against the real server live in `tests/`.)
//! This file holds the peer and the fixtures; the tests are split like
//! the module: one file per job.
#![allow(clippy::needless_range_loop)]

extern crate std;

use std::collections::HashMap;
use std::string::String;
use std::vec::Vec;

use super::apply::div_round;
use super::*;
use crate::ascii::{fmt_u64, parse_json_u64};
use crate::codec::{minilm_v1, Codes, MAX_CODED_LEN};
use crate::transport::auth;
use crate::types::{Category, Embedding, GlobalPattern, Pattern, PatternId};
use crate::wire::{
    Ack, Coding, Conflict, DownloadHead, FrameReader, FrameWriter, GlobalUpsert, Kind, Record,
    ServerState, TrendRecord,
};
use crate::{ContentId, Error, Region, Request, Response, Transport, TrendSignal, DIM};

mod apply;
mod exchange;
mod feed;
mod snapshot;
mod upload;

fn vectors() -> Vec<Embedding> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/minilm/patterns_public.f32"
    );
    let bytes = std::fs::read(path).expect("real vectors");
    bytes
        .chunks_exact(DIM * 4)
        .take(64)
        .map(|c| Embedding::from_le_bytes(c).expect("unit vector"))
        .collect()
}

fn items() -> Vec<Embedding> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/minilm/items_public.f32"
    );
    let bytes = std::fs::read(path).expect("real vectors");
    bytes
        .chunks_exact(DIM * 4)
        .take(64)
        .map(|c| Embedding::from_le_bytes(c).expect("unit vector"))
        .collect()
}

/// new = normalize(k * old + item): one more watched item.
fn drift(old: &Embedding, item: &Embedding, k: f32) -> Embedding {
    let mut v = [0f32; DIM];
    for (i, x) in v.iter_mut().enumerate() {
        *x = k * old.as_array()[i] + item.as_array()[i];
    }
    Embedding::normalize(v).unwrap()
}

fn pattern(id: &str, e: &Embedding, rate: f32, n: u32) -> Pattern {
    Pattern::new(
        PatternId::new(id).unwrap(),
        e.clone(),
        rate,
        n,
        Category::new("drama").unwrap(),
    )
    .unwrap()
}

#[derive(Clone, Default)]
struct Stored {
    rev: u32,
    codes: Vec<i16>,
    rate: f32,
    count: u32,
    applied: u32,
}

/// The smallest peer that follows docs/protocol.md: replay by (seq, body),
/// revisions, conflicts with state, a global changelog.
#[derive(Default)]
struct Peer {
    last: Option<(u64, Vec<u8>, Vec<u8>)>,
    patterns: HashMap<String, Stored>,
    globals: Vec<(u32, u64)>,
    trends: Vec<u64>,
    next_sync_s: u32,
    fail_next: u32,
    drop_response_next: u32,
    status_next: Option<(u16, Option<u32>)>,
    requests: u32,
    pattern_records_seen: u32,
}

impl Peer {
    fn handle(&mut self, body: &[u8], out: &mut [u8]) -> (u16, usize) {
        self.requests += 1;
        let cb = minilm_v1().unwrap();
        let f = FrameReader::parse(body).unwrap();
        let recs: Vec<Record<'_>> = f.records().map(|r| r.unwrap()).collect();
        let Record::UploadHead(head) = recs[0] else {
            panic!()
        };
        if let Some((seq, req, resp)) = &self.last {
            if head.seq == *seq {
                if req == body {
                    out[..resp.len()].copy_from_slice(resp);
                    return (200, resp.len());
                }
                let j = std::format!("{{\"error\":\"sequence_reused\",\"last_seq\":{seq}}}");
                out[..j.len()].copy_from_slice(j.as_bytes());
                return (409, j.len());
            }
            if head.seq < *seq {
                let j = std::format!("{{\"error\": \"stale_sequence\", \"last_seq\": {seq}}}");
                out[..j.len()].copy_from_slice(j.as_bytes());
                return (409, j.len());
            }
        }
        let mut w = FrameWriter::new(out, Kind::Download, cb.id()).unwrap();
        let version = self
            .globals
            .iter()
            .map(|g| g.1)
            .chain(self.trends.iter().copied())
            .max();
        w.push(&Record::DownloadHead(DownloadHead {
            seq: head.seq,
            global_version: version.unwrap_or(0).max(head.since),
            more: false,
            reset: false,
            next_sync_s: self.next_sync_s,
        }))
        .unwrap();
        let mut state_codes = std::vec![0u8; MAX_CODED_LEN];
        for r in &recs[1..] {
            match r {
                Record::Pattern(p) => {
                    self.pattern_records_seen += 1;
                    let cur = self
                        .patterns
                        .get(p.id.as_str())
                        .cloned()
                        .unwrap_or_default();
                    if cur.rev != p.base_rev {
                        let n = cb
                            .encode(
                                &cur.codes.clone().try_into().unwrap_or([0; DIM]),
                                None,
                                &mut state_codes,
                            )
                            .unwrap();
                        let state = (cur.rev > 0).then(|| ServerState {
                            success_rate: cur.rate,
                            sample_count: cur.count,
                            category: Category::new("drama").unwrap(),
                            code: &state_codes[..n],
                        });
                        w.push(&Record::Conflict(Conflict {
                            id: p.id.clone(),
                            server_rev: cur.rev,
                            state,
                        }))
                        .unwrap();
                        continue;
                    }
                    let mut codes: Codes = [0; DIM];
                    let base: Option<Codes> =
                        (p.coding == Coding::Delta).then(|| cur.codes.clone().try_into().unwrap());
                    cb.decode(p.code, base.as_ref(), &mut codes).unwrap();
                    let st = Stored {
                        rev: cur.rev + 1,
                        codes: codes.to_vec(),
                        rate: p.success_rate,
                        count: p.sample_count,
                        applied: cur.applied + 1,
                    };
                    self.patterns.insert(p.id.as_str().into(), st);
                    w.push(&Record::Ack(Ack {
                        id: p.id.clone(),
                        revision: cur.rev + 1,
                    }))
                    .unwrap();
                }
                Record::Removal(x) => {
                    self.patterns.remove(x.id.as_str());
                    w.push(&Record::Ack(Ack {
                        id: x.id.clone(),
                        revision: 0,
                    }))
                    .unwrap();
                }
                _ => panic!("unexpected record"),
            }
        }
        for &(id, v) in &self.globals {
            if v > head.since {
                let g: Codes = [3; DIM];
                let n = cb.encode(&g, None, &mut state_codes).unwrap();
                w.push(&Record::GlobalUpsert(GlobalUpsert {
                    id,
                    version: v,
                    success_rate: 0.9,
                    sample_count: 100,
                    contributors: 5,
                    category: Category::new("drama").unwrap(),
                    code: &state_codes[..n],
                }))
                .unwrap();
            }
        }
        for &v in &self.trends {
            if v > head.since {
                let signal = TrendSignal::new(
                    ContentId::new("heat").unwrap(),
                    2.0,
                    Region::new("DE").unwrap(),
                    Category::new("fresh").unwrap(),
                    1,
                )
                .unwrap();
                w.push(&Record::Trend(TrendRecord { version: v, signal }))
                    .unwrap();
            }
        }
        let resp = w.finish().unwrap().to_vec();
        out[..resp.len()].copy_from_slice(&resp);
        self.last = Some((head.seq, body.to_vec(), resp.clone()));
        (200, resp.len())
    }
}

#[derive(Debug)]
struct Dropped;

/// Loopback transport into a [`Peer`], with injectable faults.
struct Loop<'p>(&'p mut Peer);

impl Transport for Loop<'_> {
    type Error = Dropped;
    async fn send(
        &mut self,
        req: Request<'_>,
        buf: &mut [u8],
    ) -> core::result::Result<Response, Dropped> {
        assert_eq!(req.path, SYNC_PATH);
        let since = req
            .headers
            .iter()
            .find(|h| h.0 == "X-Sync-Version")
            .unwrap()
            .1;
        let f = FrameReader::parse(req.body).unwrap();
        let Some(Ok(Record::UploadHead(h))) = f.records().next() else {
            panic!()
        };
        assert_eq!(
            since.parse::<u64>().unwrap(),
            h.since,
            "X-Sync-Version = since"
        );
        if self.0.fail_next > 0 {
            self.0.fail_next -= 1;
            return Err(Dropped);
        }
        if let Some((status, retry)) = self.0.status_next.take() {
            return Ok(Response {
                status,
                body_len: 0,
                retry_after_s: retry,
                signature: None,
            });
        }
        let (status, n) = self.0.handle(req.body, buf);
        if self.0.drop_response_next > 0 {
            // Applied on the peer, lost on the way back.
            self.0.drop_response_next -= 1;
            return Err(Dropped);
        }
        Ok(Response {
            status,
            body_len: n,
            retry_after_s: None,
            signature: None,
        })
    }
}

/// Runs a future that never waits (the loopback is synchronous).
fn block<F: core::future::Future>(f: F) -> F::Output {
    use core::task::{Context, Poll, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    let mut f = core::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("loopback future pended"),
    }
}

type Client = SyncClient<'static, 16>;

fn client(id: &str) -> Client {
    SyncClient::new(
        minilm_v1().unwrap(),
        Config::new(DeviceId::new(id).unwrap()),
    )
}

fn sync(
    c: &mut Client,
    peer: &mut Peer,
    tx: &mut [u8],
    now: u64,
) -> core::result::Result<Outcome, SyncError<Dropped>> {
    let mut rx = [0u8; 16 * 1024];
    block(c.exchange(&mut Loop(peer), tx, &mut rx, now, &mut ()))
}

fn uploaded_ids(frame: &[u8]) -> Vec<(String, Coding)> {
    FrameReader::parse(frame)
        .unwrap()
        .records()
        .filter_map(|r| match r.unwrap() {
            Record::Pattern(p) => Some((p.id.as_str().into(), p.coding)),
            _ => None,
        })
        .collect()
}

/// A [`Loop`] behind the server's authentication rules (docs/wire-format.md,
/// "Authentication"): signature over the canonical message, counter greater
/// than the last accepted one, the counter advanced only by a 200, and
/// every answer to a request whose signature verified signed for its counter.
struct AuthLoop<'p> {
    peer: &'p mut Peer,
    key: crate::DeviceKey,
    last_counter: u64,
    seen: Vec<u64>,
    refused: Vec<&'static str>,
}

impl Transport for AuthLoop<'_> {
    type Error = Dropped;
    async fn send(
        &mut self,
        req: Request<'_>,
        buf: &mut [u8],
    ) -> core::result::Result<Response, Dropped> {
        let device = req.headers.iter().find(|h| h.0 == "X-Device-ID").unwrap().1;
        let refuse = |buf: &mut [u8], code: &'static str, last: u64| {
            let j = if code == "replayed_counter" {
                std::format!("{{\"error\":\"{code}\",\"last_counter\":{last}}}")
            } else {
                std::format!("{{\"error\":\"{code}\"}}")
            };
            buf[..j.len()].copy_from_slice(j.as_bytes());
            Ok(Response {
                status: 401,
                body_len: j.len(),
                retry_after_s: None,
                signature: None,
            })
        };
        let Some(h) = req.headers.iter().find(|h| h.0 == auth::HEADER) else {
            self.refused.push("missing_auth");
            return refuse(buf, "missing_auth", self.last_counter);
        };
        let (counter, sig) = auth::parse_header(h.1.as_bytes()).unwrap();
        self.seen.push(counter);
        let hash = auth::body_hash(req.body);
        if !auth::verify(&self.key, "POST", req.path, device, counter, &hash, &sig) {
            self.refused.push("unauthorized");
            return refuse(buf, "unauthorized", self.last_counter);
        }
        let sign = |r: core::result::Result<Response, Dropped>, buf: &[u8]| {
            r.map(|mut r| {
                let body = &buf[..r.body_len];
                r.signature =
                    Some(auth::sign_response(&self.key, counter, r.status, body).unwrap());
                r
            })
        };
        if counter <= self.last_counter {
            self.refused.push("replayed_counter");
            let r = refuse(buf, "replayed_counter", self.last_counter);
            return sign(r, buf);
        }
        let r = Loop(self.peer).send(req, buf).await;
        let r = sign(r, buf);
        if matches!(r, Ok(Response { status: 200, .. }))
            || (r.is_err() && self.peer.requests > 0 && self.peer.last.is_some())
        {
            // Applied (a lost response was applied on the peer too).
            self.last_counter = counter;
        }
        r
    }
}

fn signed_client(id: &str, key: &crate::DeviceKey) -> Client {
    let mut cfg = Config::new(DeviceId::new(id).unwrap());
    cfg.auth_key = Some(key.clone());
    SyncClient::new(minilm_v1().unwrap(), cfg)
}
