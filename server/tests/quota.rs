//! Per-device quotas against a real server on loopback (authentication on,
//! every request signed): a device flooding fresh random pattern ids is
//! refused past its quota with `403 pattern_quota_exceeded` and nothing
//! beyond the quota is stored, while other devices sync as before; the
//! minimum sync interval refuses a new sequence but still answers a retry
//! of the applied one with its byte-identical replay.

mod common;

use common::*;
use constellation::{AuthConfig, MasterSecret, Server, ServerHandle};
use omega_tv_sync::transport::auth::{format_header, sign, HEADER_MAX};
use omega_tv_sync::DeviceKey;

fn authz(key: &DeviceKey, device: &str, counter: u64, body: &[u8]) -> String {
    let sig = sign(key, "POST", "/api/v1/sync", device, counter, body).unwrap();
    let mut buf = [0u8; HEADER_MAX];
    format_header(counter, &sig, &mut buf).to_string()
}

fn post(addr: std::net::SocketAddr, device: &str, auth: &str, body: &[u8]) -> Raw {
    raw(
        addr,
        "POST",
        "/api/v1/sync",
        &[
            ("X-Device-ID", device),
            ("X-Sync-Version", "0"),
            ("Content-Type", "application/octet-stream"),
            ("Authorization", auth),
        ],
        body,
    )
}

async fn start_signed(
    db: &std::path::Path,
    f: impl FnOnce(&mut constellation::Config),
) -> ServerHandle {
    let mut c = config(db);
    c.auth = AuthConfig::with_master(MasterSecret::from_bytes([0x24; 32]));
    f(&mut c);
    Server::start(c).await.expect("server starts")
}

/// A device that signs its requests with a running counter.
struct Dev {
    id: &'static str,
    key: DeviceKey,
    counter: u64,
}

impl Dev {
    async fn new(srv: &ServerHandle, id: &'static str) -> Self {
        let key = srv.enrol(id).await.unwrap();
        Dev {
            id,
            key,
            counter: 0,
        }
    }
    fn send(&mut self, srv: &ServerHandle, body: &[u8]) -> Raw {
        self.counter += 1;
        let a = authz(&self.key, self.id, self.counter, body);
        post(srv.local_addr(), self.id, &a, body)
    }
}

/// Fresh pseudo-random pattern ids (splitmix64), leaked for `Up`'s
/// `&'static str`.
fn random_ids(seed: &mut u64, n: usize) -> Vec<&'static str> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            &*format!("f{:010x}", z >> 24).leak()
        })
        .collect()
}

