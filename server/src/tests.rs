//! Unit tests of the sync logic over the in-memory store and a plain test codebook.

use std::sync::Arc;

use omega_tv_sync::wire::{
    Caps, Coding, FrameReader, FrameWriter, Kind, PatternRemoval, PatternUpdate, Record,
    UploadHead, MAX_UPLOAD_FRAME,
};
use omega_tv_sync::{Category, PatternId, DIM};

use crate::codebooks::plain::{Plain, ID};
use crate::codebooks::{Codebooks, Codes};
use crate::download::{self, PageRequest};
use crate::store::mem::MemStore;
use crate::store::{self, GlobalChange, Meta, Store, WriteTxn};
use crate::sync;

fn books() -> Codebooks {
    Codebooks::empty().with(Arc::new(Plain))
}

fn codes(seed: i16) -> Codes {
    let mut c = [0i16; DIM];
    for (i, x) in c.iter_mut().enumerate() {
        *x = seed.wrapping_mul(7).wrapping_add(i as i16 % 13);
    }
    c
}

fn enc(c: &Codes) -> Vec<u8> {
    c.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn caps() -> Caps {
    Caps {
        max_globals: 32,
        max_trends: 32,
        max_bytes: 64 * 1024,
    }
}

enum U<'a> {
    Abs(&'a str, u32, &'a Codes),
    Delta(&'a str, u32, &'a Codes),
    Rm(&'a str, u32),
}

fn frame(seq: u64, since: u64, items: &[U<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_UPLOAD_FRAME];
    let mut w = FrameWriter::new(&mut buf, Kind::Upload, ID).unwrap();
    w.push(&Record::UploadHead(UploadHead {
        seq,
        since,
        caps: caps(),
    }))
    .unwrap();
    let owned: Vec<(String, u32, Coding, Vec<u8>, bool)> = items
        .iter()
        .map(|u| match u {
            U::Abs(id, b, c) => (id.to_string(), *b, Coding::Absolute, enc(c), false),
            U::Delta(id, b, c) => (id.to_string(), *b, Coding::Delta, enc(c), false),
            U::Rm(id, b) => (id.to_string(), *b, Coding::Absolute, Vec::new(), true),
        })
        .collect();
    for (id, base_rev, coding, code, rm) in &owned {
        let rec = if *rm {
            Record::Removal(PatternRemoval {
                id: PatternId::new(id).unwrap(),
                base_rev: *base_rev,
            })
        } else {
            Record::Pattern(PatternUpdate {
                id: PatternId::new(id).unwrap(),
                base_rev: *base_rev,
                success_rate: 0.8,
                sample_count: 20,
                category: Category::new("drama").unwrap(),
                coding: *coding,
                code,
            })
        };
        w.push(&rec).unwrap();
    }
    w.finish().unwrap().to_vec()
}

/// Applies `body` for `dev-1` and returns the result.
fn sync_once(store: &MemStore, body: &[u8]) -> Result<sync::Applied, crate::error::ApiError> {
    let since = match FrameReader::parse(body)
        .ok()
        .and_then(|f| f.records().next())
    {
        Some(Ok(Record::UploadHead(h))) => h.since,
        _ => 0,
    };
    let up = sync::validate("dev-1".into(), since, body, &books())?;
    let slot = Arc::new(std::sync::Mutex::new(None));
    let s2 = slot.clone();
    store
        .submit(Box::new(move |txn: &mut dyn WriteTxn| {
            let r = sync::apply(txn, &up, &books(), 600);
            let status = r.as_ref().map(|_| ()).map_err(|e| e.clone());
            *s2.lock().unwrap() = Some(r);
            let f: store::Finish = Box::new(|_| {});
            (f, status)
        }))
        .unwrap();
    let r = slot.lock().unwrap().take().unwrap();
    r.unwrap()
}

fn acks(resp: &[u8]) -> Vec<Record<'_>> {
    let f = FrameReader::parse(resp).unwrap();
    f.records().map(|r| r.unwrap()).collect()
}

