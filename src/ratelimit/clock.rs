//! Time for step 3 of a request (may they, right now?): the limiter asks a [`Clock`] for "now"
//! instead of reading the system time itself, so tests can drive the sliding window with a
//! [`ManualClock`] and the gateway uses the monotonic [`SystemClock`].
//!
//! Only the memory backend (and the local fallback of the Redis backend) reads this clock; the
//! Redis backend takes its time from the Redis server so that replicas agree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A source of milliseconds. Only differences between readings matter; readings must not go
/// backwards (if they do, the limiter treats time as stopped for the keys it has seen).
pub trait Clock: Send + Sync {
    /// Milliseconds since an arbitrary, fixed origin.
    fn now_millis(&self) -> u64;
}

/// The process's monotonic clock: milliseconds since the first reading in this process.
/// Immune to wall-clock steps (NTP, manual changes), which would otherwise open or close
/// windows early.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        u64::try_from(origin().elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A clock that only moves when told to: for tests (here and in the gateway's own tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_millis`.
    pub fn new(start_millis: u64) -> Self {
        Self {
            now: AtomicU64::new(start_millis),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the reading to `millis`.
    pub fn set(&self, millis: u64) {
        self.now.store(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_successive_readings_never_decrease() {
        let c = SystemClock;
        let mut last = c.now_millis();
        for _ in 0..1000 {
            let now = c.now_millis();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn manual_clock_advance_moves_reading_by_exact_amount() {
        let c = ManualClock::new(1_000);
        c.advance(Duration::from_millis(250));
        assert_eq!(c.now_millis(), 1_250);
        c.set(5);
        assert_eq!(c.now_millis(), 5);
    }
}
