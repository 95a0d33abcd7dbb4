//! The sync journal on the real redb file: acknowledged groups that were
//! never folded come back when the files a crash leaves behind are opened,
//! a torn or flipped record loses only what it and later records held,
//! readers see journaled rows before the fold, and a group that fails
//! leaves the groups acknowledged before it in place.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::journal::journal_path;
use super::{RedbOptions, RedbStore};
use crate::store::{self, DeviceRecord, Meta, Store, StoreError, StoredPattern, WriteTxn};

/// Journal on, never folded by time during a test (nor by size, unless a
/// test sets a smaller `fold_bytes`).
fn opts() -> RedbOptions {
    RedbOptions {
        fold_every: Duration::from_secs(3600),
        fold_bytes: 256 << 10,
        ..RedbOptions::default()
    }
}

/// [`opts`] with a journal that holds one group's record (one 4 KiB
/// block) but not two: every second group is folded.
fn opts_one_record() -> RedbOptions {
    RedbOptions {
        fold_bytes: 6000,
        ..opts()
    }
}

fn pattern(rev: u32) -> StoredPattern {
    let mut codes = Box::new([0i16; omega_tv_sync::DIM]);
    for (i, c) in codes.iter_mut().enumerate() {
        *c = (i as i16).wrapping_mul(rev as i16 + 3);
    }
    StoredPattern {
        revision: rev,
        codebook: 7,
        success_rate: 0.5,
        sample_count: rev,
        category: "drama".into(),
        codes,
    }
}