#[test]
fn retry_is_replayed_and_applied_once() {
    let s = MemStore::new();
    let a = codes(1);
    let body = frame(1, 0, &[U::Abs("p1", 0, &a)]);
    let first = sync_once(&s, &body).unwrap();
    assert!(!first.replayed);
    assert_eq!(first.acked, 1);
    let again = sync_once(&s, &body).unwrap();
    assert!(again.replayed);
    assert_eq!(again.response, first.response);
    let st = crate::device_state(&s, "dev-1").unwrap();
    assert_eq!(st.patterns.len(), 1);
    assert_eq!(st.patterns[0].revision, 1);
    assert_eq!(st.syncs, 1);
    // One change recorded for aggregation, not two.
    let n = store::read(&s, |t| t.meta(Meta::ChangeSeq)).unwrap();
    assert_eq!(n, 1);
}

#[test]
fn reused_and_stale_sequences_are_rejected() {
    let s = MemStore::new();
    let a = codes(1);
    let b = codes(2);
    sync_once(&s, &frame(5, 0, &[U::Abs("p1", 0, &a)])).unwrap();
    let e = sync_once(&s, &frame(5, 0, &[U::Abs("p1", 0, &b)])).unwrap_err();
    assert_eq!(
        (e.status, e.code, e.last_seq),
        (409, "sequence_reused", Some(5))
    );
    let e = sync_once(&s, &frame(4, 0, &[U::Abs("p1", 0, &b)])).unwrap_err();
    assert_eq!(
        (e.status, e.code, e.last_seq),
        (409, "stale_sequence", Some(5))
    );
    let st = crate::device_state(&s, "dev-1").unwrap();
    assert_eq!(st.patterns[0].codes, a.to_vec());
}

