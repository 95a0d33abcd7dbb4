//! Counters and a latency histogram, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the sync latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Uploads applied (not replays, not rejected).
    pub syncs_applied: AtomicU64,
    /// Retries answered from the idempotency record.
    pub retries_replayed: AtomicU64,
    /// Sync requests rejected (any 4xx/5xx).
    pub syncs_rejected: AtomicU64,
    /// Pattern updates and removals stored.
    pub acks: AtomicU64,
    /// Conflicts returned.
    pub conflicts: AtomicU64,
    /// Request body bytes received on the sync endpoint.
    pub bytes_in: AtomicU64,
    /// Response body bytes sent on the sync and feed endpoints.
    pub bytes_out: AtomicU64,
    /// Feed pages served (200) and not-modified answers (304).
    pub feed_pages: AtomicU64,
    /// Feed requests answered 304.
    pub feed_not_modified: AtomicU64,
    /// Changelog entries visited to build feed pages.
    pub feed_entries_visited: AtomicU64,
    /// Most changelog entries one feed page visited.
    pub feed_visited_max: AtomicU64,
    /// Feed pages cut by the visit budget (`download::FEED_MAX_VISITED`).
    pub feed_visit_cut: AtomicU64,
    /// Public reads (feed, version, health) that waited for their turn.
    pub public_reads_delayed: AtomicU64,
    /// Public reads answered `429`: their turn was too far off.
    pub public_reads_refused: AtomicU64,
    /// Aggregation passes completed.
    pub aggregation_runs: AtomicU64,
    /// 1 while this node holds the aggregation leadership (always with redb),
    /// 0 otherwise; set at every pass attempt.
    pub aggregation_leader: AtomicU64,
    /// Global changelog entries published by aggregation.
    pub published: AtomicU64,
    /// Device-pattern changes an aggregation pass did not read again
    /// because a change of the same (device, pattern) was already in it.
    pub aggregation_coalesced: AtomicU64,
    /// Differentially private releases made.
    pub dp_releases: AtomicU64,
    /// Pattern contributions left out by user-level bounding (beyond a
    /// device's `max_globals` cohorts).
    pub dp_bounded: AtomicU64,
    /// Authentication failures by code (`crate::auth`).
    pub auth: crate::auth::AuthMetrics,
    /// Connections of the sync listener (`crate::listen`).
    pub conns: std::sync::Arc<crate::listen::ConnMetrics>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

/// Gauges read at render time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    /// Current global version.
    pub global_version: u64,
    /// Write queue depth.
    pub queue_depth: u64,
    /// Group commits so far.
    pub commits: u64,
    /// Work items committed so far.
    pub commit_items: u64,
    /// The privacy accountant's figures (`None`: differential privacy off).
    pub privacy: Option<PrivacyGauges>,
}

/// The privacy accountant's figures (zCDP; `aggregate::accountant`).
#[derive(Debug, Default, Clone, Copy)]
pub struct PrivacyGauges {
    /// Epsilon of one release at `delta`.
    pub epsilon_release: f64,
    /// Epsilon over the window, releasing on schedule, at `delta`.
    pub epsilon_window: f64,
    /// Epsilon of the releases actually made in the trailing window.
    pub epsilon_spent: f64,
    /// zCDP rho of one release.
    pub rho_release: f64,
    /// zCDP rho over the window, releasing on schedule.
    pub rho_window: f64,
    /// The delta the epsilons are stated at.
    pub delta: f64,
    /// The window, seconds.
    pub window_s: f64,
    /// Releases made in the trailing window.
    pub releases_in_window: u64,
}

