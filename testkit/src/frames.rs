//! Real frames built by the core from real vectors: the requests and
//! responses of the `download` target, uploads, downloads, snapshots and
//! flash images. The seed corpora (`fuzz/seeds/`) are written from these
//! (`core/tests/fuzz_replay.rs`, `write_seed_corpora`).

use std::sync::OnceLock;

use omega_tv_sync::codec::MAX_CODED_LEN;
use omega_tv_sync::sync::Outcome;
use omega_tv_sync::wire::{
    Ack, Conflict, DownloadHead, FrameWriter, GlobalRemove, GlobalUpsert, Kind, Record,
    ServerState, TrendRecord,
};
use omega_tv_sync::{Category, ContentId, PatternId, Region, Response, TrendSignal};

use super::data::vectors;
use super::fixtures::{book, config, pattern, snapshot_of, Client, SLOTS};

/// The state every `download` input is applied to: a client whose patterns
/// `p0`..`p2` are acknowledged and `p3` conflicted without the server's
/// state (so it is re-sent absolute), as a snapshot.
pub fn download_base() -> &'static [u8] {
    static S: OnceLock<Vec<u8>> = OnceLock::new();
    S.get_or_init(|| {
        let v = vectors();
        let mut c = Client::new(book(), config());
        for (i, e) in v.iter().take(4).enumerate() {
            c.upsert(&pattern(&format!("p{i}"), e, 0.9, 20, "drama"), 0)
                .expect("upsert");
        }
        let mut tx = vec![0u8; 16 * 1024];
        let n = c.prepare(&mut tx).expect("prepare");
        let mut rx = vec![0u8; 4096];
        let mut w = FrameWriter::new(&mut rx, Kind::Download, book().id()).expect("writer");
        w.push(&Record::DownloadHead(DownloadHead {
            seq: 1,
            global_version: 10,
            more: false,
            reset: false,
            next_sync_s: 600,
        }))
        .expect("head");
        for i in 0..3 {
            w.push(&Record::Ack(Ack {
                id: PatternId::new(&format!("p{i}")).expect("id"),
                revision: 1,
            }))
            .expect("ack");
        }
        w.push(&Record::Conflict(Conflict {
            id: PatternId::new("p3").expect("id"),
            server_rev: 7,
            state: None,
        }))
        .expect("conflict");
        let resp = w.finish().expect("frame").to_vec();
        let r = Response {
            status: 200,
            body_len: resp.len(),
            retry_after_s: None,
            signature: None,
        };
        let out = c.apply(&tx[..n], r, &resp, 0, &mut ()).expect("apply");
        assert!(matches!(out, Outcome::Synced(_)));
        let mut snap = vec![0u8; Client::MAX_SNAPSHOT_LEN];
        let n = c.snapshot(&mut snap).expect("snapshot");
        snap.truncate(n);
        snap
    })
}

/// The client of the `download` target with its request in flight: `p3`
/// absolute on revision 7, `p0` changed (a delta on revision 1), `p1`
/// removed. Returns the client and the request bytes.
pub fn download_client() -> (Client, Vec<u8>) {
    let mut c = Client::restore(book(), config(), download_base()).expect("restore");
    c.upsert(&pattern("p0", &vectors()[4], 0.95, 25, "drama"), 1_000)
        .expect("upsert");
    c.remove(&PatternId::new("p1").expect("id"), 1_000)
        .expect("remove");
    let mut tx = vec![0u8; 16 * 1024];
    let n = c.prepare(&mut tx).expect("prepare");
    tx.truncate(n);
    (c, tx)
}

/// An upload of `k` real patterns (some absolute, some delta), built by a
/// client from real vectors.
pub fn real_upload(k: usize, accept_zstd: bool) -> Vec<u8> {
    let v = vectors();
    let mut cfg = config();
    cfg.accept_zstd = accept_zstd;
    let mut c = Client::new(book(), cfg);
    let k = k.min(SLOTS);
    for i in 0..k {
        let cat = ["drama", "comedy", "kids"][i % 3];
        c.upsert(
            &pattern(&format!("u{i}"), &v[i], 0.8, 12 + i as u32, cat),
            0,
        )
        .expect("upsert");
    }
    let mut tx = vec![0u8; 64 * 1024];
    let n = c.prepare(&mut tx).expect("prepare");
    tx.truncate(n);
    tx
}

/// A trend record for seeds.
pub fn trend(version: u64, id: &str, score: f32, region: &str, cat: &str) -> Record<'static> {
    Record::Trend(TrendRecord {
        version,
        signal: TrendSignal::new(
            ContentId::new(id).expect("id"),
            score,
            Region::new(region).expect("region"),
            Category::new(cat).expect("category"),
            1_700_000_000 + version,
        )
        .expect("trend"),
    })
}