/// An upload that removes pattern `id` acknowledged at `base_rev`.
fn removal(seq: u64, id: &str, base_rev: u32) -> Vec<u8> {
    use omega_tv_sync::wire::{FrameWriter, Kind, PatternRemoval, Record, UploadHead};
    let mut buf = vec![0u8; 4096];
    let mut w = FrameWriter::new(&mut buf, Kind::Upload, book().id()).unwrap();
    w.push(&Record::UploadHead(UploadHead {
        seq,
        since: 0,
        caps: caps(),
    }))
    .unwrap();
    w.push(&Record::Removal(PatternRemoval {
        id: omega_tv_sync::PatternId::new(id).unwrap(),
        base_rev,
    }))
    .unwrap();
    w.finish().unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_flooding_fresh_pattern_ids_is_refused_past_its_quota() {
    const QUOTA: u32 = 40;
    let (_dir, db) = temp_db();
    let srv = start_signed(&db, |c| c.max_patterns_per_device = QUOTA).await;
    let v = patterns();
    let codes: Vec<_> = v.iter().map(quantize).collect();
    let mut flooder = Dev::new(&srv, "tv-flood").await;
    let mut honest = Dev::new(&srv, "tv-honest").await;
    let mut seed = 7u64;
    let (mut seq, mut accepted, mut refused) = (0u64, 0usize, 0usize);
    // 30 uploads of 7 fresh ids each (210 ids, 5x the quota).
    for i in 0..30 {
        let ids = random_ids(&mut seed, 7);
        let items: Vec<Up> = ids
            .iter()
            .enumerate()
            .map(|(j, id)| Up::abs(id, codes[(i + j) % codes.len()]))
            .collect();
        let body = upload(seq + 1, 0, &items);
        let r = flooder.send(&srv, &body);
        match r.status {
            200 => {
                seq += 1;
                accepted += ids.len();
            }
            403 => {
                assert_eq!(r.json()["error"], "pattern_quota_exceeded");
                assert!(
                    r.header("x-ots-signature").is_some(),
                    "signed for the device"
                );
                refused += 1;
            }
            s => panic!("upload {i}: {s} {}", String::from_utf8_lossy(&r.body)),
        }
    }
    // 5 uploads of 7 fit (35), every later one is refused whole.
    assert_eq!((accepted, refused), (35, 25));
    let stored = srv.device_state("tv-flood").unwrap().patterns.len();
    assert_eq!(stored, 35);
    assert!(stored <= QUOTA as usize, "nothing stored beyond the quota");
    // Up to the quota exactly: 5 more fit, one more does not.
    let fill = random_ids(&mut seed, 5);
    let items: Vec<Up> = fill.iter().map(|id| Up::abs(id, codes[0])).collect();
    assert_eq!(flooder.send(&srv, &upload(seq + 1, 0, &items)).status, 200);
    seq += 1;
    let one = random_ids(&mut seed, 1);
    let r = flooder.send(&srv, &upload(seq + 1, 0, &[Up::abs(one[0], codes[1])]));
    assert_eq!(r.status, 403);
    assert_eq!(
        srv.device_state("tv-flood").unwrap().patterns.len(),
        QUOTA as usize
    );
    // At the quota, an update of a stored id still goes.
    let first = srv.device_state("tv-flood").unwrap().patterns[0].clone();
    let id0: &'static str = first.id.clone().leak();
    let upd = Up {
        base_rev: 1,
        ..Up::abs(id0, codes[2])
    };
    assert_eq!(flooder.send(&srv, &upload(seq + 1, 0, &[upd])).status, 200);
    seq += 1;
    // A removal makes room for one new id.
    assert_eq!(flooder.send(&srv, &removal(seq + 1, id0, 2)).status, 200);
    seq += 1;
    let new = random_ids(&mut seed, 1);
    let r = flooder.send(&srv, &upload(seq + 1, 0, &[Up::abs(new[0], codes[3])]));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        srv.device_state("tv-flood").unwrap().patterns.len(),
        QUOTA as usize
    );
    // Another device is not affected.
    let body = upload(1, 0, &[Up::abs("h1", codes[0]), Up::abs("h2", codes[1])]);
    assert_eq!(honest.send(&srv, &body).status, 200);
    assert_eq!(srv.device_state("tv-honest").unwrap().patterns.len(), 2);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_inside_the_minimum_interval_gets_its_replay_not_429() {
    let (_dir, db) = temp_db();
    let srv = start_signed(&db, |c| c.min_sync_interval_s = 600).await;
    let v = patterns();
    let mut dev = Dev::new(&srv, "tv-retry").await;
    let body = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    let first = dev.send(&srv, &body);
    assert_eq!(first.status, 200);
    // The response was lost: the device resends the same request (same seq
    // and body, its next counter) at once. It gets the first answer byte
    // for byte (the old server answered 429 rate_limited).
    let again = dev.send(&srv, &body);
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.header("x-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    let st = srv.device_state("tv-retry").unwrap();
    assert_eq!((st.last_seq, st.syncs), (Some(1), 1));
    // A new sequence inside the interval is still refused.
    let next = upload(2, 0, &[Up::abs("p2", quantize(&v[1]))]);
    let r = dev.send(&srv, &next);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    srv.shutdown().await;
}
