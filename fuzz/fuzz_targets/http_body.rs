#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = omega_tv_sync_fuzz::server_targets::http_body(data);
});
