//! The coded stream: scale classes, table symbols, raw bits and escapes
//! over the rANS coder (`docs/codec.md`, "Entropy coding" and "Stream").

#[cfg(feature = "lut")]
use super::lut::DecodeLut;
use super::rans::{Decoder, Encoder, PROB_BITS};
use super::*;

/// About `256 * log2(1 + i/32)`, for the approximate cost model of the class
/// choice (`docs/codec.md`, "Class choice", lists these exact integers).
pub(super) const LOG2_FRAC: [u16; 32] = [
    0, 11, 22, 33, 43, 53, 63, 73, 82, 91, 100, 109, 118, 126, 134, 142, 150, 157, 165, 172, 179,
    186, 193, 200, 207, 213, 220, 226, 232, 238, 244, 250,
];

/// Approximate cost in 1/256 bit of a symbol of frequency `f >= 1`.
pub(super) fn cost_256(f: u32) -> u32 {
    let f = f.max(1);
    let e = 31 - f.leading_zeros();
    let m = if e >= 5 {
        (f >> (e - 5)) & 31
    } else {
        (f << (5 - e)) & 31
    };
    let lg = e * 256 + u32::from(LOG2_FRAC[m as usize & 31]);
    (PROB_BITS * 256).saturating_sub(lg)
}

pub(super) fn zigzag(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

pub(super) fn unzigzag(u: u32) -> i32 {
    ((u >> 1) as i32) ^ -((u & 1) as i32)
}

/// Table symbol and raw low bits of `v` with `b` raw bits, or `None` to escape.
pub(super) fn split_value(v: i32, b: u32, half: i32) -> Option<(u32, u32)> {
    let (h, low) = if b == 0 {
        (v, 0)
    } else {
        let r = 1i32 << (b - 1);
        let h = (v + r) >> b;
        (h, (v + r - (h << b)) as u32)
    };
    if h >= -half && h < half {
        Some(((h + half) as u32, low))
    } else {
        None
    }
}

impl<'a> Codebook<'a> {
    /// Logical table index of component `j` in class `class`.
    #[inline]
    pub(super) fn logical(&self, idx: u8, class: u32) -> u32 {
        let t = i32::from(idx) + self.class_base + class as i32;
        t.clamp(0, self.n_logical as i32 - 1) as u32
    }

    /// Physical table and raw bits of a logical table.
    #[inline]
    pub(super) fn physical(&self, t: u32) -> (u32, u32) {
        if t < self.n_small {
            (t, 0)
        } else {
            let r = t - self.n_small;
            (self.n_small + r % self.period, r / self.period)
        }
    }

    /// Cumulative frequencies (`2H + 2` u16) of a physical table in a family
    /// (0 absolute, 1 delta).
    #[inline]
    pub(super) fn table(&self, family: usize, phys: u32) -> &'a [u8] {
        let len = (2 * self.half as usize + 2) * 2;
        let start = self.table_index(family, phys) * len;
        self.tables.get(start..start + len).unwrap_or(&[])
    }

    /// Position of physical table `phys` of `family` among all tables
    /// (family-major, as in the blob and in a decoder index).
    #[inline]
    pub(super) fn table_index(&self, family: usize, phys: u32) -> usize {
        family * (self.n_small + self.period) as usize + phys as usize
    }

    pub(super) fn indices(&self, family: usize) -> &'a [u8] {
        if family == 0 {
            self.abs_idx
        } else {
            self.delta_idx
        }
    }

    /// Approximate cost (1/256 bit) of the values under one class.
    pub(super) fn class_cost(
        &self,
        family: usize,
        vals: &[i32; DIM],
        class: u32,
        limit: u32,
    ) -> u32 {
        let half = self.half as i32;
        let mut total = 0u32;
        for (&v, &idx) in vals.iter().zip(self.indices(family).iter()) {
            let (phys, b) = self.physical(self.logical(idx, class));
            let t = self.table(family, phys);
            let sym = match split_value(v, b, half) {
                Some((s, _)) => s,
                None => 2 * self.half,
            };
            let f = u16_at(t, sym as usize + 1).saturating_sub(u16_at(t, sym as usize));
            total += cost_256(f);
            total += if sym == 2 * self.half {
                let n = 32 - zigzag(v).leading_zeros();
                (ESC_LEN_BITS + n.saturating_sub(1)) * 256
            } else {
                b * 256
            };
            if total > limit {
                break;
            }
        }
        total
    }

    /// The cheapest scale class for `vals`, by hill climbing from the middle
    /// class (the cost is close to convex in the class: each class scales
    /// every component's spread by a quarter octave).
    pub(super) fn choose_class(&self, family: usize, vals: &[i32; DIM]) -> u32 {
        let mid = self.n_classes / 2;
        let mut best = (self.class_cost(family, vals, mid, u32::MAX), mid);
        for dir in [-1i32, 1] {
            let mut c = mid as i32 + dir;
            while c >= 0 && (c as u32) < self.n_classes {
                let k = self.class_cost(family, vals, c as u32, best.0);
                if k >= best.0 {
                    break;
                }
                best = (k, c as u32);
                c += dir;
            }
            if best.1 != mid {
                break;
            }
        }
        best.1
    }

    /// Entropy-codes `codes` into `out` and returns the number of bytes
    /// written (at most [`MAX_CODED_LEN`]).
    ///
    /// `base == None` codes the absolute values; `Some(acked)` codes the
    /// closed-loop delta `codes - acked` (each within `±65535`, always
    /// encodable). Fails only with [`Error::BufferTooSmall`]; a buffer of
    /// [`MAX_CODED_LEN`] bytes always suffices.
    pub fn encode(&self, codes: &Codes, base: Option<&Codes>, out: &mut [u8]) -> Result<usize> {
        let mut vals = [0i32; DIM];
        let family = match base {
            None => {
                for (v, &c) in vals.iter_mut().zip(codes.iter()) {
                    *v = i32::from(c);
                }
                0
            }
            Some(base) => {
                for ((v, &c), &b) in vals.iter_mut().zip(codes.iter()).zip(base.iter()) {
                    *v = i32::from(c) - i32::from(b);
                }
                1
            }
        };
        let class = self.choose_class(family, &vals);
        let half = self.half as i32;
        let idx = self.indices(family);
        // The first raw low-bit groups in decode order, while they fit in
        // MAX_PAYLOAD_BITS together, travel in the initial state.
        let mut payload = 0u32;
        let mut used = 0u32;
        let mut n_deferred = 0usize;
        for (&v, &ix) in vals.iter().zip(idx.iter()) {
            let (_, b) = self.physical(self.logical(ix, class));
            if b == 0 {
                n_deferred += 1;
                continue;
            }
            match split_value(v, b, half) {
                Some((_, low)) if used + b <= MAX_PAYLOAD_BITS => {
                    payload |= low << used;
                    used += b;
                    n_deferred += 1;
                }
                Some(_) => break,
                None => n_deferred += 1,
            }
        }
        let mut enc = Encoder::with_payload(out, payload);
        for (j, (&v, &ix)) in vals.iter().zip(idx.iter()).enumerate().rev() {
            let (phys, b) = self.physical(self.logical(ix, class));
            let t = self.table(family, phys);
            let sym = match split_value(v, b, half) {
                Some((s, low)) => {
                    if j >= n_deferred {
                        enc.put_bits(low, b)?;
                    }
                    s
                }
                None => {
                    let u = zigzag(v);
                    let n = 32 - u.leading_zeros();
                    let rest = n.saturating_sub(1);
                    if rest > PROB_BITS {
                        enc.put_bits(u >> PROB_BITS, rest - PROB_BITS)?;
                    }
                    enc.put_bits(u, rest.min(PROB_BITS))?;
                    enc.put_bits(n, ESC_LEN_BITS)?;
                    2 * self.half
                }
            };
            let start = u16_at(t, sym as usize);
            let end = u16_at(t, sym as usize + 1);
            enc.put(start, end.saturating_sub(start))?;
        }
        enc.put_bits(class, CLASS_BITS)?;
        let start = enc.finish()?;
        let len = out.len() - start;
        out.copy_within(start.., 0);
        Ok(len)
    }

    /// Decodes bytes produced by [`encode`](Self::encode) with the same
    /// `base` into `out`.
    ///
    /// Consumes exactly all of `bytes`. Errors: [`Error::Truncated`] if the
    /// stream ends early, [`Error::TrailingBytes`] if bytes remain,
    /// [`Error::CorruptStream`] for an invalid class or escape or a final
    /// state that is not the initial one, [`Error::CodeOutOfRange`] if a
    /// value (or `base` plus a delta) leaves `i16`. Never panics; on error
    /// `out` is left unchanged.
    ///
    /// The symbol search is the attached decoder index's when there is one
    /// (feature `lut`, `Codebook::with_lut`), else a binary search; both
    /// give the same result.
    pub fn decode(&self, bytes: &[u8], base: Option<&Codes>, out: &mut Codes) -> Result<()> {
        #[cfg(feature = "lut")]
        if let Some(lut) = self.lut {
            return self.decode_by(Indexed(self, lut), bytes, base, out);
        }
        self.decode_by(Bisect(self), bytes, base, out)
    }

    /// The decoder, over either symbol search. With feature `lut` not
    /// inlined into [`decode`](Self::decode): with both searches inlined
    /// there the binary search's loop ran ~8% more instructions.
    #[cfg_attr(feature = "lut", inline(never))]
    fn decode_by<S: Search>(
        &self,
        search: S,
        bytes: &[u8],
        base: Option<&Codes>,
        out: &mut Codes,
    ) -> Result<()> {
        let family = usize::from(base.is_some());
        let mut dec = Decoder::new(bytes)?;
        let class = dec.get_bits(CLASS_BITS)?;
        if class >= self.n_classes {
            return Err(Error::CorruptStream);
        }
        let n_sym = 2 * self.half as usize + 1;
        let half = self.half as i32;
        let zero = [0i16; DIM];
        let base = base.unwrap_or(&zero);
        let mut res = [0i16; DIM];
        // Raw low-bit groups whose bits are in the final state:
        // (component, bits, base + value without its low bits).
        let mut deferred = [(0u16, 0u8, 0i32); MAX_PAYLOAD_BITS as usize];
        let (mut n_def, mut used, mut deferring) = (0usize, 0u32, true);
        // Neighbouring components mostly share their logical table (indices
        // follow the spread, which falls slowly along the basis): its
        // physical table and raw bits are looked up again only on a change.
        let (mut last, mut t, mut b) = (u32::MAX, search.table(family, 0), 0);
        for (j, ((r, &ix), &b0)) in res
            .iter_mut()
            .zip(self.indices(family).iter())
            .zip(base.iter())
            .enumerate()
        {
            let logical = self.logical(ix, class);
            if logical != last {
                let (phys, bits) = self.physical(logical);
                (last, t, b) = (logical, search.table(family, phys), bits);
            }
            let (lo, start, end) = S::find(t, dec.slot(), n_sym);
            if end <= start {
                return Err(Error::CorruptStream);
            }
            dec.advance(start, end - start)?;
            let v = if lo == n_sym - 1 {
                let n = dec.get_bits(ESC_LEN_BITS)?;
                if n > ESC_MAX_BITS {
                    return Err(Error::CorruptStream);
                }
                let u = if n == 0 {
                    0
                } else {
                    let rest = n - 1;
                    let mut u = dec.get_bits(rest.min(PROB_BITS))?;
                    if rest > PROB_BITS {
                        u |= dec.get_bits(rest - PROB_BITS)? << PROB_BITS;
                    }
                    u | (1 << rest)
                };
                unzigzag(u)
            } else {
                let h = lo as i32 - half;
                if b == 0 {
                    h
                } else {
                    deferring &= used + b <= MAX_PAYLOAD_BITS;
                    let partial = (h << b) - (1i32 << (b - 1));
                    if deferring {
                        if let Some(d) = deferred.get_mut(n_def) {
                            *d = (j as u16, b as u8, i32::from(b0) + partial);
                        }
                        n_def += 1;
                        used += b;
                        continue;
                    }
                    partial + dec.get_bits(b)? as i32
                }
            };
            *r = i16::try_from(i32::from(b0) + v).map_err(|_| Error::CodeOutOfRange)?;
        }
        let mut payload = dec.finish_payload(used)?;
        for &(j, b, partial) in deferred.iter().take(n_def) {
            let q = partial + (payload & ((1u32 << b) - 1)) as i32;
            payload >>= b;
            if let Some(r) = res.get_mut(usize::from(j)) {
                *r = i16::try_from(q).map_err(|_| Error::CodeOutOfRange)?;
            }
        }
        *out = res;
        Ok(())
    }
}

