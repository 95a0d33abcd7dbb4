//! Scoring in the code domain: inner products of patterns straight from
//! their [`Codes`], without reconstructing 384 floats each
//! (`docs/codec.md`, "Scoring without reconstructing").
//!
//! [`Codebook::reconstruct`] computes `x = mu + sum_j q_j * d_j * B_j` (`B_j`
//! the basis rows, `d_j` the decode multipliers), a `DIM x DIM` product. The
//! rows are mutually orthogonal (a PCA basis, or the identity), so with
//! `U_j = B_j / |B_j|` an orthonormal basis of the whole space,
//!
//! ```text
//! x = sum_j (m_j + q_j * s_j) * U_j      m_j = <mu, U_j>,  s_j = d_j * |B_j|
//! ```
//!
//! and the coordinates `m_j + q_j * s_j` keep every inner product and norm of
//! the unnormalised reconstruction. A [`CoefficientSpace`] holds `m` and `s`
//! (computed once per codebook, one `DIM x DIM` pass); after that the cosine
//! of two coded patterns is one pass over `DIM` components.

use super::{f32_le, Codebook, Codes};
use crate::types::DIM;

/// The codebook's mean and per-component scales in its orthonormal basis:
/// what [`CoefficientSpace::cosine`] needs to score coded patterns.
/// `3 * DIM` floats (4,608 bytes); compute it once per codebook
/// ([`Codebook::coefficient_space`]) and keep it, e.g. in a `static`.
#[derive(Clone, Debug, PartialEq)]
pub struct CoefficientSpace {
    /// `m_j`: the mean's coordinate on each orthonormal basis vector.
    mean: [f32; DIM],
    /// `s_j`: one code step of component `j`, in the same coordinates.
    scale: [f32; DIM],
    /// `s_j^2`.
    scale2: [f32; DIM],
    /// `sum_j m_j^2`.
    mean2: f32,
}

/// Two numbers per coded pattern that make [`CoefficientSpace::cosine_prepared`]
/// one integer product per component: compute them once per pattern
/// ([`CoefficientSpace::prepare`]) and keep them beside its codes (8 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CodeNorms {
    /// `sum_j m_j q_j s_j`.
    linear: f32,
    /// `|c|^2`, the squared norm of the unnormalised reconstruction.
    norm2: f32,
}

impl Codebook<'_> {
    /// The codebook's [`CoefficientSpace`]: one `DIM x DIM` pass over the
    /// basis (as much work as one [`Codebook::reconstruct`]), done once.
    pub fn coefficient_space(&self) -> CoefficientSpace {
        let mut mean = [0f32; DIM];
        let mut scale = [0f32; DIM];
        match self.basis {
            Some(basis) => {
                for (((m, s), row), dm) in mean
                    .iter_mut()
                    .zip(scale.iter_mut())
                    .zip(basis.chunks_exact(2 * DIM))
                    .zip(self.dec_mul.chunks_exact(4))
                {
                    let (mut dot, mut norm2) = (0f64, 0f64);
                    for (b, mu) in row.chunks_exact(2).zip(self.mean.chunks_exact(4)) {
                        let b = f64::from(i16::from_le_bytes([b[0], b[1]]));
                        dot += b * f64::from(f32_le(mu));
                        norm2 += b * b;
                    }
                    let norm = libm::sqrt(norm2);
                    // A zero row (no blob the fit writes has one) adds nothing.
                    if norm > 0.0 {
                        *m = (dot / norm) as f32;
                        *s = (f64::from(f32_le(dm)) * norm) as f32;
                    }
                }
            }
            None => {
                for ((m, s), (mu, dm)) in mean
                    .iter_mut()
                    .zip(scale.iter_mut())
                    .zip(self.mean.chunks_exact(4).zip(self.dec_mul.chunks_exact(4)))
                {
                    *m = f32_le(mu);
                    *s = f32_le(dm);
                }
            }
        }
        let mut scale2 = [0f32; DIM];
        for (w, s) in scale2.iter_mut().zip(scale.iter()) {
            *w = s * s;
        }
        let mean2 = mean.iter().map(|m| m * m).sum();
        CoefficientSpace {
            mean,
            scale,
            scale2,
            mean2,
        }
    }
}

impl CoefficientSpace {
    /// The coordinates of the (unnormalised) reconstruction of `codes` in the
    /// codebook's orthonormal basis: their inner products and norms are
    /// those of the reconstructions. `DIM` multiply-adds.
    pub fn coefficients(&self, codes: &Codes) -> [f32; DIM] {
        let mut out = [0f32; DIM];
        for (((o, &q), m), s) in out
            .iter_mut()
            .zip(codes.iter())
            .zip(self.mean.iter())
            .zip(self.scale.iter())
        {
            *o = m + f32::from(q) * s;
        }
        out
    }

    /// The [`CodeNorms`] of one coded pattern (one pass over `DIM`).
    pub fn prepare(&self, codes: &Codes) -> CodeNorms {
        let (mut linear, mut quad) = (0f32, 0f32);
        for (((&q, m), s), w) in codes
            .iter()
            .zip(self.mean.iter())
            .zip(self.scale.iter())
            .zip(self.scale2.iter())
        {
            let q = f32::from(q);
            linear += m * s * q;
            quad += w * q * q;
        }
        CodeNorms {
            linear,
            norm2: self.mean2 + 2.0 * linear + quad,
        }
    }

    /// Cosine similarity of the patterns that `a` and `b` code, equal (to
    /// float rounding) to the dot product of their
    /// [`Codebook::reconstruct`]ions, without a `DIM`-float buffer. 0 if
    /// either reconstruction is the zero vector. Scoring many pairs,
    /// [`CoefficientSpace::cosine_prepared`] with stored [`CodeNorms`] does
    /// a third of the work.
    pub fn cosine(&self, a: &Codes, b: &Codes) -> f32 {
        self.cosine_prepared(a, self.prepare(a), b, self.prepare(b))
    }

    /// [`CoefficientSpace::cosine`] with each side's [`CodeNorms`] given:
    /// `<c_a, c_b> = sum m^2 + linear_a + linear_b + sum_j s_j^2 q_aj q_bj`,
    /// one exact integer product and one multiply-add per component.
    pub fn cosine_prepared(&self, a: &Codes, na: CodeNorms, b: &Codes, nb: CodeNorms) -> f32 {
        // Four accumulators in a fixed order: deterministic, and independent
        // chains for the pipeline (or SIMD lanes on a host).
        let mut acc = [0f32; 4];
        for ((a4, b4), w4) in a
            .chunks_exact(4)
            .zip(b.chunks_exact(4))
            .zip(self.scale2.chunks_exact(4))
        {
            for k in 0..4 {
                let p = i32::from(a4[k]) * i32::from(b4[k]);
                acc[k] += w4[k] * p as f32;
            }
        }
        let cross = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        let dot = self.mean2 + na.linear + nb.linear + cross;
        let den = libm::sqrtf(na.norm2 * nb.norm2);
        if den > 0.0 {
            dot / den
        } else {
            0.0
        }
    }
}