/// Writes a download frame answering the `download` target's request.
pub fn real_download(records: &[Record<'_>], seq: u64, more: bool, reset: bool) -> Vec<u8> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut w = FrameWriter::new(&mut buf, Kind::Download, book().id()).expect("writer");
    w.push(&Record::DownloadHead(DownloadHead {
        seq,
        global_version: 42,
        more,
        reset,
        next_sync_s: if more { 0 } else { 720 },
    }))
    .expect("head");
    for r in records {
        w.push(r).expect("record");
    }
    w.finish().expect("frame").to_vec()
}

/// Absolute code of real vector `i` with the default codebook.
pub fn real_code(i: usize) -> Vec<u8> {
    let cb = book();
    let mut buf = [0u8; MAX_CODED_LEN];
    let n = cb
        .encode(&cb.quantize(&vectors()[i]), None, &mut buf)
        .expect("encode");
    buf[..n].to_vec()
}

/// Real download responses to [`download_client`]'s request, each with its
/// status byte in front, and a name.
pub fn real_downloads() -> Vec<(String, Vec<u8>)> {
    let (c, _) = download_client();
    let seq = c.seq();
    let id = |s: &str| PatternId::new(s).expect("id");
    let codes: Vec<Vec<u8>> = (0..8).map(real_code).collect();
    let ack = |s: &str, revision| {
        Record::Ack(Ack {
            id: id(s),
            revision,
        })
    };
    let upsert = |gid: u32, i: usize| {
        Record::GlobalUpsert(GlobalUpsert {
            id: gid,
            version: 30 + u64::from(gid),
            success_rate: 0.81,
            sample_count: 500,
            contributors: 9,
            category: Category::new("drama").expect("category"),
            code: &codes[i],
        })
    };
    let with_status = |st: u8, body: Vec<u8>| {
        let mut v = vec![st];
        v.extend_from_slice(&body);
        v
    };
    let mut out = vec![
        ("empty".into(), real_download(&[], seq, false, false)),
        (
            "acks".into(),
            real_download(
                &[ack("p3", 8), ack("p0", 2), ack("p1", 0)],
                seq,
                false,
                false,
            ),
        ),
        (
            "conflict-state".into(),
            real_download(
                &[
                    ack("p3", 8),
                    Record::Conflict(Conflict {
                        id: id("p0"),
                        server_rev: 5,
                        state: Some(ServerState {
                            success_rate: 0.7,
                            sample_count: 40,
                            category: Category::new("drama").expect("category"),
                            code: &codes[6],
                        }),
                    }),
                    ack("p1", 0),
                ],
                seq,
                false,
                false,
            ),
        ),
        (
            "conflict-bare".into(),
            real_download(
                &[Record::Conflict(Conflict {
                    id: id("p1"),
                    server_rev: 3,
                    state: None,
                })],
                seq,
                true,
                false,
            ),
        ),
        (
            "globals".into(),
            real_download(
                &[
                    upsert(1, 5),
                    upsert(2, 7),
                    Record::GlobalRemove(GlobalRemove { id: 3, version: 41 }),
                ],
                seq,
                true,
                false,
            ),
        ),
        (
            "trends".into(),
            real_download(
                &[
                    trend(40, "heat", 2.5, "DE", "fresh"),
                    trend(41, "the-third-man", 11.0, "GB", "plot"),
                ],
                seq,
                false,
                false,
            ),
        ),
        (
            "reset-all".into(),
            real_download(
                &[
                    ack("p3", 8),
                    ack("p0", 2),
                    ack("p1", 0),
                    upsert(4, 3),
                    Record::GlobalRemove(GlobalRemove { id: 1, version: 40 }),
                    trend(42, "heat", 0.5, "FR", "rotten"),
                ],
                seq,
                false,
                true,
            ),
        ),
    ];
    for (_, body) in out.iter_mut() {
        *body = with_status(0, std::mem::take(body));
    }
    out.push((
        "reject-409".into(),
        with_status(
            4,
            br#"{"error":"stale_sequence","detail":"x","last_seq": 17}"#.to_vec(),
        ),
    ));
    out.push((
        "reject-429".into(),
        with_status(5 | (8 * 3), br#"{"error":"rate_limited"}"#.to_vec()),
    ));
    out.push(("reject-503".into(), with_status(6, Vec::new())));
    out.push((
        "reject-400".into(),
        with_status(7, br#"{"error":"checksum"}"#.to_vec()),
    ));
    out
}

/// Real snapshots: the `download` target's base, and clients after a few
/// syncs with real vectors.
pub fn real_snapshots() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("download-base".to_string(), download_base().to_vec())];
    let empty = Client::new(book(), config());
    out.push(("empty".into(), snapshot_of(&empty)));
    // After the download target's request was answered by each real response.
    for (name, resp) in real_downloads().into_iter().take(3) {
        let (mut c, tx) = download_client();
        let r = Response {
            status: 200,
            body_len: resp.len() - 1,
            retry_after_s: None,
            signature: None,
        };
        c.apply(&tx, r, &resp[1..], 5_000, &mut ())
            .expect("real response applies");
        out.push((format!("after-{name}"), snapshot_of(&c)));
    }
    out
}

/// Flash images of real snapshots saved by [`persist`](omega_tv_sync::sync::persist)
/// (one save, and several), for the `flash` seeds.
#[cfg(feature = "flash")]
pub fn real_flash_images() -> Vec<(String, Vec<u8>)> {
    use super::ram_flash::{block_on, RamFlash, PAGE, PAGES};
    use omega_tv_sync::sync::persist;
    let range = 0..(PAGE * PAGES) as u32;
    let mut buf = vec![0u8; persist::work_len::<RamFlash>()];
    let mut out = Vec::new();
    let mut f = RamFlash(vec![0xff; PAGE * PAGES]);
    let small = snapshot_of(&Client::new(book(), config()));
    let large = download_base().to_vec();
    for i in 0..6 {
        let snap = if i % 2 == 0 { &small } else { &large };
        block_on(persist::save(&mut f, range.clone(), &mut buf, snap)).expect("save");
        if i == 0 || i == 1 || i == 5 {
            out.push((format!("saved-{}", i + 1), f.0.clone()));
        }
    }
    out
}