#[test]
fn delta_applies_to_stored_codes_and_stale_base_conflicts() {
    let s = MemStore::new();
    let a = codes(1);
    sync_once(&s, &frame(1, 0, &[U::Abs("p1", 0, &a)])).unwrap();
    let mut d = [0i16; DIM];
    d[3] = 5;
    d[100] = -2;
    let r = sync_once(&s, &frame(2, 0, &[U::Delta("p1", 1, &d)])).unwrap();
    assert_eq!(r.acked, 1);
    let st = crate::device_state(&s, "dev-1").unwrap();
    assert_eq!(st.patterns[0].revision, 2);
    assert_eq!(st.patterns[0].codes[3], a[3] + 5);
    assert_eq!(st.patterns[0].codes[100], a[100] - 2);
    // A second session still on revision 1: conflict with the server's state.
    let r = sync_once(&s, &frame(3, 0, &[U::Delta("p1", 1, &d)])).unwrap();
    assert_eq!((r.acked, r.conflicts), (0, 1));
    let recs = acks(&r.response);
    match &recs[1] {
        Record::Conflict(c) => {
            assert_eq!(c.server_rev, 2);
            let state = c.state.as_ref().unwrap();
            let mut back = [0i16; DIM];
            Plain.decode_into(state.code, &mut back);
            assert_eq!(back.to_vec(), st.patterns[0].codes);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let st2 = crate::device_state(&s, "dev-1").unwrap();
    assert_eq!(st2.patterns, st.patterns);
}

#[test]
fn bad_delta_stores_nothing() {
    let s = MemStore::new();
    let mut big = [0i16; DIM];
    big[0] = i16::MAX;
    sync_once(
        &s,
        &frame(1, 0, &[U::Abs("p1", 0, &big), U::Abs("p2", 0, &big)]),
    )
    .unwrap();
    let mut d = [0i16; DIM];
    d[0] = 1; // overflows i16 on p2
    let e = sync_once(
        &s,
        &frame(2, 0, &[U::Delta("p1", 1, &[0; DIM]), U::Delta("p2", 1, &d)]),
    )
    .unwrap_err();
    assert_eq!((e.status, e.code), (400, "code_out_of_range"));
    let st = crate::device_state(&s, "dev-1").unwrap();
    assert!(st.patterns.iter().all(|p| p.revision == 1));
    assert_eq!(st.last_seq, Some(1));
}

#[test]
fn removal_acks_revision_zero() {
    let s = MemStore::new();
    let a = codes(1);
    sync_once(&s, &frame(1, 0, &[U::Abs("p1", 0, &a)])).unwrap();
    let r = sync_once(&s, &frame(2, 0, &[U::Rm("p1", 1)])).unwrap();
    assert_eq!(r.acked, 1);
    assert!(crate::device_state(&s, "dev-1")
        .unwrap()
        .patterns
        .is_empty());
    match &acks(&r.response)[1] {
        Record::Ack(a) => assert_eq!(a.revision, 0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_recreated_pattern_continues_above_its_removed_revisions() {
    let s = MemStore::new();
    let (a, b) = (codes(1), codes(2));
    sync_once(
        &s,
        &frame(1, 0, &[U::Abs("p1", 0, &a), U::Abs("p2", 0, &a)]),
    )
    .unwrap();
    let mut d = [0i16; DIM];
    d[7] = 3;
    sync_once(&s, &frame(2, 0, &[U::Delta("p1", 1, &d)])).unwrap();
    // p1 removed at revision 2, then created again: revision 3, not 1.
    sync_once(&s, &frame(3, 0, &[U::Rm("p1", 2)])).unwrap();
    let r = sync_once(&s, &frame(4, 0, &[U::Abs("p1", 0, &b)])).unwrap();
    match &acks(&r.response)[1] {
        Record::Ack(a) => assert_eq!(a.revision, 3),
        other => panic!("{other:?}"),
    }
    // A stale session's delta on revision 1 or 2 of the old p1: a conflict
    // carrying the new codes, never decoded against them.
    for stale in [1, 2] {
        let r = sync_once(
            &s,
            &frame(4 + u64::from(stale), 0, &[U::Delta("p1", stale, &d)]),
        )
        .unwrap();
        assert_eq!((r.acked, r.conflicts), (0, 1));
        match &acks(&r.response)[1] {
            Record::Conflict(c) => assert_eq!(c.server_rev, 3),
            other => panic!("{other:?}"),
        }
    }
    let st = crate::device_state(&s, "dev-1").unwrap();
    let p1 = st.patterns.iter().find(|p| p.id == "p1").unwrap();
    assert_eq!((p1.revision, p1.codes.clone()), (3, b.to_vec()));
    // The floor is the device's: another pattern removed and re-created
    // also continues above it, and other devices are untouched.
    sync_once(&s, &frame(7, 0, &[U::Rm("p2", 1)])).unwrap();
    let r = sync_once(&s, &frame(8, 0, &[U::Abs("p2", 0, &a)])).unwrap();
    match &acks(&r.response)[1] {
        Record::Ack(a) => assert_eq!(a.revision, 3),
        other => panic!("{other:?}"),
    }
    let floor = store::read(&s, |t| t.revision_floor("dev-1")).unwrap();
    assert_eq!(floor, 2);
    assert_eq!(store::read(&s, |t| t.revision_floor("dev-2")).unwrap(), 0);
}

#[test]
fn compressed_responses_are_the_core_writers_frames() {
    use omega_tv_sync::wire::zstd::{Compressor, CCTX_WORKSPACE_WORDS};
    let a = codes(1);
    let plain = frame(1, 0, &[U::Abs("p1", 0, &a), U::Abs("p2", 0, &a)]);
    let z = sync::compress_response(&plain);
    assert!(z.len() < plain.len(), "{} >= {}", z.len(), plain.len());
    assert!(FrameReader::parse(&z).unwrap().is_compressed());
    // The same records through FrameWriter::finish_zstd: byte for byte.
    let src = FrameReader::parse(&plain).unwrap();
    let mut buf = vec![0u8; MAX_UPLOAD_FRAME];
    let mut w = FrameWriter::new(&mut buf, Kind::Upload, ID).unwrap();
    for r in src.records() {
        w.push(&r.unwrap()).unwrap();
    }
    let mut ws = vec![0u64; CCTX_WORKSPACE_WORDS];
    let mut comp = Compressor::new(&mut ws).unwrap();
    let mut scratch = vec![0u8; plain.len()];
    assert_eq!(w.finish_zstd(&mut comp, &mut scratch).unwrap(), &z[..]);
    // Nothing to gain, or not a frame: unchanged.
    let head_only = frame(2, 0, &[]);
    assert_eq!(sync::compress_response(&head_only), head_only);
    assert_eq!(sync::compress_response(&plain[..5]), &plain[..5]);
}

#[test]
fn validation_errors_have_codes() {
    let b = books();
    let a = codes(1);
    let good = frame(1, 0, &[U::Abs("p1", 0, &a)]);
    let e = sync::validate("d".into(), 3, &good, &b).unwrap_err();
    assert_eq!(e.code, "header_mismatch");
    let e = sync::validate("d".into(), 0, &good[..good.len() - 1], &b).unwrap_err();
    assert_eq!(e.code, "checksum");
    let e = sync::validate("d".into(), 0, &good[..5], &b).unwrap_err();
    assert_eq!(e.code, "truncated");
    let e = sync::validate("d".into(), 0, &good, &Codebooks::empty()).unwrap_err();
    assert_eq!((e.status, e.code), (422, "unknown_codebook"));
    let e = sync::validate("d".into(), 0, &vec![0u8; MAX_UPLOAD_FRAME + 1], &b).unwrap_err();
    assert_eq!((e.status, e.code), (413, "body_too_large"));
    let dup = frame(1, 0, &[U::Abs("p1", 0, &a), U::Abs("p1", 0, &a)]);
    assert_eq!(
        sync::validate("d".into(), 0, &dup, &b).unwrap_err().code,
        "duplicate_pattern"
    );
    assert_eq!(
        sync::check_device_id(None).unwrap_err().code,
        "missing_device_id"
    );
    assert_eq!(
        sync::check_device_id(Some(b"a b")).unwrap_err().code,
        "invalid_device_id"
    );
    assert_eq!(
        sync::check_sync_version(Some(b"-1")).unwrap_err().code,
        "invalid_sync_version"
    );
}

fn publish_n(s: &MemStore, n: u32) {
    let e = enc(&codes(3));
    s.submit(Box::new(move |txn: &mut dyn WriteTxn| {
        let mut r = Ok(());
        for i in 0..n {
            if let Err(e2) = txn.publish(&GlobalChange::Upsert {
                id: i + 1,
                success_rate: 0.9,
                sample_count: 100,
                contributors: 5,
                category: "drama".into(),
                codebook: ID,
                code: e.clone(),
            }) {
                r = Err(e2);
            }
        }
        let f: store::Finish = Box::new(|_| {});
        (f, r)
    }))
    .unwrap();
}

fn page(s: &MemStore, since: u64, max_globals: u16, snap: Option<u64>) -> download::Page {
    store::read(s, |t| {
        download::build(
            t,
            &PageRequest {
                seq: 0,
                since,
                caps: Caps {
                    max_globals,
                    max_trends: 8,
                    max_bytes: 1 << 20,
                },
                codebook: ID,
                codebooks: None,
                answers: &[],
                next_sync_s: 300,
                snapshot_horizon: snap,
            },
        )
    })
    .unwrap()
}

fn versions(p: &download::Page) -> Vec<u64> {
    acks(&p.frame)
        .iter()
        .filter_map(|r| match r {
            Record::GlobalUpsert(g) => Some(g.version),
            Record::GlobalRemove(g) => Some(g.version),
            Record::Trend(t) => Some(t.version),
            _ => None,
        })
        .collect()
}

#[test]
fn pages_return_exactly_the_changes_after_since() {
    let s = MemStore::new();
    publish_n(&s, 10);
    let p = page(&s, 4, 100, None);
    assert_eq!(versions(&p), (5..=10).collect::<Vec<_>>());
    assert!(!p.more);
    assert_eq!(p.global_version, 10);
    let p = page(&s, 0, 3, None);
    assert_eq!(versions(&p), vec![1, 2, 3]);
    assert!(p.more);
    assert_eq!(p.global_version, 3);
    let p = page(&s, 3, 3, None);
    assert_eq!(versions(&p), vec![4, 5, 6]);
    // Compaction: a newer version of item 2 replaces its old entry.
    publish_n(&s, 2);
    let p = page(&s, 0, 100, None);
    assert_eq!(versions(&p), vec![3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
}

#[test]
fn stale_cursor_gets_a_paged_snapshot() {
    let s = MemStore::new();
    publish_n(&s, 6);
    s.submit(Box::new(|txn: &mut dyn WriteTxn| {
        let r = txn
            .publish(&GlobalChange::Remove { id: 1 })
            .and_then(|_| txn.publish(&GlobalChange::Remove { id: 2 }))
            .and_then(|_| txn.prune_tombstones(8));
        let f: store::Finish = Box::new(|_| {});
        (f, r)
    }))
    .unwrap();
    // Live: 3,4,5,6 (ids 3..6); tombstones 7,8: 7 pruned (< 8), 8 kept.
    let p = page(&s, 2, 2, None);
    assert!(p.reset);
    assert_eq!(versions(&p), vec![3, 4]);
    assert!(p.more);
    let h = p.snapshot_horizon;
    assert_eq!(h, Some(8));
    let p2 = page(&s, p.global_version, 2, h);
    assert!(!p2.reset);
    assert_eq!(versions(&p2), vec![5, 6]);
    let p3 = page(&s, p2.global_version, 2, h);
    assert_eq!(versions(&p3), vec![8]);
    assert!(!p3.more);
    // The last page of a snapshot names its horizon too.
    assert_eq!(p3.snapshot_horizon, h);
    // So does a snapshot that fits on one page.
    let one = page(&s, 2, 100, None);
    assert!(one.reset && !one.more);
    assert_eq!(one.snapshot_horizon, Some(8));
    // Without the horizon the continuation would restart the snapshot.
    assert!(page(&s, 4, 2, None).reset);
    // A fresh device (0) never needs a reset.
    assert!(!page(&s, 0, 100, None).reset);
}

/// Runs `f` in one write transaction of the in-memory store.
fn put(s: &MemStore, f: impl FnOnce(&mut dyn WriteTxn) -> store::StoreResult<()> + Send + 'static) {
    s.submit(Box::new(move |txn: &mut dyn WriteTxn| {
        let r = f(txn);
        let done: store::Finish = Box::new(|_| {});
        (done, r)
    }))
    .unwrap();
}

/// A device that moved to another codebook: its stored pattern (in the old
/// codebook) answers a delta with a conflict without state; the documented
/// resolution, absolute on `server_rev`, then applies (it used to be refused
/// with the same conflict again, for good), and so does a removal.
#[test]
fn a_pattern_stored_in_another_codebook_is_replaced_by_an_absolute_upload() {
    let s = MemStore::new();
    let old_book = ID ^ 0x5a5a_5a5a;
    put(&s, move |txn| {
        txn.put_pattern(
            "dev-1",
            "p1",
            &crate::store::StoredPattern {
                revision: 3,
                codebook: old_book,
                success_rate: 0.9,
                sample_count: 40,
                category: "drama".into(),
                codes: Box::new(codes(9)),
            },
        )
    });
    let a = codes(1);
    // A delta against codes of another codebook: conflict, no state.
    let r = sync_once(&s, &frame(1, 0, &[U::Delta("p1", 3, &a)])).unwrap();
    assert_eq!((r.acked, r.conflicts), (0, 1));
    match &acks(&r.response)[1] {
        Record::Conflict(c) => assert_eq!((c.server_rev, c.state.is_none()), (3, true)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Absolute on the server's revision: applied, now in this codebook.
    let r = sync_once(&s, &frame(2, 0, &[U::Abs("p1", 3, &a)])).unwrap();
    assert_eq!((r.acked, r.conflicts), (1, 0));
    let st = crate::device_state(&s, "dev-1").unwrap();
    assert_eq!(st.patterns[0].revision, 4);
    assert_eq!(st.patterns[0].codebook, ID);
    assert_eq!(st.patterns[0].codes, a.to_vec());
    // A stale absolute (old revision) still conflicts.
    let r = sync_once(&s, &frame(3, 0, &[U::Abs("p1", 3, &a)])).unwrap();
    assert_eq!((r.acked, r.conflicts), (0, 1));
    // A removal on the current revision of a pattern in another codebook
    // applies too.
    put(&s, move |txn| {
        let mut p = txn.pattern("dev-1", "p1")?.expect("stored");
        p.codebook = old_book;
        txn.put_pattern("dev-1", "p1", &p)
    });
    let r = sync_once(&s, &frame(4, 0, &[U::Rm("p1", 4)])).unwrap();
    assert_eq!((r.acked, r.conflicts), (1, 0));
    assert!(crate::device_state(&s, "dev-1")
        .unwrap()
        .patterns
        .is_empty());
}

/// Every accepted codebook gets every global pattern: one published in
/// `minilm-v1` reaches a `minilm-small-v1` device's page transcoded into its
/// codebook (it used to be passed over while the cursor moved past it).
#[test]
fn a_global_reaches_a_device_of_another_codebook() {
    use omega_tv_sync::{codec, Embedding};
    let books = crate::codebooks::default_codebooks();
    let (v1, small) = (
        codec::minilm_v1().unwrap(),
        codec::minilm_small_v1().unwrap(),
    );
    let rows = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/minilm/items_public.f32"
    ))
    .unwrap();
    let e = Embedding::from_le_bytes(&rows[..DIM * 4]).unwrap();
    let mut buf = vec![0u8; codec::MAX_CODED_LEN];
    let n = v1.encode(&v1.quantize(&e), None, &mut buf).unwrap();
    let code = buf[..n].to_vec();
    let s = MemStore::new();
    let v1_id = v1.id();
    put(&s, move |txn| {
        txn.publish(&GlobalChange::Upsert {
            id: 7,
            success_rate: 0.9,
            sample_count: 100,
            contributors: 5,
            category: "drama".into(),
            codebook: v1_id,
            code,
        })
        .map(|_| ())
    });
    let page_in = |cb: u32, books: Option<&Codebooks>| {
        store::read(&s, |t| {
            download::build(
                t,
                &PageRequest {
                    seq: 0,
                    since: 0,
                    caps: caps(),
                    codebook: cb,
                    codebooks: books,
                    answers: &[],
                    next_sync_s: 300,
                    snapshot_horizon: None,
                },
            )
        })
        .unwrap()
    };
    // Without the codebooks to transcode with, the old behaviour: passed over.
    let none = page_in(small.id(), None);
    let f = FrameReader::parse(&none.frame).unwrap();
    assert_eq!(
        f.records()
            .filter(|r| matches!(r, Ok(Record::GlobalUpsert(_))))
            .count(),
        0
    );
    // With them: the global, in the small codebook, close to the original.
    let p = page_in(small.id(), Some(&books));
    let f = FrameReader::parse(&p.frame).unwrap();
    assert_eq!(f.codebook_id(), small.id());
    let g = f
        .records()
        .find_map(|r| match r {
            Ok(Record::GlobalUpsert(g)) => Some((g.id, g.code.to_vec())),
            _ => None,
        })
        .expect("the global reaches the small-codebook device");
    assert_eq!(g.0, 7);
    let mut c = [0i16; DIM];
    small.decode(&g.1, None, &mut c).unwrap();
    let back = small.reconstruct(&c).unwrap();
    let cos: f32 = back
        .as_array()
        .iter()
        .zip(e.as_array())
        .map(|(a, b)| a * b)
        .sum();
    assert!(cos > 0.999, "cos {cos}");
    assert_eq!(p.global_version, 1);
}
