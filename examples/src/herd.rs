//! Thundering herd after an outage: N TVs with the real [`SyncClient`]
//! (its pacing, its capped exponential backoff with full jitter) against the
//! real server, on a virtual clock.
//!
//! 1. Boot: every TV syncs once at a uniform time in the first `boot_s`
//!    virtual seconds, then whenever the server's pacing (`next_sync_s`)
//!    says, until `outage_at_s`.
//! 2. Outage: from `outage_at_s` for `outage_s`, every exchange fails in
//!    transport (as a refused connection does); the clients back off.
//! 3. Return: for `observe_s` virtual seconds every exchange goes to the
//!    server. Requests are counted per virtual second of their due time;
//!    with `realtime`, the observation window runs at wall-clock speed and
//!    the server's own counters are sampled once per wall second.
//!
//! The bound (see `docs/reliability.md`): once a TV has failed for longer
//! than it takes its backoff bound to reach the cap `C`, its retries are a
//! renewal process with uniform gaps in `[0, C]`; the time from the return
//! to its next retry then has density `2 (C - x) / C^2`, at most `2 / C`.
//! N such TVs send, in expectation, at most `2 N / C` requests per second
//! after the return (67/s for N = 10,000 and the default C = 300 s), falling
//! linearly to 0 at `C`. The stated bound is `3 N / C` per second, which
//! leaves room for the Poisson spread of the counts; a successful sync is
//! paced 300..900 s ahead, so no TV comes back twice within the minute.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use omega_tv_sync::sync::{Backoff, Config, Outcome, SyncClient};
use omega_tv_sync::types::DeviceId;
use omega_tv_sync::{Request, Response, Transport};
use omega_tv_sync_http::HttpTransport;
use serde::Serialize;

use crate::fleet::rng::Rng;

/// Pattern slots per TV (the herd syncs download-only: slots stay empty).
const SLOTS: usize = 2;
const RX: usize = 16 * 1024;
const TX: usize = 2 * 1024;

type Client = SyncClient<'static, SLOTS>;

/// Settings of one herd run.
#[derive(Clone, Debug)]
pub struct HerdConfig {
    /// TVs.
    pub devices: usize,
    /// Seed of boot times and device jitter seeds.
    pub seed: u64,
    /// TVs boot uniformly over this many virtual seconds.
    pub boot_s: u64,
    /// The server goes down at this virtual second.
    pub outage_at_s: u64,
    /// For this many virtual seconds.
    pub outage_s: u64,
    /// Seconds observed after the return.
    pub observe_s: u64,
    /// The clients' backoff (default: 1 s base, 5 min cap).
    pub backoff: Backoff,
    /// Exchanges in flight at once.
    pub concurrency: usize,
    /// Run the observation window at wall-clock speed and sample the
    /// server's counters every wall second.
    pub realtime: bool,
}

impl Default for HerdConfig {
    fn default() -> Self {
        HerdConfig {
            devices: 10_000,
            seed: 42,
            boot_s: 900,
            outage_at_s: 1800,
            outage_s: 1800,
            observe_s: 60,
            backoff: Backoff::default(),
            concurrency: 64,
            realtime: false,
        }
    }
}

/// What a herd run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HerdReport {
    /// TVs.
    pub devices: usize,
    /// Backoff cap, seconds.
    pub cap_s: f64,
    /// Virtual seconds down.
    pub outage_s: u64,
    /// Applied syncs before the outage.
    pub syncs_before: u64,
    /// Mean requests per virtual second before the outage (after boot).
    pub steady_rate_per_s: f64,
    /// Failed exchanges during the outage (never reached the server).
    pub failed_during_outage: u64,
    /// TVs that failed at least once.
    pub tvs_failed: u64,
    /// Requests per virtual second after the return, `observe_s` entries.
    pub per_virtual_s: Vec<u64>,
    /// Largest of `per_virtual_s`.
    pub peak_per_virtual_s: u64,
    /// Requests the server received per wall second (realtime only).
    pub per_wall_s: Vec<u64>,
    /// Largest of `per_wall_s`.
    pub peak_per_wall_s: u64,
    /// Requests in the window.
    pub requests_in_window: u64,
    /// Of those, answered 200.
    pub applied_in_window: u64,
    /// Of those, answered 429/503 (overload).
    pub overloaded_in_window: u64,
    /// `2 N / C`: the expected rate right after the return.
    pub expected_peak_per_s: f64,
    /// `3 N / C`: the stated bound.
    pub bound_per_s: f64,
    /// Requests the server counted (applied + replayed + rejected) over
    /// the window, from its metrics.
    pub server_counted_in_window: u64,
    /// Every request was signed with the TV's enrolled key.
    pub signed: bool,
    /// Requests the server refused for authentication, over the whole run
    /// (embedded server only).
    pub auth_refused: u64,
}

