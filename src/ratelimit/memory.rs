//! The in-process backend of step 3 (may they, right now?): decides, for one (route, client key),
//! whether the request fits every limit of the route, from a sliding log of the times of the
//! requests it admitted. It is the `memory` backend and also the local fallback of the Redis
//! backend when Redis fails and the operator chose fail-open.
//!
//! Exactness: a key keeps the times of its admitted requests (one log shared by all the limits
//! of the route, since an admitted request counts in every limit). A limit of N per period P
//! admits a request only if fewer than N logged requests are younger than P, so no window of
//! length P ever holds more than N admissions; rejected requests are not logged. The log keeps
//! at most max(N) entries (older ones can never decide anything) and nothing older than max(P).
//! Times are whole milliseconds: a request admitted at tick `t` occupies the window until tick
//! `t + P` (exclusive).
//!
//! Memory: the keys live in an [`ExpiringMap`] (sharded, bounded, one lock held for the whole
//! decision so concurrent checks of one key are exact); the map key is a 128-bit keyed hash of
//! (route, client key) computed by the caller, the value a 32-byte [`Log`] holding up to three
//! times inline as `u32` offsets from a per-key base. Longer logs move to the heap as runs of
//! equal times (offset, cumulative count): a busy key under a high limit (say 1e9 per minute at
//! 40k requests/s) keeps one run per millisecond of its window, not one entry per request.
//! A key's deadline is its last admitted request plus the longest period of its route: from
//! then on its log counts nothing in any window, and only then may it be dropped.
//!
//! Full store: the map refuses new keys rather than evicting live ones ([`WhenFull::Refuse`]);
//! dropping a key whose window still holds requests would admit them again.
//! [`MemoryStore::check`] then answers [`StoreFull`] and the caller decides by
//! `on_backend_error`, e.g. with [`unstored`].

use std::collections::VecDeque;

use crate::expiring::{Expiring, ExpiringMap, Full, WhenFull};

use super::{Decision, LimitSpec, Observation};

/// Longest accepted period: stamps are `u32` millisecond offsets, kept below 2^31.
pub(crate) const MAX_PERIOD_MS: u64 = (1 << 31) - 1;
/// Times kept inline in a [`Log`] before moving to the heap.
const INLINE: usize = 3;
/// Every key idle past its deadline is dropped within this time (plus whenever a shard is full).
const SWEEP_INTERVAL_MS: u64 = 10_000;

/// Facts about a route's limits computed once per check by the caller.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// Longest period of the route, in ms (1..=[`MAX_PERIOD_MS`]).
    pub max_period_ms: u64,
    /// Largest `requests` of the route (>= 1).
    pub max_requests: u32,
}

/// The limiter's in-process state: bounded number of keys, each a compact sliding log.
pub(crate) struct MemoryStore {
    keys: ExpiringMap<Log>,
}

/// A new key could not be stored: its part of the store is full of keys whose windows still
/// count requests. Nothing was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoreFull;

impl From<Full> for StoreFull {
    fn from(_: Full) -> Self {
        StoreFull
    }
}

impl MemoryStore {
    /// A store holding at most about `max_keys` keys; when full of live keys it refuses new ones.
    pub(crate) fn new(max_keys: u64) -> Self {
        Self {
            keys: ExpiringMap::new(max_keys, SWEEP_INTERVAL_MS, WhenFull::Refuse),
        }
    }

    /// Keys held now.
    pub(crate) fn len(&self) -> u64 {
        self.keys.len()
    }

    /// Decides one request of key `id` at time `now` (ms) against `limits`, and records it if
    /// admitted. `limits` must be valid and `bounds` computed from them (the caller checks).
    /// [`StoreFull`]: `id` is not held and there is no room for it without dropping a live key.
    pub(crate) fn check(
        &self,
        id: u128,
        now: u64,
        limits: &[LimitSpec],
        bounds: Bounds,
    ) -> Result<Decision, StoreFull> {
        let decision = self.keys.update_or_insert(
            id,
            now,
            || Log::new(now),
            |log| log.check(now, limits, bounds),
        )?;
        Ok(decision)
    }
}

impl MemoryStore {
    /// What [`MemoryStore::check`] would answer now, recording nothing (a full store answers as
    /// for a fresh key).
    pub(crate) fn peek(
        &self,
        id: u128,
        now: u64,
        limits: &[LimitSpec],
        bounds: Bounds,
    ) -> Decision {
        self.keys
            .get_or_remove(id, |log| Some(log.clone().check(now, limits, bounds)))
            .unwrap_or_else(|| unstored(now, limits, bounds))
    }
}

