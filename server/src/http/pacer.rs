//! The pace of the public read endpoints (`GET /api/v1/global`,
//! `/api/v1/sync/version`, `/api/v1/health`): anyone may call them, each
//! answer is cheap, and a client that asks again the moment it is answered
//! takes whatever CPU it is given. Together they get `rate` requests per
//! second (a burst of `burst` after a quiet spell); a request over the pace
//! waits its turn asleep (no CPU) for at most `max_wait`, and past that is
//! answered `429 rate_limited` with `Retry-After` at once. Signed syncs never
//! pass through here.
//!
//! The pace is one virtual clock (GCRA): each admitted request moves the
//! theoretical arrival time `tat` on by `1 / rate`; a request that comes
//! before `tat - (burst - 1) / rate` waits until then.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pace of the public read endpoints. The defaults suit a public deployment:
/// a fleet's TVs do not call them (their globals come with each sync), a
/// content-delivery network in front caches the feed (`Cache-Control:
/// public`), and a node keeps its CPU for the syncs.
#[derive(Clone, Debug, PartialEq)]
pub struct PublicReads {
    /// Requests per second over the three endpoints together (default
    /// 1,000); 0 turns the pace off.
    pub rate: u32,
    /// Requests admitted at once after a quiet spell (default 1,000).
    pub burst: u32,
    /// Longest a request waits for its turn before `429` (default 1 s).
    pub max_wait: Duration,
}

impl Default for PublicReads {
    fn default() -> Self {
        PublicReads {
            rate: 1_000,
            burst: 1_000,
            max_wait: Duration::from_secs(1),
        }
    }
}

/// The `serve` flags of [`PublicReads`] (defaults as in
/// [`PublicReads::default`]).
#[derive(clap::Args, Clone, Debug)]
pub struct PublicReadArgs {
    /// Public read requests (feed, version, health) per second, all callers
    /// together; 0 = no pace.
    #[arg(long, default_value_t = 1_000)]
    pub public_read_rate: u32,
    /// Public read requests admitted at once after a quiet spell.
    #[arg(long, default_value_t = 1_000)]
    pub public_read_burst: u32,
    /// Milliseconds a public read waits for its turn before 429.
    #[arg(long, default_value_t = 1_000)]
    pub public_read_max_wait_ms: u64,
}

impl PublicReadArgs {
    /// The pace these flags give.
    pub fn public_reads(&self) -> PublicReads {
        PublicReads {
            rate: self.public_read_rate,
            burst: self.public_read_burst,
            max_wait: Duration::from_millis(self.public_read_max_wait_ms),
        }
    }
}

/// The shared pace (module docs).
#[derive(Debug)]
pub struct Pacer {
    cfg: PublicReads,
    tat: Mutex<Option<Instant>>,
}

/// What a request over the pace is told.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
    /// Go now, or after sleeping this long.
    After(Duration),
    /// Over `max_wait`: refuse; the pace frees a turn within this long.
    Refused(Duration),
}

impl Pacer {
    /// A pacer for `cfg`.
    pub fn new(cfg: PublicReads) -> Self {
        Pacer {
            cfg,
            tat: Mutex::new(None),
        }
    }

    /// The turn of a request arriving at `now`. A refused request takes no
    /// turn.
    pub fn turn(&self, now: Instant) -> Turn {
        if self.cfg.rate == 0 {
            return Turn::After(Duration::ZERO);
        }
        let step = Duration::from_secs(1) / self.cfg.rate;
        // The burst: `burst` requests at once find `tat` within this of now.
        let tolerance = step * (self.cfg.burst.max(1) - 1);
        // A poisoned lock still holds a valid time (nothing in it panics).
        let mut tat = self
            .tat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = tat.map_or(now, |t| t.max(now));
        let start = due.checked_sub(tolerance).map_or(now, |s| s.max(now));
        let wait = start - now;
        if wait > self.cfg.max_wait {
            return Turn::Refused(wait - self.cfg.max_wait);
        }
        *tat = Some(due + step);
        Turn::After(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(rate: u32, burst: u32, max_wait_ms: u64) -> Pacer {
        Pacer::new(PublicReads {
            rate,
            burst,
            max_wait: Duration::from_millis(max_wait_ms),
        })
    }

    #[test]
    fn a_burst_goes_at_once_then_requests_wait_one_step_each() {
        let p = pacer(100, 10, 1_000);
        let now = Instant::now();
        for i in 0..10 {
            assert_eq!(
                p.turn(now),
                Turn::After(Duration::ZERO),
                "burst request {i}"
            );
        }
        // Past the burst, each waits 10 ms more than the one before.
        for i in 1..=5u32 {
            assert_eq!(p.turn(now), Turn::After(Duration::from_millis(10) * i));
        }
    }

    #[test]
    fn past_the_longest_wait_a_request_is_refused_and_takes_no_turn() {
        let p = pacer(100, 1, 50);
        let now = Instant::now();
        let mut waits = Vec::new();
        loop {
            match p.turn(now) {
                Turn::After(w) => waits.push(w),
                Turn::Refused(r) => {
                    assert!(r <= Duration::from_millis(10), "refused for {r:?}");
                    break;
                }
            }
            assert!(waits.len() < 100, "never refused");
        }
        // 1 at once, then one every 10 ms up to 50 ms.
        assert_eq!(waits.len(), 6);
        assert_eq!(p.turn(now), p.turn(now), "a refusal takes no turn");
        // Time passing frees turns again.
        assert!(matches!(
            p.turn(now + Duration::from_millis(100)),
            Turn::After(_)
        ));
    }

    #[test]
    fn over_a_long_run_admissions_follow_the_rate() {
        let p = pacer(1_000, 50, 1_000);
        let t0 = Instant::now();
        // A client asking every 100 µs for 2 s (20,000 asks): admitted are
        // the burst, one per ms of the 2 s, and the turns within the last
        // max_wait (1 s) ahead; every other ask is refused.
        let (mut admitted, mut refused, mut last_start) = (0, 0, t0);
        for i in 0..20_000u32 {
            let now = t0 + Duration::from_micros(100) * i;
            match p.turn(now) {
                Turn::After(w) => {
                    admitted += 1;
                    assert!(w <= Duration::from_secs(1));
                    last_start = last_start.max(now + w);
                }
                Turn::Refused(_) => refused += 1,
            }
        }
        assert!((3_045..=3_052).contains(&admitted), "{admitted}");
        assert_eq!(admitted + refused, 20_000);
        assert!(last_start <= t0 + Duration::from_secs(3));
    }

    #[test]
    fn a_rate_of_zero_never_waits() {
        let p = pacer(0, 0, 0);
        let now = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(p.turn(now), Turn::After(Duration::ZERO));
        }
    }
}
