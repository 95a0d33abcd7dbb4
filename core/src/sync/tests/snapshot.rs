//! Snapshots, `restore`, `restore_into` and `reset`.

use super::*;

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
    c.auth_counter = u64::MAX;
    let mut snap = std::vec![0u8; Client::MAX_SNAPSHOT_LEN];
    let n = c.snapshot(&mut snap).unwrap();
    // Tight but for the slot count's varint (16 takes 1 of its 3 bytes).
    assert!(n <= Client::MAX_SNAPSHOT_LEN);
    assert_eq!(Client::MAX_SNAPSHOT_LEN - n, 2, "the bound is tight");
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
