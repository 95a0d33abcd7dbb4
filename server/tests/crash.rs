//! `constellation serve` killed with SIGKILL in the middle of a run of
//! concurrent uploads and restarted on the same redb file: every
//! acknowledged update is there; each device's unacknowledged upload is
//! re-sent (same bytes) and applied exactly once.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use omega_tv_sync::codec::Codes;

/// What a device knows when the server dies.
struct Device {
    id: String,
    /// Last acknowledged sequence and the codes acknowledged with it.
    acked_seq: u64,
    acked: Codes,
    /// The upload in flight (sent, no 200 seen), with the codes it carries.
    pending: Option<(u64, Vec<u8>, Codes)>,
}

fn codes_of(j: &serde_json::Value) -> Vec<i16> {
    serde_json::from_value(j["patterns"][0]["codes"].clone()).unwrap()
}

#[test]
fn acknowledged_updates_survive_a_kill_and_unacknowledged_ones_apply_once() {
    let (_dir, db) = temp_db();
    let v = Arc::new(patterns());
    let mut srv = spawn_server(&db);
    let addr = srv.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for d in 0..4usize {
        let (v, stop) = (v.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let id = format!("tv-{d}");
            let first = quantize(&v[d]);
            let r = post_sync(addr, &id, "0", &upload(1, 0, &[Up::abs("p1", first)]));
            assert_eq!(r.status, 200);
            let mut dev = Device {
                id,
                acked_seq: 1,
                acked: first,
                pending: None,
            };
            // Bounded: at most 2000 syncs per device.
            for seq in 2..2000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let next = quantize(&v[(d * 131 + seq as usize * 7) % v.len()]);
                let body = upload(seq, 0, &[Up::delta("p1", seq as u32 - 1, dev.acked, next)]);
                dev.pending = Some((seq, body.clone(), next));
                let ok = std::panic::catch_unwind(|| post_sync(addr, &dev.id, "0", &body).status)
                    .ok()
                    == Some(200);
                if !ok {
                    break; // the server is gone: this upload stays unacknowledged
                }
                dev.acked_seq = seq;
                dev.acked = next;
                dev.pending = None;
            }
            dev
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    srv.child.kill().expect("SIGKILL");
    let _ = srv.child.wait();
    stop.store(true, Ordering::Relaxed);
    let devices: Vec<Device> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        devices.iter().any(|d| d.acked_seq > 2),
        "the run was under way when the server died"
    );

    let mut srv = spawn_server(&db);
    for dev in &devices {
        let j = device_json(srv.admin, &dev.id);
        let stored = j["last_seq"].as_u64().unwrap();
        // Everything acknowledged survived; at most the in-flight one more.
        assert!(
            stored >= dev.acked_seq,
            "{}: {stored} < {}",
            dev.id,
            dev.acked_seq
        );
        assert!(stored <= dev.acked_seq + 1, "{}", dev.id);
        if stored == dev.acked_seq {
            assert_eq!(codes_of(&j), dev.acked.to_vec(), "{}: acked codes", dev.id);
            assert_eq!(j["patterns"][0]["revision"], dev.acked_seq);
        }
        // The device re-sends its unacknowledged upload, same bytes.
        if let Some((seq, body, codes)) = &dev.pending {
            let r = post_sync(srv.addr, &dev.id, "0", body);
            assert_eq!(r.status, 200, "{}: resend", dev.id);
            let again = post_sync(srv.addr, &dev.id, "0", body);
            assert_eq!(again.status, 200);
            assert_eq!(again.header("x-replayed"), Some("true"));
            assert_eq!(again.body, r.body);
            let j = device_json(srv.admin, &dev.id);
            assert_eq!(j["last_seq"], *seq);
            assert_eq!(j["patterns"][0]["revision"], *seq, "applied exactly once");
            assert_eq!(j["syncs"], *seq, "one application per sequence");
            assert_eq!(codes_of(&j), codes.to_vec());
        }
    }
    let h = raw(srv.addr, "GET", "/api/v1/health", &[], &[]);
    assert_eq!(h.status, 200);
    srv.child.kill().unwrap();
    let _ = srv.child.wait();
}
