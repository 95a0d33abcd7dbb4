//! Trend signals: per category and content, recent momentum against a
//! baseline, top-K.
//!
//! Every sample a device pattern gains counts as activity for a content item:
//! the catalogue item nearest to the pattern when a [`Catalogue`] is
//! configured, else the global pattern it was merged into (`global-<id>`).
//! Activity feeds two exponentially decayed counters per (category,
//! content): a short one (recent) and a long one (baseline). The score is
//! the ratio of their rates, so 1.0 means "as usual" and 3.0 "three times
//! the usual pace". Each aggregation pass publishes, per category, the top-K
//! scores that are new or moved by more than `publish_change` (relative).
//! The counters live in memory and restart from zero with the server.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Largest score a trend signal may carry (the core checks `[0, 1e6]`).
const MAX_TREND_SCORE: f32 = 1e6;
use omega_tv_sync::{ContentId, DIM};

use crate::store::GlobalChange;

/// Content items to attribute activity to: ids and unit vectors.
#[derive(Clone, Debug, Default)]
pub struct Catalogue {
    ids: Vec<String>,
    vectors: Vec<f32>,
}

impl Catalogue {
    /// Builds a catalogue from `(content id, unit vector)` pairs; ids are
    /// made valid content ids (spaces and other bytes outside printable ASCII
    /// become `_`, cut to 64 bytes) and vectors of the wrong length dropped.
    pub fn new(items: impl IntoIterator<Item = (String, Vec<f32>)>) -> Self {
        let mut c = Catalogue::default();
        for (id, v) in items {
            if v.len() != DIM {
                continue;
            }
            let id: String = id
                .bytes()
                .map(|b| {
                    if (0x21..=0x7e).contains(&b) {
                        b as char
                    } else {
                        '_'
                    }
                })
                .take(ContentId::MAX_LEN)
                .collect();
            if id.is_empty() {
                continue;
            }
            c.ids.push(id);
            c.vectors.extend_from_slice(&v);
        }
        c
    }

