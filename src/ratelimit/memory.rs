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
//! Memory: the map is sharded (`Mutex<HashMap>` per shard, the lock held for the whole decision
//! so concurrent checks of one key are exact). The map key is a 128-bit keyed hash of
//! (route, client key) computed by the caller, the value a 32-byte [`Log`] holding up to three
//! times inline as `u32` offsets from a per-key base; longer logs move to the heap. Keys idle
//! for the longest period of their route expire (each shard is swept every 10 s, one shard per
//! sweep step taken by a passing request, and when it is full); when a shard is full of live keys, the keys closest to expiry are evicted in
//! batches. A general-purpose cache (moka) was measured at about 400 bytes per key for this
//! workload, so this file keeps its own compact map.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::{Decision, LimitSpec, Observation};

/// Longest accepted period: stamps are `u32` millisecond offsets, kept below 2^31.
pub(crate) const MAX_PERIOD_MS: u64 = (1 << 31) - 1;
/// Times kept inline in a [`Log`] before moving to the heap.
const INLINE: usize = 3;
/// Every shard sweeps its expired keys this often (plus whenever it is full).
const SWEEP_INTERVAL_MS: u64 = 10_000;
/// Keys per shard that justify one more shard (the number of shards is a power of two, 1..=64).
const KEYS_PER_SHARD_HINT: u64 = 4_096;
const MAX_SHARDS: u64 = 64;

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
    shards: Box<[Shard]>,
    mask: usize,
    shard_cap: usize,
    keys: AtomicU64,
    /// Time of the next sweep step, and the shard it sweeps: one shard per step, so every
    /// shard is swept once per [`SWEEP_INTERVAL_MS`] and no request pays for more than one.
    next_sweep: AtomicU64,
    sweep_step_ms: u64,
    sweep_cursor: AtomicUsize,
}

/// One shard, on its own cache lines so that two cores working on two shards do not contend.
#[repr(align(128))]
struct Shard(Mutex<ShardMap>);

struct ShardMap {
    map: HashMap<u128, Log, BuildHasherDefault<IdHasher>>,
}

/// The map key is already a keyed random hash: use its low 64 bits as the table hash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used for `u128` keys; fold anything else for completeness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64; // truncation intended: the low half is an independent 64-bit hash
    }
}

impl MemoryStore {
    /// A store holding at most about `max_keys` keys (each shard holds `ceil(max_keys/shards)`).
    pub(crate) fn new(max_keys: u64) -> Self {
        let max_keys = max_keys.max(1);
        let shards = (max_keys / KEYS_PER_SHARD_HINT)
            .max(1)
            .next_power_of_two()
            .min(MAX_SHARDS);
        let shard_cap = usize::try_from(max_keys.div_ceil(shards)).unwrap_or(usize::MAX);
        let shards: Box<[Shard]> = (0..shards)
            .map(|_| {
                Shard(Mutex::new(ShardMap {
                    map: HashMap::default(),
                }))
            })
            .collect();
        Self {
            mask: shards.len() - 1,
            sweep_step_ms: SWEEP_INTERVAL_MS / shards.len() as u64,
            shards,
            shard_cap,
            keys: AtomicU64::new(0),
            next_sweep: AtomicU64::new(0),
            sweep_cursor: AtomicUsize::new(0),
        }
    }

    /// Keys held now.
    pub(crate) fn len(&self) -> u64 {
        self.keys.load(Ordering::Relaxed)
    }

    /// Decides one request of key `id` at time `now` (ms) against `limits`, and records it if
    /// admitted. `limits` must be valid and `bounds` computed from them (the caller checks).
    pub(crate) fn check(
        &self,
        id: u128,
        now: u64,
        limits: &[LimitSpec],
        bounds: Bounds,
    ) -> Decision {
        if now >= self.next_sweep.load(Ordering::Relaxed) {
            self.sweep_step(now);
        }
        let idx = ((id >> 64) as usize) & self.mask;
        let Some(shard) = self.shards.get(idx) else {
            // Unreachable: mask < shards.len(). Answer conservatively rather than panic.
            return Log::new(now).check(now, limits, bounds);
        };
        let mut guard = shard.0.lock();
        let sm = &mut *guard;
        if let Some(log) = sm.map.get_mut(&id) {
            return log.check(now, limits, bounds);
        }
        if sm.map.len() >= self.shard_cap {
            let removed = sm.make_room(now, self.shard_cap);
            self.forget(removed);
        }
        let mut log = Log::new(now);
        let decision = log.check(now, limits, bounds);
        sm.map.insert(id, log);
        self.keys.fetch_add(1, Ordering::Relaxed);
        decision
    }

