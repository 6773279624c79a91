//! The compact in-process store behind the two per-client tables of the request path: the
//! verified-token cache (step 2, `auth`) and the memory rate limiter (step 3, `ratelimit`).
//!
//! Both hold up to hundreds of thousands of small entries keyed by a 128-bit id the caller
//! derives with [`Ids`] (from the token; from route and client key), and every
//! entry has a deadline after which it is useless (the token's `exp`; the end of the client's
//! longest window). A general-purpose cache (moka) was measured here at about 320 bytes of
//! bookkeeping per entry on top of the value, which alone would exceed the gateway's memory
//! budget (under 64 MiB with 100k tokens and 100k limiter keys), so this map keeps
//! only the id, the value and a hash-table control byte.
//!
//! Shape: a power-of-two number of shards, each a `Mutex<HashMap<u128, V>>` on its own cache
//! lines, picked by the id's high bits (the table hash is its low bits, so both are uniform when
//! the id is). A lock is held for one operation on one entry, so a caller can decide and update
//! atomically (the limiter relies on it). Bounds and expiry:
//! - each shard holds at most `ceil(max_entries / shards)` entries;
//! - entries past their deadline are swept: one shard per step, every shard once per
//!   `sweep_interval_ms`, the step taken by whichever caller passes when it is due;
//! - an insert into a full shard first sweeps it; if that freed nothing, the map's [`WhenFull`]
//!   policy decides: evict a batch (1/16 of the shard) of the entries closest to their deadline
//!   (the token cache), or refuse the new entry and keep every live one (the rate limiter).
//!   Either way the scan is amortised: an eviction batch serves the inserts that follow, and a
//!   refusing shard is not scanned again before its earliest deadline, nor more than once per
//!   `shard_cap / 100` ms (at most about 100 entries scanned per millisecond per shard).
//!
//! Times are milliseconds on whatever clock the caller uses, as long as it uses one.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

/// Entries per shard that justify one more shard (the number of shards is a power of two, 1..=64).
const ENTRIES_PER_SHARD_HINT: u64 = 4_096;
const MAX_SHARDS: u64 = 64;

/// Maps what identifies an entry (a token; a route and client key) to its 128-bit id with a
/// keyed PRF: SipHash-2-4 with 128-bit output, under a 128-bit key drawn from the OS at start.
///
/// A verified-token cache hit returns the caller of a previously verified token without
/// comparing tokens, so the id must be unforgeable: a token whose id equals a cached one
/// would be accepted as that caller. That is what a PRF promises (without the key, ids look
/// random; hitting any of 200k cached ids is a 2^-110 event), and what a hash built against
/// flooding (the two `ahash` states used before) does not. Keyed BLAKE3 is the other PRF
/// measured (`cargo bench --bench ids`, 800-byte token); SipHash-2-4-128 was chosen for
/// its cost there and because it is the standard keyed hash for short inputs, with a
/// small pure-Rust implementation (`siphasher`) that needs no SIMD dispatch.
pub(crate) struct Ids {
    k0: u64,
    k1: u64,
}

impl Ids {
    pub(crate) fn new() -> Self {
        let mut key = [0u8; 16];
        // The OS RNG; ahash's own random source is the fallback should it ever fail.
        if aws_lc_rs::rand::fill(&mut key).is_err() {
            let s = ahash::RandomState::new();
            key[..8].copy_from_slice(&s.hash_one(1u8).to_le_bytes());
            key[8..].copy_from_slice(&s.hash_one(2u8).to_le_bytes());
        }
        let (a, b) = key.split_at(8);
        Self {
            k0: u64::from_le_bytes(a.try_into().unwrap_or_default()),
            k1: u64::from_le_bytes(b.try_into().unwrap_or_default()),
        }
    }

    pub(crate) fn of(&self, v: impl Hash) -> u128 {
        use siphasher::sip128::Hasher128;
        let mut h = siphasher::sip128::SipHasher24::new_with_keys(self.k0, self.k1);
        v.hash(&mut h);
        h.finish128().as_u128()
    }
}

