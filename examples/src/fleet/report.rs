//! The run's report: terminal table, `report.md`, SVG plots, JSON.

use std::path::Path;

use serde::Serialize;

use super::check::Verdict;
use super::config::{SimConfig, SimResult};
use super::svg::{histogram, line_chart, Series};

/// Everything `--json` writes. Counts are deterministic for a seed and a
/// fresh server; timings (`syncs_per_sec`, latencies, `wall_s`) are not.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// TVs simulated.
    pub devices: usize,
    /// Successful syncs minimum per TV.
    pub rounds: u32,
    /// Run seed.
    pub seed: u64,
    /// Scheduled syncs applied (a 200 the TV applied). Further pages fetched
    /// at once after a `more`, and stale twins' exchanges, are `extra_exchanges`.
    pub syncs: u64,
    /// Applied exchanges that were not scheduled syncs.
    pub extra_exchanges: u64,
    /// Exchanges attempted, including failed ones.
    pub exchanges: u64,
    /// Request bytes of all applied exchanges per scheduled sync.
    pub up_bytes_per_sync_mean: f64,
    /// Response bytes of all applied exchanges per scheduled sync.
    pub down_bytes_per_sync_mean: f64,
    /// Steady state: request bytes of syncs that uploaded patterns, per
    /// pattern uploaded (frame header, head, records and CRC included; HTTP
    /// headers not), excluding each TV's first sync after boot.
    pub up_bytes_per_changed_pattern: f64,
    /// The same over each TV's first sync, which uploads every pattern it
    /// boots with as absolute codes.
    pub up_bytes_per_boot_pattern: f64,
    /// Pattern updates uploaded in applied syncs.
    pub patterns_uploaded: u64,
    /// Server-held pattern vs the device's float pattern, over acknowledged
    /// patterns at the end: mean cosine.
    pub server_cos_mean: f64,
    /// Same, minimum.
    pub server_cos_min: f64,
    /// Conflicts the server reported.
    pub conflicts_detected: u64,
    /// Conflicts whose resolution the server then acknowledged.
    pub conflicts_resolved: u64,
    /// Exchanges retried (lost responses, 429/503, transport errors, 409s).
    pub retries: u64,
    /// Responses lost by fault injection.
    pub dropped_responses: u64,
    /// Exchanges that failed in transport (refused, reset, cut, timed out),
    /// each retried with the same bytes.
    pub transport_errors: u64,
    /// Answers refused as not signed for their request (forged or replayed
    /// on the way), each retried with the same bytes.
    pub unauthenticated: u64,
    /// 409s that moved a TV's sequence forward.
    pub resequenced: u64,
    /// Faults injected by the TCP proxy (`--proxy-faults`), when one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<crate::proxy::ProxyTotals>,
    /// Offline periods.
    pub offline_periods: u64,
    /// Stale twins that synced.
    pub twins: u64,
    /// Updates the server applied more often than acknowledged (checker).
    pub duplicates_applied: u64,
    /// Acknowledged updates missing on the server (checker).
    pub lost_updates: u64,
    /// Acknowledged patterns the checker compared.
    pub checked_patterns: u64,
    /// TVs that did not settle after the run.
    pub unsettled: usize,
    /// TVs that stopped after too many failed exchanges.
    pub stuck: u64,
    /// Applied syncs per wall-clock second.
    pub syncs_per_sec: f64,
    /// Median exchange latency, ms.
    pub latency_p50_ms: f64,
    /// 99th percentile exchange latency, ms.
    pub latency_p99_ms: f64,
    /// Request bytes of all applied exchanges.
    pub up_bytes_total: u64,
    /// Response bytes of all applied exchanges.
    pub down_bytes_total: u64,
    /// Global patterns published at the end.
    pub global_patterns: u64,
    /// The live global set at the end: (id, version) of each, by id.
    #[serde(skip)]
    pub published: Vec<(u32, u64)>,
    /// Global version at the end.
    pub global_version: u64,
    /// TVs on the small-flash codebook (`minilm-small-v1`).
    pub small_profile_tvs: u64,
    /// TVs whose global patterns at the end (ids, and the version of each)
    /// are not exactly the server's live set: 0 when every TV, whatever its
    /// codebook, holds the same global set.
    pub global_set_mismatches: u64,
    /// Over the small-profile TVs' global patterns at the end: the lowest
    /// cosine between the direction a TV decoded (transcoded by the server
    /// into its codebook) and the source, the global as published in the
    /// primary codebook and reconstructed by it. `None` without such TVs.
    pub small_global_cos_min: Option<f64>,
    /// The published globals against the exact centroids of the fleet
    /// patterns they stand for (embedded server only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<super::fidelity::Fidelity>,
    /// Aggregation passes the embedded server ran on the simulation's
    /// clock (0 with an external server, which aggregates on its own).
    pub aggregation_passes: u64,
    /// Wall-clock seconds of the run.
    pub wall_s: f64,
    /// Virtual (simulated) seconds.
    pub virtual_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Builds the report.
