//! State-machine tests over a loopback transport with a minimal in-memory
//! peer. (End-to-end tests against the real server live in `tests/`.)
#![allow(clippy::needless_range_loop)]

extern crate std;

use std::collections::HashMap;
use std::string::String;
use std::vec::Vec;

use super::*;
use crate::codec::minilm_v1;
use crate::types::{Category, Embedding, PatternId};
use crate::wire::{Ack, Conflict, DownloadHead, GlobalUpsert, ServerState, TrendRecord};
use crate::{ContentId, Region, TrendSignal, DIM};

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

#[test]
fn uploads_only_changed_patterns_that_pass_the_filter() {
    let v = vectors();
    let mut c = client("tv-1");
    c.upsert(&pattern("good1", &v[0], 0.8, 12), 1).unwrap();
    c.upsert(&pattern("good2", &v[1], 0.7, 10), 2).unwrap();
    c.upsert(&pattern("lowrate", &v[2], 0.5, 50), 3).unwrap();
    c.upsert(&pattern("fewsamp", &v[3], 0.9, 3), 4).unwrap();
    assert_eq!(c.pending(), 2);
    let mut peer = Peer {
        next_sync_s: 600,
        ..Peer::default()
    };
    let mut tx = [0u8; 4096];
    let out = sync(&mut c, &mut peer, &mut tx, 10).unwrap();
    assert!(matches!(out, Outcome::Synced(s) if s.uploaded == 2 && s.acked == 2));
    assert_eq!(peer.pattern_records_seen, 2);
    assert_eq!(c.next_sync_at(), 10 + 600_000);
    // Nothing changed: the next upload carries no pattern.
    let n = c.prepare(20, &mut tx).unwrap();
    assert!(uploaded_ids(&tx[..n]).is_empty());
    c.apply(
        &tx[..n],
        Response {
            status: 200,
            body_len: 0,
            retry_after_s: None,
        },
        &[],
        20,
        &mut (),
    )
    .unwrap_err();
    // The failed response left the request in flight; resend it.
    sync(&mut c, &mut peer, &mut tx, 30).unwrap();
    // One pattern drifts, one rises above the filter: two uploads, the known one as a delta.
    let items = items();
    c.upsert(
        &pattern("good1", &drift(&v[0], &items[0], 12.0), 0.8, 13),
        40,
    )
    .unwrap();
    c.upsert(&pattern("lowrate", &v[2], 0.75, 51), 41).unwrap();
    let n = c.prepare(50, &mut tx).unwrap();
    let ids = uploaded_ids(&tx[..n]);
    // Oldest change first: "lowrate" has waited (held back by the filter) since t=3.
    assert_eq!(
        ids,
        std::vec![
            ("lowrate".into(), Coding::Absolute),
            ("good1".into(), Coding::Delta)
        ]
    );
}

#[test]
fn closed_loop_keeps_server_and_device_codes_identical() {
    let v = vectors();
    let items = items();
    let cb = minilm_v1().unwrap();
    let mut c = client("tv-2");
    let mut peer = Peer::default();
    let mut tx = [0u8; 8192];
    let mut cur: Vec<Embedding> = v[..8].to_vec();
    for round in 0..30u32 {
        for (i, e) in cur.iter_mut().enumerate() {
            if (i as u32 + round) % 3 == 0 {
                *e = drift(e, &items[(i * 7 + round as usize) % items.len()], 10.0);
            }
            c.upsert(
                &pattern(&std::format!("p{i}"), e, 0.9, 20 + round),
                u64::from(round),
            )
            .unwrap();
        }
        sync(&mut c, &mut peer, &mut tx, u64::from(round) * 1000).unwrap();
        for (i, e) in cur.iter().enumerate() {
            let id = PatternId::new(&std::format!("p{i}")).unwrap();
            let (rev, acked) = c.acked(&id).unwrap();
            let s = &peer.patterns[id.as_str()];
            assert_eq!(rev, s.rev);
            assert_eq!(&acked[..], &s.codes[..], "device and server codes agree");
            assert_eq!(acked, &cb.quantize(e), "acked = quantised current");
        }
    }
}

