//! Applying responses: acks, conflicts, pacing, refusals, zstd, counter resync.

use super::*;

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
    let n = b.prepare(&mut tx).unwrap();
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
fn corrupt_response_changes_nothing_and_the_request_stays_in_flight() {
    let v = vectors();
    let mut c = client("tv-8");
    c.upsert(&pattern("p", &v[9], 0.9, 30), 0).unwrap();
    let mut peer = Peer::default();
    let mut tx = [0u8; 4096];
    let n = c.prepare(&mut tx).unwrap();
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
fn last_seq_parsing() {
    assert_eq!(
        parse_json_u64(br#"{"error":"x","last_seq":42}"#, b"\"last_seq\""),
        Some(42)
    );
    assert_eq!(
        parse_json_u64(br#"{"last_seq" : 7, "a":1}"#, b"\"last_seq\""),
        Some(7)
    );
    assert_eq!(parse_json_u64(br#"{"error":"x"}"#, b"\"last_seq\""), None);
    assert_eq!(parse_json_u64(br#"{"last_seq":}"#, b"\"last_seq\""), None);
    let mut b = [0u8; 20];
    assert_eq!(fmt_u64(0, &mut b), "0");
    assert_eq!(fmt_u64(u64::MAX, &mut b), "18446744073709551615");
}

#[cfg(feature = "zstd")]
#[test]
fn compressed_responses_apply_like_plain_ones() {
    use crate::wire::zstd::{Compressor, CCTX_WORKSPACE_WORDS, DCTX_WORKSPACE_WORDS};
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
    let n = c.prepare(&mut tx).unwrap();
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
    let mut zb = ZstdBuffers::new(&mut dws, &mut scratch).unwrap();
    let out = c
        .apply_zstd(&tx[..n], resp, &z, &mut zb, 0, &mut ())
        .unwrap();
    assert!(
        matches!(out, Outcome::Synced(s) if s.acked == 12 && s.trends == 39),
        "{out:?}"
    );
}

#[test]
fn a_counter_behind_the_server_catches_up_once() {
    let v = vectors();
    let key = crate::DeviceKey::new([9; 32]);
    let mut a = signed_client("tv-twin", &key);
    a.upsert(&pattern("p", &v[0], 0.9, 30), 0).unwrap();
    let mut peer = Peer::default();
    let mut net = AuthLoop {
        peer: &mut peer,
        key: key.clone(),
        last_counter: 0,
        seen: Vec::new(),
        refused: Vec::new(),
    };
    let mut tx = [0u8; 4096];
    let mut rx = [0u8; 16 * 1024];
    block(a.exchange(&mut net, &mut tx, &mut rx, 0, &mut ())).unwrap();
    // A clone restored from a's snapshot syncs first, far ahead.
    let mut snap = std::vec![0u8; Client::MAX_SNAPSHOT_LEN];
    let n = a.snapshot(&mut snap).unwrap();
    let mut b = Client::restore(minilm_v1().unwrap(), a.config().clone(), &snap[..n]).unwrap();
    b.upsert(&pattern("q", &v[1], 0.9, 30), 10).unwrap();
    let mut tx_b = [0u8; 4096];
    block(b.exchange(&mut net, &mut tx_b, &mut rx, 10, &mut ())).unwrap();
    let ahead = net.last_counter;
    assert_eq!(ahead, 2 + auth::COUNTER_WINDOW);
    // a is behind: one 401 replayed_counter, then the same request resent.
    a.upsert(&pattern("p", &v[2], 0.9, 31), 20).unwrap();
    let out = block(a.exchange(&mut net, &mut tx, &mut rx, 20, &mut ())).unwrap();
    assert_eq!(out, Outcome::RetryLater { at_ms: 20 });
    assert_eq!(a.auth_counter(), ahead + 1);
    assert_eq!(a.stats().counter_resyncs, 1);
    assert!(a.in_flight().is_some(), "the request stays in flight");
    // The clone took seq 2 with another body: the sequence moves on too.
    let out = block(a.exchange(&mut net, &mut tx, &mut rx, 20, &mut ())).unwrap();
    assert_eq!(out, Outcome::Resequenced { seq: 3 });
    let out = block(a.exchange(&mut net, &mut tx, &mut rx, 20, &mut ())).unwrap();
    assert!(matches!(out, Outcome::Synced(_)), "{out:?}");
    assert_eq!(net.refused, ["replayed_counter"]);
    assert_eq!(net.last_counter, ahead + 2);

    // An answer that would jump the counter too far is not followed.
    let mut c = signed_client("tv-twin", &key);
    c.prepare(&mut tx).unwrap();
    let n = c.in_flight().unwrap();
    let body = std::format!(
        "{{\"error\":\"replayed_counter\",\"last_counter\":{}}}",
        u64::MAX - 5
    );
    let resp = Response {
        status: 401,
        body_len: body.len(),
        retry_after_s: None,
    };
    let r = c.apply(&tx[..n], resp, body.as_bytes(), 0, &mut ());
    assert_eq!(r, Err(Error::Rejected));
    assert_eq!(c.auth_counter(), 1);

    // Two boxes restored from one snapshot sign the same counter: the second
    // is refused with last_counter = its own counter and simply resends
    // with its next one (no jump).
    let mut d = signed_client("tv-twin", &key);
    let mut ab = [0u8; auth::HEADER_MAX];
    d.prepare(&mut tx).unwrap();
    let n = d.in_flight().unwrap();
    for _ in 0..10 {
        d.authorization(crate::Method::Post, SYNC_PATH, &tx[..n], &mut ab)
            .unwrap();
    }
    assert_eq!(d.auth_counter(), 11);
    let refused =
        |last: u64| std::format!("{{\"error\":\"replayed_counter\",\"last_counter\":{last}}}");
    let r401 = |b: &str| Response {
        status: 401,
        body_len: b.len(),
        retry_after_s: None,
    };
    let b = refused(10);
    let out = d.apply(&tx[..n], r401(&b), b.as_bytes(), 5, &mut ());
    assert_eq!(out, Ok(Outcome::RetryLater { at_ms: 5 }));
    assert_eq!(d.auth_counter(), 11);
    assert!(d.in_flight().is_some());
    // An answer below the counter just sent is inconsistent: not retried.
    let b = refused(5);
    let out = d.apply(&tx[..n], r401(&b), b.as_bytes(), 6, &mut ());
    assert_eq!(out, Err(Error::Rejected));
    assert_eq!(d.auth_counter(), 11);
}
