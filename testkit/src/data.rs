//! The real MiniLM vectors shipped in `data/minilm/`: raw little-endian
//! `f32` rows of [`DIM`] values (`patterns_public.f32`, `items_public.f32`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use omega_tv_sync::{Embedding, DIM};

/// One embedding as plain floats.
pub type Row = [f32; DIM];

/// `data/minilm/` of the workspace.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/minilm")
}

/// Reads a raw little-endian `f32` file of [`DIM`]-float rows; a length
/// that is not a whole number of rows is `InvalidData`.
pub fn read_rows(path: &Path) -> std::io::Result<Vec<Row>> {
    let bytes = std::fs::read(path)?;
    if bytes.len() % (4 * DIM) != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: {} bytes is not a whole number of {DIM}-float rows",
                path.display(),
                bytes.len()
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

/// The rows of `data/minilm/<name>`; panics (naming the file) when it
/// cannot be read.
pub fn rows(name: &str) -> Vec<Row> {
    let p = data_dir().join(name);
    read_rows(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The first 16 rows of `data/minilm/patterns_public.f32` as embeddings
/// (read once).
pub fn vectors() -> &'static [Embedding] {
    static V: OnceLock<Vec<Embedding>> = OnceLock::new();
    V.get_or_init(|| {
        let path = data_dir().join("patterns_public.f32");
        let bytes = std::fs::read(&path).expect("data/minilm/patterns_public.f32");
        bytes
            .chunks_exact(DIM * 4)
            .take(16)
            .map(|c| Embedding::from_le_bytes(c).expect("unit vector"))
            .collect()
    })
}
