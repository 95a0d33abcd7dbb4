//! Capped exponential backoff with full jitter, and the jitter source.

/// A small deterministic PRNG (xorshift64*) for jitter. Seed it from
/// something device-specific (the device id hash, a hardware RNG) so a fleet
/// does not retry in lockstep.
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// A generator from `seed` (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        Jitter(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..=max` (the modulo bias is below 2^-40 for the spans
    /// used here: milliseconds up to hours).
    pub fn up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next_u64();
        }
        self.next_u64() % (max + 1)
    }
}

/// Backoff settings: the delay after the n-th consecutive failure (n from 1)
/// is uniform in `0..=min(cap, base * 2^(n-1))` milliseconds ("cap first, then
/// jitter"), and never less than a server's `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Backoff {
    /// Delay bound after the first failure, in ms. Default 1 000.
    pub base_ms: u64,
    /// Largest delay bound, in ms. Default 300 000 (5 minutes).
    pub cap_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: 1_000,
            cap_ms: 300_000,
        }
    }
}

impl Backoff {
    /// The delay before retry number `failures` (>= 1), with the server's
    /// `retry_after_ms` as a floor.
    pub fn delay_ms(&self, failures: u32, retry_after_ms: u64, rng: &mut Jitter) -> u64 {
        let exp = failures.saturating_sub(1).min(62);
        let bound = self.base_ms.saturating_mul(1u64 << exp).min(self.cap_ms);
        rng.up_to(bound).max(retry_after_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_then_jittered_with_retry_after_floor() {
        let b = Backoff {
            base_ms: 100,
            cap_ms: 1_000,
        };
        let mut r = Jitter::new(42);
        let mut max_seen = [0u64; 8];
        for _ in 0..2_000 {
            for (n, m) in max_seen.iter_mut().enumerate() {
                let d = b.delay_ms(n as u32 + 1, 0, &mut r);
                assert!(d <= (100u64 << n).min(1_000), "failure {} delay {d}", n + 1);
                *m = (*m).max(d);
            }
        }
        // Full jitter reaches close to each bound; the cap holds from the 5th on.
        assert!(max_seen[0] > 90 && max_seen[3] > 700 && max_seen[7] > 900);
        assert!(b.delay_ms(3, 5_000, &mut r) >= 5_000);
        // Huge failure counts do not overflow.
        assert!(b.delay_ms(u32::MAX, 0, &mut r) <= 1_000);
    }

    #[test]
    fn jitter_spreads_a_fleet() {
        // 1000 devices with different seeds, same failure count: delays spread
        // over the whole window instead of bunching.
        let b = Backoff::default();
        let mut buckets = [0u32; 10];
        for seed in 1..=1000u64 {
            let mut r = Jitter::new(seed.wrapping_mul(0x9E37_79B9));
            let d = b.delay_ms(20, 0, &mut r);
            buckets[(d * 10 / (b.cap_ms + 1)) as usize] += 1;
        }
        assert!(buckets.iter().all(|&c| c > 50), "{buckets:?}");
    }
}
