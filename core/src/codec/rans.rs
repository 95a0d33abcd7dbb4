//! Static rANS over a byte stream: 32-bit state, byte-wise renormalisation,
//! `PROB_BITS`-bit probabilities.
//!
//! The encoder runs backwards (last symbol first) and writes bytes from the end
//! of the caller's buffer towards its start; the decoder reads forwards. All
//! arithmetic is on `u32` and cannot overflow (bounds noted inline), so the
//! decoder is bit-exact on every platform.

use crate::{Error, Result};

/// Probability resolution: every frequency table sums to `1 << PROB_BITS`.
pub const PROB_BITS: u32 = 14;
/// Total of every frequency table.
pub const PROB_SCALE: u32 = 1 << PROB_BITS;
/// Lower bound of the normalised state interval `[RANS_L, 256 * RANS_L)`.
pub const RANS_L: u32 = 1 << 23;
/// Bytes of the final state flushed at the front of a stream.
pub const STATE_BYTES: usize = 4;
/// Largest payload carried by the initial encoder state: the decoder's final
/// state must lie in `[RANS_L, RANS_L + 2^bits)`, so a corrupted stream still
/// passes the final-state check with probability at most `2^20 / 2^31`.
pub const MAX_PAYLOAD_BITS: u32 = 20;

/// Backwards rANS encoder writing into `out[..end]`, from `end` down.
pub(crate) struct Encoder<'o> {
    out: &'o mut [u8],
    /// Bytes below `pos` are free; `out[pos..end]` holds emitted bytes.
    pos: usize,
    x: u32,
}

impl<'o> Encoder<'o> {
    #[cfg(test)]
    pub(crate) fn new(out: &'o mut [u8]) -> Self {
        Self::with_payload(out, 0)
    }

    /// An encoder whose initial state carries `payload` (below
    /// [`MAX_PAYLOAD_BITS`] bits): the decoder reads it back from its final
    /// state ([`Decoder::finish_payload`]), so those bits cost no bytes.
    pub(crate) fn with_payload(out: &'o mut [u8], payload: u32) -> Self {
        let pos = out.len();
        Encoder {
            out,
            pos,
            x: RANS_L + (payload & ((1 << MAX_PAYLOAD_BITS) - 1)),
        }
    }

    fn emit(&mut self, byte: u8) -> Result<()> {
        let p = self.pos.checked_sub(1).ok_or(Error::BufferTooSmall)?;
        let slot = self.out.get_mut(p).ok_or(Error::BufferTooSmall)?;
        *slot = byte;
        self.pos = p;
        Ok(())
    }

    /// Encodes a symbol occupying `[start, start + freq)` of `PROB_SCALE`.
    /// Callers guarantee `1 <= freq` and `start + freq <= PROB_SCALE`.
    pub(crate) fn put(&mut self, start: u32, freq: u32) -> Result<()> {
        let freq = freq.max(1);
        // freq <= 2^14, so x_max <= 2^31.
        let x_max = freq << (31 - PROB_BITS);
        while self.x >= x_max {
            self.emit(self.x as u8)?;
            self.x >>= 8;
        }
        // x < freq * 2^17, so (x / freq) << 14 < 2^31; adding < 2^14 fits.
        self.x = ((self.x / freq) << PROB_BITS) + (self.x % freq) + start;
        Ok(())
    }

    /// Encodes `k <= PROB_BITS` raw bits (the low `k` bits of `v`).
    pub(crate) fn put_bits(&mut self, v: u32, k: u32) -> Result<()> {
        if k == 0 {
            return Ok(());
        }
        let k = k.min(PROB_BITS);
        let sh = PROB_BITS - k;
        let v = v & ((1u32 << k) - 1);
        self.put(v << sh, 1 << sh)
    }

    /// Flushes the state and returns the index where the stream starts:
    /// the coded bytes are `out[start..]`.
    pub(crate) fn finish(mut self) -> Result<usize> {
        // Emitted backwards, so the state reads back little-endian first.
        let bytes = self.x.to_le_bytes();
        for &b in bytes.iter().rev() {
            self.emit(b)?;
        }
        Ok(self.pos)
    }
}

/// Forward rANS decoder over a complete stream.
pub(crate) struct Decoder<'i> {
    input: &'i [u8],
    pos: usize,
    x: u32,
}

impl<'i> Decoder<'i> {
    pub(crate) fn new(input: &'i [u8]) -> Result<Self> {
        let head: [u8; STATE_BYTES] = input
            .get(..STATE_BYTES)
            .and_then(|s| s.try_into().ok())
            .ok_or(Error::Truncated)?;
        Ok(Decoder {
            input,
            pos: STATE_BYTES,
            x: u32::from_le_bytes(head),
        })
    }

    /// The current slot, in `[0, PROB_SCALE)`.
    #[inline]
    pub(crate) fn slot(&self) -> u32 {
        self.x & (PROB_SCALE - 1)
    }

    /// Consumes the symbol `[start, start + freq)` that contains the slot.
    /// Callers guarantee `start <= slot < start + freq <= PROB_SCALE`.
    pub(crate) fn advance(&mut self, start: u32, freq: u32) -> Result<()> {
        let slot = self.slot();
        let off = slot.checked_sub(start).ok_or(Error::CorruptStream)?;
        // x >> 14 < 2^18 and off < freq <= 2^14: freq * (x >> 14) + off < freq * 2^18 <= 2^32.
        self.x = freq
            .checked_mul(self.x >> PROB_BITS)
            .and_then(|v| v.checked_add(off))
            .ok_or(Error::CorruptStream)?;
        while self.x < RANS_L {
            let b = *self.input.get(self.pos).ok_or(Error::Truncated)?;
            self.pos += 1;
            self.x = (self.x << 8) | u32::from(b);
        }
        Ok(())
    }

    /// Decodes `k <= PROB_BITS` raw bits.
    #[cfg_attr(feature = "lut", inline)]
    pub(crate) fn get_bits(&mut self, k: u32) -> Result<u32> {
        if k == 0 {
            return Ok(0);
        }
        let k = k.min(PROB_BITS);
        let sh = PROB_BITS - k;
        let v = self.slot() >> sh;
        self.advance(v << sh, 1 << sh)?;
        Ok(v)
    }

    /// Checks that the stream ended exactly: every byte consumed and the
    /// state back at its initial value (a cheap corruption check).
    #[cfg(test)]
    pub(crate) fn finish(self) -> Result<()> {
        self.finish_payload(0).map(|_| ())
    }

    /// Checks that the stream ended exactly (every byte consumed) and returns
    /// the `bits`-bit payload of the initial encoder state; the state must
    /// be `RANS_L` plus a payload below `2^bits` (a cheap corruption check).
    pub(crate) fn finish_payload(self, bits: u32) -> Result<u32> {
        if self.pos != self.input.len() {
            return Err(Error::TrailingBytes);
        }
        let p = self.x.wrapping_sub(RANS_L);
        if self.x < RANS_L || p >> bits.min(MAX_PAYLOAD_BITS) != 0 {
            return Err(Error::CorruptStream);
        }
        Ok(p)
    }
}