/// A value with a time (ms) after which it may be dropped.
pub(crate) trait Expiring {
    fn deadline(&self) -> u64;
}

/// What an insert does when its shard is full and no entry in it is past its deadline. The two
/// callers differ because forgetting an entry costs them different things.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// Evict a batch (1/16 of the shard) of the entries closest to their deadline, then insert.
    /// For the verified-token cache: an evicted token is verified again on its next use, which
    /// costs a signature check but never changes an answer.
    EvictSoonest,
    /// Keep every live entry and refuse the new one ([`Full`]); the caller decides what the
    /// request gets. For the rate limiter: an entry before its deadline holds requests that
    /// still count, and forgetting it would admit them again.
    Refuse,
}

/// An insert refused by a [`WhenFull::Refuse`] map: the id's shard is full of live entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Full;

/// A full refusing shard is scanned again at most once per `shard_cap / FULL_SCAN_PER_MS` ms.
const FULL_SCAN_PER_MS: usize = 100;

/// A bounded, sharded map from 128-bit ids to expiring values.
pub(crate) struct ExpiringMap<V> {
    shards: Box<[Shard<V>]>,
    mask: usize,
    shard_cap: usize,
    when_full: WhenFull,
    /// Least time (ms) between two scans of a full [`WhenFull::Refuse`] shard.
    rescan_gap_ms: u64,
    len: AtomicU64,
    /// Time of the next sweep step, and the shard it sweeps: one shard per step, so every
    /// shard is swept once per sweep interval and no caller pays for more than one.
    next_sweep: AtomicU64,
    sweep_step_ms: u64,
    sweep_cursor: AtomicUsize,
}

/// One shard, on its own cache lines so that two cores working on two shards do not contend.
#[repr(align(128))]
struct Shard<V>(Mutex<Slots<V>>);

