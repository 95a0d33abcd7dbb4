//! TEST ONLY: the deterministic random source of the TLS attempt.
//!
//! xorshift64* with a fixed seed, so that every run sends the same
//! ClientHello and measures the same figures. It is NOT a cryptographic
//! random number generator: it implements `rand_core::CryptoRng` only
//! because `EmbassyTlsTransport` asks for one. A device must pass its
//! hardware RNG (or a CSPRNG seeded from it) instead: the handshake's
//! client random and ephemeral P-256 key come from here.

use rand_core::{CryptoRng, Error, RngCore};

/// xorshift64* (Vigna); never returns to its all-zero state.
pub struct TestRng(u64);

impl TestRng {
    /// A generator seeded with `seed` (0 is replaced by a constant).
    pub const fn new(seed: u64) -> Self {
        TestRng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }
}

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// Test only, see the module docs.
impl CryptoRng for TestRng {}
