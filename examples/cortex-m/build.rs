//! Host side of the firmware build: puts `memory.x` on the linker path, and
//! cuts the first `ROWS` real pattern vectors out of
//! `data/minilm/patterns_public.f32` with reference values computed here in
//! f64, so the firmware checks its f32 results against an independent
//! computation.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

/// Real pattern rows compiled into the firmware (1536 B each).
const ROWS: usize = 16;
const DIM: usize = 384;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");

    let data = "../../data/minilm/patterns_public.f32";
    println!("cargo:rerun-if-changed={data}");
    let bytes = fs::read(data).expect("read data/minilm/patterns_public.f32");
    let rows = &bytes[..ROWS * DIM * 4];
    fs::write(out.join("patterns.bin"), rows).expect("write patterns.bin");

    let v: Vec<Vec<f64>> = rows
        .chunks_exact(DIM * 4)
        .map(|r| {
            r.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect()
        })
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut s = String::new();
    writeln!(s, "/// Real pattern rows compiled in.").unwrap();
    writeln!(s, "pub const ROWS: usize = {ROWS};").unwrap();
    writeln!(
        s,
        "/// cos(row i, row (i + 1) % ROWS), computed in f64 on the host."
    )
    .unwrap();
    write!(s, "pub const NEXT_COS: [f64; ROWS] = [").unwrap();
    for i in 0..ROWS {
        write!(s, "{:e}, ", dot(&v[i], &v[(i + 1) % ROWS])).unwrap();
    }
    writeln!(s, "];").unwrap();
    // Index of each row's nearest other row, when the margin over the
    // runner-up is large enough to survive f32 rounding (else usize::MAX).
    writeln!(
        s,
        "/// Nearest other row of each row (usize::MAX: near-tie, not checked)."
    )
    .unwrap();
    write!(s, "pub const NEAREST: [usize; ROWS] = [").unwrap();
    for i in 0..ROWS {
        let mut sims: Vec<(f64, usize)> = (0..ROWS)
            .filter(|&j| j != i)
            .map(|j| (dot(&v[i], &v[j]), j))
            .collect();
        sims.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
        let nearest = if sims[0].0 - sims[1].0 > 1e-4 {
            sims[0].1
        } else {
            usize::MAX
        };
        write!(s, "{nearest}, ").unwrap();
    }
    writeln!(s, "];").unwrap();
    fs::write(out.join("expected.rs"), s).expect("write expected.rs");
}
