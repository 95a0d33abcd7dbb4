//! The `constellation` binary: `device add` prints keys, `serve` requires
//! signatures, `device remove` revokes.

use crate::common::*;
use crate::{authz, post_signed};
use omega_tv_sync::DeviceKey;

/// `constellation device add` prints a key once; `serve` (auth on by
/// default) accepts requests signed with it; `device remove` revokes.
#[test]
fn cli_enrols_and_serve_requires_signatures() {
    use std::process::Command;
    let (dir, db) = temp_db();
    let bin = env!("CARGO_BIN_EXE_constellation");
    let out = Command::new(bin)
        .args(["device", "add", "--db"])
        .arg(&db)
        .args(["tv-1", "tv-2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let keys: Vec<(String, DeviceKey)> = text
        .lines()
        .map(|l| {
            let (id, k) = l.split_once(' ').unwrap();
            (id.to_string(), DeviceKey::from_hex(k).unwrap())
        })
        .collect();
    assert_eq!(keys.len(), 2);
    let secret = dir.path().join("constellation.redb.master-secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The database holds no key.
    let raw_db = std::fs::read(&db).unwrap();
    for (_, k) in &keys {
        assert!(!raw_db.windows(32).any(|w| w == k.as_bytes()));
    }
    // The TLS PSKs the terminator needs: the ones the devices derive.
    let out = Command::new(bin)
        .args(["device", "tls-psk", "--db"])
        .arg(&db)
        .args(["tv-1", "tv-2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let want: Vec<String> = keys
        .iter()
        .map(|(id, k)| format!("{id}:{}", constellation::auth::hex(&k.tls_psk())))
        .collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), want);
    let out = Command::new(bin)
        .args(["device", "remove", "--db"])
        .arg(&db)
        .arg("tv-2")
        .output()
        .unwrap();
    assert!(out.status.success());
    // A revoked (or unknown) device has no PSK, and nothing is printed.
    let out = Command::new(bin)
        .args(["device", "tls-psk", "--db"])
        .arg(&db)
        .args(["tv-1", "tv-2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());

    let mut child = std::process::Command::new(bin)
        .args(["serve", "--db"])
        .arg(&db)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--log-level", "warn"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: std::net::SocketAddr = loop {
        let l = lines.next().unwrap().unwrap();
        if let Some(a) = l.strip_prefix("listening on ") {
            break a.trim().parse().unwrap();
        }
    };
    let v = patterns();
    let body = upload(1, 0, &[Up::abs("p1", quantize(&v[0]))]);
    assert_eq!(post_sync(addr, "tv-1", "0", &body).status, 401);
    let ok = post_signed(
        addr,
        "tv-1",
        "0",
        Some(&authz(&keys[0].1, "tv-1", 1, &body)),
        &body,
    );
    assert_eq!(ok.status, 200);
    let revoked = post_signed(
        addr,
        "tv-2",
        "0",
        Some(&authz(&keys[1].1, "tv-2", 1, &body)),
        &body,
    );
    assert_eq!(
        (revoked.status, revoked.json()["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let _ = child.kill();
    let _ = child.wait();
}