pub fn build(
    cfg: &SimConfig,
    r: &SimResult,
    v: &Verdict,
    unsettled: usize,
    global_patterns: u64,
    global_version: u64,
) -> Report {
    let applied: Vec<_> = r.samples.iter().filter(|s| s.applied).collect();
    // Scheduled syncs; further pages and twins' exchanges are extra, but
    // their bytes count towards the syncs they belong to.
    let syncs = applied.iter().filter(|s| !s.extra).count() as u64;
    let n = syncs.max(1) as f64;
    let per_pattern = |boot: bool| {
        let (mut bytes, mut n) = (0u64, 0u64);
        for s in applied
            .iter()
            .filter(|s| s.patterns_up > 0 && s.boot == boot)
        {
            bytes += u64::from(s.up);
            n += u64::from(s.patterns_up);
        }
        (if n > 0 { bytes as f64 / n as f64 } else { 0.0 }, n)
    };
    let (steady, steady_n) = per_pattern(false);
    let (boot, boot_n) = per_pattern(true);
    let pat = steady_n + boot_n;
    let mut lat: Vec<f64> = applied
        .iter()
        .map(|s| f64::from(s.latency_us) / 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    let conflicts: u64 = r.tvs.iter().map(|t| t.ledger.conflicts).sum();
    let resolved: u64 = r.tvs.iter().map(|t| t.ledger.resolved).sum();
    Report {
        devices: cfg.devices,
        rounds: cfg.rounds,
        seed: cfg.seed,
        syncs,
        extra_exchanges: applied.len() as u64 - syncs,
        exchanges: r.samples.len() as u64,
        up_bytes_per_sync_mean: applied.iter().map(|s| f64::from(s.up)).sum::<f64>() / n,
        down_bytes_per_sync_mean: applied.iter().map(|s| f64::from(s.down)).sum::<f64>() / n,
        up_bytes_per_changed_pattern: steady,
        up_bytes_per_boot_pattern: boot,
        patterns_uploaded: pat,
        server_cos_mean: v.cos_mean,
        server_cos_min: v.cos_min,
        conflicts_detected: conflicts,
        conflicts_resolved: resolved,
        retries: r.counters.retries,
        dropped_responses: r.counters.dropped,
        transport_errors: r.counters.transport_errors,
        unauthenticated: r.counters.unauthenticated,
        resequenced: r.counters.resequenced,
        proxy: None,
        offline_periods: r.counters.offline_periods,
        twins: r.counters.twins,
        duplicates_applied: v.duplicates_applied,
        lost_updates: v.lost_updates,
        checked_patterns: v.checked,
        unsettled,
        stuck: r.counters.stuck,
        syncs_per_sec: syncs as f64 / r.wall_s.max(1e-9),
        latency_p50_ms: percentile(&lat, 0.50),
        latency_p99_ms: percentile(&lat, 0.99),
        up_bytes_total: applied.iter().map(|s| u64::from(s.up)).sum(),
        down_bytes_total: applied.iter().map(|s| u64::from(s.down)).sum(),
        global_patterns,
        published: Vec::new(),
        global_version,
        small_profile_tvs: r.tvs.iter().filter(|t| t.small_profile).count() as u64,
        global_set_mismatches: 0,
        small_global_cos_min: None,
        fidelity: None,
        aggregation_passes: r.passes,
        wall_s: r.wall_s,
        virtual_s: r.virtual_s,
    }
}

/// The table of a run with and without differential privacy on the same
/// seed ([`super::compare_dp`]): what privacy costs the fleet.
pub fn compare_table(dp: &Report, exact: &Report) -> String {
    let fid = |r: &Report, f: &dyn Fn(&super::fidelity::Fidelity) -> String| {
        r.fidelity
            .as_ref()
            .filter(|x| x.globals > 0)
            .map_or("-".to_string(), f)
    };
    let rows: Vec<(&str, String, String)> = vec![
        (
            "scheduled syncs applied",
            dp.syncs.to_string(),
            exact.syncs.to_string(),
        ),
        (
            "global patterns published (end) / version",
            format!("{} / {}", dp.global_patterns, dp.global_version),
            format!("{} / {}", exact.global_patterns, exact.global_version),
        ),
        (
            "down bytes / sync (mean)",
            format!("{:.1}", dp.down_bytes_per_sync_mean),
            format!("{:.1}", exact.down_bytes_per_sync_mean),
        ),
        (
            "up bytes / sync (mean)",
            format!("{:.1}", dp.up_bytes_per_sync_mean),
            format!("{:.1}", exact.up_bytes_per_sync_mean),
        ),
        (
            "cos(published, exact centroid) mean / min",
            fid(dp, &|f| format!("{:.4} / {:.4}", f.cos_mean, f.cos_min)),
            fid(exact, &|f| format!("{:.4} / {:.4}", f.cos_mean, f.cos_min)),
        ),
        (
            "recall@10 vs catalogue (mean)",
            fid(dp, &|f| format!("{:.3}", f.recall10_mean)),
            fid(exact, &|f| format!("{:.3}", f.recall10_mean)),
        ),
        (
            "lost updates / duplicates applied",
            format!("{} / {}", dp.lost_updates, dp.duplicates_applied),
            format!("{} / {}", exact.lost_updates, exact.duplicates_applied),
        ),
        (
            "wall / virtual time (s)",
            format!("{:.1} / {:.0}", dp.wall_s, dp.virtual_s),
            format!("{:.1} / {:.0}", exact.wall_s, exact.virtual_s),
        ),
    ];
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut s = format!(
        "{} TVs, seed {}\n\n| {:w$} | DP (default) | exact (--no-dp) |\n|{}|---:|---:|\n",
        dp.devices,
        dp.seed,
        "figure",
        "-".repeat(w + 2)
    );
    for (k, a, b) in rows {
        s.push_str(&format!("| {k:w$} | {a} | {b} |\n"));
    }
    s
}

/// The terminal and markdown table.
pub fn table(r: &Report) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("devices", r.devices.to_string()),
        (
            "syncs applied (exchanges)",
            format!("{} ({})", r.syncs, r.exchanges),
        ),
        (
            "up bytes / sync (mean)",
            format!("{:.1}", r.up_bytes_per_sync_mean),
        ),
        (
            "down bytes / sync (mean)",
            format!("{:.1}", r.down_bytes_per_sync_mean),
        ),
        (
            "up bytes / changed pattern",
            format!("{:.1}", r.up_bytes_per_changed_pattern),
        ),
        (
            "up bytes / pattern at boot (absolute)",
            format!("{:.1}", r.up_bytes_per_boot_pattern),
        ),
        ("patterns uploaded", r.patterns_uploaded.to_string()),
        (
            "server cos mean / min",
            format!("{:.6} / {:.6}", r.server_cos_mean, r.server_cos_min),
        ),
        (
            "conflicts detected / resolved",
            format!("{} / {}", r.conflicts_detected, r.conflicts_resolved),
        ),
        (
            "retries (dropped responses)",
            format!("{} ({})", r.retries, r.dropped_responses),
        ),
        ("transport errors", r.transport_errors.to_string()),
        (
            "unsigned answers refused / 409 resequences",
            format!("{} / {}", r.unauthenticated, r.resequenced),
        ),
        (
            "offline periods / stale twins",
            format!("{} / {}", r.offline_periods, r.twins),
        ),
        ("lost updates", r.lost_updates.to_string()),
        ("duplicates applied", r.duplicates_applied.to_string()),
        ("acked patterns checked", r.checked_patterns.to_string()),
        ("syncs / s", format!("{:.0}", r.syncs_per_sec)),
        (
            "latency p50 / p99 (ms)",
            format!("{:.2} / {:.2}", r.latency_p50_ms, r.latency_p99_ms),
        ),
        (
            "global patterns / version",
            format!("{} / {}", r.global_patterns, r.global_version),
        ),
        (
            "small-profile TVs / global set mismatches",
            format!("{} / {}", r.small_profile_tvs, r.global_set_mismatches),
        ),
        (
            "small-profile globals: cos min vs source",
            r.small_global_cos_min
                .map_or("-".to_string(), |c| format!("{c:.4}")),
        ),
        (
            "published globals: cos to exact centroid mean / min, recall@10",
            r.fidelity
                .as_ref()
                .filter(|f| f.globals > 0)
                .map_or("-".to_string(), |f| {
                    format!(
                        "{:.4} / {:.4}, {:.3}",
                        f.cos_mean, f.cos_min, f.recall10_mean
                    )
                }),
        ),
        (
            "aggregation passes on the simulation's clock",
            r.aggregation_passes.to_string(),
        ),
        (
            "wall / virtual time (s)",
            format!("{:.1} / {:.0}", r.wall_s, r.virtual_s),
        ),
    ];
    if let Some(p) = &r.proxy {
        rows.push((
            "proxy: exchanges / dropped / delayed / cut / reset",
            format!(
                "{} / {} / {} / {} / {}",
                p.exchanges, p.dropped, p.delayed, p.cut, p.reset
            ),
        ));
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut s = format!(
        "| {:w$} | value |\n|{}|---:|\n",
        "metric",
        "-".repeat(w + 2)
    );
    for (k, v) in rows {
        s.push_str(&format!("| {k:w$} | {v} |\n"));
    }
    s
}