#[test]
fn lost_response_is_resent_and_applied_once() {
    let v = vectors();
    let mut c = client("tv-3");
    c.upsert(&pattern("p", &v[5], 0.9, 30), 0).unwrap();
    let mut peer = Peer {
        drop_response_next: 1,
        fail_next: 1,
        ..Peer::default()
    };
    let mut tx = [0u8; 4096];
    // Lost before the peer: nothing applied.
    assert!(matches!(
        sync(&mut c, &mut peer, &mut tx, 0),
        Err(SyncError::Transport(_))
    ));
    assert_eq!(peer.requests, 0);
    let first = tx;
    let retry_at = c.next_sync_at();
    assert!(retry_at <= 1_000, "first backoff bounded by base");
    // Applied by the peer, response lost.
    assert!(matches!(
        sync(&mut c, &mut peer, &mut tx, retry_at),
        Err(SyncError::Transport(_))
    ));
    assert_eq!(peer.patterns["p"].applied, 1);
    assert_eq!(tx[..], first[..], "the retry sends the same bytes");
    // Retried: replayed, not applied again.
    let at = c.next_sync_at();
    let out = sync(&mut c, &mut peer, &mut tx, at).unwrap();
    assert!(matches!(out, Outcome::Synced(s) if s.acked == 1));
    assert_eq!(peer.patterns["p"].applied, 1);
    assert_eq!(peer.patterns["p"].rev, 1);
    assert_eq!(c.stats().resends, 2);
    assert_eq!(c.seq(), 2);
}

#[test]
fn overload_backs_off_with_retry_after_floor() {
    let v = vectors();
    let mut c = client("tv-4");
    c.upsert(&pattern("p", &v[6], 0.9, 30), 0).unwrap();
    let mut peer = Peer {
        status_next: Some((503, Some(120))),
        ..Peer::default()
    };
    let mut tx = [0u8; 4096];
    let out = sync(&mut c, &mut peer, &mut tx, 1_000).unwrap();
    let Outcome::RetryLater { at_ms } = out else {
        panic!("{out:?}")
    };
    assert!(at_ms >= 1_000 + 120_000);
    assert!(c.in_flight().is_some());
    let out = sync(&mut c, &mut peer, &mut tx, at_ms).unwrap();
    assert!(matches!(out, Outcome::Synced(_)));
}

#[test]
fn racing_sessions_conflict_and_merge_by_sample_weight() {
    let v = vectors();
    let items = items();
    let cb = minilm_v1().unwrap();
    let mut a = client("tv-5");
    let mut peer = Peer::default();
    let mut tx = [0u8; 8192];
    a.upsert(&pattern("p", &v[7], 0.9, 30), 0).unwrap();
    sync(&mut a, &mut peer, &mut tx, 0).unwrap();
    // A second session of the same device restored from A's snapshot.
    let mut snap = std::vec![0u8; Client::MAX_SNAPSHOT_LEN];
    let n = a.snapshot(&mut snap).unwrap();
    let mut b = Client::restore(cb, a.config().clone(), &snap[..n]).unwrap();
    // A moves the pattern first.
    let ea = drift(&v[7], &items[1], 5.0);
    a.upsert(&pattern("p", &ea, 0.9, 31), 1).unwrap();
    sync(&mut a, &mut peer, &mut tx, 1).unwrap();
    assert_eq!(peer.patterns["p"].rev, 2);
    // B, on the stale base, moves it elsewhere: its sequence is behind too.
    let eb = drift(&v[7], &items[2], 5.0);
    b.upsert(&pattern("p", &eb, 0.8, 90), 2).unwrap();
    let out = sync(&mut b, &mut peer, &mut tx, 2).unwrap();
    assert!(matches!(out, Outcome::Resequenced { seq: 3 }), "{out:?}");
    let out = sync(&mut b, &mut peer, &mut tx, 3).unwrap();
    assert!(
        matches!(out, Outcome::Synced(s) if s.conflicts == 1 && s.acked == 0),
        "{out:?}"
    );
    assert_eq!(
        peer.patterns["p"].rev, 2,
        "the conflict changed nothing on the server"
    );
    // Resolution: merged by weight (90 vs 31), uploaded as a delta on rev 2.
    let qa = cb.quantize(&ea);
    let qb = cb.quantize(&eb);
    let n = b.prepare(4, &mut tx).unwrap();
    assert_eq!(
        uploaded_ids(&tx[..n]),
        std::vec![("p".into(), Coding::Delta)]
    );
    let mut rx = [0u8; 16384];
    let (st, len) = peer.handle(&tx[..n], &mut rx);
    let body = rx[..len].to_vec();
    b.apply(
        &tx[..n],
        Response {
            status: st,
            body_len: len,
            retry_after_s: None,
        },
        &body,
        4,
        &mut (),
    )
    .unwrap();
    let s = &peer.patterns["p"];
    assert_eq!(s.rev, 3);
    for i in 0..DIM {
        let want = div_round(90 * i64::from(qb[i]) + 31 * i64::from(qa[i]), 121) as i16;
        assert_eq!(s.codes[i], want, "component {i}");
    }
    assert_eq!(s.count, 90);
}

