//! The sync endpoint against the real server on loopback, a temp redb file,
//! the real codec and real vectors.

mod common;

use common::*;
use omega_tv_sync::wire::{crc32, Record, MAX_UPLOAD_FRAME};
use omega_tv_sync_http::HttpTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_upload_is_applied_once() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let addr = srv.local_addr();
    let mut t = HttpTransport::new(&srv.url()).unwrap();
    let v = patterns();
    let items = [
        Up::abs("p1", quantize(&v[0])),
        Up::abs("p2", quantize(&v[1])),
        Up::abs("p3", quantize(&v[2])),
    ];
    let body = upload(1, 0, &items);
    let (s1, r1) = sync(&mut t, "tv-1", 0, &body).await;
    assert_eq!(s1, 200);
    // The same request again, twice: the stored response, byte for byte.
    let (s2, r2) = sync(&mut t, "tv-1", 0, &body).await;
    let raw2 = post_sync(addr, "tv-1", "0", &body);
    assert_eq!((s2, raw2.status), (200, 200));
    assert_eq!(r2, r1);
    assert_eq!(raw2.body, r1);
    assert_eq!(raw2.header("x-replayed"), Some("true"));
    let acks: Vec<u32> = records(&r1)
        .iter()
        .filter_map(|r| match r {
            Record::Ack(a) => Some(a.revision),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![1, 1, 1]);

    let st = srv.device_state("tv-1").unwrap();
    assert_eq!(st.last_seq, Some(1));
    assert_eq!(st.syncs, 1);
    assert_eq!(st.patterns.len(), 3);
    for (p, u) in st.patterns.iter().zip(&items) {
        assert_eq!(p.revision, 1, "applied once");
        assert_eq!(p.codes, u.codes.to_vec());
    }
    assert_eq!(metric(admin(&srv), "constellation_syncs_total"), 1.0);
    assert_eq!(
        metric(admin(&srv), "constellation_retries_replayed_total"),
        2.0
    );
    assert_eq!(metric(admin(&srv), "constellation_acks_total"), 3.0);

    // Closed loop: a delta on the acknowledged codes lands exactly on the new codes.
    let newer = quantize(&v[10]);
    let body = upload(2, 0, &[Up::delta("p1", 1, items[0].codes, newer)]);
    let (s, _) = sync(&mut t, "tv-1", 0, &body).await;
    assert_eq!(s, 200);
    let st = srv.device_state("tv-1").unwrap();
    let p1 = st.patterns.iter().find(|p| p.id == "p1").unwrap();
    assert_eq!((p1.revision, p1.sample_count), (2, 25));
    assert_eq!(p1.codes, newer.to_vec());
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_sessions_of_one_device_conflict() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let mut a = HttpTransport::new(&srv.url()).unwrap();
    let mut b = HttpTransport::new(&srv.url()).unwrap();
    let v = patterns();
    let base = quantize(&v[0]);
    assert_eq!(
        sync(&mut a, "tv-9", 0, &upload(1, 0, &[Up::abs("p1", base)]))
            .await
            .0,
        200
    );
    // Session A moves p1 to revision 2.
    let qa = quantize(&v[3]);
    let (s, _) = sync(
        &mut a,
        "tv-9",
        0,
        &upload(2, 0, &[Up::delta("p1", 1, base, qa)]),
    )
    .await;
    assert_eq!(s, 200);
    // Session B (a restored backup) still believes revision 1.
    let qb = quantize(&v[4]);
    let (s, resp) = sync(
        &mut b,
        "tv-9",
        0,
        &upload(3, 0, &[Up::delta("p1", 1, base, qb)]),
    )
    .await;
    assert_eq!(s, 200);
    let recs = records(&resp);
    let Record::Conflict(c) = &recs[1] else {
        panic!("expected a conflict, got {:?}", recs[1]);
    };
    assert_eq!(c.server_rev, 2);
    let state = c.state.as_ref().expect("server state fits");
    let mut server_codes = [0i16; omega_tv_sync::DIM];
    book().decode(state.code, None, &mut server_codes).unwrap();
    assert_eq!(server_codes, qa, "the conflict carries the server's codes");
    // Nothing was overwritten.
    let st = srv.device_state("tv-9").unwrap();
    assert_eq!(
        (st.patterns[0].revision, st.patterns[0].codes.clone()),
        (2, qa.to_vec())
    );
    // B resolves on the server's revision: applies.
    let (s, resp) = sync(
        &mut b,
        "tv-9",
        0,
        &upload(4, 0, &[Up::delta("p1", 2, qa, qb)]),
    )
    .await;
    assert_eq!(s, 200);
    assert!(matches!(&records(&resp)[1], Record::Ack(a) if a.revision == 3));
    assert_eq!(
        srv.device_state("tv-9").unwrap().patterns[0].codes,
        qb.to_vec()
    );
    assert_eq!(metric(admin(&srv), "constellation_conflicts_total"), 1.0);
    srv.shutdown().await;
}

