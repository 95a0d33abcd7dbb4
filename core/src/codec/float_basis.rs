//! An optional `f32` copy of the codebook's basis that makes
//! [`Codebook::reconstruct`] cheaper on a host, in memory the caller
//! provides ([`FloatBasis`]).
//!
//! The blob keeps the basis rows as little-endian `i16` (half the flash of
//! `f32`); `reconstruct` converts every entry of every row it adds. With a
//! [`FloatBasis`] attached ([`Codebook::with_float_basis`]) it adds rows of
//! `f32` that are the same values (every `i16` is exact in `f32`), in the
//! same order, with the same multiplier: the result is bit for bit the
//! same embedding (`core/tests/codec.rs`,
//! `the_float_basis_reconstructs_what_the_blob_reconstructs`), for about
//! half the instructions on x86-64 (docs/codec.md, "Float basis").
//!
//! Memory: [`Codebook::float_basis_len`] `f32`: `DIM x DIM` (576 KiB) for a
//! codebook with a basis, 0 for one without (the small profile's identity,
//! where reconstruction is already one pass). Meant for a server, which
//! reconstructs every changed pattern it aggregates.

use super::{f32_le, Codebook, Codes, DIM};
use crate::{Error, Result};

/// A codebook's basis as `f32` rows, over memory the caller provides
/// (module docs); attach it with [`Codebook::with_float_basis`].
#[derive(Clone, Copy)]
pub struct FloatBasis<'m> {
    /// Codebook it was built for.
    id: u32,
    /// `DIM` rows of `DIM` values, row `j` the basis row of code `j`.
    rows: &'m [f32],
}

impl core::fmt::Debug for FloatBasis<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FloatBasis")
            .field("codebook", &self.id)
            .field("values", &self.rows.len())
            .finish()
    }
}

impl Codebook<'_> {
    /// `f32` values a [`FloatBasis`] of this codebook needs: `DIM x DIM`
    /// with a basis, 0 without one.
    pub fn float_basis_len(&self) -> usize {
        if self.basis.is_some() {
            DIM * DIM
        } else {
            0
        }
    }

    /// Builds this codebook's [`FloatBasis`] in `rows` (at least
    /// [`float_basis_len`](Self::float_basis_len) long; a longer buffer is
    /// used only in part). [`Error::BufferTooSmall`] if it is shorter.
    pub fn build_float_basis<'m>(&self, rows: &'m mut [f32]) -> Result<FloatBasis<'m>> {
        let n = self.float_basis_len();
        let rows = rows.get_mut(..n).ok_or(Error::BufferTooSmall)?;
        if let Some(basis) = self.basis {
            for (r, b) in rows.iter_mut().zip(basis.chunks_exact(2)) {
                *r = f32::from(i16::from_le_bytes([b[0], b[1]]));
            }
        }
        Ok(FloatBasis { id: self.id, rows })
    }
}

/// Patterns [`Codebook::reconstruct_many`] reconstructs together: their
/// accumulators (`BATCH x DIM` `f32`, 12 KiB) and one block of rows stay
/// in the L1 cache while each pattern adds its rows from the block.
pub(super) const BATCH: usize = 8;

/// Basis rows per block of the batched loop (`BLOCK x DIM` `f32`, 24 KiB).
const BLOCK: usize = 16;

/// Adds `k * row` for every `(k, row)` of the iterator `$terms` to the
/// accumulator `$acc` (`&mut [f32; DIM]`), four rows per pass over it, each
/// product rounded into it in order. A macro, not a function: the same
/// loop as a function took 3% more instructions per reconstruction
/// (callgrind, `scripts/codec-cost.sh`).
macro_rules! add_terms {
    ($terms:expr, $acc:expr) => {{
        let (mut terms, acc): (_, &mut [f32; DIM]) = ($terms.fuse(), $acc);
        loop {
            match (terms.next(), terms.next(), terms.next(), terms.next()) {
                (Some((k0, r0)), Some((k1, r1)), Some((k2, r2)), Some((k3, r3))) => {
                    for ((((a, &b0), &b1), &b2), &b3) in
                        acc.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3)
                    {
                        *a = (((*a + k0 * b0) + k1 * b1) + k2 * b2) + k3 * b3;
                    }
                }
                (t0, t1, t2, _) => {
                    for (k, row) in [t0, t1, t2].into_iter().flatten() {
                        for (x, &v) in acc.iter_mut().zip(row) {
                            *x += k * v;
                        }
                    }
                    break;
                }
            }
        }
    }};
}

