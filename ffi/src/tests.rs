//! Rust-side checks of the C API's constants and header (the C programs in
//! `tests/c/` drive the functions from C).

use super::*;
use omega_tv_sync::sync::{max_snapshot_len, SYNC_PATH};

fn header() -> std::string::String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/include/omega_tv_sync.h");
    std::fs::read_to_string(p).expect("read the checked-in header")
}

/// Every compiled-in slot count has a size within the header's bound, and
/// no other count has one.
#[test]
fn client_sizes_fit_the_header_bound() {
    let mut compiled = 0;
    for slots in 0..=300u32 {
        let n = ots_client_size(slots);
        if n == 0 {
            continue;
        }
        compiled += 1;
        let bound = OTS_CLIENT_BASE_BYTES + slots as usize * OTS_CLIENT_SLOT_BYTES;
        assert!(n <= bound, "{slots} slots: {n} > {bound}");
    }
    assert!(compiled >= 1, "no slot count compiled in");
    assert_eq!(ots_client_size(7), 0);
    assert_eq!(ots_client_size(u32::MAX), 0);
}

#[test]
fn snapshot_bound_is_the_core_s() {
    for n in [1u32, 8, 64, 256] {
        assert_eq!(ots_max_snapshot_len(n), max_snapshot_len(n as usize));
    }
    // No overflow for any slot count.
    assert_eq!(
        ots_max_snapshot_len(u32::MAX) as u128,
        113 + 1201 * u128::from(u32::MAX)
    );
}

/// The hand-written part of the header (cbindgen.toml) agrees with the
/// code: the sync path, and the two size macros built from the exported
/// constants.
#[test]
fn header_macros_match_the_code() {
    let h = header();
    assert!(h.contains(&std::format!("#define OTS_SYNC_PATH \"{SYNC_PATH}\"")));
    assert!(h.contains(
        "#define OTS_CLIENT_SIZE(slots) (OTS_CLIENT_BASE_BYTES + (size_t)(slots) * OTS_CLIENT_SLOT_BYTES)"
    ));
    assert!(h.contains(
        "#define OTS_MAX_SNAPSHOT_LEN(slots) (OTS_SNAPSHOT_BASE_BYTES + (size_t)(slots) * OTS_SNAPSHOT_SLOT_BYTES)"
    ));
    for (name, v) in [
        ("OTS_CLIENT_BASE_BYTES", OTS_CLIENT_BASE_BYTES),
        ("OTS_CLIENT_SLOT_BYTES", OTS_CLIENT_SLOT_BYTES),
        ("OTS_SNAPSHOT_BASE_BYTES", OTS_SNAPSHOT_BASE_BYTES),
        ("OTS_SNAPSHOT_SLOT_BYTES", OTS_SNAPSHOT_SLOT_BYTES),
        ("OTS_CLIENT_ALIGN", OTS_CLIENT_ALIGN),
    ] {
        assert!(h.contains(&std::format!("#define {name} {v}\n")), "{name}");
    }
}

/// Every exported function is declared in the checked-in header (a quick
/// guard; `.ci/run` compares the whole file with a fresh cbindgen run).
#[test]
fn every_function_is_in_the_header() {
    let h = header();
    for f in [
        "ots_client_size",
        "ots_client_init",
        "ots_client_deinit",
        "ots_client_upsert",
        "ots_client_remove",
        "ots_client_prepare",
        "ots_client_authorization",
        "ots_client_apply",
        "ots_client_transport_failed",
        "ots_client_feed_path",
        "ots_client_apply_feed",
        "ots_client_snapshot",
        "ots_client_restore",
        "ots_client_next_sync_at",
        "ots_client_seq",
        "ots_client_global_version",
        "ots_client_auth_counter",
        "ots_client_in_flight",
        "ots_client_len",
        "ots_client_pending",
        "ots_client_stats",
        "ots_client_acked",
        "ots_max_snapshot_len",
        "ots_codebook_minilm_v1",
        "ots_codebook_minilm_small_v1",
        "ots_codebook_from_blob",
        "ots_codebook_id",
        "ots_codebook_flash_bytes",
        "ots_codebook_quantize",
        "ots_quality_filter_default",
        "ots_quality_filter_accepts",
        "ots_config_init",
        "ots_config_set_key_hex",
        "ots_error_str",
        "ots_error_class",
    ] {
        let declared = h.contains(&std::format!(" {f}(")) || h.contains(&std::format!("*{f}("));
        assert!(declared, "{f} is not declared");
    }
}
