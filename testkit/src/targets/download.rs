//! `download`: a client with a request in flight applies arbitrary
//! response bytes.

use omega_tv_sync::codec::Codes;
use omega_tv_sync::sync::{GlobalSink, Outcome};
use omega_tv_sync::wire::{FrameReader, Record};
use omega_tv_sync::{Error, GlobalPattern, PatternId, Response, TrendSignal, DIM};

use crate::fixtures::{book, fix_crc, snapshot_of, Client};
use crate::frames::download_client;

/// Counts what a sync response handed to the application.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct CountingSink {
    /// Calls of any kind.
    pub calls: usize,
}

impl GlobalSink for CountingSink {
    fn reset(&mut self) {
        self.calls += 1;
    }
    fn global_upsert(&mut self, p: &GlobalPattern) {
        assert!(p.validate().is_ok(), "the sink got an invalid pattern");
        self.calls += 1;
    }
    fn global_remove(&mut self, _id: u32, _version: u64) {
        self.calls += 1;
    }
    fn trend(&mut self, _signal: &TrendSignal, _version: u64) {
        self.calls += 1;
    }
}

/// HTTP statuses the `download` target picks from with its first byte.
pub const STATUSES: [u16; 8] = [200, 200, 200, 200, 409, 429, 503, 400];

/// A client with its request in flight, the request, and the client's
/// snapshot at that point.
type Prepared = (Client, Vec<u8>, Vec<u8>);

thread_local! {
    /// The client of the last input when that input changed nothing: building
    /// one costs a quantisation and an encoding, most inputs change nothing.
    static PREPARED: std::cell::RefCell<Option<Prepared>> = const { std::cell::RefCell::new(None) };
}

/// `download`: a [`SyncClient`] with a request in flight applies arbitrary
/// response bytes (first byte: the status, from [`STATUSES`]; then the
/// body, with its CRC fixed by [`fix_crc`]). A response that fails must
/// change neither the client's state nor hand anything to the application;
/// the body's records are also iterated on their own. Accepted means: synced.
pub fn download(data: &[u8]) -> Result<(), Error> {
    let Some((&sel, body)) = data.split_first() else {
        return Err(Error::Truncated);
    };
    let status = STATUSES[usize::from(sel) % STATUSES.len()];
    let body = if status == 200 {
        fix_crc(body)
    } else {
        body.to_vec()
    };
    let body = &body[..];
    if let Ok(f) = FrameReader::parse(body) {
        let n = f.records().take(body.len() + 2).count();
        assert!(n <= body.len() + 1);
    }
    let (mut c, tx, before) = PREPARED.with(|p| p.borrow_mut().take()).unwrap_or_else(|| {
        let (c, tx) = download_client();
        let before = snapshot_of(&c);
        (c, tx, before)
    });
    let seq = c.seq();
    let ids: Vec<PatternId> = ["p0", "p1", "p2", "p3"]
        .iter()
        .map(|s| PatternId::new(s).expect("id"))
        .collect();
    let acked_before: Vec<Option<Codes>> =
        ids.iter().map(|id| c.acked(id).map(|(_, k)| *k)).collect();
    let mut sink = CountingSink::default();
    let r = Response {
        status,
        body_len: body.len(),
        retry_after_s: Some(u32::from(sel >> 3)),
        signature: None,
    };
    let out = c.apply(&tx, r, body, 2_000, &mut sink);
    let result = match out {
        Ok(Outcome::Synced(s)) => {
            assert_eq!(status, 200);
            assert!(c.in_flight().is_none());
            assert_eq!(c.seq(), seq + 1);
            assert!(usize::from(s.acked) + usize::from(s.conflicts) <= 3);
            check_acks(&c, &tx, body, &ids, &acked_before);
            return Ok(());
        }
        Ok(Outcome::RetryLater { .. }) => {
            assert_eq!(c.in_flight(), Some(tx.len()), "a retry keeps the request");
            assert_eq!(sink.calls, 0);
            Err(Error::Rejected)
        }
        Ok(Outcome::Resequenced { seq: next }) => {
            assert_eq!(status, 409);
            assert!(next >= seq && c.in_flight().is_none());
            assert_eq!(sink.calls, 0);
            return Err(Error::Rejected);
        }
        Err(e) => {
            assert_eq!(sink.calls, 0, "a failed response reached the application");
            if status == 200 {
                assert_eq!(c.in_flight(), Some(tx.len()), "the request is kept");
            }
            Err(e)
        }
    };
    if c.in_flight().is_some() {
        assert_eq!(
            snapshot_of(&c),
            before,
            "a failed response ({result:?}) changed the state"
        );
        PREPARED.with(|p| *p.borrow_mut() = Some((c, tx, before)));
    }
    result
}

/// After a sync: every acknowledged update's codes are exactly what the
/// device sent, decoded against the base it was sent on (nothing applied
/// twice, nothing lost).
fn check_acks(c: &Client, tx: &[u8], body: &[u8], ids: &[PatternId], before: &[Option<Codes>]) {
    let req = FrameReader::parse(tx).expect("own request");
    let resp = FrameReader::parse(body).expect("applied response parses");
    for r in resp.records() {
        let Ok(Record::Ack(a)) = r else { continue };
        let sent = req.records().find_map(|r| match r {
            Ok(Record::Pattern(p)) if p.id == a.id => Some(p),
            _ => None,
        });
        let Some(p) = sent else { continue };
        let k = ids.iter().position(|id| *id == p.id).expect("known id");
        let base = match p.coding {
            omega_tv_sync::wire::Coding::Delta => before[k].as_ref(),
            omega_tv_sync::wire::Coding::Absolute => None,
        };
        let mut expected: Codes = [0; DIM];
        book()
            .decode(p.code, base, &mut expected)
            .expect("own code");
        match c.acked(&p.id) {
            Some((rev, codes)) => {
                assert_eq!(rev, a.revision);
                assert_eq!(
                    codes, &expected,
                    "acknowledged codes differ from the sent ones"
                );
            }
            None => assert_eq!(a.revision, 0),
        }
    }
}
