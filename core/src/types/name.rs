//! Bounded, validated ASCII names.

use core::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// A non-empty string of at most `N` bytes of printable ASCII
/// (`0x21..=0x7e`: no spaces, no control characters).
///
/// On the wire (postcard) it is a varint length followed by the bytes, so it
/// takes at most `N + varint(N)` bytes; decoding validates like [`Name::new`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name<const N: usize>(heapless::String<N>);

impl<const N: usize> Name<N> {
    /// The bound, in bytes.
    pub const MAX_LEN: usize = N;

    /// Validates `s` and copies it.
    ///
    /// Errors: [`Error::EmptyId`], [`Error::StringTooLong`],
    /// [`Error::InvalidChar`].
    pub fn new(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(Error::EmptyId);
        }
        if s.len() > N {
            return Err(Error::StringTooLong);
        }
        if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(Error::InvalidChar);
        }
        let mut out = heapless::String::new();
        out.push_str(s).map_err(|_| Error::StringTooLong)?;
        Ok(Name(out))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl<const N: usize> fmt::Debug for Name<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for Name<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "defmt")]
impl<const N: usize> defmt::Format for Name<N> {
    fn format(&self, f: defmt::Formatter) {
        defmt::write!(f, "{=str}", self.as_str())
    }
}

impl<const N: usize> core::str::FromStr for Name<N> {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Name::new(s)
    }
}

impl<const N: usize> Serialize for Name<N> {
    fn serialize<S: Serializer>(&self, s: S) -> core::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de, const N: usize> Deserialize<'de> for Name<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
        let s = <&str>::deserialize(d)?;
        Name::new(s).map_err(|e| serde::de::Error::custom(e.code()))
    }
}

impl<const N: usize> postcard::experimental::max_size::MaxSize for Name<N> {
    const POSTCARD_MAX_SIZE: usize =
        <heapless::String<N> as postcard::experimental::max_size::MaxSize>::POSTCARD_MAX_SIZE;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        assert_eq!(Name::<4>::new("abcd").map(|n| n.as_str().len()), Ok(4));
        assert_eq!(Name::<4>::new(""), Err(Error::EmptyId));
        assert_eq!(Name::<4>::new("abcde"), Err(Error::StringTooLong));
        assert_eq!(Name::<4>::new("a b"), Err(Error::InvalidChar));
        assert_eq!(Name::<8>::new("é"), Err(Error::InvalidChar));
        assert_eq!(Name::<8>::new("a\n"), Err(Error::InvalidChar));
    }

    #[test]
    fn postcard_round_trip_and_validation() {
        let n = Name::<8>::new("drama").unwrap();
        let mut buf = [0u8; 16];
        let used = postcard::to_slice(&n, &mut buf).unwrap();
        assert_eq!(used, &[5, b'd', b'r', b'a', b'm', b'a']);
        let back: Name<8> = postcard::from_bytes(used).unwrap();
        assert_eq!(back, n);
        // Too long for the bound: rejected on decode, not truncated.
        assert!(postcard::from_bytes::<Name<4>>(used).is_err());
        // Empty: rejected.
        assert!(postcard::from_bytes::<Name<4>>(&[0]).is_err());
    }
}