impl Metrics {
    /// Counts a rejected request by error code.
    pub fn error(&self, code: &'static str) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(code).or_insert(0) += 1;
        }
    }

    /// Errors counted for `code`.
    pub fn errors_for(&self, code: &str) -> u64 {
        self.errors
            .lock()
            .ok()
            .and_then(|m| m.get(code).copied())
            .unwrap_or(0)
    }

    /// Records one sync's latency.
    pub fn observe_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, le) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            if s <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Renders everything in the Prometheus text exposition format.
    pub fn render(&self, g: Gauges) -> String {
        let mut s = String::with_capacity(4096);
        let c = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        c(
            &mut s,
            "constellation_syncs_total",
            "Uploads applied.",
            ld(&self.syncs_applied),
        );
        c(
            &mut s,
            "constellation_retries_replayed_total",
            "Retried uploads answered with the stored response.",
            ld(&self.retries_replayed),
        );
        c(
            &mut s,
            "constellation_feed_entries_visited_total",
            "Changelog entries visited to build feed pages.",
            ld(&self.feed_entries_visited),
        );
        let _ = writeln!(
            s,
            "# HELP constellation_feed_visited_max Most changelog entries one feed page visited.\n\
             # TYPE constellation_feed_visited_max gauge\nconstellation_feed_visited_max {}",
            ld(&self.feed_visited_max)
        );
        c(
            &mut s,
            "constellation_feed_visit_cut_total",
            "Feed pages cut by the per-request visit budget.",
            ld(&self.feed_visit_cut),
        );
        c(
            &mut s,
            "constellation_syncs_rejected_total",
            "Sync requests rejected.",
            ld(&self.syncs_rejected),
        );
        c(
            &mut s,
            "constellation_acks_total",
            "Pattern changes stored.",
            ld(&self.acks),
        );
        c(
            &mut s,
            "constellation_conflicts_total",
            "Stale-base conflicts returned.",
            ld(&self.conflicts),
        );
        c(
            &mut s,
            "constellation_bytes_in_total",
            "Sync body bytes received.",
            ld(&self.bytes_in),
        );
        c(
            &mut s,
            "constellation_bytes_out_total",
            "Response body bytes sent.",
            ld(&self.bytes_out),
        );
        c(
            &mut s,
            "constellation_feed_pages_total",
            "Global feed pages served.",
            ld(&self.feed_pages),
        );
        c(
            &mut s,
            "constellation_feed_not_modified_total",
            "Global feed requests answered 304.",
            ld(&self.feed_not_modified),
        );
        c(
            &mut s,
            "constellation_public_reads_delayed_total",
            "Public reads (feed, version, health) that waited for their turn.",
            ld(&self.public_reads_delayed),
        );
        c(
            &mut s,
            "constellation_public_reads_refused_total",
            "Public reads answered 429 (their turn too far off).",
            ld(&self.public_reads_refused),
        );
        c(
            &mut s,
            "constellation_aggregation_runs_total",
            "Aggregation passes.",
            ld(&self.aggregation_runs),
        );
        let _ = writeln!(
            s,
            "# HELP constellation_aggregation_leader 1 while this node is the aggregation leader.\n\
             # TYPE constellation_aggregation_leader gauge\nconstellation_aggregation_leader {}",
            ld(&self.aggregation_leader)
        );
        c(
            &mut s,
            "constellation_published_total",
            "Global changelog entries published.",
            ld(&self.published),
        );
        c(
            &mut s,
            "constellation_aggregation_coalesced_total",
            "Repeated changes of one (device, pattern) read once in a pass.",
            ld(&self.aggregation_coalesced),
        );
        c(
            &mut s,
            "constellation_dp_releases_total",
            "Differentially private releases of global patterns.",
            ld(&self.dp_releases),
        );
        c(
            &mut s,
            "constellation_dp_bounded_contributions_total",
            "Pattern contributions left out beyond a device's max_globals cohorts.",
            ld(&self.dp_bounded),
        );
        c(
            &mut s,
            "constellation_group_commits_total",
            "Write transactions committed.",
            g.commits,
        );
        c(
            &mut s,
            "constellation_group_commit_items_total",
            "Work items committed (items / commits = mean group size).",
            g.commit_items,
        );
        let _ = writeln!(
            s,
            "# HELP constellation_errors_total Rejected requests by error code.\n# TYPE constellation_errors_total counter"
        );
        if let Ok(m) = self.errors.lock() {
            for (code, v) in m.iter() {
                let _ = writeln!(s, "constellation_errors_total{{code=\"{code}\"}} {v}");
            }
        }
        let _ = writeln!(
            s,
            "# HELP constellation_global_version Current global version.\n# TYPE constellation_global_version gauge\nconstellation_global_version {}",
            g.global_version
        );
        let _ = writeln!(
            s,
            "# HELP constellation_write_queue_depth Writes waiting for a group commit.\n# TYPE constellation_write_queue_depth gauge\nconstellation_write_queue_depth {}",
            g.queue_depth
        );
        let gauge = |s: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let p = g.privacy;
        gauge(
            &mut s,
            "constellation_dp_enabled",
            "1 when global patterns are released with differential privacy.",
            if p.is_some() { 1.0 } else { 0.0 },
        );
        if let Some(p) = p {
            for (name, help, v) in [
                (
                    "constellation_dp_epsilon_release",
                    "Epsilon of one release (zCDP, at constellation_dp_delta).",
                    p.epsilon_release,
                ),
                (
                    "constellation_dp_epsilon_window",
                    "Epsilon over the window, releasing on schedule.",
                    p.epsilon_window,
                ),
                (
                    "constellation_dp_epsilon_spent",
                    "Epsilon of the releases made in the trailing window.",
                    p.epsilon_spent,
                ),
                (
                    "constellation_dp_rho_release",
                    "zCDP rho of one release.",
                    p.rho_release,
                ),
                (
                    "constellation_dp_rho_window",
                    "zCDP rho over the window, releasing on schedule.",
                    p.rho_window,
                ),
                (
                    "constellation_dp_delta",
                    "Delta the epsilons are stated at.",
                    p.delta,
                ),
                (
                    "constellation_dp_window_seconds",
                    "Window of the cumulative epsilon.",
                    p.window_s,
                ),
                (
                    "constellation_dp_releases_in_window",
                    "Releases made in the trailing window.",
                    p.releases_in_window as f64,
                ),
            ] {
                gauge(&mut s, name, help, v);
            }
        }
        let name = "constellation_sync_duration_seconds";
        let _ = writeln!(
            s,
            "# HELP {name} Sync request latency, validation to response.\n# TYPE {name} histogram"
        );
        for (b, le) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(s, "{name}_bucket{{le=\"{le}\"}} {}", ld(b));
        }
        let count = ld(&self.latency_count);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            s,
            "{name}_sum {}",
            ld(&self.latency_sum_us) as f64 / 1_000_000.0
        );
        let _ = writeln!(s, "{name}_count {count}");
        self.auth.render(&mut s);
        self.conns.render(&mut s);
        s
    }
}

/// Reads a counter's value out of rendered text (for tests and tools).
pub fn scrape(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.parse().ok())?
    })
}
