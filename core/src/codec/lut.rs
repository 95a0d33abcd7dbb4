//! An optional slot-to-symbol index that replaces the entropy decoder's
//! binary search, in memory the caller provides ([`DecodeLut`]).
//!
//! The decoder finds, for each coded value, the symbol whose cumulative
//! frequency range `[cum[s], cum[s + 1])` holds the current 14-bit slot. By
//! default that is a binary search over the codebook's table (no memory of
//! its own: what a device uses). With a [`DecodeLut`] the decoder looks up
//! the symbol at the start of the slot's bucket (`slot >> BUCKET_SHIFT`,
//! 2^[`LUT_BITS`] buckets per table) and steps forward past the few
//! boundaries inside the bucket, over cumulative frequencies copied out as
//! aligned `u16`. Both searches give the same symbol for every slot (the
//! range that holds it is unique), so a stream decodes to the same codes,
//! or fails with the same error, either way (`core/tests/codec.rs`,
//! `the_lut_decodes_what_the_search_decodes`).
//!
//! Memory: [`Codebook::lut_cum_len`] `u16` plus [`Codebook::lut_index_len`]
//! bytes; for `minilm-v1` (48 tables of 81 symbols) 3,936 `u16` (7.7 KiB)
//! and 49,152 bytes. A server builds one per codebook it serves; a device
//! with that much RAM to spare can too.

use super::{u16_at, Codebook, MAX_HALF};
use crate::{Error, Result};

// A bucket's first symbol is kept in a byte: the alphabet (2H + 1 symbols,
// the escape included) must fit.
const _: () = assert!((2 * MAX_HALF as usize) < 256);

/// Buckets per table: `2^LUT_BITS`.
pub const LUT_BITS: u32 = 10;
/// Slot bits below a bucket index.
const BUCKET_SHIFT: u32 = super::PROB_BITS - LUT_BITS;

/// The slot-to-symbol index of one codebook (module docs), over memory the
/// caller provides; attach it with [`Codebook::with_lut`].
#[derive(Clone, Copy)]
pub struct DecodeLut<'m> {
    /// Codebook it was built for.
    id: u32,
    /// Cumulative frequencies of every physical table of both families,
    /// `n_sym + 1` each, in the blob's order.
    cum: &'m [u16],
    /// First symbol of every bucket, `2^LUT_BITS` per table.
    index: &'m [u8],
    /// `n_sym + 1`.
    stride: usize,
}

impl core::fmt::Debug for DecodeLut<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DecodeLut")
            .field("codebook", &self.id)
            .field("cum", &self.cum.len())
            .field("index", &self.index.len())
            .finish()
    }
}

impl Codebook<'_> {
    /// Number of physical tables over both families.
    fn lut_tables(&self) -> usize {
        2 * (self.n_small + self.period) as usize
    }

    /// `u16` a [`DecodeLut`] of this codebook needs for its cumulative
    /// frequencies.
    pub fn lut_cum_len(&self) -> usize {
        self.lut_tables() * (2 * self.half as usize + 2)
    }

    /// Bytes a [`DecodeLut`] of this codebook needs for its bucket index.
    pub fn lut_index_len(&self) -> usize {
        self.lut_tables() << LUT_BITS
    }

    /// Builds this codebook's [`DecodeLut`] in `cum` (at least
    /// [`lut_cum_len`](Self::lut_cum_len) long) and `index` (at least
    /// [`lut_index_len`](Self::lut_index_len)); longer buffers are used
    /// only in part. [`Error::BufferTooSmall`] if either is shorter.
    pub fn build_lut<'m>(&self, cum: &'m mut [u16], index: &'m mut [u8]) -> Result<DecodeLut<'m>> {
        let stride = 2 * self.half as usize + 2;
        let (nc, ni) = (self.lut_cum_len(), self.lut_index_len());
        let cum = cum.get_mut(..nc).ok_or(Error::BufferTooSmall)?;
        let index = index.get_mut(..ni).ok_or(Error::BufferTooSmall)?;
        let tables = self.tables.chunks_exact(2 * stride);
        for ((t, c), ix) in tables
            .zip(cum.chunks_exact_mut(stride))
            .zip(index.chunks_exact_mut(1 << LUT_BITS))
        {
            for (s, v) in c.iter_mut().enumerate() {
                // Table entries are at most PROB_SCALE (checked when parsed).
                *v = u16_at(t, s) as u16;
            }
            // The symbol holding each bucket's first slot: the last s with
            // cum[s] <= slot (cum strictly increasing, cum[0] = 0).
            let mut s = 0usize;
            for (b, e) in ix.iter_mut().enumerate() {
                let slot = (b as u32) << BUCKET_SHIFT;
                while c.get(s + 1).is_some_and(|&n| u32::from(n) <= slot) {
                    s += 1;
                }
                *e = s as u8;
            }
        }
        Ok(DecodeLut {
            id: self.id,
            cum,
            index,
            stride,
        })
    }
}

