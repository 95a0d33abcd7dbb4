//! Quantisation: an embedding to integer codes in the codebook's basis,
//! and back (`docs/codec.md`, "Quantisation").

use super::*;

impl Codebook<'_> {
    /// Quantises an embedding to integer codes. Values outside `i16`
    /// saturate; this never fails.
    ///
    /// The residual `x - mu` is first rounded to `i16` fixed point
    /// ([`RESIDUAL_BITS`] fractional bits; every unit-norm input fits), so
    /// the basis product is one pass of `i16 x i16` multiply-adds whose
    /// pairs are summed exactly in `i32` before the `f32` accumulation.
    /// The rounding adds noise about 100 times smaller than a step.
    pub fn quantize(&self, e: &Embedding) -> Codes {
        let mut out = [0i16; DIM];
        match self.basis {
            Some(basis) => {
                let mut r = [0i16; DIM];
                for ((r, &x), m) in r
                    .iter_mut()
                    .zip(e.as_array().iter())
                    .zip(self.mean.chunks_exact(4))
                {
                    *r = fixed_residual(x - f32_le(m));
                }
                for ((o, row), em) in out
                    .iter_mut()
                    .zip(basis.chunks_exact(2 * DIM))
                    .zip(self.enc_mul.chunks_exact(4))
                {
                    *o = saturate(dot_row(row, &r) * (f32_le(em) * RESIDUAL_INV));
                }
            }
            None => {
                for ((o, &x), (m, em)) in out
                    .iter_mut()
                    .zip(e.as_array().iter())
                    .zip(self.mean.chunks_exact(4).zip(self.enc_mul.chunks_exact(4)))
                {
                    *o = saturate((x - f32_le(m)) * f32_le(em));
                }
            }
        }
        out
    }

    /// [`reconstruct`](Self::reconstruct) of every `codes[i]` into
    /// `out[i]` (as many as the shorter of the two holds), the same
    /// embeddings (or errors) bit for bit. With an attached
    /// [`FloatBasis`](super::FloatBasis) the patterns go through the basis
    /// eight at a time, each block of rows read once for all of them
    /// (docs/codec.md, "Float basis"); otherwise
    /// one by one. Feature `lut` (a host's build), inlined into its caller
    /// like `reconstruct`.
    #[cfg(feature = "lut")]
    #[inline(always)]
    pub fn reconstruct_many(&self, codes: &[Codes], out: &mut [Result<Embedding>]) {
        let Some(fb) = self.float_basis else {
            for (c, o) in codes.iter().zip(out.iter_mut()) {
                *o = self.reconstruct(c);
            }
            return;
        };
        const B: usize = super::float_basis::BATCH;
        let mut mean = [0f32; DIM];
        for (a, m) in mean.iter_mut().zip(self.mean.chunks_exact(4)) {
            *a = f32_le(m);
        }
        for (cs, os) in codes.chunks(B).zip(out.chunks_mut(B)) {
            let mut accs = [mean; B];
            self.add_float_rows_many(fb, cs, &mut accs);
            for (o, acc) in os.iter_mut().zip(accs).take(cs.len()) {
                *o = Embedding::normalize(acc);
            }
        }
    }

    /// The embedding that `codes` stand for, renormalised to unit norm.
    ///
    /// Fails with [`Error::NotUnitNorm`] only if the reconstruction is the
    /// zero vector (possible only for codes no encoder produces).
    ///
    /// With feature `lut` (a host's build) it is inlined into its caller,
    /// so that a server can compile it for the wider vector unit it finds
    /// at run time (the same sums: Rust fuses no multiply-add on its own).
    #[cfg_attr(feature = "lut", inline(always))]
    pub fn reconstruct(&self, c: &Codes) -> Result<Embedding> {
        let mut acc = [0f32; DIM];
        for (a, m) in acc.iter_mut().zip(self.mean.chunks_exact(4)) {
            *a = f32_le(m);
        }
        // An attached f32 copy of the basis (feature `lut`): the same sums.
        #[cfg(feature = "lut")]
        if let Some(fb) = self.float_basis {
            self.add_float_rows(fb, c, &mut acc);
            return Embedding::normalize(acc);
        }
        match self.basis {
            Some(basis) => {
                for ((&q, row), dm) in c
                    .iter()
                    .zip(basis.chunks_exact(2 * DIM))
                    .zip(self.dec_mul.chunks_exact(4))
                {
                    if q == 0 {
                        continue;
                    }
                    let k = f32::from(q) * f32_le(dm);
                    for (a, b) in acc.iter_mut().zip(row.chunks_exact(2)) {
                        *a += k * f32::from(i16::from_le_bytes([b[0], b[1]]));
                    }
                }
            }
            None => {
                for ((a, &q), dm) in acc
                    .iter_mut()
                    .zip(c.iter())
                    .zip(self.dec_mul.chunks_exact(4))
                {
                    *a += f32::from(q) * f32_le(dm);
                }
            }
        }
        Embedding::normalize(acc)
    }
}

