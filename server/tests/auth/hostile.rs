//! Hostile authentication inputs, each tried many times.

use crate::common::*;
use crate::{
    auth_failures, authz, post_signed, snapshot, start_auth, wire_code, UNAUTHORIZED_BODY,
};
use omega_tv_sync::DeviceKey;

/// The hostile inputs of docs/reliability.md ("Authentication"), each tried
/// many times: every one must be a 401 with its code, counted in the metric,
/// with the store (device state, enrolment counter, applied syncs) unchanged.
/// Prints the table's rows (`cargo test -p constellation --test auth --
/// --nocapture hostile`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_refused_and_store_nothing() {
    let (_dir, db) = temp_db();
    let srv = start_auth(&db).await;
    let addr = srv.local_addr();
    let key = srv.enrol("tv-h").await.unwrap();
    let v = patterns();
    let body1 = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    let r = post_signed(
        addr,
        "tv-h",
        "0",
        Some(&authz(&key, "tv-h", 100, &body1)),
        &body1,
    );
    assert_eq!(r.status, 200);
    let body = upload(2, 0, &[Up::abs("p2", quantize(&v[1]))]);
    let good = authz(&key, "tv-h", 101, &body);
    let sig_at = good.find("sig=").unwrap() + 4;
    let before = snapshot(&srv, "tv-h");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };

    type Case = (String, &'static str, Vec<(String, Option<String>, Vec<u8>)>);
    let mut cases: Vec<Case> = Vec::new();
    cases.push((
        "no Authorization header".into(),
        "missing_auth",
        vec![("tv-h".into(), None, body.clone())],
    ));
    let malformed = [
        "",
        "Bearer abc",
        "OTS1-HMAC-SHA256",
        "OTS1-HMAC-SHA256 counter=101",
        "OTS1-HMAC-SHA256 counter=,sig=00",
        "OTS1-HMAC-SHA256 counter=-1,sig=",
        "OTS1-HMAC-SHA256 counter=99999999999999999999,sig=",
        "ots1-hmac-sha256 counter=101,sig=",
    ];
    let mut m: Vec<(String, Option<String>, Vec<u8>)> = malformed
        .iter()
        .map(|h| {
            let full = if h.ends_with("sig=") {
                format!("{h}{}", &good[sig_at..])
            } else {
                h.to_string()
            };
            ("tv-h".to_string(), Some(full), body.clone())
        })
        .collect();
    m.push(("tv-h".into(), Some(format!("{}0", good)), body.clone())); // 65 hex
    m.push((
        "tv-h".into(),
        Some(good[..good.len() - 1].to_string()),
        body.clone(),
    ));
    m.push((
        "tv-h".into(),
        Some(
            good.replace("sig=", "sig=zz")
                .chars()
                .take(good.len())
                .collect(),
        ),
        body.clone(),
    ));
    cases.push(("malformed header (11 shapes)".into(), "malformed_auth", m));
    cases.push((
        "device never enrolled (random ids, key of another device)".into(),
        "unknown_device",
        (0..50)
            .map(|_| {
                let id = format!("tv-x{:x}", next());
                let a = authz(&key, &id, 101, &body);
                (id, Some(a), body.clone())
            })
            .collect(),
    ));
    cases.push((
        "random signature".into(),
        "bad_signature",
        (0..100)
            .map(|_| {
                let mut k = [0u8; 32];
                for c in k.chunks_mut(8) {
                    c.copy_from_slice(&next().to_le_bytes());
                }
                let a = authz(&DeviceKey::new(k), "tv-h", 101, &body);
                ("tv-h".to_string(), Some(a), body.clone())
            })
            .collect(),
    ));
    cases.push((
        "one signature bit flipped (every bit)".into(),
        "bad_signature",
        (0..256)
            .map(|bit| {
                let mut s = good.clone().into_bytes();
                let at = sig_at + bit / 4;
                let nib = u8::from_str_radix(std::str::from_utf8(&s[at..at + 1]).unwrap(), 16)
                    .unwrap()
                    ^ (1 << (bit % 4));
                s[at] = b"0123456789abcdef"[usize::from(nib)];
                (
                    "tv-h".to_string(),
                    Some(String::from_utf8(s).unwrap()),
                    body.clone(),
                )
            })
            .collect(),
    ));
    cases.push((
        "body changed after signing (one bit, every byte)".into(),
        "bad_signature",
        (0..body.len())
            .map(|i| {
                let mut b = body.clone();
                b[i] ^= 1 << (i % 8);
                ("tv-h".to_string(), Some(good.clone()), b)
            })
            .collect(),
    ));
    cases.push((
        "signed for another device id or counter".into(),
        "bad_signature",
        vec![
            (
                "tv-h".into(),
                Some(authz(&key, "tv-i", 101, &body)),
                body.clone(),
            ),
            (
                "tv-h".into(),
                Some(good.replace("counter=101", "counter=102")),
                body.clone(),
            ),
        ],
    ));
    cases.push((
        "replayed or older counter (0..=100), validly signed".into(),
        "replayed_counter",
        (0..=100)
            .map(|c| {
                (
                    "tv-h".to_string(),
                    Some(authz(&key, "tv-h", c, &body)),
                    body.clone(),
                )
            })
            .collect(),
    ));
    cases.push((
        "the accepted request replayed byte for byte".into(),
        "replayed_counter",
        (0..20)
            .map(|_| {
                (
                    "tv-h".to_string(),
                    Some(authz(&key, "tv-h", 100, &body1)),
                    body1.clone(),
                )
            })
            .collect(),
    ));

    println!("| hostile input | tries | expected | observed |");
    println!("|---|---:|---|---|");
    for (what, code, reqs) in &cases {
        let m0 = auth_failures(admin(&srv), code);
        let mut ok = 0usize;
        for (dev, auth, b) in reqs {
            let r = post_signed(addr, dev, "0", auth.as_deref(), b);
            assert_eq!(r.status, 401, "{what}: {auth:?}");
            assert_eq!(r.json()["error"], wire_code(code), "{what}: {auth:?}");
            if wire_code(code) == "unauthorized" {
                assert_eq!(r.body, UNAUTHORIZED_BODY, "{what}: {auth:?}");
            }
            ok += 1;
        }
        assert_eq!(snapshot(&srv, "tv-h"), before, "{what}: store unchanged");
        assert_eq!(
            auth_failures(admin(&srv), code),
            m0 + reqs.len() as f64,
            "{what}"
        );
        println!(
            "| {what} | {} | 401 `{}`, nothing stored | {ok} x 401 `{}`; store unchanged; metric `{code}` +{} |",
            reqs.len(),
            wire_code(code),
            wire_code(code),
            reqs.len()
        );
    }
    // And the genuine request still goes through.
    assert_eq!(
        post_signed(addr, "tv-h", "0", Some(&good), &body).status,
        200
    );
    srv.shutdown().await;
}

