//! Replays the committed `http_body` fuzz inputs through the same body the
//! fuzzer runs (`fuzz/src/server_targets.rs`): seeds (real uploads with
//! real headers) must be accepted, regression inputs must not panic.
//!
//! The seeds are written by the ignored test `write_http_seeds`:
//!
//! ```text
//! cargo test -p constellation --test fuzz_replay -- --ignored
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use omega_tv_sync_testkit as core_targets;
#[allow(dead_code)]
#[path = "../../fuzz/src/server_targets.rs"]
mod server_targets;

use std::fs;
use std::path::{Path, PathBuf};

use server_targets::{http_body, http_input};

fn dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join("http_body")
}

fn inputs(kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(rd) = fs::read_dir(dir(kind)) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn replay_http_body() {
    let seeds = inputs("seeds");
    assert!(
        seeds.len() >= 5,
        "fuzz/seeds/http_body holds {}",
        seeds.len()
    );
    for (p, b) in &seeds {
        let r = http_body(b);
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("reject-")
        {
            assert!(r.is_err(), "{}", p.display());
        } else {
            assert!(r.is_ok(), "{}: {r:?}", p.display());
        }
    }
    for (_, b) in inputs("regressions") {
        let _ = http_body(&b);
    }
}

/// The target sees the same rejections the handler sends.
#[test]
fn http_body_reports_the_handlers_codes() {
    let body = core_targets::real_upload(2, false);
    let ok = http_input(Some(b"stb-1"), Some(b"0"), &body);
    assert_eq!(http_body(&ok), Ok(()));
    type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, &'a str);
    let cases: [Case<'_>; 4] = [
        (None, Some(b"0"), "missing_device_id"),
        (Some(b"a b"), Some(b"0"), "invalid_device_id"),
        (Some(b"stb-1"), Some(b"-1"), "invalid_sync_version"),
        (Some(b"stb-1"), Some(b"3"), "header_mismatch"),
    ];
    for (dev, ver, code) in cases {
        assert_eq!(
            http_body(&http_input(dev, ver, &body)),
            Err(code.to_string())
        );
    }
    let mut bad = body.clone();
    bad[0] ^= 1;
    assert_eq!(
        http_body(&http_input(Some(b"stb-1"), Some(b"0"), &bad)),
        Err("bad_magic".to_string())
    );
}

fn write(name: &str, bytes: &[u8]) {
    let d = dir("seeds");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(name), bytes).unwrap();
}

/// Writes `fuzz/seeds/http_body/`: real uploads (built by the core from
/// real vectors) with the headers a device sends, and a few the handler
/// must reject (named `reject-*`).
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_http_seeds() {
    for k in [0usize, 1, 2, 3, 5, 8] {
        let body = core_targets::real_upload(k, k % 2 == 1);
        write(
            &format!("upload-{k}"),
            &http_input(Some(core_targets::DEVICE.as_bytes()), Some(b"0"), &body),
        );
    }
    let (_, tx) = core_targets::download_client();
    // The download target's client holds global version 10.
    write(
        "upload-delta-removal",
        &http_input(Some(b"stb-0042"), Some(b"10"), &tx),
    );
    let body = core_targets::real_upload(2, false);
    write("reject-no-device", &http_input(None, Some(b"0"), &body));
    write(
        "reject-version-mismatch",
        &http_input(Some(b"stb-7"), Some(b"9"), &body),
    );
    write(
        "reject-version-text",
        &http_input(Some(b"stb-7"), Some(b"x"), &body),
    );
    let snap = core_targets::download_base();
    write(
        "reject-snapshot-body",
        &http_input(Some(b"stb-7"), Some(b"0"), snap),
    );
}
