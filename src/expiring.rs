//! The compact in-process store behind the two per-client tables of the request path: the
//! verified-token cache (step 2, `auth`) and the memory rate limiter (step 3, `ratelimit`).
//!
//! Both hold up to hundreds of thousands of small entries keyed by a 128-bit id the caller
//! derives with [`Ids`] (from the token; from route and client key), and every
//! entry has a deadline after which it is useless (the token's `exp`; the end of the client's
//! longest window). A general-purpose cache (moka) was measured here at about 320 bytes of
//! bookkeeping per entry on top of the value, which alone would exceed the gateway's memory
//! budget (issue 5: under 64 MiB with 100k tokens and 100k limiter keys), so this map keeps
//! only the id, the value and a hash-table control byte.
//!
//! Shape: a power-of-two number of shards, each a `Mutex<HashMap<u128, V>>` on its own cache
//! lines, picked by the id's high bits (the table hash is its low bits, so both are uniform when
//! the id is). A lock is held for one operation on one entry, so a caller can decide and update
//! atomically (the limiter relies on it). Bounds and expiry:
//! - each shard holds at most `ceil(max_entries / shards)` entries;
//! - entries past their deadline are swept: one shard per step, every shard once per
//!   `sweep_interval_ms`, the step taken by whichever caller passes when it is due;
//! - an insert into a full shard first sweeps it, then evicts a batch (1/16 of the shard) of the
//!   entries closest to their deadline, so the scan is amortised over the inserts that follow.
//!
//! Times are milliseconds on whatever clock the caller uses, as long as it uses one.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

/// Entries per shard that justify one more shard (the number of shards is a power of two, 1..=64).
const ENTRIES_PER_SHARD_HINT: u64 = 4_096;
const MAX_SHARDS: u64 = 64;

/// Maps what identifies an entry (a token; a route and client key) to its 128-bit id with two
/// independently, randomly keyed hashes: no allocation, several times faster than SHA-256 on
/// an 800-byte token, and no practical way for a client to make its id equal another's (the
/// keys are secret and per process; hitting any of 200k cached ids by chance is a 2^-110 event).
pub(crate) struct Ids {
    hi: ahash::RandomState,
    lo: ahash::RandomState,
}

impl Ids {
    pub(crate) fn new() -> Self {
        Self {
            hi: ahash::RandomState::new(),
            lo: ahash::RandomState::new(),
        }
    }

    pub(crate) fn of(&self, v: impl Hash) -> u128 {
        let hi = self.hi.hash_one(&v);
        let lo = self.lo.hash_one(&v);
        (u128::from(hi) << 64) | u128::from(lo)
    }
}

/// A value with a time (ms) after which it may be dropped.
pub(crate) trait Expiring {
    fn deadline(&self) -> u64;
}

/// A bounded, sharded map from 128-bit ids to expiring values.
pub(crate) struct ExpiringMap<V> {
    shards: Box<[Shard<V>]>,
    mask: usize,
    shard_cap: usize,
    len: AtomicU64,
    /// Time of the next sweep step, and the shard it sweeps: one shard per step, so every
    /// shard is swept once per sweep interval and no caller pays for more than one.
    next_sweep: AtomicU64,
    sweep_step_ms: u64,
    sweep_cursor: AtomicUsize,
}

/// One shard, on its own cache lines so that two cores working on two shards do not contend.
#[repr(align(128))]
struct Shard<V>(Mutex<HashMap<u128, V, BuildHasherDefault<IdHasher>>>);

/// Ids are already uniform random bits: use the low 64 as the table hash.
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

impl<V: Expiring> ExpiringMap<V> {
    /// A map holding at most about `max_entries` entries (each shard `ceil(max/shards)`), whose
    /// expired entries are swept at least once per `sweep_interval_ms`.
    pub(crate) fn new(max_entries: u64, sweep_interval_ms: u64) -> Self {
        let max_entries = max_entries.max(1);
        let shards = (max_entries / ENTRIES_PER_SHARD_HINT)
            .max(1)
            .next_power_of_two()
            .min(MAX_SHARDS);
        let shard_cap = usize::try_from(max_entries.div_ceil(shards)).unwrap_or(usize::MAX);
        let shards: Box<[Shard<V>]> = (0..shards)
            .map(|_| Shard(Mutex::new(HashMap::default())))
            .collect();
        Self {
            mask: shards.len() - 1,
            sweep_step_ms: (sweep_interval_ms / shards.len() as u64).max(1),
            shards,
            shard_cap,
            len: AtomicU64::new(0),
            next_sweep: AtomicU64::new(0),
            sweep_cursor: AtomicUsize::new(0),
        }
    }

    /// Entries held now (expired ones count until swept).
    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    fn shard(&self, id: u128) -> &Shard<V> {
        // mask < shards.len(), so the index is always in range.
        &self.shards[((id >> 64) as usize) & self.mask]
    }

    /// Runs `f` on the entry of `id`, creating it with `make` if absent (making room first if
    /// the shard is full), all under the shard's lock.
    pub(crate) fn update_or_insert<R>(
        &self,
        id: u128,
        now: u64,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        self.maybe_sweep(now);
        let mut map = self.shard(id).0.lock();
        if let Some(v) = map.get_mut(&id) {
            return f(v);
        }
        if map.len() >= self.shard_cap {
            let removed = make_room(&mut map, now, self.shard_cap);
            self.forget(removed);
        }
        let mut v = make();
        let r = f(&mut v);
        map.insert(id, v);
        self.len.fetch_add(1, Ordering::Relaxed);
        r
    }