    /// Sweeps the expired keys of the next shard, if this caller wins the step (a shard busy
    /// right now is skipped until its next turn).
    fn sweep_step(&self, now: u64) {
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now < due
            || self
                .next_sweep
                .compare_exchange(
                    due,
                    now.saturating_add(self.sweep_step_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let idx = self.sweep_cursor.fetch_add(1, Ordering::Relaxed) & self.mask;
        if let Some(mut sm) = self.shards.get(idx).and_then(|s| s.0.try_lock()) {
            let removed = sm.sweep_expired(now);
            drop(sm);
            self.forget(removed);
        }
    }

    fn forget(&self, removed: usize) {
        if removed > 0 {
            self.keys.fetch_sub(removed as u64, Ordering::Relaxed);
        }
    }
}

impl ShardMap {
    /// Removes the keys idle past their deadline; returns how many.
    fn sweep_expired(&mut self, now: u64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, log| log.deadline() > now);
        let removed = before - self.map.len();
        // Give memory back after a wave of keys expired.
        let cap = self.map.capacity();
        if cap > 64 && self.map.len() * 4 < cap {
            self.map.shrink_to(self.map.len() * 2);
        }
        removed
    }

    /// Frees at least one slot in a full shard: expired keys first, then a batch (1/16 of the
    /// shard) of the keys closest to expiry, so the cost of the scan is amortised over the
    /// inserts that follow.
    fn make_room(&mut self, now: u64, cap: usize) -> usize {
        let mut removed = self.sweep_expired(now);
        if self.map.len() < cap {
            return removed;
        }
        let batch = (cap / 16).max(1);
        let mut deadlines: Vec<u64> = self.map.values().map(Log::deadline).collect();
        let threshold = match deadlines.get(batch - 1) {
            Some(_) => *deadlines.select_nth_unstable(batch - 1).1,
            None => u64::MAX,
        };
        let mut left = batch;
        let before = self.map.len();
        self.map.retain(|_, log| {
            if left > 0 && log.deadline() <= threshold {
                left -= 1;
                false
            } else {
                true
            }
        });
        removed += before - self.map.len();
        removed
    }
}

/// The admitted-request times of one (route, client key), oldest first, as `u32` offsets from
/// `base`, plus the time after which the key is idle and may be dropped.
pub(crate) struct Log {
    base: u64,
    idle_until: u32,
    stamps: Stamps,
}

enum Stamps {
    Inline {
        len: u8,
        buf: [u32; INLINE],
    },
    // Boxed on purpose: a thin pointer keeps `Stamps` at 16 bytes (a bare VecDeque is 32), and
    // only keys with more than three requests in their window pay for the extra allocation.
    #[allow(clippy::box_collection)]
    Heap(Box<VecDeque<u32>>),
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

    fn deadline(&self) -> u64 {
        self.base + u64::from(self.idle_until)
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
        // now - base < 2^31 after prune/rebase, max period < 2^31: the sum fits in u32.
        self.idle_until = u32::try_from(now - self.base + bounds.max_period_ms).unwrap_or(u32::MAX);

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
            Stamps::Heap(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> u32 {
        match self {
            Stamps::Inline { buf, .. } => buf.get(i).copied().unwrap_or(0),
            Stamps::Heap(v) => v.get(i).copied().unwrap_or(0),
        }
    }

    /// Index of the first time for which `pred` is false (times are sorted ascending).
    fn partition_point(&self, pred: impl Fn(u32) -> bool) -> usize {
        match self {
            Stamps::Inline { len, buf } => buf
                .get(..usize::from(*len))
                .map_or(0, |s| s.partition_point(|&x| pred(x))),
            Stamps::Heap(v) => v.partition_point(|&x| pred(x)),
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
                    let mut v = VecDeque::with_capacity(max_requests.clamp(INLINE + 1, 16));
                    v.extend(buf.iter().copied());
                    v.push_back(off);
                    *self = Stamps::Heap(Box::new(v));
                }
            }
            Stamps::Heap(v) => v.push_back(off),
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
            Stamps::Heap(v) => {
                let n = n.min(v.len());
                v.drain(..n);
                if v.len() <= INLINE {
                    // Give the heap block back once the log is short again.
                    let mut buf = [0; INLINE];
                    for (slot, x) in buf.iter_mut().zip(v.iter()) {
                        *slot = *x;
                    }
                    *self = Stamps::Inline {
                        len: v.len() as u8, // <= INLINE
                        buf,
                    };
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
            Stamps::Heap(v) => {
                for x in v.iter_mut() {
                    *x -= delta;
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

    #[test]
    fn store_full_of_live_keys_evicts_and_stays_bounded() {
        let store = MemoryStore::new(100);
        let limits = [spec(1, 60_000)];
        let b = bounds(&limits);
        for i in 0..1_000u128 {
            store.check(
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
                1,
                &limits,
                b,
            );
            assert!(store.len() <= 100);
        }
        assert!(store.len() >= 90, "{}", store.len());
    }

    #[test]
    fn store_idle_keys_expire_after_longest_period() {
        let store = MemoryStore::new(1_000);
        let limits = [spec(1, 1_000), spec(5, 30_000)];
        let b = bounds(&limits);
        for i in 0..50u128 {
            store.check(i << 64 | i, 0, &limits, b);
        }
        assert_eq!(store.len(), 50);
        // 20 s later: not idle long enough (30 s), a sweep keeps them
        store.check(7 << 64 | 999, 20_000, &limits, b);
        assert_eq!(store.len(), 51);
        // past 30 s: the next sweep drops the first 50, the one used at 20 s is left
        store.check(7 << 64 | 999, 31_000, &limits, b);
        assert_eq!(store.len(), 1);
    }
}