fn device(seq: u64) -> DeviceRecord {
    DeviceRecord {
        last_seq: seq,
        body_sha256: [seq as u8; 32],
        response: vec![1, 2, 3],
        snapshot_horizon: None,
        syncs: seq,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One acknowledged group per call: device `d` at `seq`, its pattern `p`
/// at revision `seq`.
fn sync(s: &RedbStore, d: &str, seq: u64) -> Result<(), StoreError> {
    let d = d.to_string();
    rt().block_on(store::write(s, move |t: &mut dyn WriteTxn| {
        t.put_pattern(&d, "p", &pattern(seq as u32))?;
        t.put_device(&d, &device(seq))
    }))
}

fn rev(s: &RedbStore, d: &str) -> Option<u32> {
    store::read(s, |t| Ok(t.pattern(d, "p")?.map(|p| p.revision))).unwrap()
}

/// Copies the database and its journal as they are on disk (what a crash
/// leaves: the file as of the last fold, the journal's durable records)
/// into `to`.
fn crash_copy(db: &Path, to: &Path) -> PathBuf {
    let copy = to.join("copy.redb");
    std::fs::copy(db, &copy).unwrap();
    std::fs::copy(journal_path(db), journal_path(&copy)).unwrap();
    copy
}

#[test]
fn acknowledged_groups_that_were_never_folded_are_replayed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.redb");
    let s = RedbStore::open(&db, opts()).unwrap();
    for seq in 1..=5 {
        sync(&s, "tv-1", seq).unwrap();
        sync(&s, "tv-2", seq * 10).unwrap();
    }
    // Journaled, not folded: only the store's first commit (the tables).
    assert_eq!(s.stats().folds.load(Ordering::Relaxed), 0);
    assert!(s.stats().journal_bytes.load(Ordering::Relaxed) > 0);
    // Readers see them through the overlay.
    assert_eq!(rev(&s, "tv-1"), Some(5));
    assert_eq!(rev(&s, "tv-2"), Some(50));
    assert_eq!(store::read(&s, |t| t.device_count()).unwrap(), 2);
    // And aggregation the changes, in order, each once.
    let seqs: Vec<u64> = store::read(&s, |t| t.device_changes_after(0, 100))
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    let after4 = store::read(&s, |t| t.device_changes_after(4, 3)).unwrap();
    assert_eq!(after4.iter().map(|c| c.seq).collect::<Vec<_>>(), [5, 6, 7]);

    let crashed = tempfile::tempdir().unwrap();
    let copy = crash_copy(&db, crashed.path());
    drop(s);
    let b = RedbStore::open(&copy, opts()).unwrap();
    assert_eq!(rev(&b, "tv-1"), Some(5), "replayed");
    assert_eq!(rev(&b, "tv-2"), Some(50), "replayed");
    let (dev, changes) = store::read(&b, |t| {
        Ok((t.device("tv-1")?, t.device_changes_after(0, 100)?.len()))
    })
    .unwrap();
    assert_eq!(dev.map(|r| r.last_seq), Some(5));
    // Every group's change block, exactly once: 10 changes.
    assert_eq!(changes, 10);
    assert_eq!(store::read(&b, |t| t.meta(Meta::ChangeSeq)).unwrap(), 10);
    assert_eq!(store::read(&b, |t| t.device_count()).unwrap(), 2);
    // Folded on open: the journal is empty, and opening again changes
    // nothing.
    let j = std::fs::metadata(journal_path(&copy)).unwrap().len();
    assert_eq!(j, 0, "journal emptied after the replay");
    drop(b);
    let c = RedbStore::open(&copy, opts()).unwrap();
    assert_eq!(rev(&c, "tv-1"), Some(5));
    let changes = store::read(&c, |t| t.device_changes_after(0, 100)).unwrap();
    assert_eq!(changes.len(), 10, "a second open replays nothing twice");
}

#[test]
fn a_torn_or_flipped_record_loses_only_its_own_group_and_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.redb");
    let s = RedbStore::open(&db, opts()).unwrap();
    let mut ends = Vec::new();
    for seq in 1..=4 {
        sync(&s, "tv-1", seq).unwrap();
        ends.push(s.stats().journal_bytes.load(Ordering::Relaxed));
    }
    // Torn: the last record's body cut short (a record is padded to 4 KiB:
    // cut inside its body, 50 bytes after its header).
    let torn = tempfile::tempdir().unwrap();
    let copy = crash_copy(&db, torn.path());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(journal_path(&copy))
        .unwrap();
    f.set_len(ends[2] + 20 + 50).unwrap();
    drop(f);
    let b = RedbStore::open(&copy, opts()).unwrap();
    assert_eq!(
        rev(&b, "tv-1"),
        Some(3),
        "groups 1-3 replayed, the torn 4th not"
    );
    drop(b);
    // Flipped: a byte inside the second record's body.
    let flipped = tempfile::tempdir().unwrap();
    let copy = crash_copy(&db, flipped.path());
    let mut bytes = std::fs::read(journal_path(&copy)).unwrap();
    bytes[ends[0] as usize + 30] ^= 0x40;
    std::fs::write(journal_path(&copy), &bytes).unwrap();
    let b = RedbStore::open(&copy, opts()).unwrap();
    assert_eq!(rev(&b, "tv-1"), Some(1), "only the group before the flip");
    drop(s);
}

#[test]
fn a_fold_moves_the_epoch_and_old_records_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.redb");
    let o = opts_one_record();
    let s = RedbStore::open(&db, o.clone()).unwrap();
    // A fold every other group.
    for seq in 1..=20 {
        sync(&s, "tv-1", seq).unwrap();
    }
    let folds = s.stats().folds.load(Ordering::Relaxed);
    assert!(folds >= 2, "{folds} folds");
    // Then a removal, journaled after the last fold.
    rt().block_on(store::write(&s, |t: &mut dyn WriteTxn| {
        t.remove_pattern("tv-1", "p")
    }))
    .unwrap();
    assert_eq!(
        rev(&s, "tv-1"),
        None,
        "the overlay's removal hides the folded row"
    );
    assert_eq!(
        store::read(&s, |t| t.revision_floor("tv-1")).unwrap(),
        20,
        "the overlay's floor"
    );
    assert_eq!(
        store::read(&s, |t| t.device_patterns("tv-1"))
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        store::read(&s, |t| t.device_pattern_count("tv-1")).unwrap(),
        0
    );
    let crashed = tempfile::tempdir().unwrap();
    let copy = crash_copy(&db, crashed.path());
    let b = RedbStore::open(&copy, o).unwrap();
    assert_eq!(rev(&b, "tv-1"), None);
    assert_eq!(store::read(&b, |t| t.revision_floor("tv-1")).unwrap(), 20);
    let changes = store::read(&b, |t| t.device_changes_after(0, 100)).unwrap();
    assert_eq!(changes.len(), 21, "every change once, across the folds");
    drop(s);
}