    /// Loads `rows x 384` little-endian f32 vectors and a TSV whose header
    /// names a `movie_name` column (one row per vector), as in `data/minilm/`.
    pub fn load(vectors: &Path, meta_tsv: &Path) -> std::io::Result<Self> {
        let raw = std::fs::read(vectors)?;
        let tsv = std::fs::read_to_string(meta_tsv)?;
        let mut lines = tsv.lines();
        let header = lines.next().unwrap_or("");
        let col = header
            .split('\t')
            .position(|h| h == "movie_name")
            .ok_or_else(|| std::io::Error::other("no movie_name column"))?;
        let names = lines.map(|l| l.split('\t').nth(col).unwrap_or("").to_string());
        let rows = raw.chunks_exact(DIM * 4).map(|row| {
            row.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<f32>>()
        });
        Ok(Catalogue::new(names.zip(rows)))
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The id of the item nearest to `v` by cosine.
    pub fn nearest(&self, v: &[f32]) -> Option<&str> {
        let mut best = (f32::NEG_INFINITY, None);
        for (i, row) in self.vectors.chunks_exact(DIM).enumerate() {
            let d: f32 = row.iter().zip(v).map(|(a, b)| a * b).sum();
            if d > best.0 {
                best = (d, Some(i));
            }
        }
        best.1.and_then(|i| self.ids.get(i)).map(String::as_str)
    }
}

/// Trend settings.
#[derive(Clone, Debug)]
pub struct TrendConfig {
    /// Signals published per category per pass, at most.
    pub top_k: usize,
    /// Half-life of the recent counter, seconds.
    pub short_half_life_s: f64,
    /// Half-life of the baseline counter, seconds.
    pub long_half_life_s: f64,
    /// Recent activity (decayed samples) below which nothing is published.
    pub min_recent: f64,
    /// Relative score change that republishes a signal.
    pub publish_change: f32,
    /// Content items to attribute activity to.
    pub catalogue: Option<Arc<Catalogue>>,
}

impl Default for TrendConfig {
    fn default() -> Self {
        TrendConfig {
            top_k: 10,
            short_half_life_s: 3600.0,
            long_half_life_s: 7.0 * 86400.0,
            min_recent: 5.0,
            publish_change: 0.1,
            catalogue: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counter {
    short: f64,
    long: f64,
    at: f64,
}

/// Decayed activity per (category, content) and what was last published.
#[derive(Debug, Default)]
pub struct TrendTracker {
    counters: HashMap<(String, String), Counter>,
    published: HashMap<(String, String), f32>,
}

impl TrendTracker {
    fn decay(c: &mut Counter, now: f64, cfg: &TrendConfig) {
        let dt = (now - c.at).max(0.0);
        c.short *= 0.5f64.powf(dt / cfg.short_half_life_s.max(1e-9));
        c.long *= 0.5f64.powf(dt / cfg.long_half_life_s.max(1e-9));
        c.at = now;
    }

    /// Records `amount` samples of activity for `content` in `category` at
    /// time `now` (seconds).
    pub fn observe(
        &mut self,
        category: &str,
        content: &str,
        amount: f64,
        now: f64,
        cfg: &TrendConfig,
    ) {
        if amount <= 0.0 || !amount.is_finite() {
            return;
        }
        let c = self
            .counters
            .entry((category.to_string(), content.to_string()))
            .or_insert(Counter {
                at: now,
                ..Default::default()
            });
        Self::decay(c, now, cfg);
        c.short += amount;
        c.long += amount;
    }

    /// The momentum score of a counter: recent rate over baseline rate.
    fn score(c: &Counter, cfg: &TrendConfig) -> f32 {
        let short = c.short / cfg.short_half_life_s.max(1e-9);
        let long = c.long / cfg.long_half_life_s.max(1e-9);
        let s = (short + 1e-12) / (long + 1e-12);
        (s as f32).clamp(0.0, MAX_TREND_SCORE)
    }

    /// The signals to publish now: per category, the top-K by score among
    /// items with enough recent activity, when new or moved enough.
    pub fn due(&mut self, now: f64, unix_s: u64, cfg: &TrendConfig) -> Vec<GlobalChange> {
        let mut by_cat: HashMap<String, Vec<(f32, String)>> = HashMap::new();
        for ((cat, content), c) in self.counters.iter_mut() {
            Self::decay(c, now, cfg);
            if c.short < cfg.min_recent {
                continue;
            }
            by_cat
                .entry(cat.clone())
                .or_default()
                .push((Self::score(c, cfg), content.clone()));
        }
        // Forget what has gone quiet.
        self.counters.retain(|_, c| c.long >= 1e-3);
        let mut out = Vec::new();
        let mut cats: Vec<_> = by_cat.into_iter().collect();
        cats.sort_by(|a, b| a.0.cmp(&b.0));
        for (cat, mut items) in cats {
            items.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            for (score, content) in items.into_iter().take(cfg.top_k) {
                let key = (cat.clone(), content.clone());
                let changed = match self.published.get(&key) {
                    None => true,
                    Some(&old) => (score - old).abs() > cfg.publish_change * old.max(1e-6),
                };
                if changed {
                    self.published.insert(key, score);
                    out.push(GlobalChange::Trend {
                        content_id: content,
                        score,
                        region: *b"ZZ",
                        category: cat.clone(),
                        calculated_at: unix_s,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn momentum_ranks_the_rising_item_first() {
        let cfg = TrendConfig {
            min_recent: 0.5,
            short_half_life_s: 10.0,
            long_half_life_s: 1000.0,
            ..Default::default()
        };
        let mut t = TrendTracker::default();
        // A steady item over a long time, then a burst of another.
        for i in 0..100 {
            t.observe("drama", "steady", 1.0, f64::from(i) * 10.0, &cfg);
        }
        for _ in 0..10 {
            t.observe("drama", "rising", 1.0, 995.0, &cfg);
        }
        let due = t.due(1000.0, 1, &cfg);
        let first = due.first().expect("something is due");
        match first {
            GlobalChange::Trend {
                content_id, score, ..
            } => {
                assert_eq!(content_id, "rising");
                assert!(*score > 1.0);
            }
            _ => panic!("not a trend"),
        }
        // Unchanged scores are not republished.
        assert!(t.due(1000.0, 1, &cfg).is_empty());
    }

    #[test]
    fn catalogue_sanitises_ids_and_finds_nearest() {
        let mut a = vec![0f32; DIM];
        a[0] = 1.0;
        let mut b = vec![0f32; DIM];
        b[1] = 1.0;
        let c = Catalogue::new(vec![
            ("the film".to_string(), a),
            ("other".to_string(), b.clone()),
        ]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.nearest(&b), Some("other"));
        let mut q = vec![0f32; DIM];
        q[0] = 0.9;
        q[1] = 0.1;
        assert_eq!(c.nearest(&q), Some("the_film"));
    }
}