/// The decision for the first request of a key that is not stored (the store was full and the
/// operator chose fail-open): admitted, with the headers of a fresh key. Nothing is recorded, so
/// such a key is not limited while the store stays full.
pub(crate) fn unstored(now: u64, limits: &[LimitSpec], bounds: Bounds) -> Decision {
    Log::new(now).check(now, limits, bounds)
}

impl Expiring for Log {
    fn deadline(&self) -> u64 {
        self.base + u64::from(self.idle_until)
    }
}

/// The admitted-request times of one (route, client key), oldest first, as `u32` offsets from
/// `base`, plus the time after which the key is idle and may be dropped.
#[derive(Clone)]
pub(crate) struct Log {
    base: u64,
    idle_until: u32,
    stamps: Stamps,
}

#[derive(Clone)]
enum Stamps {
    Inline { len: u8, buf: [u32; INLINE] },
    // Boxed on purpose: a thin pointer keeps `Stamps` at 16 bytes (a bare VecDeque is 32), and
    // only keys with more than three requests in their window pay for the extra allocation.
    Heap(Box<Runs>),
}

/// A long log as runs of equal times, oldest first. Each run is (offset, cumulative count at
/// its end); counts wrap around `u32` and are read relative to `head`, the cumulative count
/// before the first stamp kept (the first run may have been partly dropped). A log holds at most
/// `max_requests` (< 2^32) stamps, so every relative count fits.
#[derive(Clone)]
struct Runs {
    runs: VecDeque<(u32, u32)>,
    head: u32,
}

impl Runs {
    fn len(&self) -> usize {
        self.runs
            .back()
            .map_or(0, |r| r.1.wrapping_sub(self.head) as usize)
    }

    /// The `i`-th time, oldest first.
    fn get(&self, i: usize) -> u32 {
        let k = self
            .runs
            .partition_point(|x| x.1.wrapping_sub(self.head) as usize <= i);
        self.runs.get(k).map_or(0, |x| x.0)
    }

    /// Stamps up to the end of run `k` (exclusive of later runs).
    fn upto(&self, k: usize) -> usize {
        self.runs
            .get(k)
            .map_or(0, |r| r.1.wrapping_sub(self.head) as usize)
    }

    fn push_back(&mut self, off: u32) {
        match self.runs.back_mut() {
            Some(last) if last.0 == off => last.1 = last.1.wrapping_add(1),
            Some(last) => {
                let end = last.1.wrapping_add(1);
                self.runs.push_back((off, end));
            }
            None => self.runs.push_back((off, self.head.wrapping_add(1))),
        }
    }

    fn pop_front_n(&mut self, n: usize) {
        let n = n.min(self.len());
        while self
            .runs
            .front()
            .is_some_and(|r| r.1.wrapping_sub(self.head) as usize <= n)
        {
            self.runs.pop_front();
        }
        self.head = self.head.wrapping_add(n as u32); // n <= len < 2^32
    }
}

impl Log {
    fn new(now: u64) -> Self {
        Self {
            base: now,
            idle_until: 0,
            stamps: Stamps::Inline {
                len: 0,
                buf: [0; INLINE],
            },
        }
    }

    fn abs(&self, i: usize) -> u64 {
        self.base + u64::from(self.stamps.get(i))
    }

    /// Number of logged requests younger than `period` at `now`.
    fn in_window(&self, now: u64, period: u64) -> usize {
        let len = self.stamps.len();
        let rel = now - self.base; // now >= base is kept by `check`
        if rel < period {
            return len;
        }
        let cutoff = rel - period; // offsets <= cutoff are expired for this period
        len - self.stamps.partition_point(|off| u64::from(off) <= cutoff)
    }