impl Codebook<'_> {
    /// Adds `q_j * d_j * B_j` for every nonzero code `q_j` to `acc`, over
    /// `basis` (built for this codebook): the values of the `i16` rows
    /// (each `i16` is exact in `f32`) in the same order as
    /// [`reconstruct`](Codebook::reconstruct)'s loop over them, four rows
    /// per pass over `acc` (each sum still rounded row by row): the same
    /// sums, bit for bit. Inlined with [`reconstruct`](Codebook::reconstruct)
    /// into a caller compiled for a wider vector unit.
    #[inline(always)]
    pub(super) fn add_float_rows(&self, basis: &FloatBasis<'_>, c: &Codes, acc: &mut [f32; DIM]) {
        add_terms!(self.terms(c, basis.rows(), self.dec_mul), acc);
    }

    /// [`add_float_rows`](Self::add_float_rows) for up to [`BATCH`]
    /// patterns at once (`codes[i]` into `accs[i]`), block of rows by block
    /// of rows: each block is read from memory once for all of them,
    /// instead of the whole basis (576 KiB) once per pattern. Each
    /// accumulator still adds its pattern's nonzero rows in order, each
    /// product rounded into it one by one, so the sums are
    /// [`add_float_rows`](Self::add_float_rows)'s, bit for bit.
    #[inline(always)]
    pub(super) fn add_float_rows_many(
        &self,
        basis: &FloatBasis<'_>,
        codes: &[Codes],
        accs: &mut [[f32; DIM]],
    ) {
        let blocks = basis
            .rows
            .chunks(BLOCK * DIM)
            .zip(self.dec_mul.chunks(BLOCK * 4))
            .enumerate();
        for (b, (rows, dec_mul)) in blocks {
            for (c, acc) in codes.iter().zip(accs.iter_mut()) {
                let part = c.get(b * BLOCK..).unwrap_or(&[]);
                add_terms!(self.terms(part, rows.chunks_exact(DIM), dec_mul), acc);
            }
        }
    }

    /// `(q_j * d_j, B_j)` of every nonzero code of `c` over `rows` and
    /// their multipliers.
    #[inline(always)]
    fn terms<'r>(
        &self,
        c: &'r [i16],
        rows: core::slice::ChunksExact<'r, f32>,
        dec_mul: &'r [u8],
    ) -> impl Iterator<Item = (f32, &'r [f32])> + 'r {
        c.iter()
            .zip(rows)
            .zip(dec_mul.chunks_exact(4))
            .filter(|((&q, _), _)| q != 0)
            .map(|((&q, row), dm)| (f32::from(q) * f32_le(dm), row))
    }
}

impl<'m> FloatBasis<'m> {
    /// The id of the codebook this basis was built for.
    pub fn codebook_id(&self) -> u32 {
        self.id
    }

    /// Built for `cb`: its id, and every value equal to `cb`'s basis (one
    /// pass over `DIM x DIM` entries), so that a copy of another blob with
    /// the same id (a 32-bit hash) is refused rather than reconstructing
    /// differently.
    pub(super) fn fits(&self, cb: &Codebook<'_>) -> bool {
        self.id == cb.id
            && self.rows.len() == cb.float_basis_len()
            && cb.basis.is_some_and(|basis| {
                self.rows
                    .iter()
                    .zip(basis.chunks_exact(2))
                    .all(|(&r, b)| r == f32::from(i16::from_le_bytes([b[0], b[1]])))
            })
    }

    /// The rows, `DIM` values each.
    #[inline]
    pub(super) fn rows(&self) -> core::slice::ChunksExact<'m, f32> {
        self.rows.chunks_exact(DIM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A basis with the codebook's id and length but one value changed
    /// (what a copy of another blob with a colliding id would be) is refused.
    #[test]
    fn a_basis_of_other_values_is_refused() {
        use std::vec;
        // 576 KiB each: on the heap, not on the test thread's stack.
        let cb = super::super::minilm_v1().unwrap();
        let mut rows = vec![0f32; DIM * DIM];
        let fb = cb.build_float_basis(&mut rows).unwrap();
        assert!(fb.fits(&cb));
        let id = fb.id;
        let mut other = vec![0f32; DIM * DIM];
        other.copy_from_slice(fb.rows);
        other[DIM * 7 + 5] += 1.0;
        let forged = FloatBasis { id, rows: &other };
        assert!(!forged.fits(&cb));
        assert_eq!(cb.with_float_basis(&forged).err(), Some(Error::BadCodebook));
        // The right id over too few values (an empty one would compare
        // nothing) is refused as well.
        for n in [0, DIM * DIM - 1] {
            let short = FloatBasis {
                id,
                rows: &fb.rows[..n],
            };
            assert!(!short.fits(&cb), "{n} values");
        }
    }
}