#[test]
fn a_failed_group_leaves_the_acknowledged_ones_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.redb");
    let s = RedbStore::open(&db, opts()).unwrap();
    sync(&s, "tv-1", 1).unwrap();
    sync(&s, "tv-1", 2).unwrap();
    // A work that writes, then fails: its group is abandoned.
    let r = rt().block_on(store::write(&s, |t: &mut dyn WriteTxn| {
        t.put_pattern("tv-1", "p", &pattern(99))?;
        t.put_pattern("tv-9", "p", &pattern(99))?;
        Err::<(), _>(StoreError::Backend("injected".into()))
    }));
    assert!(r.is_err());
    assert_eq!(rev(&s, "tv-1"), Some(2));
    assert_eq!(rev(&s, "tv-9"), None);
    // The writer still holds the acknowledged groups: the next group and
    // a fold keep them.
    sync(&s, "tv-2", 1).unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let copy = crash_copy(&db, crashed.path());
    drop(s);
    for path in [&db, &copy] {
        let b = RedbStore::open(path, opts()).unwrap();
        assert_eq!(rev(&b, "tv-1"), Some(2), "{}", path.display());
        assert_eq!(rev(&b, "tv-2"), Some(1), "{}", path.display());
        assert_eq!(rev(&b, "tv-9"), None, "{}", path.display());
        let n = store::read(&b, |t| t.device_changes_after(0, 100)).unwrap();
        assert_eq!(n.len(), 3, "{}", path.display());
    }
}

#[test]
fn a_clean_close_folds_and_empties_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.redb");
    let s = RedbStore::open(&db, opts()).unwrap();
    sync(&s, "tv-1", 1).unwrap();
    s.close();
    assert_eq!(std::fs::metadata(journal_path(&db)).unwrap().len(), 0);
    drop(s);
    // Without the journal the file alone holds it.
    std::fs::remove_file(journal_path(&db)).unwrap();
    let b = RedbStore::open(&db, opts()).unwrap();
    assert_eq!(rev(&b, "tv-1"), Some(1));
}

#[test]
fn without_the_journal_every_group_is_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.redb");
    let o = RedbOptions {
        journal: false,
        ..opts()
    };
    let s = RedbStore::open(&db, o).unwrap();
    for seq in 1..=3 {
        sync(&s, "tv-1", seq).unwrap();
    }
    assert_eq!(s.stats().folds.load(Ordering::Relaxed), 3);
    assert_eq!(s.stats().journal_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(s.queue_depth(), 0);
}

