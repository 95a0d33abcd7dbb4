//! The end-of-run checker: reads every device's state back from the server
//! and compares it with what the devices hold as acknowledged (the set-test
//! idea: every acknowledged update present, none applied twice).

use std::collections::HashMap;

use omega_tv_sync::codec::{Codebook, Codes};
use omega_tv_sync::{Transport, DIM};
use omega_tv_sync_testkit::get;
use serde::Deserialize;

use super::tv::Tv;

/// One stored pattern, as the server's admin read-back returns it.
#[derive(Deserialize, Debug, Clone)]
pub struct ServerPattern {
    /// Pattern id.
    pub id: String,
    /// Revision: the number of updates the server applied to it.
    pub revision: u32,
    /// Absolute codes.
    pub codes: Vec<i16>,
}

/// A device's state on the server.
#[derive(Deserialize, Debug, Clone)]
pub struct ServerDevice {
    /// Its patterns.
    pub patterns: Vec<ServerPattern>,
}

/// Reads a device's state through `GET /api/v1/devices/{id}/patterns`.
pub async fn read_device<T: Transport>(t: &mut T, device: &str) -> Result<ServerDevice, String>
where
    T::Error: std::fmt::Debug,
{
    let path = format!("/api/v1/devices/{device}/patterns");
    let mut buf = vec![0u8; 1 << 20];
    let r = t
        .send(get(&path), &mut buf)
        .await
        .map_err(|e| format!("read-back of {device}: {e:?}"))?;
    if r.status != 200 {
        return Err(format!("read-back of {device}: HTTP {}", r.status));
    }
    serde_json::from_slice(&buf[..r.body_len]).map_err(|e| format!("read-back of {device}: {e}"))
}

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// Acknowledged patterns compared.
    pub checked: u64,
    /// An update acknowledged to a device but absent on the server: the
    /// server's revision is behind a revision acknowledged to one of the
    /// device id's sessions, its codes differ from the device's at the
    /// device's acknowledged revision, or one revision was acknowledged to
    /// two sessions with different states.
    pub lost_updates: u64,
    /// Updates the server applied more often than they were acknowledged
    /// (a retry applied twice).
    pub duplicates_applied: u64,
    /// Server-held pattern vs the device's float pattern: mean and min cosine
    /// over acknowledged patterns the device has not changed since.
    pub cos_mean: f64,
    /// See `cos_mean`.
    pub cos_min: f64,
    /// Patterns in the cosine figures.
    pub cos_count: u64,
    /// Acknowledged states later replaced by another session's update.
    pub superseded: u64,
    /// Acknowledgements of an application already acknowledged to another
    /// session (byte-identical requests of two sessions under one sequence
    /// number; see [`super::ledger::Ledger`]).
    pub shared_acks: u64,
}

/// Compares one device with the server's view of it.
pub fn check_device(
    cb: &Codebook<'_>,
    tv: &Tv,
    server: &ServerDevice,
    v: &mut Verdict,
    cos_sum: &mut f64,
) {
    let by_id: HashMap<&str, &ServerPattern> =
        server.patterns.iter().map(|p| (p.id.as_str(), p)).collect();
    let cb_q = |p: &super::model::TvPattern| cb.quantize(&p.to_pattern().embedding);
    // Two applications given one revision: the server lost one of them.
    v.lost_updates += tv.ledger.reused_revisions;
    v.shared_acks += tv.ledger.shared_acks;
    let none = std::collections::BTreeMap::new();
    for p in &tv.patterns {
        let acked_revs = tv.ledger.acks.get(p.id.as_str()).unwrap_or(&none);
        let srv = by_id.get(p.id.as_str());
        let srv_rev = srv.map_or(0, |s| s.revision);
        // Each application is the next revision, and each was acknowledged
        // to at least one session of this device (a session re-sends until
        // it is answered). An acknowledged revision above the server's is an
        // update the server does not hold; a revision the server reached
        // that no session was told about is an application nobody asked
        // for (a retry applied twice).
        let lost = acked_revs.range(srv_rev.saturating_add(1)..).count() as u64;
        let told = acked_revs.range(1..=srv_rev).count() as u64;
        v.lost_updates += lost;
        v.duplicates_applied += u64::from(srv_rev) - told;
        if (lost > 0 || told < u64::from(srv_rev)) && std::env::var_os("FLEET_DEBUG").is_some() {
            eprintln!(
                "fleet: check {} {}: acknowledged revisions {:?}, server revision {srv_rev}, device acked {:?}",
                tv.id.as_str(),
                p.id.as_str(),
                acked_revs.keys().collect::<Vec<_>>(),
                tv.client.acked(&p.id).map(|a| a.0)
            );
        }
        let Some((rev, acked)) = tv.client.acked(&p.id) else {
            continue;
        };
        v.checked += 1;
        let Some(s) = srv else {
            v.lost_updates += 1;
            continue;
        };
        let same = s.codes.len() == DIM && s.codes.iter().zip(acked.iter()).all(|(a, b)| a == b);
        // Behind the device, or different at the same revision: lost. Ahead
        // of it: a later update from another session of the same device id
        // superseded it (that update's revision is in the ledger above).
        if s.revision < rev || (s.revision == rev && !same) {
            v.lost_updates += 1;
            continue;
        }
        if s.revision > rev {
            v.superseded += 1;
            continue;
        }
        // Fidelity: only where the device's pattern is what was acked.
        if &cb_q(p) == acked {
            let mut codes: Codes = [0; DIM];
            codes.copy_from_slice(&s.codes);
            if let Ok(e) = cb.reconstruct(&codes) {
                let f = p.to_pattern().embedding;
                let c = f64::from(e.dot(&f));
                *cos_sum += c;
                v.cos_min = if v.cos_count == 0 {
                    c
                } else {
                    v.cos_min.min(c)
                };
                v.cos_count += 1;
            }
        }
    }
}

/// Checks every TV against the server (each in its own codebook).
pub async fn check_all<T: Transport>(tvs: &[Tv], t: &mut T) -> Result<Verdict, String>
where
    T::Error: std::fmt::Debug,
{
    let mut v = Verdict::default();
    let mut cos_sum = 0.0;
    for tv in tvs {
        let s = read_device(t, tv.id.as_str()).await?;
        check_device(tv.client.codebook(), tv, &s, &mut v, &mut cos_sum);
    }
    v.cos_mean = if v.cos_count > 0 {
        cos_sum / v.cos_count as f64
    } else {
        0.0
    };
    Ok(v)
}