impl<'m> DecodeLut<'m> {
    /// The id of the codebook this index was built for.
    pub fn codebook_id(&self) -> u32 {
        self.id
    }

    /// Built for `cb`: its id, its tables' shape and every cumulative
    /// frequency equal to `cb`'s (one pass over 3,936 entries for
    /// `minilm-v1`), so that an index of another blob with the same id
    /// (a 32-bit hash) is refused rather than decoding differently. The
    /// bucket index is a function of those frequencies ([`Codebook::build_lut`]);
    /// an index whose memory was changed after it was built is not detected.
    pub(super) fn fits(&self, cb: &Codebook<'_>) -> bool {
        self.id == cb.id
            && self.stride == 2 * cb.half as usize + 2
            && self.cum.len() == cb.lut_cum_len()
            && self.index.len() == cb.lut_index_len()
            && cb
                .tables
                .chunks_exact(2 * self.stride)
                .zip(self.cum.chunks_exact(self.stride))
                .all(|(t, c)| {
                    c.iter()
                        .enumerate()
                        .all(|(s, &v)| u32::from(v) == u16_at(t, s))
                })
    }

    /// Cumulative frequencies and bucket index of the physical table at
    /// position `k` (`Codebook::table_index`: family-major, as in the blob).
    #[inline]
    pub(super) fn table(&self, k: usize) -> (&'m [u16], &'m [u8]) {
        let n = 1usize << LUT_BITS;
        (
            self.cum
                .get(k * self.stride..(k + 1) * self.stride)
                .unwrap_or(&[]),
            self.index.get(k * n..(k + 1) * n).unwrap_or(&[]),
        )
    }
}

/// `(symbol, start, end)` of the range holding `slot` in a table of
/// [`DecodeLut::table`]: the bucket's first symbol, then forward while the
/// next symbol starts at or below the slot. An empty table (never, for a
/// lut built from the codebook) gives `(0, 0, 0)`, which the decoder
/// refuses as a corrupt stream.
#[inline]
pub(super) fn find(t: (&[u16], &[u8]), slot: u32) -> (usize, u32, u32) {
    let (cum, index) = t;
    let mut s = usize::from(
        index
            .get((slot >> BUCKET_SHIFT) as usize)
            .copied()
            .unwrap_or(0),
    );
    loop {
        match cum.get(s + 1) {
            Some(&n) if u32::from(n) <= slot => s += 1,
            Some(&n) => {
                let start = cum.get(s).map_or(0, |&c| u32::from(c));
                return (s, start, u32::from(n));
            }
            None => return (s, 0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index with the codebook's id and shape but other frequencies (what
    /// an index of another blob with a colliding id would be) is refused.
    #[test]
    fn an_index_of_other_frequencies_is_refused() {
        let cb = super::super::minilm_v1().unwrap();
        let mut cum = [0u16; 4096];
        let mut index = [0u8; 48 << LUT_BITS];
        let lut = cb.build_lut(&mut cum, &mut index).unwrap();
        assert!(lut.fits(&cb));
        let (n, stride, id) = (lut.cum.len(), lut.stride, lut.id);
        let mut other = [0u16; 4096];
        other[..n].copy_from_slice(lut.cum);
        // One boundary of one table moved by one slot.
        other[stride + 5] += 1;
        let index_copy = [0u8; 48 << LUT_BITS];
        let forged = DecodeLut {
            id,
            cum: &other[..n],
            index: &index_copy,
            stride,
        };
        assert!(!forged.fits(&cb));
        assert_eq!(cb.with_lut(&forged).err(), Some(Error::BadCodebook));
    }
}
