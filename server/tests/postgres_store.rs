//! The PostgreSQL backend on a private cluster (`pg_support`): schema
//! migrations from an empty database, a re-run, an older version and a
//! newer one; version 1 data carried to version 2 (revision floors);
//! migrators racing; two nodes on one database.

mod common;
mod pg_support;

use constellation::store::postgres::schema::{Migration, MIGRATIONS, V1, V2};
use constellation::store::postgres::{migrate_url, PgOptions, PgStore};
use constellation::store::{self, DeviceRecord, Meta, Store, StoreError};

/// The rows of `schema_version`, in order.
fn versions(url: &str) -> Vec<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let h = tokio::spawn(conn);
        let rows = c
            .query("SELECT version FROM schema_version ORDER BY version", &[])
            .await
            .unwrap();
        let v = rows.iter().map(|r| r.get::<_, i32>(0)).collect();
        drop(c);
        let _ = h.await;
        v
    })
}

/// A version 3 as a later release would add one: a column, and data
/// rewritten.
static WITH_V3: &[Migration] = &[
    Migration {
        version: 1,
        sql: V1,
    },
    Migration {
        version: 2,
        sql: V2,
    },
    Migration {
        version: 3,
        sql: "ALTER TABLE devices ADD COLUMN note text;
              UPDATE devices SET note = 'upgraded';
              INSERT INTO meta (key, value) VALUES ('upgraded_to', 3);",
    },
];

#[test]
fn migrations_apply_once_upgrade_an_older_schema_and_refuse_a_newer_one() {
    let Some(pg) = pg_support::cluster() else {
        return;
    };
    let url = pg.database();
    // From an empty database.
    assert_eq!(migrate_url(&url, MIGRATIONS).unwrap(), 2);
    assert_eq!(versions(&url), vec![1, 2]);
    // Re-running is a no-op.
    assert_eq!(migrate_url(&url, MIGRATIONS).unwrap(), 2);
    assert_eq!(versions(&url), vec![1, 2]);
    // Data written at version 2 ...
    let s = PgStore::open(&url, PgOptions::default()).unwrap();
    assert_eq!(
        s.aggregation_term().unwrap(),
        Some(1),
        "leads: may set meta"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(store::write(&s, |t| {
        t.put_device(
            "tv-1",
            &DeviceRecord {
                last_seq: 7,
                body_sha256: [3; 32],
                response: vec![1, 2, 3],
                snapshot_horizon: Some(4),
                syncs: 2,
            },
        )?;
        t.set_meta(Meta::GlobalId, 9)
    }))
    .unwrap();
    s.close();
    drop(s);
    // ... survives the upgrade from version 2 to 3.
    assert_eq!(migrate_url(&url, WITH_V3).unwrap(), 3);
    assert_eq!(versions(&url), vec![1, 2, 3]);
    assert_eq!(migrate_url(&url, WITH_V3).unwrap(), 3, "no-op again");
    // This binary knows version 2 only: it refuses the newer schema.
    match PgStore::open(&url, PgOptions::default()) {
        Err(StoreError::Backend(m)) => assert!(m.contains("newer"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
    // The version 2 data reads back through a version 3 schema (a store
    // that only knows the columns it needs).
    let rows = {
        let (c, conn) = rt
            .block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))
            .unwrap();
        let h = rt.spawn(conn);
        let r = rt
            .block_on(c.query(
                "SELECT last_seq, syncs, note FROM devices WHERE device_id = 'tv-1'",
                &[],
            ))
            .unwrap();
        drop(c);
        let _ = rt.block_on(h);
        r
    };
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(0), 7);
    assert_eq!(rows[0].get::<_, i64>(1), 2);
    assert_eq!(rows[0].get::<_, String>(2), "upgraded");
}

/// Runs `sql` on `url` (a plain session, no store).
fn exec(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let h = tokio::spawn(conn);
        c.batch_execute(sql).await.unwrap();
        drop(c);
        let _ = h.await;
    })
}

