//! embassy-time's driver: a software clock that only the poll loop moves.
//!
//! The firmware has no timer interrupt and never sleeps: the poll loop
//! (`main.rs`) polls every future on every step and then advances this
//! clock by a fixed step. A timer needs no alarm: the next poll of its
//! future simply sees that its deadline has passed. Simulated time is
//! therefore exact and repeatable (the same run gives the same figures),
//! and every timeout (the transport's 20 s, TCP's retransmissions, the
//! peer's own) is measured in steps of the loop.

use core::cell::Cell;
use core::task::Waker;

use critical_section::Mutex;
use embassy_time_driver::Driver;

/// Ticks since reset (embassy-time's default 1 MHz tick).
pub struct SoftClock {
    now: Mutex<Cell<u64>>,
}

impl Driver for SoftClock {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.now.borrow(cs).get())
    }

    fn schedule_wake(&self, _at: u64, _waker: &Waker) {
        // Nothing to arm: every future is polled on every step.
    }
}

embassy_time_driver::time_driver_impl!(static CLOCK: SoftClock = SoftClock {
    now: Mutex::new(Cell::new(0)),
});

/// Moves the clock forward.
pub fn advance(d: embassy_time::Duration) {
    critical_section::with(|cs| {
        let now = CLOCK.now.borrow(cs);
        now.set(now.get().saturating_add(d.as_ticks()));
    });
}

/// Simulated time since reset.
pub fn elapsed() -> embassy_time::Duration {
    embassy_time::Duration::from_ticks(CLOCK.now())
}
