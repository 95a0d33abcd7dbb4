//! Loading the real MiniLM vectors shipped in `data/minilm/`.

use omega_tv_sync::DIM;
use std::path::{Path, PathBuf};

/// One embedding as plain floats.
pub type Row = [f32; DIM];

/// `data/minilm/` of the workspace.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/minilm")
}

/// Reads raw little-endian f32 rows of `DIM` values.
pub fn read_rows(path: &Path) -> std::io::Result<Vec<Row>> {
    let bytes = std::fs::read(path)?;
    if bytes.len() % (4 * DIM) != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: {} bytes is not a multiple of {}",
                path.display(),
                bytes.len(),
                4 * DIM
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(4 * DIM)
        .map(|c| {
            let mut r = [0f32; DIM];
            for (x, b) in r.iter_mut().zip(c.chunks_exact(4)) {
                *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            r
        })
        .collect())
}

/// Dot product with eight accumulators in a fixed order.
pub fn dot(a: &Row, b: &Row) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// Scales an f64 vector to unit norm and rounds it to f32.
pub fn normalize(v: &[f64; DIM]) -> Row {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut r = [0f32; DIM];
    for (o, x) in r.iter_mut().zip(v.iter()) {
        *o = (x / n) as f32;
    }
    r
}

/// The fixed benchmark drift: `normalize(k * old + item)`.
pub fn drift(old: &Row, item: &Row, k: f64) -> Row {
    let mut v = [0f64; DIM];
    for ((o, &a), &b) in v.iter_mut().zip(old.iter()).zip(item.iter()) {
        *o = k * f64::from(a) + f64::from(b);
    }
    normalize(&v)
}