#[test]
fn a_frame_too_small_for_all_sends_the_oldest_first() {
    let v = vectors();
    let mut c = client("tv-6");
    for i in 0..10 {
        c.upsert(
            &pattern(&std::format!("p{i}"), &v[i], 0.9, 30),
            100 - i as u64,
        )
        .unwrap();
    }
    let mut small = [0u8; 700];
    let n = c.prepare(200, &mut small).unwrap();
    let ids = uploaded_ids(&small[..n]);
    assert!(!ids.is_empty() && ids.len() < 10);
    // Oldest change first: p9 changed at 91, p8 at 92, ...
    for (k, (id, _)) in ids.iter().enumerate() {
        assert_eq!(id, &std::format!("p{}", 9 - k));
    }
}

#[test]
fn downloads_reach_the_sink_and_the_cursor_moves_after() {
    #[derive(Default)]
    struct Sink {
        globals: Vec<(u32, u64, f32)>,
        trends: Vec<u64>,
    }
    impl GlobalSink for Sink {
        fn global_upsert(&mut self, g: &GlobalPattern) {
            self.globals
                .push((g.id, g.version, g.embedding.dot(&g.embedding)));
        }
        fn trend(&mut self, _: &TrendSignal, v: u64) {
            self.trends.push(v);
        }
    }
    let mut c = client("tv-7");
    let mut peer = Peer {
        globals: std::vec![(1, 5), (2, 9)],
        trends: std::vec![7],
        ..Peer::default()
    };
    let mut sink = Sink::default();
    let mut tx = [0u8; 4096];
    let mut rx = [0u8; 16384];
    block(c.exchange(&mut Loop(&mut peer), &mut tx, &mut rx, 0, &mut sink)).unwrap();
    assert_eq!(c.global_version(), 9);
    assert_eq!(sink.globals.len(), 2);
    assert!(sink.globals.iter().all(|g| (g.2 - 1.0).abs() < 1e-3));
    assert_eq!(sink.trends, std::vec![7]);
    // Next time only what is newer than 9 comes down.
    peer.globals.push((3, 11));
    block(c.exchange(&mut Loop(&mut peer), &mut tx, &mut rx, 1, &mut sink)).unwrap();
    assert_eq!(sink.globals.len(), 3);
    assert_eq!(c.global_version(), 11);
}

#[test]
fn corrupt_response_changes_nothing_and_the_request_stays_in_flight() {
    let v = vectors();
    let mut c = client("tv-8");
    c.upsert(&pattern("p", &v[9], 0.9, 30), 0).unwrap();
    let mut peer = Peer::default();
    let mut tx = [0u8; 4096];
    let n = c.prepare(0, &mut tx).unwrap();
    let mut rx = [0u8; 4096];
    let (st, len) = peer.handle(&tx[..n], &mut rx);
    for i in 0..len {
        let mut bad = rx[..len].to_vec();
        bad[i] ^= 0x20;
        let r = c.apply(
            &tx[..n],
            Response {
                status: st,
                body_len: len,
                retry_after_s: None,
            },
            &bad,
            0,
            &mut (),
        );
        assert!(r.is_err(), "corruption at {i} accepted");
        assert_eq!(c.in_flight(), Some(n));
        assert!(c.acked(&PatternId::new("p").unwrap()).is_none());
        assert_eq!(c.global_version(), 0);
    }
    let good = rx[..len].to_vec();
    c.apply(
        &tx[..n],
        Response {
            status: st,
            body_len: len,
            retry_after_s: None,
        },
        &good,
        0,
        &mut (),
    )
    .unwrap();
    assert!(c.acked(&PatternId::new("p").unwrap()).is_some());
}

