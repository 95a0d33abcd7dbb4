//! Regression tests for what fuzzing the decoders found (docs/reliability.md,
//! "Fuzzing"). Each builds the offending input from real frames and pins the
//! fixed behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use omega_tv_sync::sync::Outcome;
use omega_tv_sync::wire::{Ack, Conflict, GlobalRemove, Record, ServerState};
use omega_tv_sync::{Category, Error, PatternId, Response};
use omega_tv_sync_testkit::{self as t, snapshot_of as snapshot, targets};

fn ok(len: usize) -> Response {
    Response {
        status: 200,
        body_len: len,
        retry_after_s: None,
        signature: None,
    }
}

fn ack(id: &str, revision: u32) -> Record<'static> {
    Record::Ack(Ack {
        id: PatternId::new(id).unwrap(),
        revision,
    })
}

/// Applies `records` as the answer to the download target's request and
/// checks that it is refused as a protocol violation with nothing changed
/// and nothing handed to the application.
fn refused(records: &[Record<'_>]) {
    let (mut c, tx) = t::download_client();
    let before = snapshot(&c);
    let resp = t::real_download(records, c.seq(), false, false);
    let mut sink = targets::CountingSink::default();
    let r = c.apply(&tx, ok(resp.len()), &resp, 0, &mut sink);
    assert_eq!(r, Err(Error::ProtocolViolation));
    assert_eq!(snapshot(&c), before);
    assert_eq!(sink.calls, 0);
    assert_eq!(c.in_flight(), Some(tx.len()));
    // The same response without the duplicate applies.
}

/// A second ack of the same pattern used to apply its delta twice (the
/// acknowledged codes drifted from the server's), or to fail half-way
/// with some acks applied.
#[test]
fn a_pattern_answered_twice_is_refused() {
    refused(&[ack("p0", 2), ack("p0", 3)]);
    refused(&[ack("p3", 8), ack("p0", 2), ack("p1", 0), ack("p0", 2)]);
    refused(&[ack("p1", 0), ack("p1", 0)]);
    let code = t::real_code(6);
    let conflict = Record::Conflict(Conflict {
        id: PatternId::new("p0").unwrap(),
        server_rev: 5,
        state: Some(ServerState {
            success_rate: 0.7,
            sample_count: 40,
            category: Category::new("drama").unwrap(),
            code: &code,
        }),
    });
    refused(&[ack("p0", 2), conflict.clone()]);
    refused(&[conflict.clone(), ack("p0", 2)]);
    refused(&[conflict.clone(), conflict]);
}

/// Each pattern answered once still applies, in any order.
#[test]
fn each_pattern_answered_once_applies() {
    let (mut c, tx) = t::download_client();
    let resp = t::real_download(
        &[ack("p1", 0), ack("p0", 2), ack("p3", 8)],
        c.seq(),
        false,
        false,
    );
    let out = c.apply(&tx, ok(resp.len()), &resp, 0, &mut ()).unwrap();
    let Outcome::Synced(s) = out else {
        panic!("{out:?}")
    };
    assert_eq!(s.acked, 3);
    assert_eq!(c.pending(), 0);
    assert_eq!(c.acked(&PatternId::new("p0").unwrap()).unwrap().0, 2);
}

/// A response with more records than the `u16` counters of `Summary` hold
/// (the server never sends more than the device's caps, a broken one may)
/// used to overflow them.
#[test]
fn counters_of_a_huge_response_do_not_overflow() {
    let (mut c, tx) = t::download_client();
    let removes: Vec<Record<'_>> = (0..70_000u32)
        .map(|i| {
            Record::GlobalRemove(GlobalRemove {
                id: i % 100,
                version: 7,
            })
        })
        .collect();
    let mut buf = vec![0u8; 300 * 1024];
    let mut w = omega_tv_sync::wire::FrameWriter::new(
        &mut buf,
        omega_tv_sync::wire::Kind::Download,
        t::book().id(),
    )
    .unwrap();
    w.push(&Record::DownloadHead(omega_tv_sync::wire::DownloadHead {
        seq: c.seq(),
        global_version: 9,
        more: false,
        reset: false,
        next_sync_s: 60,
    }))
    .unwrap();
    for r in &removes {
        w.push(r).unwrap();
    }
    let resp = w.finish().unwrap().to_vec();
    let mut sink = targets::CountingSink::default();
    let out = c.apply(&tx, ok(resp.len()), &resp, 0, &mut sink).unwrap();
    let Outcome::Synced(s) = out else {
        panic!("{out:?}")
    };
    assert_eq!(s.globals, u16::MAX);
    assert_eq!(sink.calls, 70_000);
    assert_eq!(c.global_version(), 9);
}

/// A flash range holding data `persist` did not write (another firmware's,
/// or damaged): `load` finds no snapshot, and a `save` that reported
/// success used to be unreadable, its item written over the stray bytes.
#[test]
fn a_save_over_foreign_data_loads_back() {
    use omega_tv_sync::sync::persist;
    use t::ram_flash::{block_on, RamFlash, PAGE, PAGES};
    let input = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/regressions/flash/save-over-foreign-data-lost"
    ))
    .unwrap();
    let mut image = vec![0xffu8; PAGE * PAGES];
    image[..input.len()].copy_from_slice(&input);
    let mut f = RamFlash(image);
    let range = 0..(PAGE * PAGES) as u32;
    let mut buf = vec![0u8; persist::work_len::<RamFlash>()];
    let mut out = vec![0u8; 8 * PAGE];
    let first = block_on(persist::load(&mut f, range.clone(), &mut buf, &mut out));
    assert_eq!(first, Ok(None));
    let snap = t::download_base();
    let snap = &snap[..snap.len().min(200)];
    let saved = block_on(persist::save(&mut f, range.clone(), &mut buf, snap));
    let got = block_on(persist::load(&mut f, range, &mut buf, &mut out));
    assert_eq!(saved, Ok(()));
    assert_eq!(got, Ok(Some(snap.len())));
    assert_eq!(&out[..snap.len()], snap);
}
