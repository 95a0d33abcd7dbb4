//! Whole exchanges: resends of lost requests and request signing.

use super::*;

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
fn every_attempt_is_signed_with_a_new_counter() {
    let v = vectors();
    let key = crate::DeviceKey::new([7; 32]);
    let mut c = signed_client("tv-auth", &key);
    assert_eq!(c.auth_counter(), 1);
    c.upsert(&pattern("p", &v[0], 0.9, 30), 0).unwrap();
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
    // Lost in transit, then applied with the response lost, then replayed.
    net.peer.fail_next = 1;
    assert!(block(c.exchange(&mut net, &mut tx, &mut rx, 0, &mut ())).is_err());
    net.peer.drop_response_next = 1;
    assert!(block(c.exchange(&mut net, &mut tx, &mut rx, 1, &mut ())).is_err());
    let out = block(c.exchange(&mut net, &mut tx, &mut rx, 2, &mut ())).unwrap();
    assert!(matches!(out, Outcome::Synced(s) if s.acked == 1));
    assert_eq!(net.seen, [1, 2, 3], "one counter per attempt");
    assert!(net.refused.is_empty(), "{:?}", net.refused);
    assert_eq!(c.auth_counter(), 4);
    // Same seq throughout: the retry was the same request, signed anew.
    assert_eq!(c.seq(), 2);

    // The snapshot reserves a window: a restored client never reuses one.
    let mut snap = std::vec![0u8; Client::MAX_SNAPSHOT_LEN];
    let n = c.snapshot(&mut snap).unwrap();
    let mut r = Client::restore(minilm_v1().unwrap(), c.config().clone(), &snap[..n]).unwrap();
    assert_eq!(r.auth_counter(), 4 + auth::COUNTER_WINDOW);
    // Nothing signed since: the snapshot restores to itself.
    let mut again = std::vec![0u8; Client::MAX_SNAPSHOT_LEN];
    let m = r.snapshot(&mut again).unwrap();
    assert_eq!(again[..m], snap[..n]);
    // One request signed: the next snapshot stores the counter after it.
    let mut ab = [0u8; auth::HEADER_MAX];
    r.authorization(crate::Method::Post, SYNC_PATH, b"x", &mut ab)
        .unwrap();
    let m = r.snapshot(&mut again).unwrap();
    let r2 = Client::restore(minilm_v1().unwrap(), c.config().clone(), &again[..m]).unwrap();
    assert_eq!(r2.auth_counter(), 5 + 2 * auth::COUNTER_WINDOW);

    // A client without a key sends no Authorization header: refused.
    let mut plain = client("tv-auth");
    plain.upsert(&pattern("p", &v[0], 0.9, 30), 0).unwrap();
    let r = block(plain.exchange(&mut net, &mut tx, &mut rx, 3, &mut ()));
    assert!(matches!(r, Err(SyncError::Core(Error::Rejected))));
    assert_eq!(net.refused, ["missing_auth"]);
    // A client with the wrong key: refused, nothing applied.
    let mut wrong = signed_client("tv-auth", &crate::DeviceKey::new([8; 32]));
    wrong.upsert(&pattern("p", &v[0], 0.9, 30), 0).unwrap();
    let before = net.peer.requests;
    let r = block(wrong.exchange(&mut net, &mut tx, &mut rx, 3, &mut ()));
    assert!(matches!(r, Err(SyncError::Core(Error::Rejected))));
    assert_eq!(net.refused, ["missing_auth", "unauthorized"]);
    assert_eq!(net.peer.requests, before);
}