/// The server's count of sync requests received.
pub type Counter = Box<dyn Fn() -> u64 + Send + Sync>;

/// A transport that fails every exchange while `down`.
struct Switch {
    inner: HttpTransport,
    down: bool,
}

#[derive(Debug)]
#[allow(dead_code)]
enum SwitchError {
    Down,
    Http(omega_tv_sync_http::HttpError),
}

impl Transport for Switch {
    type Error = SwitchError;
    async fn send(&mut self, req: Request<'_>, buf: &mut [u8]) -> Result<Response, SwitchError> {
        if self.down {
            return Err(SwitchError::Down);
        }
        self.inner.send(req, buf).await.map_err(SwitchError::Http)
    }
}

struct Tv {
    client: Client,
    /// The request bytes: a retry re-sends them as they are.
    tx: Vec<u8>,
    failed: bool,
}

enum Ended {
    Applied,
    Overloaded,
    Failed,
}

async fn exchange(tv: &mut Tv, t: &mut Switch, now: u64) -> Ended {
    let mut rx = vec![0u8; RX];
    match tv
        .client
        .exchange(t, &mut tv.tx, &mut rx, now, &mut ())
        .await
    {
        Ok(Outcome::Synced(_)) => Ended::Applied,
        Ok(Outcome::RetryLater { .. }) => Ended::Overloaded,
        Ok(Outcome::Resequenced { .. }) => Ended::Failed,
        Err(_) => Ended::Failed,
    }
}

/// The id of herd TV number `index`.
pub fn device_id(index: usize) -> String {
    format!("herd-{index:06}")
}

