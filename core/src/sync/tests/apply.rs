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
            signature: None,
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
                signature: None,
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
            signature: None,
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
        signature: None,
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
        signature: Some(auth::sign_response(&key, 0, 401, body.as_bytes()).unwrap()),
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
    // The server signs its answer for the counter the request carried (10).
    let r401 = |b: &str| Response {
        status: 401,
        body_len: b.len(),
        retry_after_s: None,
        signature: Some(auth::sign_response(&key, 10, 401, b.as_bytes()).unwrap()),
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

/// A signed client with one request in flight, signed with counter 1.
fn signed_in_flight(key: &crate::DeviceKey, tx: &mut [u8]) -> (Client, usize) {
    let v = vectors();
    let mut c = signed_client("tv-signed", key);
    c.upsert(&pattern("p", &v[0], 0.9, 30), 0).unwrap();
    let n = c.prepare(tx).unwrap();
    let mut ab = [0u8; auth::HEADER_MAX];
    c.authorization(crate::Method::Post, SYNC_PATH, &tx[..n], &mut ab)
        .unwrap();
    assert_eq!(c.auth_counter(), 2);
    (c, n)
}

fn answer(status: u16, body: &[u8], signature: Option<[u8; 32]>) -> Response {
    Response {
        status,
        body_len: body.len(),
        retry_after_s: None,
        signature,
    }
}

#[test]
fn a_forged_409_does_not_move_the_sequence() {
    let key = crate::DeviceKey::new([3; 32]);
    let mut tx = [0u8; 4096];
    let (mut c, n) = signed_in_flight(&key, &mut tx);
    let seq = c.seq();
    let body = br#"{"error":"stale_sequence","last_seq":18446744073709551614}"#;
    // Unsigned, signed with another key, signed for another counter: all
    // refused, nothing changes, the request stays in flight and backs off.
    let other = crate::DeviceKey::new([4; 32]);
    for sig in [
        None,
        Some(auth::sign_response(&other, 1, 409, body).unwrap()),
        Some(auth::sign_response(&key, 0, 409, body).unwrap()),
    ] {
        let r = c.apply(&tx[..n], answer(409, body, sig), body, 100, &mut ());
        assert_eq!(r, Err(Error::Unauthenticated));
        assert_eq!(c.seq(), seq);
        assert_eq!(c.in_flight(), Some(n));
    }
    assert_eq!(c.stats().unauthenticated, 3);
    assert_eq!(c.stats().resequenced, 0);
    // Even signed, a jump past MAX_SEQ_JUMP is not taken.
    let sig = auth::sign_response(&key, 1, 409, body).unwrap();
    let r = c.apply(&tx[..n], answer(409, body, Some(sig)), body, 100, &mut ());
    assert_eq!(r, Err(Error::ProtocolViolation));
    assert_eq!(c.seq(), seq);
    // A signed, plausible 409 is followed.
    let body = std::format!(r#"{{"error":"stale_sequence","last_seq":{}}}"#, seq + 10);
    let sig = auth::sign_response(&key, 1, 409, body.as_bytes()).unwrap();
    let r = c.apply(
        &tx[..n],
        answer(409, body.as_bytes(), Some(sig)),
        body.as_bytes(),
        100,
        &mut (),
    );
    assert_eq!(r, Ok(Outcome::Resequenced { seq: seq + 11 }));
}

#[test]
fn repeated_409s_back_off() {
    let key = crate::DeviceKey::new([3; 32]);
    let mut tx = [0u8; 4096];
    let mut c = signed_client("tv-signed", &key);
    let v = vectors();
    c.upsert(&pattern("p", &v[0], 0.9, 30), 0).unwrap();
    let mut ab = [0u8; auth::HEADER_MAX];
    let mut waits = Vec::new();
    for round in 0..6u64 {
        let n = c.prepare(&mut tx).unwrap();
        c.authorization(crate::Method::Post, SYNC_PATH, &tx[..n], &mut ab)
            .unwrap();
        let counter = c.auth_counter() - 1;
        let body = std::format!(
            r#"{{"error":"stale_sequence","last_seq":{}}}"#,
            c.seq() + round
        );
        let sig = auth::sign_response(&key, counter, 409, body.as_bytes()).unwrap();
        let now = 1_000_000 * (round + 1);
        let r = c.apply(
            &tx[..n],
            answer(409, body.as_bytes(), Some(sig)),
            body.as_bytes(),
            now,
            &mut (),
        );
        assert!(matches!(r, Ok(Outcome::Resequenced { .. })), "{r:?}");
        waits.push(c.next_sync_at() - now);
    }
    // The first 409 is answered at once; later ones wait the backoff, whose
    // bound doubles (full jitter: compare the bounds' maxima, not samples).
    assert_eq!(waits[0], 0);
    assert!(waits[1..].iter().any(|&w| w > 0), "{waits:?}");
    assert!(
        waits.iter().all(|&w| w <= Backoff::default().cap_ms),
        "{waits:?}"
    );
}

#[test]
fn a_replayed_or_unsigned_200_changes_nothing() {
    let key = crate::DeviceKey::new([5; 32]);
    let v = vectors();
    let mut peer = Peer::default();
    let mut net = AuthLoop {
        peer: &mut peer,
        key: key.clone(),
        last_counter: 0,
        seen: Vec::new(),
        refused: Vec::new(),
    };
    let mut c = signed_client("tv-signed", &key);
    c.upsert(&pattern("p", &v[0], 0.9, 30), 0).unwrap();
    let mut tx = [0u8; 4096];
    let mut rx = [0u8; 16 * 1024];
    block(c.exchange(&mut net, &mut tx, &mut rx, 0, &mut ())).unwrap();
    // Keep the first answer as an attacker would (it was signed for counter 1).
    let first = net.peer.last.clone().expect("a response").2;
    let first_sig = auth::sign_response(&key, 1, 200, &first).unwrap();
    // A new change, sent with counter 2; the attacker answers with the old bytes.
    c.upsert(&pattern("p", &v[1], 0.9, 31), 10).unwrap();
    let n = c.prepare(&mut tx).unwrap();
    let mut ab = [0u8; auth::HEADER_MAX];
    c.authorization(crate::Method::Post, SYNC_PATH, &tx[..n], &mut ab)
        .unwrap();
    let acked_before = c.acked(&PatternId::new("p").unwrap()).map(|(r, x)| (r, *x));
    let (stats, version) = (c.stats(), c.global_version());
    for sig in [Some(first_sig), None] {
        let r = c.apply(&tx[..n], answer(200, &first, sig), &first, 20, &mut ());
        assert_eq!(r, Err(Error::Unauthenticated));
    }
    assert_eq!(
        c.acked(&PatternId::new("p").unwrap()).map(|(r, x)| (r, *x)),
        acked_before
    );
    assert_eq!(c.global_version(), version);
    assert_eq!(c.stats().synced, stats.synced);
    assert_eq!(c.in_flight(), Some(n));
}

#[test]
fn an_unsigned_retry_after_is_capped_by_the_backoff() {
    let key = crate::DeviceKey::new([6; 32]);
    let mut tx = [0u8; 4096];
    let (mut c, n) = signed_in_flight(&key, &mut tx);
    let mut r = answer(503, b"{}", None);
    r.retry_after_s = Some(u32::MAX);
    let out = c.apply(&tx[..n], r, b"{}", 1_000, &mut ()).unwrap();
    let cap = Backoff::default().cap_ms;
    assert!(
        matches!(out, Outcome::RetryLater { at_ms } if at_ms <= 1_000 + cap),
        "{out:?}"
    );
    // Signed, the server's advice counts (up to a day).
    c.authorization(
        crate::Method::Post,
        SYNC_PATH,
        &tx[..n],
        &mut [0u8; auth::HEADER_MAX],
    )
    .unwrap();
    let mut r = answer(
        503,
        b"{}",
        Some(auth::sign_response(&key, 2, 503, b"{}").unwrap()),
    );
    r.retry_after_s = Some(3_600);
    let out = c.apply(&tx[..n], r, b"{}", 1_000, &mut ()).unwrap();
    assert!(
        matches!(out, Outcome::RetryLater { at_ms } if at_ms >= 1_000 + 3_600_000),
        "{out:?}"
    );
}

#[test]
fn a_signed_quota_refusal_is_a_resource_error_that_waits_the_backoff_cap() {
    let key = crate::DeviceKey::new([5; 32]);
    let mut tx = [0u8; 4096];
    let body = br#"{"error":"pattern_quota_exceeded","detail":"1024 pattern ids stored"}"#;
    // Signed for the request (counter 1): QuotaExceeded, the request is
    // dropped, the patterns stay pending, and the next attempt is at least
    // the backoff cap away (not the 1 s of a first failure).
    let (mut c, n) = signed_in_flight(&key, &mut tx);
    let cap = c.config().backoff.cap_ms;
    let sig = auth::sign_response(&key, 1, 403, body).unwrap();
    let r = c.apply(&tx[..n], answer(403, body, Some(sig)), body, 1_000, &mut ());
    assert_eq!(r, Err(Error::QuotaExceeded));
    assert!(Error::QuotaExceeded.is_resource());
    assert_eq!(Error::QuotaExceeded.code(), "pattern_quota_exceeded");
    assert_eq!(c.in_flight(), None);
    assert!(c.pending() > 0, "the patterns stay pending");
    assert!(c.next_sync_at() >= 1_000 + cap, "{}", c.next_sync_at());
    assert_eq!(c.stats().rejected, 1);
    // The same answer unsigned proves nothing: an ordinary rejection.
    let (mut c, n) = signed_in_flight(&key, &mut tx);
    let r = c.apply(&tx[..n], answer(403, body, None), body, 1_000, &mut ());
    assert_eq!(r, Err(Error::Rejected));
    assert!(c.next_sync_at() < 1_000 + cap);
}

/// A pattern that changes while its upload is in flight: the ack makes the
/// code that was sent the acknowledged codes (decoded, not the newer
/// current ones), the server's codes agree, and the pattern stays dirty
/// until the next sync uploads the newer codes. A pattern left alone while
/// in flight is acknowledged as its current codes and is clean.
#[test]
fn a_pattern_changed_in_flight_is_acked_as_sent_and_stays_dirty() {
    let v = vectors();
    let items = items();
    let cb = minilm_v1().unwrap();
    let mut c = client("tv-flight");
    let mut peer = Peer::default();
    let mut tx = [0u8; 8192];
    let (a, b) = (
        PatternId::new("moving").unwrap(),
        PatternId::new("still").unwrap(),
    );
    c.upsert(&pattern("moving", &v[0], 0.9, 20), 0).unwrap();
    c.upsert(&pattern("still", &v[1], 0.9, 20), 0).unwrap();
    sync(&mut c, &mut peer, &mut tx, 0).unwrap();
    // Both change; the request carries both as deltas.
    let sent_a = drift(&v[0], &items[3], 10.0);
    let sent_b = drift(&v[1], &items[5], 10.0);
    c.upsert(&pattern("moving", &sent_a, 0.9, 21), 1).unwrap();
    c.upsert(&pattern("still", &sent_b, 0.9, 21), 1).unwrap();
    let len = c.prepare(&mut tx).unwrap();
    // "moving" changes again before the answer comes: its codes only (rate,
    // samples and category as sent), so only the codes keep it dirty.
    let newer = drift(&sent_a, &items[9], 10.0);
    c.upsert(&pattern("moving", &newer, 0.9, 21), 2).unwrap();
    let mut digits = [0u8; 20];
    let version = crate::ascii::fmt_u64(c.global_version(), &mut digits);
    let headers = [
        ("X-Device-ID", "tv-flight"),
        ("X-Sync-Version", version),
        ("Content-Type", "application/octet-stream"),
    ];
    let mut rx = [0u8; 16 * 1024];
    let resp = block(Loop(&mut peer).send(
        Request {
            method: crate::Method::Post,
            path: SYNC_PATH,
            headers: &headers,
            body: &tx[..len],
        },
        &mut rx,
    ))
    .unwrap();
    let out = c
        .apply(&tx[..len], resp, &rx[..resp.body_len], 3, &mut ())
        .unwrap();
    assert!(matches!(out, Outcome::Synced(_)), "{out:?}");
    let (_, acked_a) = c.acked(&a).unwrap();
    assert_eq!(acked_a, &cb.quantize(&sent_a), "acked = the codes sent");
    assert_ne!(acked_a, &cb.quantize(&newer));
    assert_eq!(&acked_a[..], &peer.patterns["moving"].codes[..]);
    let (_, acked_b) = c.acked(&b).unwrap();
    assert_eq!(acked_b, &cb.quantize(&sent_b));
    assert_eq!(&acked_b[..], &peer.patterns["still"].codes[..]);
    assert_eq!(c.pending(), 1, "only the pattern that moved in flight");
    let len = c.prepare(&mut tx).unwrap();
    assert_eq!(uploaded_ids(&tx[..len]), [("moving".into(), Coding::Delta)]);
    // The request in flight is sent as prepared.
    sync(&mut c, &mut peer, &mut tx, 4).unwrap();
    let (_, acked_a) = c.acked(&a).unwrap();
    assert_eq!(acked_a, &cb.quantize(&newer));
    assert_eq!(&acked_a[..], &peer.patterns["moving"].codes[..]);
    assert_eq!(c.pending(), 0);
}
