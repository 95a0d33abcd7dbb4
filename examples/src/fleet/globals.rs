//! The server's live global set as the public feed gives it, and its
//! comparison with the set each TV ends with (the checker's global part).

use omega_tv_sync::Transport;
use omega_tv_sync_testkit::get;

use super::nodes::Nodes;
use super::tv;

/// The body of a `GET path` through the fleet's transport (200 only).
async fn get_text(t: &mut Nodes, path: &str) -> Result<String, String> {
    let mut buf = vec![0u8; 1 << 20];
    let r = t
        .send(get(path), &mut buf)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    if r.status != 200 {
        return Err(format!("GET {path}: HTTP {}", r.status));
    }
    Ok(String::from_utf8_lossy(&buf[..r.body_len]).into_owned())
}

/// The live global patterns, as the public feed (`GET /api/v1/global`, the
/// primary codebook `cb`) gives them from version 0: the changelog is
/// compacted, so every live pattern appears once as an upsert. By id: its
/// version and its direction as `cb` reconstructs it.
pub type LiveGlobals = std::collections::BTreeMap<u32, (u64, omega_tv_sync::Embedding)>;

/// Reads the global version, then the live global patterns by paging
/// through the public feed from version 0.
pub(super) async fn global_summary(
    t: &mut Nodes,
    cb: &omega_tv_sync::codec::Codebook<'_>,
) -> Result<(u64, LiveGlobals), String> {
    use omega_tv_sync::wire::{FrameReader, Record};
    let v: serde_json::Value = serde_json::from_str(&get_text(t, "/api/v1/sync/version").await?)
        .map_err(|e| format!("version: {e}"))?;
    let version = v["version"].as_u64().ok_or("version: not a number")?;
    let (mut since, mut live) = (0u64, LiveGlobals::new());
    let mut buf = vec![0u8; 1 << 20];
    let mut codes = [0i16; omega_tv_sync::DIM];
    for _ in 0..100_000 {
        let path = format!("/api/v1/global?since={since}&limit=256");
        let r = t
            .send(get(&path), &mut buf)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if r.status != 200 {
            return Err(format!("GET {path}: HTTP {}", r.status));
        }
        let f = FrameReader::parse(&buf[..r.body_len]).map_err(|e| format!("feed page: {e}"))?;
        let mut more = false;
        for rec in f.records() {
            match rec.map_err(|e| format!("feed record: {e}"))? {
                Record::DownloadHead(h) => {
                    more = h.more && h.global_version > since;
                    since = h.global_version;
                }
                Record::GlobalUpsert(g) => {
                    cb.decode(g.code, None, &mut codes)
                        .map_err(|e| format!("global {}: {e}", g.id))?;
                    let e = cb
                        .reconstruct(&codes)
                        .map_err(|e| format!("global {}: {e}", g.id))?;
                    live.insert(g.id, (g.version, e));
                }
                Record::GlobalRemove(g) => {
                    live.remove(&g.id);
                }
                _ => {}
            }
        }
        if !more {
            return Ok((version, live));
        }
    }
    Err("the global feed did not end".into())
}

