//! Thundering herd: TVs with the real `SyncClient` (server pacing, capped
//! exponential backoff with full jitter) against the real server; the server
//! is down for 30 virtual minutes, then returns. The requests of the first
//! minute after the return are counted per virtual time window, so the
//! bound is about the protocol (N, the backoff cap C), not machine speed:
//! with every TV at the cap, the expected rate right after the return is
//! 2N/C per second; the stated bound is 3N/C (see docs/reliability.md).
//! The same run with a 1 s cap (no long backoff) must break the bound, which
//! shows the count can fail. The server runs with authentication on (its
//! default) and every TV signs with its enrolled key.

use omega_tv_sync::sync::Backoff;
use omega_tv_sync_examples::herd::{self, HerdConfig};

const N: usize = 2000;
/// Window of the counts, seconds: wide enough that the Poisson spread is
/// small against the bound (expected <= 133, bound 200, sd ~ 12).
const W: usize = 10;

fn cfg() -> HerdConfig {
    HerdConfig {
        devices: N,
        seed: 9,
        concurrency: 32,
        ..HerdConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_first_minute_stays_within_3n_over_cap() {
    let dir = tempfile::tempdir().unwrap();
    let r = herd::run_embedded(&cfg(), dir.path()).await.unwrap();
    eprintln!("{}\nper second: {:?}", herd::table(&r), r.per_virtual_s);
    assert_eq!(r.tvs_failed, N as u64, "every TV met the outage");
    // Authentication on: every TV enrolled, every request signed, none
    // refused (a refusal would also break the counts below).
    assert!(r.signed);
    assert_eq!(r.auth_refused, 0);
    // What the clients sent is what the server received.
    assert_eq!(r.server_counted_in_window, r.requests_in_window);
    let bound_per_window = r.bound_per_s * W as f64;
    for (k, w) in r.per_virtual_s.chunks(W).enumerate() {
        let n: u64 = w.iter().sum();
        assert!(
            n as f64 <= bound_per_window,
            "window {k}: {n} requests > {bound_per_window}"
        );
    }
    // The herd did come back: about 36% of the TVs retry within the first
    // minute (1 - (1 - 60/C)^2); nothing was refused for overload.
    let frac = r.requests_in_window as f64 / N as f64;
    assert!((0.25..0.47).contains(&frac), "{frac}");
    assert_eq!(r.overloaded_in_window, 0);
    assert_eq!(r.applied_in_window, r.requests_in_window);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_backoff_cap_the_same_outage_breaks_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.backoff = Backoff {
        base_ms: 1_000,
        cap_ms: 1_000,
    };
    let r = herd::run_embedded(&c, dir.path()).await.unwrap();
    let default_bound = 3.0 * N as f64 / 300.0;
    eprintln!("1 s cap: first seconds {:?}", &r.per_virtual_s[..5]);
    assert!(r.per_virtual_s[0] as f64 > 10.0 * default_bound);
}