/// Runs the herd against `url`; `counter` reads the server's request count.
/// `keys[i]` is TV `i`'s signing key (`None`: requests go unsigned, for a
/// server run with `--insecure-no-auth`).
pub async fn run(
    cfg: &HerdConfig,
    url: &str,
    counter: Counter,
    keys: Option<&[omega_tv_sync::DeviceKey]>,
) -> Result<HerdReport, String> {
    if keys.is_some_and(|k| k.len() < cfg.devices) {
        return Err("fewer keys than TVs".into());
    }
    let cb = omega_tv_sync::codec::minilm_v1().map_err(|e| format!("codebook: {e}"))?;
    let http = HttpTransport::new(url).map_err(|e| format!("{url}: {e}"))?;
    let mut rng = Rng::new(cfg.seed, 0x4e4d);
    let mut tvs: Vec<Option<Box<Tv>>> = (0..cfg.devices)
        .map(|i| {
            let id = DeviceId::new(&device_id(i)).expect("short id");
            let mut c = Config::new(id);
            c.auth_key = keys.map(|k| k[i].clone());
            c.caps.max_bytes = RX as u32;
            c.backoff = cfg.backoff;
            c.jitter_seed = Rng::new(cfg.seed, i as u64).next_u64() | 1;
            Some(Box::new(Tv {
                client: SyncClient::new(cb, c),
                tx: vec![0u8; TX],
                failed: false,
            }))
        })
        .collect();
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> = (0..cfg.devices)
        .map(|i| Reverse((rng.range(0, cfg.boot_s * 1000), i)))
        .collect();
    let down_at = cfg.outage_at_s * 1000;
    let up_at = down_at + cfg.outage_s * 1000;
    let end = up_at + cfg.observe_s * 1000;
    let mut rep = HerdReport {
        devices: cfg.devices,
        signed: keys.is_some(),
        cap_s: cfg.backoff.cap_ms as f64 / 1000.0,
        outage_s: cfg.outage_s,
        per_virtual_s: vec![0; cfg.observe_s as usize],
        ..HerdReport::default()
    };
    let n = cfg.devices as f64;
    rep.expected_peak_per_s = 2.0 * n / rep.cap_s;
    rep.bound_per_s = 3.0 * n / rep.cap_s;
    let mut steady = 0u64;
    let mut running = tokio::task::JoinSet::new();
    let mut wall0: Option<(Instant, u64)> = None;
    let sampler_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counter = std::sync::Arc::new(counter);
    let mut sampler: Option<tokio::task::JoinHandle<Vec<u64>>> = None;
    let mut window_start_count = None;
    // Bounded: each TV is dispatched a finite number of times before `end`
    // (at least one backoff draw or pacing interval apart).
    loop {
        // Launch what is due (in order) while there is room.
        while running.len() < cfg.concurrency {
            let Some(&Reverse((due, i))) = queue.peek() else {
                break;
            };
            if due >= end {
                queue.clear();
                break;
            }
            queue.pop();
            let Some(mut tv) = tvs[i].take() else {
                continue;
            };
            if due >= down_at && due < up_at {
                // Down: the exchange fails at once; no request leaves.
                let mut t = Switch {
                    inner: http.clone(),
                    down: true,
                };
                exchange(&mut tv, &mut t, due).await;
                rep.failed_during_outage += 1;
                tv.failed = true;
                queue.push(Reverse((tv.client.next_sync_at(), i)));
                tvs[i] = Some(tv);
                continue;
            }
            let window = due >= up_at;
            if window {
                if window_start_count.is_none() {
                    // Everything before the return has completed.
                    while let Some(d) = running.join_next().await {
                        let (i, tv, _, _, _): (usize, Box<Tv>, u64, bool, Ended) =
                            d.map_err(|e| format!("task: {e}"))?;
                        queue.push(Reverse((tv.client.next_sync_at(), i)));
                        tvs[i] = Some(tv);
                    }
                    // The TV just popped may no longer be the earliest.
                    queue.push(Reverse((due, i)));
                    tvs[i] = Some(tv);
                    window_start_count = Some(counter());
                    if cfg.realtime {
                        wall0 = Some((Instant::now(), up_at));
                        let (c, stop) = (counter.clone(), sampler_stop.clone());
                        let secs = cfg.observe_s;
                        sampler = Some(tokio::spawn(async move {
                            let mut out = Vec::new();
                            let mut last = c();
                            let t0 = tokio::time::Instant::now();
                            for s in 1..=secs {
                                tokio::time::sleep_until(t0 + Duration::from_secs(s)).await;
                                let now = c();
                                out.push(now - last);
                                last = now;
                                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                                    break;
                                }
                            }
                            out
                        }));
                    }
                    continue;
                }
                rep.per_virtual_s[((due - up_at) / 1000) as usize] += 1;
                rep.requests_in_window += 1;
                if let Some((w0, v0)) = wall0 {
                    let at = w0 + Duration::from_millis(due - v0);
                    tokio::time::sleep_until(at.into()).await;
                }
            } else if due >= cfg.boot_s * 1000 {
                steady += 1;
            }
            let mut t = Switch {
                inner: http.clone(),
                down: false,
            };
            running.spawn(async move {
                let r = exchange(&mut tv, &mut t, due).await;
                (i, tv, due, window, r)
            });
        }
        let Some(d) = running.join_next().await else {
            if queue.is_empty() {
                break;
            }
            continue;
        };
        let (i, tv, due, window, r) = d.map_err(|e| format!("task: {e}"))?;
        match r {
            Ended::Applied if window => rep.applied_in_window += 1,
            Ended::Applied if due < down_at => rep.syncs_before += 1,
            Ended::Overloaded if window => rep.overloaded_in_window += 1,
            _ => {}
        }
        queue.push(Reverse((tv.client.next_sync_at(), i)));
        tvs[i] = Some(tv);
    }
    while let Some(d) = running.join_next().await {
        let _ = d.map_err(|e| format!("task: {e}"))?;
    }
    sampler_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(s) = sampler {
        rep.per_wall_s = s.await.map_err(|e| format!("sampler: {e}"))?;
        rep.peak_per_wall_s = rep.per_wall_s.iter().copied().max().unwrap_or(0);
    }
    rep.server_counted_in_window = counter() - window_start_count.unwrap_or(0);
    rep.tvs_failed = tvs.iter().flatten().filter(|t| t.failed).count() as u64;
    let steady_s = cfg.outage_at_s.saturating_sub(cfg.boot_s).max(1);
    rep.steady_rate_per_s = if cfg.outage_at_s > cfg.boot_s {
        steady as f64 / steady_s as f64
    } else {
        0.0
    };
    rep.peak_per_virtual_s = rep.per_virtual_s.iter().copied().max().unwrap_or(0);
    Ok(rep)
}