/// A database at version 1 (no revision floors) with a device and its
/// patterns is taken to version 2: the data reads back, floors start at 0,
/// and a removal after the upgrade raises the floor so that the pattern id
/// never gets one of its revisions again.
#[test]
fn version_1_data_migrates_to_2_with_revision_floors() {
    let Some(pg) = pg_support::cluster() else {
        return;
    };
    let url = pg.database();
    static ONLY_V1: &[Migration] = &[Migration {
        version: 1,
        sql: V1,
    }];
    assert_eq!(migrate_url(&url, ONLY_V1).unwrap(), 1);
    // Rows as a version 1 server wrote them: p at revision 5 (codes all 0,
    // one zigzag varint byte each), q at revision 2.
    exec(
        &url,
        "INSERT INTO devices (device_id, last_seq, body_sha256, response, syncs) \
         VALUES ('tv-old', 9, decode(repeat('00', 32), 'hex'), '\\x00', 9); \
         INSERT INTO patterns (device_id, pattern_id, revision, codebook, success_rate, \
         sample_count, category, codes) VALUES \
         ('tv-old', 'p', 5, 1, 0.5, 10, 'drama', decode(repeat('00', 384), 'hex')), \
         ('tv-old', 'q', 2, 1, 0.5, 10, 'drama', decode(repeat('00', 384), 'hex'));",
    );
    // Opening the store migrates (under the advisory lock) to version 2.
    let s = PgStore::open(&url, PgOptions::default()).unwrap();
    assert_eq!(versions(&url), vec![1, 2]);
    let (p, floor) = store::read(&s, |t| {
        Ok((t.pattern("tv-old", "p")?, t.revision_floor("tv-old")?))
    })
    .unwrap();
    let p = p.expect("version 1 pattern reads back");
    assert_eq!((p.revision, p.sample_count, p.codes[0]), (5, 10, 0));
    assert_eq!(floor, 0, "no floor before the first removal");
    // p removed: the floor rises to 5; removing q (2) keeps it there.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(store::write(&s, |t| {
        t.remove_pattern("tv-old", "p")?;
        t.remove_pattern("tv-old", "q")
    }))
    .unwrap();
    let (gone, floor) = store::read(&s, |t| {
        Ok((t.pattern("tv-old", "p")?, t.revision_floor("tv-old")?))
    })
    .unwrap();
    assert_eq!((gone, floor), (None, 5));
    s.close();
    drop(s);
    // The floor is stored, not cached: a new store reads it back.
    let s = PgStore::open(&url, PgOptions::default()).unwrap();
    assert_eq!(store::read(&s, |t| t.revision_floor("tv-old")).unwrap(), 5);
    s.close();
}

#[test]
fn racing_migrators_apply_each_version_once() {
    let Some(pg) = pg_support::cluster() else {
        return;
    };
    let url = pg.database();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || migrate_url(&url, MIGRATIONS))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), 2);
    }
    assert_eq!(versions(&url), vec![1, 2]);
}

