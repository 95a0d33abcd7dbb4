//! The 384-dimensional unit-norm embedding.

use crate::{Error, Result};

/// Dimensions of an all-MiniLM-L6-v2 embedding.
pub const DIM: usize = 384;

/// Allowed distance of an embedding's L2 norm from 1.
///
/// The model emits unit vectors (within ~6e-8 in f32); 1e-3 leaves room for
/// on-device averaging done in f32 and for a decoded value, which is
/// renormalised, while rejecting unnormalised sums (norm 2 or 0.5).
pub const NORM_TOLERANCE: f32 = 1e-3;

/// A validated embedding: [`DIM`] finite `f32`s with L2 norm `1 ± NORM_TOLERANCE`.
///
/// 1536 bytes. Never put on the wire as floats: the codec turns it into
/// integer codes.
#[derive(Clone, PartialEq)]
pub struct Embedding([f32; DIM]);

impl Embedding {
    /// Validates `values`.
    ///
    /// Errors: [`Error::NonFinite`] for a NaN or infinity,
    /// [`Error::NotUnitNorm`] for a norm outside `1 ± NORM_TOLERANCE`.
    pub fn new(values: [f32; DIM]) -> Result<Self> {
        check(&values)?;
        Ok(Embedding(values))
    }

    /// Validates a slice, which must hold exactly [`DIM`] values
    /// ([`Error::WrongLength`] otherwise).
    pub fn from_slice(values: &[f32]) -> Result<Self> {
        let arr: [f32; DIM] = values.try_into().map_err(|_| Error::WrongLength)?;
        Self::new(arr)
    }

    /// Reads [`DIM`] little-endian `f32`s (1536 bytes) and validates them.
    pub fn from_le_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != DIM * 4 {
            return Err(Error::WrongLength);
        }
        let mut v = [0f32; DIM];
        for (x, c) in v.iter_mut().zip(bytes.chunks_exact(4)) {
            *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Self::new(v)
    }

    /// Scales `values` to unit norm, then validates. Fails with
    /// [`Error::NonFinite`] on NaN/Inf input and [`Error::NotUnitNorm`] for
    /// a zero (or denormal) vector.
    pub fn normalize(mut values: [f32; DIM]) -> Result<Self> {
        if values.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite);
        }
        let n = norm(&values);
        if !(n.is_finite() && n > 1e-12) {
            return Err(Error::NotUnitNorm);
        }
        let inv = 1.0 / n;
        for x in values.iter_mut() {
            *x *= inv;
        }
        Self::new(values)
    }

    /// The values.
    pub fn as_array(&self) -> &[f32; DIM] {
        &self.0
    }

    /// Dot product, which is the cosine similarity for two unit vectors.
    pub fn dot(&self, other: &Embedding) -> f32 {
        self.0.iter().zip(other.0.iter()).map(|(a, b)| a * b).sum()
    }
}

impl core::fmt::Debug for Embedding {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Embedding([{}, {}, {}, ..])",
            self.0[0], self.0[1], self.0[2]
        )
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Embedding {
    fn format(&self, f: defmt::Formatter) {
        defmt::write!(
            f,
            "Embedding([{}, {}, {}, ..])",
            self.0[0],
            self.0[1],
            self.0[2]
        )
    }
}

fn norm(v: &[f32; DIM]) -> f32 {
    // f64 accumulation keeps the check independent of summation order noise.
    let s: f64 = v.iter().map(|&x| (x as f64) * (x as f64)).sum();
    libm::sqrt(s) as f32
}

fn check(v: &[f32; DIM]) -> Result<()> {
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::NonFinite);
    }
    let n = norm(v);
    if (n - 1.0).abs() > NORM_TOLERANCE || !n.is_finite() {
        return Err(Error::NotUnitNorm);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(i: usize) -> [f32; DIM] {
        let mut v = [0f32; DIM];
        v[i] = 1.0;
        v
    }

    #[test]
    fn rejects_bad_values() {
        let mut v = unit(3);
        assert!(Embedding::new(v).is_ok());
        v[7] = f32::NAN;
        assert_eq!(Embedding::new(v), Err(Error::NonFinite));
        v[7] = f32::INFINITY;
        assert_eq!(Embedding::new(v), Err(Error::NonFinite));
        let mut w = unit(3);
        w[3] = 1.01;
        assert_eq!(Embedding::new(w), Err(Error::NotUnitNorm));
        w[3] = 1.0009;
        assert!(Embedding::new(w).is_ok());
        assert_eq!(Embedding::new([0.0; DIM]), Err(Error::NotUnitNorm));
        assert_eq!(Embedding::from_slice(&[0.0; 10]), Err(Error::WrongLength));
        assert_eq!(Embedding::from_le_bytes(&[0; 12]), Err(Error::WrongLength));
    }

    #[test]
    fn normalize_scales_and_rejects_zero() {
        let mut v = [0f32; DIM];
        v[0] = 3.0;
        v[1] = 4.0;
        let e = Embedding::normalize(v).unwrap();
        assert!((e.as_array()[0] - 0.6).abs() < 1e-6);
        assert!((e.dot(&e) - 1.0).abs() < 1e-6);
        assert_eq!(Embedding::normalize([0.0; DIM]), Err(Error::NotUnitNorm));
        v[5] = f32::NAN;
        assert_eq!(Embedding::normalize(v), Err(Error::NonFinite));
    }

    #[test]
    fn le_bytes_round_trip() {
        let v = unit(100);
        let mut b = [0u8; DIM * 4];
        for (c, x) in b.chunks_exact_mut(4).zip(v.iter()) {
            c.copy_from_slice(&x.to_le_bytes());
        }
        assert_eq!(Embedding::from_le_bytes(&b).unwrap().as_array(), &v);
    }
}
