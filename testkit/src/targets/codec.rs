//! `codec`: the entropy decoder, and codebook blobs that pass their hash.

use omega_tv_sync::codec::{self, Codebook, Codes, MAX_CODED_LEN};
use omega_tv_sync::{Error, DIM};

use crate::data::vectors;
use crate::fixtures::{base_codes, book, small_book, EDGE_BASE, SMALL_BLOB};

/// Decodes `code` with `cb` (against `base` when given); on success checks
/// that encoding the result and decoding it again gives the same codes
/// within [`MAX_CODED_LEN`] bytes, whatever the input was. With feature
/// `lut`, the same input decoded through the codebook's decoder index must
/// give the same result and codes, and decoded codes must reconstruct to
/// the same embedding, bit for bit, over the `f32` copy of the basis
/// ([`float_basis`]).
pub fn decode_checked(
    cb: &Codebook<'_>,
    code: &[u8],
    base: Option<&Codes>,
) -> Result<Codes, Error> {
    let mut out: Codes = [0; DIM];
    let result = cb.decode(code, base, &mut out);
    #[cfg(feature = "lut")]
    {
        let mut cum = vec![0u16; cb.lut_cum_len()];
        let mut index = vec![0u8; cb.lut_index_len()];
        let lut = cb.build_lut(&mut cum, &mut index).expect("lut buffers fit");
        let fast = cb.with_lut(&lut).expect("built for this codebook");
        let mut via: Codes = [7; DIM];
        let r = fast.decode(code, base, &mut via);
        assert_eq!(r, result, "the index and the binary search disagree");
        if r.is_ok() {
            assert_eq!(via, out, "the index decoded other codes");
            if let Some(fb) = float_basis(cb) {
                let wide = cb
                    .with_float_basis(fb)
                    .expect("the default codebook takes its own float basis");
                let bits = |e: Result<omega_tv_sync::Embedding, Error>| {
                    e.map(|e| e.as_array().map(f32::to_bits))
                };
                assert_eq!(
                    bits(wide.reconstruct(&out)),
                    bits(cb.reconstruct(&out)),
                    "the f32 basis reconstructed another embedding"
                );
            }
        }
    }
    result?;
    let mut buf = [0u8; MAX_CODED_LEN];
    let n = cb
        .encode(&out, base, &mut buf)
        .expect("any codes encode within MAX_CODED_LEN");
    assert!(n <= MAX_CODED_LEN);
    let mut again: Codes = [0; DIM];
    cb.decode(&buf[..n], base, &mut again)
        .expect("re-encoded codes decode");
    assert_eq!(out, again, "decode(encode(codes)) != codes");
    Ok(out)
}

/// The `f32` basis of the default codebook, built once (576 KiB: not per
/// input); `None` for any other codebook (the small profile and the mutated
/// blobs have no basis).
#[cfg(feature = "lut")]
fn float_basis(cb: &Codebook<'_>) -> Option<&'static codec::FloatBasis<'static>> {
    use std::sync::OnceLock;
    static BASIS: OnceLock<Option<codec::FloatBasis<'static>>> = OnceLock::new();
    let default = book();
    if cb.id() != default.id() {
        return None;
    }
    BASIS
        .get_or_init(|| {
            let rows = Box::leak(vec![0f32; default.float_basis_len()].into_boxed_slice());
            default.build_float_basis(rows).ok()
        })
        .as_ref()
}

/// Applies `(offset u24 LE, value)` patches to a copy of the small codebook
/// blob and fixes its id, so that [`Codebook::from_bytes`] sees a blob whose
/// hash matches and has to check everything else.
pub fn mutate_blob(patches: &[u8]) -> Vec<u8> {
    let mut blob = SMALL_BLOB.to_vec();
    for p in patches.chunks_exact(4) {
        let off =
            (usize::from(p[0]) | usize::from(p[1]) << 8 | usize::from(p[2]) << 16) % blob.len();
        blob[off] = p[3];
    }
    if blob.len() >= 12 {
        let id = codec::codebook_id(&blob);
        blob[8..12].copy_from_slice(&id.to_le_bytes());
    }
    blob
}

/// `codec`: first byte is the mode.
/// - bit 7 set: byte 1 is a patch count `k` (at most 32), then `k` 4-byte
///   patches for [`mutate_blob`]; a blob that [`Codebook::from_bytes`]
///   accepts must encode any codes within `MAX_CODED_LEN` and decode them
///   back, and the rest of the input is decoded with it.
/// - else bit 0 picks the codebook (default, small) and bits 1-2 the base
///   (none, a real vector's codes, the `i16` edge, none); the rest is one code.
///
/// Accepted means: the code decoded.
pub fn codec(data: &[u8]) -> Result<(), Error> {
    let Some((&mode, rest)) = data.split_first() else {
        return Err(Error::Truncated);
    };
    if mode & 0x80 != 0 {
        let Some((&k, rest)) = rest.split_first() else {
            return Err(Error::Truncated);
        };
        let k = usize::from(k % 33) * 4;
        let (patches, code) = rest.split_at(k.min(rest.len()));
        let blob = mutate_blob(patches);
        let cb = Codebook::from_bytes(&blob)?;
        let v = vectors();
        for (i, e) in v.iter().take(2).enumerate() {
            let codes = cb.quantize(e);
            let mut buf = [0u8; MAX_CODED_LEN];
            let base = if i == 0 { None } else { Some(&EDGE_BASE) };
            let n = cb
                .encode(&codes, base, &mut buf)
                .expect("a valid codebook encodes within MAX_CODED_LEN");
            let mut back: Codes = [0; DIM];
            cb.decode(&buf[..n], base, &mut back)
                .expect("a valid codebook decodes its own code");
            assert_eq!(back, codes);
        }
        let extreme: Codes = core::array::from_fn(|j| if j % 2 == 0 { i16::MAX } else { i16::MIN });
        let mut buf = [0u8; MAX_CODED_LEN];
        let n = cb
            .encode(&extreme, Some(&EDGE_BASE), &mut buf)
            .expect("the largest delta encodes within MAX_CODED_LEN");
        let mut back: Codes = [0; DIM];
        cb.decode(&buf[..n], Some(&EDGE_BASE), &mut back)
            .expect("decodes");
        assert_eq!(back, extreme);
        if code.is_empty() {
            return Ok(());
        }
        return decode_checked(&cb, code, None).map(|_| ());
    }
    let cb = if mode & 1 == 0 { book() } else { small_book() };
    let base = match (mode >> 1) & 3 {
        1 => Some(base_codes()),
        2 => Some(&EDGE_BASE),
        _ => None,
    };
    decode_checked(&cb, rest, base).map(|_| ())
}