    /// The value of `id` mapped by `f`; when `f` answers `None` the entry is removed (it is stale).
    pub(crate) fn get_or_remove<R>(&self, id: u128, f: impl FnOnce(&V) -> Option<R>) -> Option<R> {
        let mut map = self.shard(id).0.lock();
        let v = map.get(&id)?;
        match f(v) {
            Some(r) => Some(r),
            None => {
                map.remove(&id);
                drop(map);
                self.forget(1);
                None
            }
        }
    }

    /// Inserts or replaces the value of `id`.
    pub(crate) fn insert(&self, id: u128, now: u64, value: V) {
        self.maybe_sweep(now);
        let mut map = self.shard(id).0.lock();
        if map.len() >= self.shard_cap && !map.contains_key(&id) {
            let removed = make_room(&mut map, now, self.shard_cap);
            self.forget(removed);
        }
        if map.insert(id, value).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes one sweep step if it is due and this caller wins it (a busy shard is skipped
    /// until its next turn).
    fn maybe_sweep(&self, now: u64) {
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
        if let Some(mut map) = self.shards.get(idx).and_then(|s| s.0.try_lock()) {
            let removed = sweep_expired(&mut map, now);
            drop(map);
            self.forget(removed);
        }
    }

    fn forget(&self, removed: usize) {
        if removed > 0 {
            self.len.fetch_sub(removed as u64, Ordering::Relaxed);
        }
    }
}

/// Removes the entries past their deadline; returns how many.
fn sweep_expired<V: Expiring, S: BuildHasher>(map: &mut HashMap<u128, V, S>, now: u64) -> usize {
    let before = map.len();
    map.retain(|_, v| v.deadline() > now);
    let removed = before - map.len();
    // Give memory back after a wave of entries expired.
    let cap = map.capacity();
    if cap > 64 && map.len() * 4 < cap {
        map.shrink_to(map.len() * 2);
    }
    removed
}

/// Frees at least one slot in a full shard: expired entries first, then a batch (1/16 of the
/// shard) of the entries closest to their deadline.
fn make_room<V: Expiring, S: BuildHasher>(
    map: &mut HashMap<u128, V, S>,
    now: u64,
    cap: usize,
) -> usize {
    let mut removed = sweep_expired(map, now);
    if map.len() < cap {
        return removed;
    }
    let batch = (cap / 16).max(1);
    let mut deadlines: Vec<u64> = map.values().map(Expiring::deadline).collect();
    let threshold = match deadlines.get(batch - 1) {
        Some(_) => *deadlines.select_nth_unstable(batch - 1).1,
        None => u64::MAX,
    };
    let mut left = batch;
    let before = map.len();
    map.retain(|_, v| {
        if left > 0 && v.deadline() <= threshold {
            left -= 1;
            false
        } else {
            true
        }
    });
    removed += before - map.len();
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Until(u64);
    impl Expiring for Until {
        fn deadline(&self) -> u64 {
            self.0
        }
    }

    fn spread(i: u128) -> u128 {
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
    }

    #[test]
    fn ids_differ_per_value_and_per_process_key() {
        let a = Ids::new();
        let b = Ids::new();
        assert_eq!(a.of("token"), a.of("token"));
        assert_ne!(a.of("token"), a.of("tokem"));
        assert_ne!(a.of(("a", "bc")), a.of(("ab", "c")));
        assert_ne!(a.of("token"), b.of("token"), "keys are random per instance");
    }

    #[test]
    fn full_map_evicts_closest_deadlines_and_stays_bounded() {
        let map = ExpiringMap::new(100, 10_000);
        for i in 0..1_000u128 {
            map.insert(spread(i), 1, Until(1_000 + i as u64));
            assert!(map.len() <= 100);
        }
        assert!(map.len() >= 90, "{}", map.len());
        // The latest deadlines survived, the earliest were evicted.
        assert!(map.get_or_remove(spread(999), |v| Some(v.0)).is_some());
        assert!(map.get_or_remove(spread(0), |v| Some(v.0)).is_none());
    }

    #[test]
    fn expired_entries_are_swept_once_per_interval() {
        let map = ExpiringMap::new(1_000, 10_000);
        for i in 0..50u128 {
            map.insert(i << 64 | i, 0, Until(30_000));
        }
        assert_eq!(map.len(), 50);
        map.insert(7 << 64 | 999, 20_000, Until(60_000));
        assert_eq!(map.len(), 51, "not expired yet");
        map.insert(7 << 64 | 999, 31_000, Until(60_000));
        assert_eq!(map.len(), 1, "the 50 expired at 30 s were swept");
    }

    #[test]
    fn get_or_remove_drops_stale_entries() {
        let map = ExpiringMap::new(10, 10_000);
        map.insert(5, 0, Until(100));
        assert_eq!(map.get_or_remove(5, |v| Some(v.0)), Some(100));
        assert_eq!(map.get_or_remove(5, |_| None::<u64>), None);
        assert_eq!(map.len(), 0);
        assert_eq!(map.get_or_remove(5, |v| Some(v.0)), None);
        map.insert(6, 0, Until(1));
        map.insert(6, 0, Until(2));
        assert_eq!(
            map.get_or_remove(6, |v| Some(v.0)),
            Some(2),
            "insert replaces"
        );
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn update_or_insert_is_one_step_per_id() {
        let map = ExpiringMap::new(10, 10_000);
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(map.update_or_insert(
                42,
                0,
                || Until(0),
                |v| {
                    v.0 += 1;
                    v.0
                },
            ));
        }
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(map.len(), 1);
    }
}