/// The enrolment is looked up before the body is read: an unknown or a
/// revoked device announcing a 100,000-byte body and sending 10 bytes of it
/// gets `401 unauthorized` (the old server waited for the body and answered
/// `408 body_timeout` after the body-read limit), and the server closes the
/// connection without reading the rest. An enrolled device with the same
/// stalled body still gets `408`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_revoked_devices_are_refused_before_their_body_is_read() {
    use std::io::{Read, Write};
    let (_dir, db) = temp_db();
    let mut c = config(&db);
    c.auth =
        constellation::AuthConfig::with_master(constellation::MasterSecret::from_bytes([0x5a; 32]));
    c.limits.body_read_timeout = std::time::Duration::from_secs(3);
    let srv = constellation::Server::start(c).await.unwrap();
    let addr = srv.local_addr();
    let key = srv.enrol("tv-known").await.unwrap();
    srv.enrol("tv-gone").await.unwrap();
    srv.revoke("tv-gone").await.unwrap();
    let stalled = |device: &str, auth: &str| -> (u16, Vec<u8>) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let head = format!(
            "POST /api/v1/sync HTTP/1.1\r\nHost: {addr}\r\nX-Device-ID: {device}\r\n\
             X-Sync-Version: 0\r\nContent-Type: application/octet-stream\r\n\
             Authorization: {auth}\r\nContent-Length: 100000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&[0u8; 10]).unwrap();
        // Read the answer, then until the server closes the connection
        // (bounded by the 30 s read timeout).
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&got).to_string();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.as_bytes().to_vec())
            .unwrap_or_default();
        (status, body)
    };
    let body = [0u8; 10];
    for device in ["tv-never", "tv-gone"] {
        let a = authz(&DeviceKey::new([9; 32]), device, 1, &body);
        let (status, answer) = stalled(device, &a);
        assert_eq!(status, 401, "{device}");
        assert_eq!(answer, UNAUTHORIZED_BODY, "{device}");
    }
    let a = authz(&key, "tv-known", 1, &body);
    let (status, answer) = stalled("tv-known", &a);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(
        constellation::metrics::scrape(
            &srv.metrics_text(),
            "constellation_auth_failures_total{code=\"unknown_device\"}"
        ),
        Some(1.0)
    );
    srv.shutdown().await;
}