/// How the decoder finds the symbol whose cumulative range holds a slot.
pub(super) trait Search: Copy {
    /// One physical table, as the search reads it.
    type Table: Copy;
    /// Physical table `phys` of `family` (0 absolute, 1 delta).
    fn table(self, family: usize, phys: u32) -> Self::Table;
    /// `(symbol, start, end)` of the range of `t` (`n_sym` symbols) that
    /// holds `slot`.
    fn find(t: Self::Table, slot: u32, n_sym: usize) -> (usize, u32, u32);
}

/// A binary search over the blob's table: no memory of its own.
#[derive(Clone, Copy)]
pub(super) struct Bisect<'c, 'a>(&'c Codebook<'a>);

impl<'a> Search for Bisect<'_, 'a> {
    type Table = &'a [u8];

    #[inline]
    fn table(self, family: usize, phys: u32) -> &'a [u8] {
        self.0.table(family, phys)
    }

    #[inline]
    fn find(t: &'a [u8], slot: u32, n_sym: usize) -> (usize, u32, u32) {
        // The last symbol whose cumulative frequency is <= slot
        // (cum[0] = 0, cum[n_sym] = 2^14), by a binary search whose steps
        // depend only on n_sym: the answer stays in [lo, lo + len), each
        // step keeps the half that holds it (a conditional move, not a
        // branch the slot decides).
        let (mut lo, mut len) = (0usize, n_sym);
        while len > 1 {
            let h = len / 2;
            if u16_at(t, lo + h) <= slot {
                lo += h;
            }
            len -= h;
        }
        (lo, u16_at(t, lo), u16_at(t, lo + 1))
    }
}

/// The attached decoder index, its tables found by the codebook's
/// [`table_index`](Codebook::table_index).
#[cfg(feature = "lut")]
#[derive(Clone, Copy)]
pub(super) struct Indexed<'c, 'a>(pub(super) &'c Codebook<'a>, pub(super) &'a DecodeLut<'a>);

#[cfg(feature = "lut")]
impl<'a> Search for Indexed<'_, 'a> {
    type Table = (&'a [u16], &'a [u8]);

    #[inline]
    fn table(self, family: usize, phys: u32) -> Self::Table {
        self.1.table(self.0.table_index(family, phys))
    }

    #[inline]
    fn find(t: Self::Table, slot: u32, _: usize) -> (usize, u32, u32) {
        super::lut::find(t, slot)
    }
}