struct Slots<V> {
    map: HashMap<u128, V, BuildHasherDefault<IdHasher>>,
    /// [`WhenFull::Refuse`] only: while the shard stays full, it is not scanned for expired
    /// entries before this time (ms): no entry's deadline was earlier at the last scan, or that
    /// scan was too recent. A hint: an entry whose deadline moved earlier waits for this time or
    /// for the periodic sweep.
    rescan_at: u64,
}

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
    /// expired entries are swept at least once per `sweep_interval_ms`; `when_full` says what
    /// an insert into a shard full of live entries does.
    pub(crate) fn new(max_entries: u64, sweep_interval_ms: u64, when_full: WhenFull) -> Self {
        let max_entries = max_entries.max(1);
        let shards = (max_entries / ENTRIES_PER_SHARD_HINT)
            .max(1)
            .next_power_of_two()
            .min(MAX_SHARDS);
        let shard_cap = usize::try_from(max_entries.div_ceil(shards)).unwrap_or(usize::MAX);
        let shards: Box<[Shard<V>]> = (0..shards)
            .map(|_| {
                Shard(Mutex::new(Slots {
                    map: HashMap::default(),
                    rescan_at: 0,
                }))
            })
            .collect();
        Self {
            mask: shards.len() - 1,
            when_full,
            rescan_gap_ms: (shard_cap / FULL_SCAN_PER_MS).max(1) as u64,
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
    /// the shard is full), all under the shard's lock. [`Full`] (neither `make` nor `f` run)
    /// only from a [`WhenFull::Refuse`] map whose shard for `id` is full of live entries.
    pub(crate) fn update_or_insert<R>(
        &self,
        id: u128,
        now: u64,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> Result<R, Full> {
        self.maybe_sweep(now);
        let mut slots = self.shard(id).0.lock();
        if let Some(v) = slots.map.get_mut(&id) {
            return Ok(f(v));
        }
        if slots.map.len() >= self.shard_cap && !self.make_room(&mut slots, now) {
            return Err(Full);
        }
        let mut v = make();
        let r = f(&mut v);
        slots.map.insert(id, v);
        self.len.fetch_add(1, Ordering::Relaxed);
        Ok(r)
    }

    /// The value of `id` mapped by `f`; when `f` answers `None` the entry is removed (it is stale).
    pub(crate) fn get_or_remove<R>(&self, id: u128, f: impl FnOnce(&V) -> Option<R>) -> Option<R> {
        let mut slots = self.shard(id).0.lock();
        let v = slots.map.get(&id)?;
        match f(v) {
            Some(r) => Some(r),
            None => {
                slots.map.remove(&id);
                drop(slots);
                self.forget(1);
                None
            }
        }
    }

    /// Inserts or replaces the value of `id`; false if a [`WhenFull::Refuse`] map refused a
    /// new id (a [`WhenFull::EvictSoonest`] map always stores it).
    pub(crate) fn insert(&self, id: u128, now: u64, value: V) -> bool {
        self.maybe_sweep(now);
        let mut slots = self.shard(id).0.lock();
        if slots.map.len() >= self.shard_cap
            && !slots.map.contains_key(&id)
            && !self.make_room(&mut slots, now)
        {
            return false;
        }
        if slots.map.insert(id, value).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Frees at least one slot in a full shard, or says it cannot: expired entries go first;
    /// then the policy evicts the entries closest to their deadline, or refuses.
    fn make_room(&self, slots: &mut Slots<V>, now: u64) -> bool {
        match self.when_full {
            WhenFull::EvictSoonest => {
                let removed = evict_soonest(&mut slots.map, now, self.shard_cap);
                self.forget(removed);
                true
            }
            WhenFull::Refuse => {
                if now < slots.rescan_at {
                    return false; // nothing has expired since the last scan, or it was just now
                }
                let (removed, earliest) = sweep_expired(&mut slots.map, now);
                self.forget(removed);
                if slots.map.len() < self.shard_cap {
                    return true;
                }
                slots.rescan_at = earliest.max(now.saturating_add(self.rescan_gap_ms));
                false
            }
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
        if let Some(mut slots) = self.shards.get(idx).and_then(|s| s.0.try_lock()) {
            let (removed, _) = sweep_expired(&mut slots.map, now);
            drop(slots);
            self.forget(removed);
        }
    }

    fn forget(&self, removed: usize) {
        if removed > 0 {
            self.len.fetch_sub(removed as u64, Ordering::Relaxed);
        }
    }
}

/// Removes the entries past their deadline; returns how many, and the earliest deadline of
/// those left (`u64::MAX` if none).
fn sweep_expired<V: Expiring, S: BuildHasher>(
    map: &mut HashMap<u128, V, S>,
    now: u64,
) -> (usize, u64) {
    let before = map.len();
    let mut earliest = u64::MAX;
    map.retain(|_, v| {
        let d = v.deadline();
        if d > now {
            earliest = earliest.min(d);
        }
        d > now
    });
    let removed = before - map.len();
    // Give memory back after a wave of entries expired.
    let cap = map.capacity();
    if cap > 64 && map.len() * 4 < cap {
        map.shrink_to(map.len() * 2);
    }
    (removed, earliest)
}

/// Frees at least one slot in a full shard: expired entries first, then a batch (1/16 of the
/// shard) of the entries closest to their deadline.
fn evict_soonest<V: Expiring, S: BuildHasher>(
    map: &mut HashMap<u128, V, S>,
    now: u64,
    cap: usize,
) -> usize {
    let (mut removed, _) = sweep_expired(map, now);
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
    fn ids_of_an_800_byte_token_change_with_every_byte() {
        // A cache hit must need the same token: any one-byte change gives another id.
        let ids = Ids::new();
        let token = "a".repeat(800);
        let id = ids.of(token.as_str());
        let mut seen = std::collections::HashSet::new();
        for i in 0..token.len() {
            let mut other = token.clone().into_bytes();
            other[i] = b'b';
            let other = String::from_utf8(other).unwrap();
            let o = ids.of(other.as_str());
            assert_ne!(o, id, "byte {i}");
            assert!(seen.insert(o), "two tokens share an id");
        }
        assert_ne!(ids.of(&token[..799]), id, "a prefix");
    }

    #[test]
    fn full_map_evicts_closest_deadlines_and_stays_bounded() {
        let map = ExpiringMap::new(100, 10_000, WhenFull::EvictSoonest);
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
        let map = ExpiringMap::new(1_000, 10_000, WhenFull::EvictSoonest);
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
        let map = ExpiringMap::new(10, 10_000, WhenFull::EvictSoonest);
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
        let map = ExpiringMap::new(10, 10_000, WhenFull::EvictSoonest);
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
        assert_eq!(seen, [Ok(1), Ok(2), Ok(3)]);
        assert_eq!(map.len(), 1);
    }

    fn bump(map: &ExpiringMap<Until>, id: u128, now: u64) -> Result<u64, Full> {
        map.update_or_insert(
            id,
            now,
            || Until(now + 1_000),
            |v| {
                v.0 += 1;
                v.0
            },
        )
    }

    #[test]
    fn refusing_map_full_of_live_entries_refuses_new_ids_and_keeps_every_entry() {
        let map = ExpiringMap::new(100, 10_000, WhenFull::Refuse);
        for i in 0..100u128 {
            assert_eq!(bump(&map, spread(i), 1), Ok(1_002));
        }
        for i in 100..1_000u128 {
            assert_eq!(bump(&map, spread(i), 2), Err(Full), "id {i}");
            assert!(!map.insert(spread(i), 2, Until(5_000)));
        }
        assert_eq!(map.len(), 100);
        // Every live entry kept its value and is still updated in place.
        for i in 0..100u128 {
            assert_eq!(bump(&map, spread(i), 3), Ok(1_003), "id {i}");
        }
    }

    #[test]
    fn refusing_map_takes_new_ids_in_place_of_expired_ones_only() {
        let map = ExpiringMap::new(100, 1_000_000, WhenFull::Refuse);
        for i in 0..100u128 {
            map.insert(spread(i), 0, Until(1_000 + i as u64));
        }
        assert_eq!(bump(&map, spread(500), 999), Err(Full));
        // Entries 0 and 1 expire at 1000 and 1001: two new ids fit, the third does not.
        assert!(bump(&map, spread(500), 1_001).is_ok());
        assert!(bump(&map, spread(501), 1_001).is_ok());
        assert_eq!(bump(&map, spread(502), 1_001), Err(Full));
        assert_eq!(map.len(), 100);
        for i in 2..100u128 {
            assert!(map.get_or_remove(spread(i), |v| Some(v.0)).is_some(), "{i}");
        }
        assert!(map.get_or_remove(spread(0), |v| Some(v.0)).is_none());
    }

    #[test]
    fn refusing_full_shard_is_not_scanned_again_before_its_earliest_deadline() {
        use std::sync::atomic::AtomicUsize;
        static READS: AtomicUsize = AtomicUsize::new(0);
        struct Probe(u64);
        impl Expiring for Probe {
            fn deadline(&self) -> u64 {
                READS.fetch_add(1, Ordering::Relaxed);
                self.0
            }
        }
        let map = ExpiringMap::new(1_000, 1_000_000, WhenFull::Refuse);
        for i in 0..1_000u128 {
            assert!(map.insert(spread(i), 0, Probe(60_000)));
        }
        assert!(!map.insert(spread(5_000), 1, Probe(60_001)), "full");
        let after_one_scan = READS.load(Ordering::Relaxed);
        assert!(after_one_scan >= 1_000);
        // Refusals until the earliest deadline read no entry: each costs O(1).
        for t in 2..10_000u64 {
            assert!(!map.insert(spread(u128::from(t) + 5_000), t, Probe(60_001)));
        }
        assert_eq!(READS.load(Ordering::Relaxed), after_one_scan);
        assert_eq!(map.len(), 1_000);
    }
}