/// A record planted where a replay looks for one (right after the current
/// records, in the file's stale tail) is not replayed unless it carries
/// the database's salt, which is random and never leaves the server: a
/// device whose uploaded codes spell a record, or a journal left beside
/// another database, cannot inject rows. (With the fold count as the
/// records' tag, the record of epoch 1 below was replayed.)
#[test]
fn a_record_without_the_databases_salt_is_never_replayed() {
    use super::journal::{record, Op};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.redb");
    let s = RedbStore::open(&db, opts()).unwrap();
    // A fold: an aggregation write is not journaled.
    rt().block_on(store::write(&s, |t: &mut dyn WriteTxn| {
        t.put_aggregate(999, None)
    }))
    .unwrap();
    assert_eq!(s.stats().folds.load(Ordering::Relaxed), 1);
    sync(&s, "tv-1", 1).unwrap();
    let end = s.stats().journal_bytes.load(Ordering::Relaxed);
    let crashed = tempfile::tempdir().unwrap();
    let copy = crash_copy(&db, crashed.path());
    drop(s);
    // Forged records for every small tag, one after another, right where
    // the next record would start.
    let mut forged = Vec::new();
    for tag in 0..16u64 {
        forged.extend(record(tag, &[Op::Meta("horizon".into(), 4242)]).unwrap());
    }
    let mut bytes = std::fs::read(journal_path(&copy)).unwrap();
    bytes.truncate(end as usize);
    bytes.extend(forged);
    std::fs::write(journal_path(&copy), &bytes).unwrap();
    let b = RedbStore::open(&copy, opts()).unwrap();
    assert_eq!(rev(&b, "tv-1"), Some(1), "the real record is replayed");
    assert_eq!(store::read(&b, |t| t.meta(Meta::Horizon)).unwrap(), 0);
}

/// A reader that pairs its snapshot just after a fold committed, but
/// before the fold's generation is dropped, reads the snapshot's rows, not
/// the generation's older ones (here the fold also committed a group that
/// was never in the overlay: it did not fit in the journal).
#[test]
fn a_snapshot_after_a_fold_ignores_the_folded_generation() {
    use crate::store::ReadTxn;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.redb");
    let s = RedbStore::open(&db, opts_one_record()).unwrap();
    sync(&s, "tv-1", 1).unwrap();
    // The generations as a reader pairing right after the commit gets them.
    let ((), gens) = s.overlay.pair(|| Ok(())).unwrap();
    assert_eq!(gens.len(), 1);
    sync(&s, "tv-1", 2).unwrap();
    assert_eq!(s.stats().folds.load(Ordering::Relaxed), 1);
    let snap = s.slot.get().unwrap().begin_read().unwrap();
    let r = super::txn::RedbRead::new(snap, gens).unwrap();
    assert_eq!(r.pattern("tv-1", "p").unwrap().map(|p| p.revision), Some(2));
    assert_eq!(r.device("tv-1").unwrap().map(|d| d.last_seq), Some(2));
}

/// An append that fails after its record reached the disk whole (and
/// could not be cut off) is answered with an error, and its group is never
/// applied: the writer folds at once, so the record's salt is stale before
/// anything else is acknowledged, whether the epoch had acknowledged groups
/// before it (re-applied from memory) or none (the fold is empty). Before
/// the recovery folded an empty window, the second case replayed the
/// failed group from a crash copy.
#[test]
fn a_failed_append_is_never_applied_and_the_acknowledged_groups_stay() {
    for acked_before in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.redb");
        let s = RedbStore::open(&db, opts()).unwrap();
        if acked_before {
            sync(&s, "tv-1", 1).unwrap();
        }
        s.fail_append.store(true, Ordering::Relaxed);
        assert!(
            sync(&s, "tv-2", 7).is_err(),
            "the failed append is answered so"
        );
        assert_eq!(rev(&s, "tv-2"), None);
        let crashed = tempfile::tempdir().unwrap();
        let copy = crash_copy(&db, crashed.path());
        // The live store goes on: the next sync is acknowledged.
        sync(&s, "tv-3", 1).unwrap();
        assert_eq!(rev(&s, "tv-3"), Some(1));
        drop(s);
        let b = RedbStore::open(&copy, opts()).unwrap();
        assert_eq!(rev(&b, "tv-2"), None, "acked before: {acked_before}");
        let want = acked_before.then_some(1);
        assert_eq!(rev(&b, "tv-1"), want, "acked before: {acked_before}");
        drop(b);
        let c = RedbStore::open(&db, opts()).unwrap();
        assert_eq!(rev(&c, "tv-2"), None);
        assert_eq!(rev(&c, "tv-3"), Some(1));
        assert_eq!(rev(&c, "tv-1"), want);
    }
}
