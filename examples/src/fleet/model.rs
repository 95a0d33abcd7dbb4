//! What a simulated TV learns: patterns that drift towards what it watches.

use std::sync::Arc;

use omega_tv_sync::types::{Category, Embedding, Pattern, PatternId};
use omega_tv_sync::DIM;

use super::rng::Rng;
use crate::data::{dot, normalize};

/// The catalogue and the seed patterns every TV starts from.
pub struct Catalog {
    /// Item vectors (`items_public.f32`).
    pub items: Vec<[f32; DIM]>,
    /// Item category (`plot`/`fresh`/`rotten`) per item.
    pub item_category: Vec<String>,
    /// Item content id (`movie_name`) per item.
    pub item_name: Vec<String>,
    /// Seed patterns (`patterns_public.f32`).
    pub patterns: Vec<[f32; DIM]>,
    /// For each seed pattern, its nearest items: what a recommender would show.
    pub neighbours: Vec<Vec<u32>>,
}

/// How many of a seed pattern's nearest items a TV picks from.
const NEIGHBOURS: usize = 48;

impl Catalog {
    /// Loads the real vectors and precomputes each seed pattern's neighbours.
    pub fn load() -> std::io::Result<Catalog> {
        let dir = crate::data::data_dir();
        let items = crate::data::read_rows(&dir.join("items_public.f32"))?;
        let meta = crate::data::load_item_meta(&dir.join("items_public.meta.tsv"))?;
        let patterns = crate::data::read_rows(&dir.join("patterns_public.f32"))?;
        let neighbours = patterns
            .iter()
            .map(|p| {
                let mut scored: Vec<(f32, u32)> = items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| (dot(p, it), i as u32))
                    .collect();
                scored.select_nth_unstable_by(NEIGHBOURS, |a, b| b.0.total_cmp(&a.0));
                scored.truncate(NEIGHBOURS);
                scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                scored.into_iter().map(|s| s.1).collect()
            })
            .collect();
        let (item_category, item_name) = meta.into_iter().unzip();
        Ok(Catalog {
            items,
            item_category,
            item_name,
            patterns,
            neighbours,
        })
    }
}

/// One learned pattern on a TV, in floats (what the device really holds).
#[derive(Clone)]
pub struct TvPattern {
    /// Its id on the device.
    pub id: PatternId,
    /// Current direction.
    pub embedding: [f32; DIM],
    /// Seed pattern it grew from (for recommendations).
    pub seed: usize,
    /// Watches completed.
    pub hits: u32,
    /// Watches started.
    pub samples: u32,
    /// Category.
    pub category: Category,
    /// Changed since it was last handed to the sync client.
    pub changed: bool,
}

impl TvPattern {
    /// Completed / started.
    pub fn success_rate(&self) -> f32 {
        if self.samples == 0 {
            0.0
        } else {
            (self.hits as f32 / self.samples as f32).clamp(0.0, 1.0)
        }
    }

    /// As the core's validated type.
    pub fn to_pattern(&self) -> Pattern {
        let e = Embedding::normalize(self.embedding)
            .expect("a TV pattern is a finite, non-zero vector");
        Pattern::new(
            self.id.clone(),
            e,
            self.success_rate(),
            self.samples,
            self.category.clone(),
        )
        .expect("a rate in [0, 1]")
    }
}

/// Makes the starting patterns of TV `index`.
pub fn initial_patterns(cat: &Catalog, rng: &mut Rng, count: usize) -> Vec<TvPattern> {
    let cats = ["drama", "comedy", "news", "sport", "kids"];
    (0..count)
        .map(|j| {
            let seed = rng.range(0, cat.patterns.len() as u64 - 1) as usize;
            let samples = rng.range(4, 30) as u32;
            let rate = 0.5 + 0.45 * rng.f64();
            TvPattern {
                id: PatternId::new(&format!("p{j}")).expect("short id"),
                embedding: cat.patterns[seed],
                seed,
                hits: (rate * samples as f64).round() as u32,
                samples,
                category: Category::new(cats[seed % cats.len()]).expect("short category"),
                changed: true,
            }
        })
        .collect()
}

/// One watch event: the TV picks a pattern, is shown an item near it (or a
/// random one), and either completes it (the pattern moves towards it:
/// `new = normalize(k * old + item)`) or abandons it. Returns the item index
/// and whether it was completed.
pub fn watch(cat: &Arc<Catalog>, rng: &mut Rng, patterns: &mut [TvPattern]) -> (usize, bool) {
    let j = rng.range(0, patterns.len() as u64 - 1) as usize;
    let p = &mut patterns[j];
    let item = if rng.chance(0.75) {
        let n = &cat.neighbours[p.seed];
        n[rng.range(0, n.len() as u64 - 1) as usize] as usize
    } else {
        rng.range(0, cat.items.len() as u64 - 1) as usize
    };
    let it = &cat.items[item];
    let sim = f64::from(dot(&p.embedding, it));
    let p_complete = (0.45 + (sim - 0.3) * 1.5).clamp(0.15, 0.97);
    let completed = rng.chance(p_complete);
    p.samples += 1;
    if completed {
        p.hits += 1;
        let k = p.samples.min(40) as f32;
        for (x, y) in p.embedding.iter_mut().zip(it.iter()) {
            *x = k * *x + y;
        }
        normalize(&mut p.embedding);
    }
    p.changed = true;
    (item, completed)
}
