//! Which keyed PRF derives the verified-token cache's and the limiter's 128-bit ids?
//! `cargo bench --bench ids` times each candidate on an 800-byte token (the size of the
//! WeTrials access tokens with their Authorization header) and on a short limiter key.
//!
//! Candidates: SipHash-2-4 with 128-bit output (`siphasher`), keyed BLAKE3 truncated to 128
//! bits (`blake3`), and for reference the two independently keyed `ahash` states the ids
//! used before (built against hash flooding, not as a PRF: nothing promises that ids are
//! unforgeable).

use std::hash::{Hash, Hasher};
use std::hint::black_box;
use std::time::Instant;

use siphasher::sip128::{Hasher128, SipHasher24};

/// Feeds `Hash` input into keyed BLAKE3 (as the cache would, through the `Hash` trait).
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        let mut out = [0u8; 8];
        self.0.finalize_xof().fill(&mut out);
        u64::from_le_bytes(out)
    }
}

fn blake3_128(key: &[u8; 32], v: impl Hash) -> u128 {
    let mut h = Blake3Hasher(blake3::Hasher::new_keyed(key));
    v.hash(&mut h);
    let mut out = [0u8; 16];
    h.0.finalize_xof().fill(&mut out);
    u128::from_le_bytes(out)
}

fn sip_128(k0: u64, k1: u64, v: impl Hash) -> u128 {
    let mut h = SipHasher24::new_with_keys(k0, k1);
    v.hash(&mut h);
    h.finish128().as_u128()
}

fn ahash_pair(a: &ahash::RandomState, b: &ahash::RandomState, v: impl Hash + Copy) -> u128 {
    (u128::from(a.hash_one(v)) << 64) | u128::from(b.hash_one(v))
}

fn time(name: &str, input: &str, iters: u32, f: impl Fn(&str) -> u128) {
    // Warm up, then the best of 5 runs.
    for _ in 0..iters / 10 {
        black_box(f(black_box(input)));
    }
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(f(black_box(input)));
        }
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(iters));
    }
    println!("| {name} | {} B | {best:.1} ns |", input.len());
}

fn main() {
    let token = "e".repeat(800);
    let key = "oauth-token\u{0}client_id:app-1234";
    let k: [u8; 32] = std::array::from_fn(|i| i as u8 * 7 + 3);
    let (k0, k1) = (0x0123_4567_89ab_cdef_u64, 0xfedc_ba98_7654_3210_u64);
    let (a, b) = (ahash::RandomState::new(), ahash::RandomState::new());
    println!("| candidate | input | per id |");
    println!("|---|---:|---:|");
    for input in [token.as_str(), key] {
        time("SipHash-2-4-128 (siphasher)", input, 200_000, |s| {
            sip_128(k0, k1, s)
        });
        time("keyed BLAKE3, 128 bits (blake3)", input, 200_000, |s| {
            blake3_128(&k, s)
        });
        time("two keyed ahash (before)", input, 200_000, |s| {
            ahash_pair(&a, &b, s)
        });
    }
}