/// Writes `report.md` and the SVG plots into `dir`.
pub fn write_dir(dir: &Path, cfg: &SimConfig, r: &Report, sim: &SimResult) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let applied: Vec<_> = sim.samples.iter().filter(|s| s.applied).collect();
    let up: Vec<f64> = applied.iter().map(|s| f64::from(s.up)).collect();
    let down: Vec<f64> = applied.iter().map(|s| f64::from(s.down)).collect();
    std::fs::write(
        dir.join("bytes_up.svg"),
        histogram(
            "Request body per sync",
            "bytes",
            &up,
            40,
            "#3973ac",
            &[("mean", r.up_bytes_per_sync_mean)],
        ),
    )?;
    std::fs::write(
        dir.join("bytes_down.svg"),
        histogram(
            "Response body per sync",
            "bytes",
            &down,
            40,
            "#4a9c5d",
            &[("mean", r.down_bytes_per_sync_mean)],
        ),
    )?;
    // Syncs per second over the run, in buckets of ~1/40 of it.
    let bucket = (r.wall_s / 40.0).max(0.05);
    let nb = (r.wall_s / bucket).ceil() as usize + 1;
    let mut counts = vec![0u64; nb];
    for s in &applied {
        counts[((s.at_s / bucket) as usize).min(nb - 1)] += 1;
    }
    let rate: Vec<(f64, f64)> = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| ((i as f64 + 0.5) * bucket, c as f64 / bucket))
        .collect();
    std::fs::write(
        dir.join("syncs_per_sec.svg"),
        line_chart(
            "Applied syncs per second",
            "seconds since start",
            "syncs / s",
            &[Series {
                name: "syncs/s",
                color: "#3973ac",
                points: rate,
            }],
        ),
    )?;
    let lat: Vec<f64> = applied
        .iter()
        .map(|s| f64::from(s.latency_us) / 1000.0)
        .collect();
    std::fs::write(
        dir.join("latency.svg"),
        histogram(
            "Sync latency",
            "ms",
            &lat,
            50,
            "#8c6bb1",
            &[("p50", r.latency_p50_ms), ("p99", r.latency_p99_ms)],
        ),
    )?;
    let md = format!(
        "# Fleet simulation report\n\n{} TVs, at least {} applied syncs each, seed {}, faults: {:.1}% lost responses, {:.1}% offline periods, {:.2}% stale twins per sync.\n\n{}\n\
         `lost_updates` and `duplicates_applied` come from the checker: every device's state was read back from the server and compared with what the device holds as acknowledged.\n\n\
         ![bytes up](bytes_up.svg)\n![bytes down](bytes_down.svg)\n![syncs per second](syncs_per_sec.svg)\n![latency](latency.svg)\n",
        r.devices,
        r.rounds,
        r.seed,
        cfg.faults.drop * 100.0,
        cfg.faults.offline * 100.0,
        cfg.faults.twin * 100.0,
        table(r)
    );
    std::fs::write(dir.join("report.md"), md)
}
