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
