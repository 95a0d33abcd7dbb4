//! Loading the real MiniLM vectors shipped in `data/minilm/`.

use omega_tv_sync::DIM;

pub use omega_tv_sync_testkit::data::{data_dir, read_rows, Row};

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
