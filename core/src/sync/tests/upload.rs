//! What `upsert`, `remove` and `prepare` put into the upload frame.

use super::*;

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
    let n = c.prepare(&mut tx).unwrap();
    assert!(uploaded_ids(&tx[..n]).is_empty());
    c.apply(
        &tx[..n],
        Response {
            status: 200,
            body_len: 0,
            retry_after_s: None,
            signature: None,
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
    let n = c.prepare(&mut tx).unwrap();
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
    let n = c.prepare(&mut small).unwrap();
    let ids = uploaded_ids(&small[..n]);
    assert!(!ids.is_empty() && ids.len() < 10);
    // Oldest change first: p9 changed at 91, p8 at 92, ...
    for (k, (id, _)) in ids.iter().enumerate() {
        assert_eq!(id, &std::format!("p{}", 9 - k));
    }
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