fn patch_crc(f: &mut [u8]) {
    let n = f.len() - 4;
    let c = crc32(&f[..n]);
    f[n..].copy_from_slice(&c.to_le_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_their_4xx_and_store_nothing() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let addr = srv.local_addr();
    let v = patterns();
    let q0 = quantize(&v[0]);
    // A known state first.
    let ok = upload(1, 0, &[Up::abs("p1", q0)]);
    assert_eq!(post_sync(addr, "tv-2", "0", &ok).status, 200);
    let before = srv.device_state("tv-2").unwrap();
    let version_before = srv.global_version().unwrap();

    let good = upload(2, 0, &[Up::abs("p2", quantize(&v[1]))]);
    let ct = ("Content-Type", "application/octet-stream");
    let mut cases: Vec<(&str, Raw, u16, &str)> = Vec::new();
    let hdrs = |d: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![("X-Device-ID", d), ("X-Sync-Version", "0"), ct]
    };
    let post = |h: &[(&str, &str)], b: &[u8]| raw(addr, "POST", "/api/v1/sync", h, b);
    cases.push((
        "no device id",
        post(&[("X-Sync-Version", "0"), ct], &good),
        400,
        "missing_device_id",
    ));
    cases.push((
        "bad device id",
        post(
            &[("X-Device-ID", "tv 2"), ("X-Sync-Version", "0"), ct],
            &good,
        ),
        400,
        "invalid_device_id",
    ));
    cases.push((
        "no version",
        post(&[("X-Device-ID", "tv-2"), ct], &good),
        400,
        "missing_sync_version",
    ));
    cases.push((
        "bad version",
        post(
            &[("X-Device-ID", "tv-2"), ("X-Sync-Version", "x1"), ct],
            &good,
        ),
        400,
        "invalid_sync_version",
    ));
    cases.push((
        "version mismatch",
        post_sync(addr, "tv-2", "7", &good),
        400,
        "header_mismatch",
    ));
    cases.push((
        "wrong content type",
        post(
            &[
                ("X-Device-ID", "tv-2"),
                ("X-Sync-Version", "0"),
                ("Content-Type", "application/json"),
            ],
            &good,
        ),
        415,
        "unsupported_media_type",
    ));
    cases.push((
        "truncated",
        post(&hdrs("tv-2"), &good[..good.len() / 2]),
        400,
        "checksum",
    ));
    cases.push(("tiny", post(&hdrs("tv-2"), &good[..6]), 400, "truncated"));
    cases.push(("empty", post(&hdrs("tv-2"), &[]), 400, "truncated"));
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    patch_crc(&mut bad_magic);
    cases.push((
        "bad magic",
        post(&hdrs("tv-2"), &bad_magic),
        400,
        "bad_magic",
    ));
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    cases.push(("bad crc", post(&hdrs("tv-2"), &bad_crc), 400, "checksum"));
    let big = vec![0u8; MAX_UPLOAD_FRAME + 1];
    cases.push(("oversize", post(&hdrs("tv-2"), &big), 413, "body_too_large"));
    // NaN success rate, with a valid CRC.
    let mut nan = good.clone();
    let pos = nan
        .windows(4)
        .position(|w| w == 0.8f32.to_le_bytes())
        .expect("rate bytes");
    nan[pos..pos + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    patch_crc(&mut nan);
    cases.push(("nan", post(&hdrs("tv-2"), &nan), 400, "non_finite"));
    let mut inf = good.clone();
    inf[pos..pos + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    patch_crc(&mut inf);
    cases.push(("inf", post(&hdrs("tv-2"), &inf), 400, "non_finite"));
    let mut rate = good.clone();
    rate[pos..pos + 4].copy_from_slice(&1.5f32.to_le_bytes());
    patch_crc(&mut rate);
    cases.push(("rate", post(&hdrs("tv-2"), &rate), 400, "rate_out_of_range"));
    let unknown = upload_with(0xdead_beef, 2, 0, caps(), &[Up::abs("p2", quantize(&v[1]))]);
    cases.push((
        "unknown codebook",
        post(&hdrs("tv-2"), &unknown),
        422,
        "unknown_codebook",
    ));
    // A corrupt code stream (last code byte flipped), CRC fixed.
    let mut corrupt = good.clone();
    let at = corrupt.len() - 6;
    corrupt[at] ^= 0x5a;
    patch_crc(&mut corrupt);
    let r = post(&hdrs("tv-2"), &corrupt);
    assert_eq!(r.status, 400, "corrupt stream");
    let code = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        [
            "corrupt_stream",
            "code_out_of_range",
            "truncated",
            "malformed"
        ]
        .contains(&code.as_str()),
        "corrupt stream code {code}"
    );
    // A reused sequence with another body, and an old one.
    let reused = upload(1, 0, &[Up::abs("p1", quantize(&v[5]))]);
    cases.push((
        "reused seq",
        post(&hdrs("tv-2"), &reused),
        409,
        "sequence_reused",
    ));
    let stale = upload(0, 0, &[Up::abs("p1", quantize(&v[5]))]);
    cases.push((
        "stale seq",
        post(&hdrs("tv-2"), &stale),
        409,
        "stale_sequence",
    ));
    // Unknown frame kind: a download frame posted as an upload.
    let dl = post_sync(addr, "tv-2", "0", &ok).body; // replay: a download frame
    cases.push((
        "download frame",
        post(&hdrs("tv-2"), &dl),
        400,
        "unknown_kind",
    ));

    for (name, r, status, code) in &cases {
        assert_eq!(r.status, *status, "{name}: status");
        let j = r.json();
        assert_eq!(j["error"], *code, "{name}: code");
        assert!(j["detail"].is_string(), "{name}: detail");
        if *status == 409 {
            assert_eq!(j["last_seq"], 1, "{name}: last_seq");
        }
    }
    // Nothing stored; the server is healthy and still applies good uploads.
    assert_eq!(srv.device_state("tv-2").unwrap(), before);
    assert_eq!(srv.global_version().unwrap(), version_before);
    assert!(srv.device_state("tv 2").unwrap().patterns.is_empty());
    let h = raw(addr, "GET", "/api/v1/health", &[], &[]);
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));
    assert_eq!(post_sync(addr, "tv-2", "0", &good).status, 200);
    assert_eq!(srv.device_state("tv-2").unwrap().patterns.len(), 2);
    assert!(metric(admin(&srv), "constellation_syncs_rejected_total") >= cases.len() as f64);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_frequent_syncs_get_429_with_retry_after() {
    let (_dir, db) = temp_db();
    let mut cfg = config(&db);
    cfg.min_sync_interval_s = 600;
    let srv = constellation::Server::start(cfg).await.unwrap();
    let addr = srv.local_addr();
    let v = patterns();
    let first = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    assert_eq!(post_sync(addr, "tv-3", "0", &first).status, 200);
    let r = post_sync(
        addr,
        "tv-3",
        "0",
        &upload(2, 0, &[Up::abs("p2", quantize(&v[1]))]),
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    let after: u32 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=600).contains(&after));
    // Another device is not affected.
    assert_eq!(post_sync(addr, "tv-4", "0", &first).status, 200);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_health_and_pacing() {
    let (_dir, db) = temp_db();
    let mut cfg = config(&db);
    cfg.sync_interval = 300..=900;
    let srv = constellation::Server::start(cfg).await.unwrap();
    let addr = srv.local_addr();
    let r = raw(addr, "GET", "/api/v1/sync/version", &[], &[]);
    assert_eq!((r.status, r.json()["version"].as_u64()), (200, Some(0)));
    let v = patterns();
    for seq in 1..=20u64 {
        let body = upload(seq, 0, &[Up::abs("p1", quantize(&v[seq as usize]))]);
        let body = if seq == 1 {
            body
        } else {
            let prev = quantize(&v[seq as usize - 1]);
            upload(
                seq,
                0,
                &[Up::delta(
                    "p1",
                    (seq - 1) as u32,
                    prev,
                    quantize(&v[seq as usize]),
                )],
            )
        };
        let r = post_sync(addr, "tv-5", "0", &body);
        assert_eq!(r.status, 200);
        let h = head(&r.body);
        assert_eq!(h.seq, seq);
        assert!(!h.more);
        assert!((300..=900).contains(&h.next_sync_s), "{}", h.next_sync_s);
    }
    srv.shutdown().await;
}

