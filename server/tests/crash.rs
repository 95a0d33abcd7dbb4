//! `constellation serve` killed with SIGKILL mid-run and restarted on the
//! same redb file: every acknowledged update is there; an unacknowledged one
//! is re-sent and applied once.

mod common;

use std::time::Duration;

use common::*;

fn device_json(addr: std::net::SocketAddr, id: &str) -> serde_json::Value {
    raw(
        addr,
        "GET",
        &format!("/api/v1/devices/{id}/patterns"),
        &[],
        &[],
    )
    .json()
}

#[test]
fn acknowledged_updates_survive_a_kill() {
    let (_dir, db) = temp_db();
    let v = patterns();
    let mut srv = spawn_server(&db);
    // Acknowledged updates from three devices, several syncs each.
    let mut acked: Vec<(String, u64, Vec<i16>)> = Vec::new();
    for d in 0..3 {
        let dev = format!("tv-{d}");
        let mut prev = quantize(&v[d]);
        let r = post_sync(srv.addr, &dev, "0", &upload(1, 0, &[Up::abs("p1", prev)]));
        assert_eq!(r.status, 200);
        for seq in 2..=5u64 {
            let next = quantize(&v[d + 10 * seq as usize]);
            let body = upload(seq, 0, &[Up::delta("p1", (seq - 1) as u32, prev, next)]);
            assert_eq!(post_sync(srv.addr, &dev, "0", &body).status, 200);
            prev = next;
        }
        acked.push((dev, 5, prev.to_vec()));
    }
    // An upload in flight when the process dies: its response is never read.
    let base = acked[0].2.clone();
    let base: [i16; omega_tv_sync::DIM] = base.try_into().unwrap();
    let last = quantize(&v[333]);
    let pending = upload(6, 0, &[Up::delta("p1", 5, base, last)]);
    let addr = srv.addr;
    let body = pending.clone();
    let inflight = std::thread::spawn(move || {
        // The connection may be cut before an answer: that is the point.
        std::panic::catch_unwind(|| post_sync(addr, "tv-0", "0", &body).status).ok()
    });
    std::thread::sleep(Duration::from_millis(2));
    srv.child.kill().expect("SIGKILL");
    let _ = srv.child.wait();
    let _ = inflight.join();

    let mut srv = spawn_server(&db);
    for (dev, seq, codes) in &acked[1..] {
        let j = device_json(srv.addr, dev);
        assert_eq!(j["last_seq"], *seq);
        assert_eq!(j["patterns"][0]["revision"], 5);
        let got: Vec<i16> = serde_json::from_value(j["patterns"][0]["codes"].clone()).unwrap();
        assert_eq!(&got, codes, "{dev}: acknowledged codes survive");
    }
    let j = device_json(srv.addr, "tv-0");
    let seq = j["last_seq"].as_u64().unwrap();
    assert!(
        seq == 5 || seq == 6,
        "either before or after the in-flight commit"
    );
    // The device never saw a 200 for seq 6: it re-sends the same bytes.
    let r = post_sync(srv.addr, "tv-0", "0", &pending);
    assert_eq!(r.status, 200);
    let again = post_sync(srv.addr, "tv-0", "0", &pending);
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-replayed"), Some("true"));
    assert_eq!(again.body, r.body);
    let j = device_json(srv.addr, "tv-0");
    assert_eq!(j["last_seq"], 6);
    assert_eq!(j["patterns"][0]["revision"], 6, "applied exactly once");
    let got: Vec<i16> = serde_json::from_value(j["patterns"][0]["codes"].clone()).unwrap();
    assert_eq!(got, last.to_vec());
    assert_eq!(j["syncs"], 6);
    let h = raw(srv.addr, "GET", "/api/v1/health", &[], &[]);
    assert_eq!(h.status, 200);
    srv.child.kill().unwrap();
    let _ = srv.child.wait();
}