#[test]
fn snapshot_round_trips_and_rejects_corruption() {
    let v = vectors();
    let mut c = client("tv-9");
    let mut peer = Peer::default();
    let mut tx = [0u8; 16384];
    for i in 0..16 {
        c.upsert(&pattern(&std::format!("p{i}"), &v[i], 0.9, 30), 0)
            .unwrap();
    }
    sync(&mut c, &mut peer, &mut tx, 0).unwrap();
    let mut snap = std::vec![0u8; Client::MAX_SNAPSHOT_LEN];
    let n = c.snapshot(&mut snap).unwrap();
    assert!(n <= Client::MAX_SNAPSHOT_LEN);
    let r = Client::restore(minilm_v1().unwrap(), c.config().clone(), &snap[..n]).unwrap();
    assert_eq!(r.seq(), c.seq());
    assert_eq!(r.global_version(), c.global_version());
    for id in c.ids() {
        assert_eq!(r.acked(id), c.acked(id));
    }
    assert_eq!(r.pending(), 0);
    for i in (0..n).step_by(7) {
        let mut bad = snap[..n].to_vec();
        bad[i] ^= 0x04;
        assert!(Client::restore(minilm_v1().unwrap(), c.config().clone(), &bad).is_err());
    }
    let other = Config::new(DeviceId::new("someone-else").unwrap());
    assert!(Client::restore(minilm_v1().unwrap(), other, &snap[..n]).is_err());
    assert_eq!(c.snapshot(&mut snap[..n - 1]), Err(Error::BufferTooSmall));
}

#[test]
fn snapshot_bound_holds_for_extreme_state() {
    let mut c = client("0123456789012345678901234567890123456789012345678901234567890123");
    for i in 0..16 {
        let s = Slot {
            id: PatternId::new(&std::format!("ABCDEFGHIJKLMN{i:02}")).unwrap(),
            current: [i16::MIN; DIM],
            acked: [i16::MIN; DIM],
            rev: u32::MAX,
            acked_valid: true,
            success_rate: 1.0,
            sample_count: u32::MAX,
            category: Category::new("ABCDEFGHIJKLMNOP").unwrap(),
            dirty: false,
            removed: false,
            changed_at: 0,
        };
        c.slots.push(s).unwrap();
    }
    c.seq = u64::MAX;
    c.global_version = u64::MAX;
    let mut snap = std::vec![0u8; Client::MAX_SNAPSHOT_LEN];
    let n = c.snapshot(&mut snap).unwrap();
    // Tight but for the slot count's varint (16 takes 1 of its 3 bytes).
    assert!(n <= Client::MAX_SNAPSHOT_LEN);
    assert_eq!(Client::MAX_SNAPSHOT_LEN - n, 2, "the bound is tight");
}

#[test]
fn removal_is_uploaded_then_the_slot_freed() {
    let v = vectors();
    let mut c = client("tv-10");
    let mut peer = Peer::default();
    let mut tx = [0u8; 4096];
    c.upsert(&pattern("p", &v[1], 0.9, 30), 0).unwrap();
    c.upsert(&pattern("q", &v[2], 0.9, 30), 0).unwrap();
    sync(&mut c, &mut peer, &mut tx, 0).unwrap();
    c.remove(&PatternId::new("p").unwrap(), 1).unwrap();
    assert_eq!(c.len(), 2);
    sync(&mut c, &mut peer, &mut tx, 1).unwrap();
    assert_eq!(c.len(), 1);
    assert!(!peer.patterns.contains_key("p"));
    assert_eq!(
        c.remove(&PatternId::new("p").unwrap(), 2),
        Err(Error::NotFound)
    );
}