/// Re-frames `frame` with its body zstd-compressed (flag bit 0).
fn compressed(frame: &[u8]) -> Vec<u8> {
    use omega_tv_sync::wire::zstd::{Compressor, CCTX_WORKSPACE_WORDS};
    use omega_tv_sync::wire::{FLAG_ZSTD, HEADER_LEN};
    let body = &frame[HEADER_LEN..frame.len() - 4];
    let mut ws = vec![0u64; CCTX_WORKSPACE_WORDS];
    let mut z = vec![0u8; body.len() + 1024];
    let n = Compressor::new(&mut ws)
        .unwrap()
        .compress(body, &mut z)
        .unwrap();
    let mut out = frame[..HEADER_LEN].to_vec();
    out[4] |= FLAG_ZSTD;
    out.extend_from_slice(&z[..n]);
    out.extend_from_slice(&[0; 4]);
    patch_crc(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_uploads_are_accepted() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let addr = srv.local_addr();
    let v = patterns();
    let items = [
        Up::abs("p1", quantize(&v[0])),
        Up::abs("p2", quantize(&v[1])),
    ];
    let body = compressed(&upload(1, 0, &items));
    let r = post_sync(addr, "tv-z", "0", &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let st = srv.device_state("tv-z").unwrap();
    assert_eq!(st.patterns.len(), 2);
    assert_eq!(st.patterns[0].codes, items[0].codes.to_vec());
    // Garbage behind the flag: a 400, nothing stored.
    let mut bad = upload(2, 0, &[Up::abs("p3", quantize(&v[2]))]);
    bad[4] |= omega_tv_sync::wire::FLAG_ZSTD;
    patch_crc(&mut bad);
    let r = post_sync(addr, "tv-z", "0", &bad);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "decompression");
    assert_eq!(srv.device_state("tv-z").unwrap().patterns.len(), 2);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_answers_503_with_retry_after() {
    let (_dir, db) = temp_db();
    let mut cfg = config(&db);
    cfg.queue_limit = 1;
    cfg.overload_retry_after_s = 3;
    let srv = constellation::Server::start(cfg).await.unwrap();
    let addr = srv.local_addr();
    // Hold the writer inside a transaction, and fill the one queue slot
    // (with our filler or with work the server queued meanwhile).
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let store = srv.state().store.clone();
    let hold: constellation::store::Work = Box::new(move |_txn| {
        let _ = held_tx.send(());
        let _ = release_rx.recv_timeout(std::time::Duration::from_secs(30));
        let f: constellation::store::Finish = Box::new(|_| {});
        (f, Ok(()))
    });
    store.submit(hold).unwrap();
    held_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the writer runs the hold");
    // The writer is blocked: submissions fill the slot, then are refused.
    let mut filled = false;
    for _ in 0..10 {
        let filler: constellation::store::Work = Box::new(|_txn| {
            let f: constellation::store::Finish = Box::new(|_| {});
            (f, Ok(()))
        });
        if let Err(e) = store.submit(filler) {
            assert!(
                matches!(e, constellation::store::StoreError::Overloaded),
                "{e}"
            );
            filled = true;
            break;
        }
    }
    assert!(filled, "queue slot filled");
    let v = patterns();
    let body = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    let r = post_sync(addr, "tv-busy", "0", &body);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "overloaded");
    let after: u32 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&after));
    // Released, the same request applies.
    release_tx.send(()).unwrap();
    let mut ok = false;
    for _ in 0..1000 {
        let r = post_sync(addr, "tv-busy", "0", &body);
        if r.status == 200 {
            ok = true;
            break;
        }
        assert_eq!(r.status, 503);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(ok);
    assert_eq!(srv.device_state("tv-busy").unwrap().patterns.len(), 1);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_process_on_the_same_file() {
    let (_dir, db) = temp_db();
    let srv = start(&db).await;
    let v = patterns();
    let body = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    assert_eq!(post_sync(srv.local_addr(), "tv-r", "0", &body).status, 200);
    let before = srv.device_state("tv-r").unwrap();
    srv.shutdown().await;
    let srv = start(&db).await;
    assert_eq!(srv.device_state("tv-r").unwrap(), before);
    // The retry after the restart is a replay.
    let r = post_sync(srv.local_addr(), "tv-r", "0", &body);
    assert_eq!((r.status, r.header("x-replayed")), (200, Some("true")));
    let m = raw(admin(&srv), "GET", "/metrics", &[], &[]);
    let text = String::from_utf8(m.body).unwrap();
    assert!(text.contains("constellation_sync_duration_seconds_bucket{le=\"+Inf\"} 1"));
    srv.shutdown().await;
}
