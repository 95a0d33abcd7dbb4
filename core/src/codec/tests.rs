use super::rans::{Decoder, Encoder};
use super::*;

#[test]
fn cost_model_tracks_log2() {
    for f in 1..PROB_SCALE {
        let exact = (f64::from(PROB_SCALE) / f64::from(f)).log2() * 256.0;
        let approx = f64::from(cost_256(f));
        assert!(
            (exact - approx).abs() < 12.0,
            "f={f} exact={exact} approx={approx}"
        );
    }
}

#[test]
fn zigzag_round_trips() {
    for v in [
        -65536,
        -65535,
        -1,
        0,
        1,
        2,
        65535,
        i32::from(i16::MIN),
        i32::from(i16::MAX),
    ] {
        assert_eq!(unzigzag(zigzag(v)), v);
    }
}

#[test]
fn split_value_round_trips() {
    for b in 0..=MAX_RAW_BITS {
        for v in (-70_000..70_000).step_by(37) {
            if let Some((s, low)) = split_value(v, b, 40) {
                assert!(s < 80);
                assert!(low < (1 << b) || b == 0);
                let h = s as i32 - 40;
                let back = if b == 0 {
                    h
                } else {
                    (h << b) + low as i32 - (1 << (b - 1))
                };
                assert_eq!(back, v);
            } else {
                let r = if b == 0 { 0 } else { 1 << (b - 1) };
                let h = (v + r) >> b;
                assert!(!(-40..40).contains(&h));
            }
        }
    }
}

#[test]
fn rans_raw_bits_round_trip() {
    let mut buf = [0u8; 256];
    let vals: [(u32, u32); 6] = [(5, 3), (0x3fff, 14), (0, 1), (1, 1), (77, 7), (0, 0)];
    let mut enc = Encoder::new(&mut buf);
    for &(v, k) in vals.iter().rev() {
        enc.put_bits(v, k).unwrap();
    }
    let start = enc.finish().unwrap();
    let mut dec = Decoder::new(&buf[start..]).unwrap();
    for &(v, k) in vals.iter() {
        assert_eq!(dec.get_bits(k).unwrap(), v);
    }
    dec.finish().unwrap();
}

#[test]
fn encoder_reports_small_buffer() {
    let mut buf = [0u8; 3];
    let mut enc = Encoder::new(&mut buf);
    enc.put_bits(1, 1).unwrap();
    assert_eq!(enc.finish(), Err(Error::BufferTooSmall));
}

#[test]
fn empty_blob_is_rejected() {
    assert_eq!(Codebook::from_bytes(&[]).err(), Some(Error::BadCodebook));
    assert_eq!(
        Codebook::from_bytes(&[0u8; 64]).err(),
        Some(Error::BadCodebook)
    );
}

/// The small profile's blob with `f` applied to it, its id rewritten.
fn patched_small(f: impl Fn(&mut [u8])) -> [u8; 13268] {
    let mut b = [0u8; 13268];
    b.copy_from_slice(MINILM_SMALL_V1);
    f(&mut b);
    let id = codebook_id(&b).to_le_bytes();
    b[8..12].copy_from_slice(&id);
    b
}

/// Writes `v` as the f32 at `offset`.
fn put_f32(b: &mut [u8], offset: usize, v: f32) {
    b[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn steps_and_means_that_overflow_the_code_domain_are_rejected() {
    const MEAN: usize = HEADER_LEN;
    const DEC_MUL: usize = HEADER_LEN + 8 * DIM;
    // The bounds themselves are accepted, and the code domain stays finite
    // for the most extreme codes there are.
    let edge = patched_small(|b| {
        for j in 0..DIM {
            put_f32(b, DEC_MUL + 4 * j, MAX_DEC_MUL);
            put_f32(b, MEAN + 4 * j, 1.0);
        }
    });
    let cb = Codebook::from_bytes(&edge).expect("the bounds are valid");
    let space = cb.coefficient_space();
    let (hi, lo) = ([i16::MAX; DIM], [i16::MIN; DIM]);
    for (a, b) in [(&hi, &hi), (&hi, &lo), (&lo, &lo)] {
        let c = space.cosine(a, b);
        assert!(c.is_finite() && c.abs() <= 1.0 + 1e-3, "{c}");
    }
    // Past them: refused (with 1e30, the old parser accepted the blob and
    // the code-domain cosine of these codes was NaN).
    for (at, v) in [
        (DEC_MUL, 1e30),
        (DEC_MUL, 2.0 * MAX_DEC_MUL),
        (MEAN, 1.5),
        (MEAN, -1.01),
    ] {
        let bad = patched_small(|b| put_f32(b, at + 4 * 7, v));
        assert_eq!(
            Codebook::from_bytes(&bad).err(),
            Some(Error::BadCodebook),
            "{at} {v}"
        );
    }
}