    fn check(&mut self, now: u64, limits: &[LimitSpec], bounds: Bounds) -> Decision {
        let len = self.stamps.len();
        // Time never goes backwards for one key (a clock that does is treated as stopped).
        let now = if len > 0 {
            now.max(self.abs(len - 1))
        } else {
            now.max(self.base)
        };
        self.prune(now, bounds.max_period_ms);

        let allowed = limits
            .iter()
            .all(|l| self.in_window(now, period_ms(l)) < l.requests as usize);
        if allowed {
            self.push(now, bounds.max_requests as usize);
        }
        // The key counts nothing once its newest request leaves the longest window (a rejected
        // request records nothing, so it does not keep the key). The newest offset < 2^31 after
        // prune/rebase, max period < 2^31: the sum fits in u32.
        let newest = self.stamps.last().unwrap_or(0);
        self.idle_until =
            u32::try_from(u64::from(newest) + bounds.max_period_ms).unwrap_or(u32::MAX);

        let len = self.stamps.len();
        let mut verdict = super::Verdict::new(now, allowed);
        for l in limits {
            let period = period_ms(l);
            let in_window = self.in_window(now, period);
            let oldest = (in_window > 0).then(|| self.abs(len - in_window));
            let requests = l.requests as usize;
            let free_at = (in_window >= requests).then(|| self.abs(len - requests));
            verdict.add(&Observation {
                requests: l.requests,
                period_ms: period,
                in_window: in_window as u64,
                oldest,
                free_at,
            });
        }
        verdict.finish()
    }

    /// Drops the times older than the longest period; keeps offsets small.
    fn prune(&mut self, now: u64, max_period: u64) {
        let live = self.in_window(now, max_period);
        let drop = self.stamps.len() - live;
        self.stamps.pop_front_n(drop);
        let len = self.stamps.len();
        if len == 0 {
            self.base = now;
        } else if now - self.base >= 1 << 31 {
            // Rebase on the oldest kept time (younger than max_period < 2^31).
            let delta = self.stamps.get(0);
            self.stamps.shift_down(delta);
            self.base += u64::from(delta);
        }
    }

    fn push(&mut self, now: u64, max_requests: usize) {
        // now - base < 2^31 (see prune).
        let off = u32::try_from(now - self.base).unwrap_or(u32::MAX);
        self.stamps.push_back(off, max_requests);
        let len = self.stamps.len();
        if len > max_requests {
            self.stamps.pop_front_n(len - max_requests);
        }
    }
}

impl Stamps {
    fn len(&self) -> usize {
        match self {
            Stamps::Inline { len, .. } => usize::from(*len),
            Stamps::Heap(r) => r.len(),
        }
    }

    /// The `i`-th time, oldest first.
    fn get(&self, i: usize) -> u32 {
        match self {
            Stamps::Inline { buf, .. } => buf.get(i).copied().unwrap_or(0),
            Stamps::Heap(r) => r.get(i),
        }
    }

    /// The newest time.
    fn last(&self) -> Option<u32> {
        match self {
            Stamps::Inline { len, buf } => usize::from(*len)
                .checked_sub(1)
                .and_then(|i| buf.get(i).copied()),
            Stamps::Heap(r) => r.runs.back().map(|x| x.0),
        }
    }

    /// Index of the first time for which `pred` is false (times are sorted ascending).
    fn partition_point(&self, pred: impl Fn(u32) -> bool) -> usize {
        match self {
            Stamps::Inline { len, buf } => buf
                .get(..usize::from(*len))
                .map_or(0, |s| s.partition_point(|&x| pred(x))),
            Stamps::Heap(r) => match r.runs.partition_point(|x| pred(x.0)) {
                0 => 0,
                k => r.upto(k - 1),
            },
        }
    }

    fn push_back(&mut self, off: u32, max_requests: usize) {
        match self {
            Stamps::Inline { len, buf } => {
                let n = usize::from(*len);
                if let Some(slot) = buf.get_mut(n) {
                    *slot = off;
                    *len += 1;
                } else {
                    let mut r = Runs {
                        runs: VecDeque::with_capacity(max_requests.clamp(INLINE + 1, 16)),
                        head: 0,
                    };
                    for &x in buf.iter() {
                        r.push_back(x);
                    }
                    r.push_back(off);
                    *self = Stamps::Heap(Box::new(r));
                }
            }
            Stamps::Heap(r) => r.push_back(off),
        }
    }

    fn pop_front_n(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        match self {
            Stamps::Inline { len, buf } => {
                let l = usize::from(*len);
                let n = n.min(l);
                buf.copy_within(n..l, 0);
                *len = (l - n) as u8; // l <= INLINE
            }
            Stamps::Heap(r) => {
                r.pop_front_n(n);
                let l = r.len();
                if l <= INLINE {
                    // Give the heap block back once the log is short again.
                    let mut buf = [0; INLINE];
                    for (i, slot) in buf.iter_mut().enumerate().take(l) {
                        *slot = r.get(i);
                    }
                    *self = Stamps::Inline {
                        len: l as u8, // <= INLINE
                        buf,
                    };
                } else if r.runs.capacity() > 64 && r.runs.len() * 4 < r.runs.capacity() {
                    // A burst passed: do not keep its peak capacity for the key's lifetime.
                    r.runs.shrink_to(r.runs.len() * 2);
                }
            }
        }
    }