/// Compares every TV's global patterns with the server's live set: the TVs
/// whose set (ids and versions) differs, and over the small-profile TVs the
/// lowest cosine of a decoded global against its source.
pub fn compare_globals(tvs: &[tv::Tv], live: &LiveGlobals) -> (u64, Option<f64>) {
    let mut mismatches = 0;
    let mut cos_min: Option<f64> = None;
    for tv in tvs {
        let same = tv.globals.versions.len() == live.len()
            && tv
                .globals
                .versions
                .iter()
                .all(|(id, v)| live.get(id).is_some_and(|(lv, _)| lv == v));
        if !same {
            mismatches += 1;
            if std::env::var_os("FLEET_DEBUG").is_some() {
                let have: Vec<_> = tv.globals.versions.iter().collect();
                let want: Vec<_> = live.iter().map(|(id, (v, _))| (id, v)).collect();
                eprintln!(
                    "fleet: globals of {}: {have:?}, server {want:?}",
                    tv.id.as_str()
                );
            }
        }
        for (id, e) in tv.globals.embeddings() {
            if let Some((_, src)) = live.get(&id) {
                let c = f64::from(e.dot(src));
                cos_min = Some(cos_min.map_or(c, |m| m.min(c)));
            }
        }
    }
    (mismatches, cos_min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{model, Args};
    use omega_tv_sync::codec::{minilm_small_v1, Codebook, Codes};
    use omega_tv_sync::sync::{CodedGlobal, GlobalSink};
    use omega_tv_sync::{Category, Embedding, DIM};

    fn unit(i: usize) -> Embedding {
        let mut v = [0f32; DIM];
        v[i] = 1.0;
        Embedding::new(v).unwrap()
    }

    /// Applies global `id` at `version`, `e` as codes of `cb`, to `g`.
    fn apply(g: &mut tv::Globals, cb: &Codebook<'_>, id: u32, version: u64, e: &Embedding) {
        let codes: Codes = cb.quantize(e);
        let category = Category::new("drama").unwrap();
        g.global_codes(&CodedGlobal {
            id,
            codes: &codes,
            success_rate: 0.8,
            sample_count: 100,
            contributors: 5,
            category: &category,
            version,
            codebook: cb,
        });
    }

    /// The comparison finds a TV that misses a global, one that holds an
    /// older version, and one with an extra (withdrawn) global; and it
    /// measures the small-profile copies (kept as codes, reconstructed for
    /// the comparison) against their sources.
    #[test]
    fn global_sets_are_compared_exactly() {
        let cat = model::Catalog::load().unwrap();
        let cb = omega_tv_sync::codec::minilm_v1().unwrap();
        let small_cb = minilm_small_v1().unwrap();
        let mut cfg = Args::default().sim;
        cfg.devices = 5;
        cfg.small_profile_share = 0.2;
        let live: LiveGlobals = [(1, (10, unit(0))), (2, (12, unit(1)))].into();
        let mut tvs: Vec<tv::Tv> = (0..5).map(|i| tv::Tv::new(&cat, cb, &cfg, i)).collect();
        assert_eq!(tvs.iter().filter(|t| t.small_profile).count(), 1);
        for t in tvs.iter_mut() {
            let book = if t.small_profile { &small_cb } else { &cb };
            apply(&mut t.globals, book, 1, 10, &unit(0));
            apply(&mut t.globals, book, 2, 12, &unit(1));
        }
        assert_eq!(compare_globals(&tvs, &live).0, 0);
        // Only the small-profile TV keeps codes; its copies are close to
        // their sources.
        let small = tvs.iter().position(|t| t.small_profile).unwrap();
        assert_eq!(tvs[small].globals.embeddings().len(), 2);
        assert!(tvs[(small + 1) % 5].globals.embeddings().is_empty());
        let close = compare_globals(&tvs, &live).1.unwrap();
        assert!(close > 0.99, "{close}");
        // Its copy of global 2, a little off its source: the comparison
        // reports that copy's cosine (computed here through the codebook).
        let mut off = [0f32; DIM];
        off[1] = 0.96;
        off[2] = 0.28;
        let off = Embedding::new(off).unwrap();
        apply(&mut tvs[small].globals, &small_cb, 2, 12, &off);
        let expect = f64::from(
            small_cb
                .reconstruct(&small_cb.quantize(&off))
                .unwrap()
                .dot(&unit(1)),
        );
        let (m, cos) = compare_globals(&tvs, &live);
        assert_eq!(m, 0);
        assert!((cos.unwrap() - expect).abs() < 1e-9, "{cos:?} vs {expect}");
        assert!((expect - 0.96).abs() < 0.01, "{expect}");
        // Missing, stale and extra.
        tvs[0].globals.global_remove(2, 13);
        apply(&mut tvs[1].globals, &cb, 1, 9, &unit(0));
        apply(&mut tvs[2].globals, &cb, 3, 14, &unit(3));
        assert_eq!(compare_globals(&tvs, &live).0, 3);
        // A reset empties the set.
        tvs[3].globals.reset();
        assert_eq!(compare_globals(&tvs, &live).0, 4);
    }
}