#[test]
fn last_seq_parsing() {
    assert_eq!(parse_last_seq(br#"{"error":"x","last_seq":42}"#), Some(42));
    assert_eq!(parse_last_seq(br#"{"last_seq" : 7, "a":1}"#), Some(7));
    assert_eq!(parse_last_seq(br#"{"error":"x"}"#), None);
    assert_eq!(parse_last_seq(br#"{"last_seq":}"#), None);
    let mut b = [0u8; 20];
    assert_eq!(fmt_u64(0, &mut b), "0");
    assert_eq!(fmt_u64(u64::MAX, &mut b), "18446744073709551615");
}

#[cfg(feature = "zstd")]
#[test]
fn compressed_responses_apply_like_plain_ones() {
    use crate::compress::{Compressor, Decompressor, CCTX_WORKSPACE_WORDS, DCTX_WORKSPACE_WORDS};
    let v = vectors();
    let mut cfg = Config::new(DeviceId::new("tv-z").unwrap());
    cfg.accept_zstd = true;
    let mut c: Client = SyncClient::new(minilm_v1().unwrap(), cfg);
    for i in 0..12 {
        c.upsert(&pattern(&std::format!("pattern-{i}"), &v[i], 0.9, 30), 0)
            .unwrap();
    }
    let mut peer = Peer {
        trends: (1..40).collect(),
        ..Peer::default()
    };
    let mut tx = [0u8; 8192];
    let n = c.prepare(0, &mut tx).unwrap();
    assert!(FrameReader::parse(&tx[..n]).unwrap().accepts_zstd());
    let mut rx = std::vec![0u8; 16384];
    let (st, len) = peer.handle(&tx[..n], &mut rx);
    // Re-frame the peer's answer compressed.
    let plain = FrameReader::parse(&rx[..len]).unwrap();
    let mut zbuf = std::vec![0u8; 16384];
    let mut w = FrameWriter::new(&mut zbuf, Kind::Download, plain.codebook_id()).unwrap();
    for r in plain.records() {
        w.push(&r.unwrap()).unwrap();
    }
    let mut cws = std::vec![0u64; CCTX_WORKSPACE_WORDS];
    let mut comp = Compressor::new(&mut cws).unwrap();
    let mut scratch = std::vec![0u8; 16384];
    let z = w.finish_zstd(&mut comp, &mut scratch).unwrap().to_vec();
    assert!(FrameReader::parse(&z).unwrap().is_compressed());
    assert!(z.len() < len);
    let resp = Response {
        status: st,
        body_len: z.len(),
        retry_after_s: None,
    };
    // Plain apply refuses it and keeps the request in flight ...
    assert_eq!(
        c.apply(&tx[..n], resp, &z, 0, &mut ()),
        Err(Error::BadFlags)
    );
    // ... apply_zstd takes it.
    let mut dws = std::vec![0u64; DCTX_WORKSPACE_WORDS];
    let mut d = Decompressor::new(&mut dws).unwrap();
    let out = c
        .apply_zstd(&tx[..n], resp, &z, &mut d, &mut scratch, 0, &mut ())
        .unwrap();
    assert!(
        matches!(out, Outcome::Synced(s) if s.acked == 12 && s.trends == 39),
        "{out:?}"
    );
}

#[test]
fn restore_into_and_reset_work_in_place_and_keep_state_on_error() {
    let v = vectors();
    let mut c = client("tv-11");
    let mut peer = Peer::default();
    let mut tx = [0u8; 16384];
    for i in 0..4 {
        c.upsert(&pattern(&std::format!("p{i}"), &v[i], 0.9, 30), 0)
            .unwrap();
    }
    sync(&mut c, &mut peer, &mut tx, 0).unwrap();
    let mut snap = std::vec![0u8; Client::MAX_SNAPSHOT_LEN];
    let n = c.snapshot(&mut snap).unwrap();

    // A client with other state takes the snapshot's state in place.
    let mut r = client("tv-11");
    r.upsert(&pattern("other", &v[9], 0.9, 30), 0).unwrap();
    r.restore_into(&snap[..n]).unwrap();
    assert_eq!(
        (r.seq(), r.global_version(), r.len()),
        (c.seq(), c.global_version(), 4)
    );
    for id in c.ids() {
        assert_eq!(r.acked(id), c.acked(id));
    }
    // A snapshot cut short (with a valid CRC) is refused and changes nothing.
    let before: Vec<_> = r.ids().cloned().collect();
    let mut cut = snap[..n - 40].to_vec();
    let crc = crate::wire::crc32(&cut[..cut.len() - 4]);
    let l = cut.len();
    cut[l - 4..].copy_from_slice(&crc.to_le_bytes());
    assert!(r.restore_into(&cut).is_err());
    assert_eq!(r.ids().cloned().collect::<Vec<_>>(), before);
    assert_eq!(r.seq(), c.seq());

    // reset: back to `new`'s state, in place.
    r.reset(
        minilm_v1().unwrap(),
        Config::new(DeviceId::new("tv-12").unwrap()),
    );
    assert_eq!((r.seq(), r.global_version(), r.len()), (1, 0, 0));
    assert_eq!(r.config().device_id.as_str(), "tv-12");
    assert_eq!(r.restore_into(&snap[..n]), Err(Error::ProtocolViolation));
    assert!(r.is_empty());
}

#[test]
fn feed_pages_move_the_cursor_and_refuse_sync_records() {
    let cb = minilm_v1().unwrap();
    let mut c = client("tv-feed");
    let code = {
        let mut buf = [0u8; MAX_CODED_LEN];
        let n = cb.encode(&[5; DIM], None, &mut buf).unwrap();
        buf[..n].to_vec()
    };
    let page = |seq: u64, with_ack: bool| {
        let mut buf = std::vec![0u8; 8192];
        let mut w = FrameWriter::new(&mut buf, Kind::Download, cb.id()).unwrap();
        w.push(&Record::DownloadHead(DownloadHead {
            seq,
            global_version: 40,
            more: true,
            reset: false,
            next_sync_s: 0,
        }))
        .unwrap();
        w.push(&Record::GlobalUpsert(GlobalUpsert {
            id: 9,
            version: 40,
            success_rate: 0.8,
            sample_count: 50,
            contributors: 6,
            category: Category::new("drama").unwrap(),
            code: &code,
        }))
        .unwrap();
        if with_ack {
            w.push(&Record::Ack(Ack {
                id: PatternId::new("x").unwrap(),
                revision: 1,
            }))
            .unwrap();
        }
        w.finish().unwrap().to_vec()
    };
    let mut buf = [0u8; 96];
    assert_eq!(
        c.feed_path(64, 16384, &mut buf),
        "/api/v1/global?since=0&limit=64&max_bytes=16384"
    );
    // A page that carries sync records, or answers a sync, is refused whole.
    assert_eq!(
        c.apply_feed(&page(0, true), &mut ()),
        Err(Error::ProtocolViolation)
    );
    assert_eq!(
        c.apply_feed(&page(3, false), &mut ()),
        Err(Error::ProtocolViolation)
    );
    assert_eq!(c.global_version(), 0);
    #[derive(Default)]
    struct Count(u32);
    impl GlobalSink for Count {
        fn global_upsert(&mut self, _: &GlobalPattern) {
            self.0 += 1;
        }
    }
    let mut sink = Count::default();
    let s = c.apply_feed(&page(0, false), &mut sink).unwrap();
    assert!(s.more && s.globals == 1);
    assert_eq!(sink.0, 1);
    assert_eq!(c.global_version(), 40);
    assert_eq!(
        c.feed_path(500, 65536, &mut buf),
        "/api/v1/global?since=40&limit=500&max_bytes=65536"
    );
    // Not while a sync request is in flight.
    let mut tx = [0u8; 1024];
    c.prepare(0, &mut tx).unwrap();
    assert_eq!(c.apply_feed(&page(0, false), &mut sink), Err(Error::Busy));
}
