//! Loading the real MiniLM vectors shipped in `data/minilm/`.

use std::path::Path;

use omega_tv_sync::DIM;

pub use omega_tv_sync_testkit::data::{data_dir, read_rows};

/// Catalogue item metadata: (category, movie_name) per row of `items_public.f32`.
pub fn load_item_meta(path: &Path) -> std::io::Result<Vec<(String, String)>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split('\t');
            let _idx = f.next()?;
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect())
}

/// Dot product.
pub fn dot(a: &[f32; DIM], b: &[f32; DIM]) -> f32 {
    a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
}

/// Scales to unit norm (f64 accumulation).
pub fn normalize(v: &mut [f32; DIM]) {
    let n = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if n > 0.0 {
        for x in v.iter_mut() {
            *x = (f64::from(*x) / n) as f32;
        }
    }
}