/// Starts the embedded server (redb in `dir`, default pacing, authentication
/// on), enrols the TVs, runs the herd with every request signed and shuts
/// the server down.
pub async fn run_embedded(cfg: &HerdConfig, dir: &std::path::Path) -> Result<HerdReport, String> {
    let mut c = constellation::Config::new();
    c.db = Some(dir.join("herd.redb"));
    c.listen = "127.0.0.1:0".parse().expect("loopback address");
    c.codebooks = constellation::codebooks::default_codebooks();
    c.min_sync_interval_s = 0; // syncs back to back (virtual time)
    let h = constellation::Server::start(c)
        .await
        .map_err(|e| format!("starting the server: {e}"))?;
    let ids: Vec<String> = (0..cfg.devices).map(device_id).collect();
    let keys = h
        .enrol_many(&ids)
        .await
        .map_err(|e| format!("enrolling the TVs: {e}"))?;
    let st = h.state().clone();
    let counter: Counter = Box::new(move || {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &st.metrics;
        m.syncs_applied.load(Relaxed)
            + m.retries_replayed.load(Relaxed)
            + m.syncs_rejected.load(Relaxed)
    });
    let mut r = run(cfg, &h.url(), counter, Some(&keys)).await;
    if let Ok(r) = &mut r {
        let auth = &h.state().metrics.auth;
        r.auth_refused = [
            "missing_auth",
            "malformed_auth",
            "unknown_device",
            "revoked",
            "key_replaced",
            "bad_signature",
            "replayed_counter",
        ]
        .iter()
        .map(|c| auth.failures_for(c))
        .sum();
    }
    h.shutdown().await;
    r
}

/// The report as a markdown table.
pub fn table(r: &HerdReport) -> String {
    let mut s = String::from("| measure | value |\n|---|---:|\n");
    let mut row = |k: &str, v: String| s.push_str(&format!("| {k} | {v} |\n"));
    row("TVs", r.devices.to_string());
    row(
        "requests signed / refused for authentication",
        format!(
            "{} / {}",
            if r.signed { "yes" } else { "no" },
            r.auth_refused
        ),
    );
    row("backoff cap C (s)", format!("{:.0}", r.cap_s));
    row("outage (virtual s)", r.outage_s.to_string());
    row("syncs before the outage", r.syncs_before.to_string());
    row(
        "steady rate before (req/s, virtual)",
        format!("{:.1}", r.steady_rate_per_s),
    );
    row(
        "failed exchanges during the outage / TVs failed",
        format!("{} / {}", r.failed_during_outage, r.tvs_failed),
    );
    row(
        "requests in the first minute (applied / overloaded)",
        format!(
            "{} ({} / {})",
            r.requests_in_window, r.applied_in_window, r.overloaded_in_window
        ),
    );
    row(
        "server-counted requests in the window",
        r.server_counted_in_window.to_string(),
    );
    row(
        "expected peak 2N/C (req/s)",
        format!("{:.1}", r.expected_peak_per_s),
    );
    row("stated bound 3N/C (req/s)", format!("{:.1}", r.bound_per_s));
    row("peak per virtual second", r.peak_per_virtual_s.to_string());
    if !r.per_wall_s.is_empty() {
        row(
            "peak per wall second (server counters)",
            r.peak_per_wall_s.to_string(),
        );
    }
    s
}