    fn shift_down(&mut self, delta: u32) {
        match self {
            Stamps::Inline { len, buf } => {
                for x in buf.iter_mut().take(usize::from(*len)) {
                    *x -= delta;
                }
            }
            Stamps::Heap(r) => {
                for x in r.runs.iter_mut() {
                    x.0 -= delta;
                }
            }
        }
    }
}

/// A limit's period in milliseconds, rounded up (never a shorter window than configured).
pub(crate) fn period_ms(l: &LimitSpec) -> u64 {
    let ms = l.period.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(requests: u32, period_ms: u64) -> LimitSpec {
        LimitSpec {
            requests,
            period: Duration::from_millis(period_ms),
        }
    }

    fn bounds(limits: &[LimitSpec]) -> Bounds {
        Bounds {
            max_period_ms: limits.iter().map(period_ms).max().unwrap_or(1),
            max_requests: limits.iter().map(|l| l.requests).max().unwrap_or(1),
        }
    }

    #[test]
    fn log_entry_size_fits_compact_budget() {
        assert!(
            std::mem::size_of::<Log>() <= 32,
            "{}",
            std::mem::size_of::<Log>()
        );
        assert!(std::mem::size_of::<(u128, Log)>() <= 48);
    }

    #[test]
    fn log_long_history_moves_to_heap_and_back_inline() {
        let limits = [spec(10, 1_000)];
        let b = bounds(&limits);
        let mut log = Log::new(0);
        for t in 0..10 {
            assert!(log.check(t, &limits, b).allowed);
        }
        assert!(matches!(log.stamps, Stamps::Heap(_)));
        // all ten expire at t = 1000..1009; one more admission leaves a single stamp
        assert!(log.check(1_009, &limits, b).allowed);
        assert!(matches!(log.stamps, Stamps::Inline { len: 1, .. }));
    }

    #[test]
    fn log_keeps_at_most_max_requests_stamps() {
        let limits = [spec(2, 1_000), spec(3, 100)];
        let b = bounds(&limits);
        let mut log = Log::new(0);
        let mut admitted = 0;
        for t in (0..10_000).step_by(7) {
            if log.check(t, &limits, b).allowed {
                admitted += 1;
            }
            assert!(log.stamps.len() <= 3);
        }
        assert!(admitted > 0);
    }

    #[test]
    fn log_busy_key_past_u32_offsets_rebases_without_losing_window() {
        let limits = [spec(2, 10_000)];
        let b = bounds(&limits);
        let mut log = Log::new(0);
        let mut t = 5u64 << 32;
        assert!(log.check(t, &limits, b).allowed);
        // one request every 6 s keeps the log non-empty for more than 2^31 ms
        for _ in 0..400_000 {
            t += 6_000;
            assert!(log.check(t, &limits, b).allowed);
            let d = log.check(t + 1, &limits, b);
            assert!(!d.allowed);
            assert_eq!(d.retry_after, Some(Duration::from_millis(3_999)));
        }
        assert!(log.base > 5u64 << 32, "rebased");
    }

    /// The definition itself: admit iff, for every limit, fewer than N admitted times are
    /// younger than P; log the admitted ones.
    struct Model(Vec<u64>);

    impl Model {
        fn check(&mut self, now: u64, limits: &[LimitSpec]) -> (bool, u64) {
            let now = self.0.last().map_or(now, |&l| now.max(l));
            let allowed = limits.iter().all(|l| {
                let p = period_ms(l);
                self.0.iter().filter(|&&t| t + p > now).count() < l.requests as usize
            });
            if allowed {
                self.0.push(now);
            }
            let tightest = limits
                .iter()
                .map(|l| {
                    let p = period_ms(l);
                    let used = self.0.iter().filter(|&&t| t + p > now).count() as u64;
                    u64::from(l.requests).saturating_sub(used)
                })
                .min()
                .unwrap_or(0);
            (allowed, tightest)
        }
    }

    #[test]
    fn log_matches_the_definition_with_many_requests_per_millisecond() {
        // Deterministic pseudo-random traffic: bursts of equal times, gaps, several limits.
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for limits in [
            vec![spec(5, 100)],
            vec![spec(50, 1_000), spec(8, 20)],
            vec![spec(1_000, 500)],
            vec![spec(3, 10), spec(200, 2_000), spec(40, 300)],
        ] {
            let b = bounds(&limits);
            let mut log = Log::new(0);
            let mut model = Model(Vec::new());
            let mut t = 0u64;
            for i in 0..20_000 {
                t += match rand(10) {
                    0..=5 => 0,
                    6..=8 => rand(5),
                    _ => rand(400),
                };
                let d = log.check(t, &limits, b);
                let (allowed, remaining) = model.check(t, &limits);
                assert_eq!(d.allowed, allowed, "request {i} at {t} under {limits:?}");
                assert_eq!(u64::from(d.remaining), remaining, "request {i} at {t}");
                assert!(log.stamps.len() <= b.max_requests as usize);
            }
        }
    }

    #[test]
    fn hot_key_under_a_huge_limit_keeps_one_run_per_millisecond() {
        let limits = [spec(1_000_000_000, 60_000)];
        let b = bounds(&limits);
        let mut log = Log::new(0);
        // 40 requests per ms for 2 minutes of ms: 4.8M admissions.
        for ms in 0..120_000u64 {
            for _ in 0..40 {
                assert!(log.check(ms, &limits, b).allowed);
            }
        }
        let Stamps::Heap(r) = &log.stamps else {
            panic!("a long log is on the heap")
        };
        assert_eq!(r.len(), 60_000 * 40, "exactly the last minute is counted");
        assert_eq!(
            r.runs.len(),
            60_000,
            "one run per millisecond of the window"
        );
        let d = log.check(120_000, &limits, b);
        assert_eq!(d.remaining, 1_000_000_000 - 60_000 * 40 + 40 - 1);
    }

    fn spread(i: u128) -> u128 {
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
    }

    #[test]
    fn store_full_of_live_keys_refuses_new_keys_and_keeps_every_count() {
        let store = MemoryStore::new(100);
        let limits = [spec(1, 60_000)];
        let b = bounds(&limits);
        for i in 0..100u128 {
            assert!(store
                .check(spread(i), 1, &limits, b)
                .is_ok_and(|d| d.allowed));
        }
        for i in 100..1_000u128 {
            assert_eq!(store.check(spread(i), 2, &limits, b), Err(StoreFull));
            assert_eq!(store.len(), 100);
        }
        // Every key at its limit is still limited, not forgotten.
        for i in 0..100u128 {
            let d = store.check(spread(i), 3, &limits, b);
            assert!(d.is_ok_and(|d| !d.allowed), "key {i}");
        }
        // Once their window is over they make room (and are admitted again).
        assert!(store
            .check(spread(1_000), 60_001, &limits, b)
            .is_ok_and(|d| d.allowed));
        assert!(store.len() <= 100);
    }

    #[test]
    fn store_key_rejected_at_its_limit_is_dropped_one_period_after_its_last_admission() {
        let store = MemoryStore::new(1_000);
        let limits = [spec(1, 10_000)];
        let b = bounds(&limits);
        assert!(store
            .check(spread(1), 0, &limits, b)
            .is_ok_and(|d| d.allowed));
        // Hammered while limited: rejections record nothing and do not extend its life.
        for t in (1..10_000).step_by(100) {
            assert!(store
                .check(spread(1), t, &limits, b)
                .is_ok_and(|d| !d.allowed));
        }
        // The sweep due at 10 s drops it: its window ended at 10 s, whatever came after.
        assert!(store.check(spread(2), 10_001, &limits, b).is_ok());
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn unstored_decision_is_a_fresh_keys_first_admission() {
        let limits = [spec(5, 60_000), spec(2, 1_000)];
        let d = unstored(7, &limits, bounds(&limits));
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (2, 1));
        assert_eq!(d.reset, Duration::from_millis(1_000));
    }

    #[test]
    fn store_idle_keys_expire_after_longest_period() {
        let store = MemoryStore::new(1_000);
        let limits = [spec(1, 1_000), spec(5, 30_000)];
        let b = bounds(&limits);
        for i in 0..50u128 {
            assert!(store.check(i << 64 | i, 0, &limits, b).is_ok());
        }
        assert_eq!(store.len(), 50);
        // 20 s later: not idle long enough (30 s), a sweep keeps them
        assert!(store.check(7 << 64 | 999, 20_000, &limits, b).is_ok());
        assert_eq!(store.len(), 51);
        // past 30 s: the next sweep drops the first 50, the one used at 20 s is left
        assert!(store.check(7 << 64 | 999, 31_000, &limits, b).is_ok());
        assert_eq!(store.len(), 1);
    }
}