/// Fractional bits of the fixed-point residual `x - mu` in
/// [`Codebook::quantize`]: `i16` covers `(-2, 2)`, every coordinate of a unit
/// vector minus a mean of unit vectors.
pub const RESIDUAL_BITS: u32 = 14;
pub(super) const RESIDUAL_SCALE: f32 = (1u32 << RESIDUAL_BITS) as f32;
pub(super) const RESIDUAL_INV: f32 = 1.0 / RESIDUAL_SCALE;

/// Rounds `y` to the nearest integer (halves away from zero) and saturates
/// to `[-limit, limit]`; NaN gives 0. Branch-free, so loops over it vectorise.
#[inline]
pub(super) fn round_sat(y: f32, limit: f32) -> i32 {
    let h = if y < 0.0 { -0.5 } else { 0.5 };
    // `as` truncates towards zero, saturates and maps NaN to 0.
    (y + h).clamp(-limit, limit) as i32
}

/// `x - mu` in fixed point, saturated to `±32767` (so that two products of
/// an `i16` basis entry and a residual sum to less than `2^31`).
#[inline]
pub(super) fn fixed_residual(r: f32) -> i16 {
    round_sat(r * RESIDUAL_SCALE, 32767.0) as i16
}

/// `y` rounded to `i16`, saturating at `i16::MIN` and `i16::MAX`.
#[inline]
pub(super) fn saturate(y: f32) -> i16 {
    round_sat(y, 32768.0).clamp(-32768, 32767) as i16
}

/// Dot product of an i16 basis row (little-endian bytes) with the fixed-point
/// residual `r`: products summed in pairs in `i32` (exact: each pair is at
/// most `2 * 32768 * 32767 < 2^31`), then in four `f32` accumulators in a fixed
/// order (deterministic; vectorises to multiply-add-pairs on SIMD hosts and
/// dual 16-bit multiply-accumulates on Cortex-M4).
#[inline]
pub(super) fn dot_row(row: &[u8], r: &[i16; DIM]) -> f32 {
    // Four named accumulators, each pair written out: at `opt-level = "s"`
    // an `[f32; 4]` indexed in an inner loop stayed in memory on the
    // Cortex-M4 (a load and a store per pair, ~19 instructions per pair);
    // this is the same arithmetic in the same order, in registers.
    let (mut a0, mut a1, mut a2, mut a3) = (0f32, 0f32, 0f32, 0f32);
    for (rb, rv) in row.chunks_exact(16).zip(r.chunks_exact(8)) {
        // Always taken: `chunks_exact` gives exactly these lengths.
        let (Ok(rb), Ok(rv)) = (<&[u8; 16]>::try_from(rb), <&[i16; 8]>::try_from(rv)) else {
            continue;
        };
        a0 += pair(rb, rv, 0);
        a1 += pair(rb, rv, 1);
        a2 += pair(rb, rv, 2);
        a3 += pair(rb, rv, 3);
    }
    (a0 + a1) + (a2 + a3)
}

/// Pair `k` of a 16-byte stretch of a basis row with its 8 residuals:
/// both products summed exactly in `i32`, as `f32`.
#[inline(always)]
fn pair(rb: &[u8; 16], rv: &[i16; 8], k: usize) -> f32 {
    let b0 = i32::from(i16::from_le_bytes([rb[4 * k], rb[4 * k + 1]]));
    let b1 = i32::from(i16::from_le_bytes([rb[4 * k + 2], rb[4 * k + 3]]));
    (b0 * i32::from(rv[2 * k])).wrapping_add(b1 * i32::from(rv[2 * k + 1])) as f32
}