#[test]
fn the_store_reads_back_what_it_wrote() {
    let Some(pg) = pg_support::cluster() else {
        return;
    };
    let url = pg.database();
    let s = PgStore::open(&url, PgOptions::default()).unwrap();
    assert_eq!(s.aggregation_term().unwrap(), Some(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let book = common::book();
    let codes = common::quantize(&common::patterns()[0]);
    let pat = store::StoredPattern {
        revision: 3,
        codebook: book.id(),
        success_rate: 0.75,
        sample_count: 42,
        category: "drama".into(),
        codes: Box::new(codes),
    };
    let p2 = pat.clone();
    rt.block_on(store::write(&s, move |t| {
        t.put_pattern("tv-1", "b", &p2)?;
        t.put_pattern("tv-1", "a", &p2)?;
        t.put_pattern("tv-2", "a", &p2)?;
        t.remove_pattern("tv-2", "a")?;
        let v1 = t.publish(&store::GlobalChange::Remove { id: 1 })?;
        let v2 = t.publish(&store::GlobalChange::Remove { id: 2 })?;
        let v3 = t.publish(&store::GlobalChange::Remove { id: 1 })?;
        assert_eq!((v1, v2, v3), (1, 2, 3));
        Ok(())
    }))
    .unwrap();
    // The removal raised tv-2's revision floor to the removed revision.
    let floors = store::read(&s, |t| {
        Ok((t.revision_floor("tv-1")?, t.revision_floor("tv-2")?))
    })
    .unwrap();
    assert_eq!(floors, (0, 3));
    let (pats, none, log, changes, version) = store::read(&s, |t| {
        let mut log = Vec::new();
        t.log_after(0, &mut |v, c| {
            log.push((v, c));
            Ok(true)
        })?;
        Ok((
            t.device_patterns("tv-1")?,
            t.pattern("tv-2", "a")?,
            log,
            t.device_changes_after(0, 100)?,
            t.meta(Meta::GlobalVersion)?,
        ))
    })
    .unwrap();
    assert_eq!(
        pats,
        vec![("a".to_string(), pat.clone()), ("b".to_string(), pat)]
    );
    assert_eq!(none, None);
    // The log keeps one entry per item, the newest.
    assert_eq!(
        log,
        vec![
            (2, store::GlobalChange::Remove { id: 2 }),
            (3, store::GlobalChange::Remove { id: 1 })
        ]
    );
    assert_eq!(version, 3);
    // Four changes, in order; consumed, they are gone.
    let names: Vec<(String, String)> = changes
        .iter()
        .map(|c| (c.device.clone(), c.pattern.clone()))
        .collect();
    assert_eq!(
        names,
        [("tv-1", "b"), ("tv-1", "a"), ("tv-2", "a"), ("tv-2", "a")]
            .map(|(d, p)| (d.to_string(), p.to_string()))
            .to_vec()
    );
    let upto = changes.last().unwrap().seq;
    rt.block_on(store::write(&s, move |t| t.drop_device_changes(upto)))
        .unwrap();
    let left = store::read(&s, |t| t.device_changes_after(0, 100)).unwrap();
    assert!(left.is_empty(), "{left:?}");
    s.close();
}

/// One aggregation leader: a second store does not lead while the first
/// lives; when the first's session dies the second takes over with a new
/// term, and the old leader can no longer write aggregation state (fenced),
/// even before it notices.
#[test]
fn one_aggregation_leader_with_takeover_and_fencing() {
    let Some(pg) = pg_support::cluster() else {
        return;
    };
    let url = pg.database();
    let a = PgStore::open(&url, PgOptions::default()).unwrap();
    let b = PgStore::open(&url, PgOptions::default()).unwrap();
    assert_eq!(a.aggregation_term().unwrap(), Some(1));
    assert_eq!(b.aggregation_term().unwrap(), None);
    assert_eq!(a.aggregation_term().unwrap(), Some(1), "still leads");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let publish = |s: &PgStore| {
        rt.block_on(store::write(s, |t| {
            t.publish(&store::GlobalChange::Remove { id: 1 })
        }))
    };
    assert_eq!(publish(&a).unwrap(), 1);
    assert!(publish(&b).is_err(), "a follower cannot publish");
    // The leader's session dies (as when its node is killed): terminated
    // from outside, without `a` being told.
    let killed: i64 = rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let h = tokio::spawn(conn);
        let n = c
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
                 WHERE locktype = 'advisory' AND objid = $1 AND granted \
                 AND database = (SELECT oid FROM pg_database \
                                 WHERE datname = current_database())",
                &[&((constellation::store::postgres::LEADER_LOCK & 0xffff_ffff) as u32)],
            )
            .await
            .unwrap()
            .get(0);
        drop(c);
        let _ = h.await;
        n
    });
    assert_eq!(killed, 1);
    // The lock is released once the server has ended that backend.
    let mut term = None;
    for _ in 0..200 {
        term = b.aggregation_term().unwrap();
        if term.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert_eq!(term, Some(2), "b took over with a new term");
    assert_eq!(publish(&b).unwrap(), 2);
    // `a` still believes term 1 for its writes: fenced.
    assert!(publish(&a).is_err(), "the old leader is fenced");
    assert_eq!(a.aggregation_term().unwrap(), None, "and now knows it");
    let v = store::read(&b, |t| t.meta(Meta::GlobalVersion)).unwrap();
    assert_eq!(v, 2);
    a.close();
    b.close();
}
