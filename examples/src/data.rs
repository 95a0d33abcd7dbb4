//! Loading the real MiniLM vectors shipped in `data/minilm/`.

use std::path::{Path, PathBuf};

use omega_tv_sync::DIM;

/// The repository's `data/minilm` folder.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/minilm")
}

/// Reads a raw little-endian f32 file of 384-float rows.
pub fn load_rows(path: &Path) -> std::io::Result<Vec<[f32; DIM]>> {
    let bytes = std::fs::read(path)?;
    if bytes.len() % (DIM * 4) != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: {} bytes is not a whole number of 384-float rows",
                path.display(),
                bytes.len()
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(DIM * 4)
        .map(|row| {
            let mut v = [0f32; DIM];
            for (x, c) in v.iter_mut().zip(row.chunks_exact(4)) {
                *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            v
        })
        .collect())
}

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
