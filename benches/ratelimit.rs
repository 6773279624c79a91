//! Rate-limiter benchmark (a plain `main`, no timing assertions): prints
//! - resident memory of the memory backend holding 1M distinct keys, one request each;
//! - memory-backend decisions per second on one thread with 1 key and with 100k keys;
//! - the cost of a decision for a new key when the memory backend is full of live keys;
//! - p50 / p99 / max latency of sequential Redis decisions over loopback, against a
//!   `redis-server` it starts itself on a free port (skipped, saying so, if there is none).
//!
//! Run: `cargo bench --bench ratelimit`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wetrials_gateway::ratelimit::{
    Backend, LimitSpec, OnBackendError, RateLimitMetrics, RateLimiter, RateLimiterConfig,
};

const RSS_KEYS: u64 = 1_000_000;
const DECISIONS: u64 = 2_000_000;
const MANY_KEYS: usize = 100_000;
const REDIS_DECISIONS: usize = 20_000;
const ROUNDS: u32 = 3;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let per_minute = [LimitSpec {
        requests: 120,
        period: Duration::from_secs(60),
    }];

    println!("== memory backend: resident memory ==");
    rt.block_on(resident_memory(&per_minute));

    println!("== memory backend: decisions per second (1 thread) ==");
    rt.block_on(throughput(&per_minute));

    println!("== memory backend: new keys into a store full of live keys (1 thread) ==");
    rt.block_on(full_store(&per_minute));

    println!("== redis backend: latency over loopback ==");
    rt.block_on(redis_latency(&per_minute));
}

fn limiter(cfg: RateLimiterConfig) -> (RateLimiter, Arc<RateLimitMetrics>) {
    let metrics = Arc::new(
        RateLimitMetrics::new(&prometheus::Registry::new()).expect("fresh metrics registry"),
    );
    let l = RateLimiter::new(cfg, Arc::clone(&metrics)).expect("limiter");
    (l, metrics)
}

async fn resident_memory(limits: &[LimitSpec]) {
    let before = rss_bytes();
    let (l, metrics) = limiter(RateLimiterConfig {
        memory_max_keys: 2 * RSS_KEYS, // no eviction while filling
        ..RateLimiterConfig::default()
    });
    let mut key = String::with_capacity(32);
    let started = Instant::now();
    for i in 0..RSS_KEYS {
        key.clear();
        key.push_str("ip:");
        push_u64(&mut key, i);
        let _ = l.check("token", limits, &key).await;
    }
    let took = started.elapsed();
    let after = rss_bytes();
    let keys = metrics.keys.get();
    println!(
        "  {keys} keys inserted in {:.2} s; VmRSS {:.1} MiB -> {:.1} MiB: {:.0} bytes/key",
        took.as_secs_f64(),
        mib(before),
        mib(after),
        after.saturating_sub(before) as f64 / RSS_KEYS as f64
    );
}

async fn throughput(limits: &[LimitSpec]) {
    // Three rounds each (a shared machine is noisy); the best round is the figure to quote.
    let mut best = Duration::MAX;
    for round in 1..=ROUNDS {
        // a fresh limiter per round: 120 admitted, then rejections
        let (l, _) = limiter(RateLimiterConfig::default());
        let started = Instant::now();
        let mut allowed = 0u64;
        for _ in 0..DECISIONS {
            if matches!(l.check("authorize", limits, "sub:alice").await, Ok(d) if d.allowed) {
                allowed += 1;
            }
        }
        best = best.min(started.elapsed());
        report(&format!("1 key, round {round}"), started.elapsed(), allowed);
    }
    report("1 key, best", best, 120);

    let keys: Vec<String> = (0..MANY_KEYS)
        .map(|i| format!("ip:10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let mut best = Duration::MAX;
    for round in 1..=ROUNDS {
        // a fresh limiter per round: every key sees 20 requests, all admitted
        let (l, _) = limiter(RateLimiterConfig::default());
        let started = Instant::now();
        let mut allowed = 0u64;
        for i in 0..DECISIONS as usize {
            let key = &keys[i % MANY_KEYS];
            if matches!(l.check("authorize", limits, key).await, Ok(d) if d.allowed) {
                allowed += 1;
            }
        }
        best = best.min(started.elapsed());
        report(
            &format!("100k keys, round {round}"),
            started.elapsed(),
            allowed,
        );
    }
    report("100k keys, best", best, DECISIONS);
}

async fn full_store(limits: &[LimitSpec]) {
    // 100k keys max, filled with 200k distinct keys inside one window (all still live), then
    // DECISIONS more new keys: what an attacker spraying keys costs each decision.
    let mut key = String::with_capacity(32);
    let mut best = Duration::MAX;
    for round in 1..=ROUNDS {
        let (l, metrics) = limiter(RateLimiterConfig {
            memory_max_keys: MANY_KEYS as u64,
            ..RateLimiterConfig::default()
        });
        for i in 0..2 * MANY_KEYS as u64 {
            key.clear();
            key.push_str("fill:");
            push_u64(&mut key, i);
            let _ = l.check("authorize", limits, &key).await;
        }
        let started = Instant::now();
        let mut allowed = 0u64;
        for i in 0..DECISIONS {
            key.clear();
            key.push_str("new:");
            push_u64(&mut key, i);
            if matches!(l.check("authorize", limits, &key).await, Ok(d) if d.allowed) {
                allowed += 1;
            }
        }
        best = best.min(started.elapsed());
        report(&format!("full, round {round}"), started.elapsed(), allowed);
        if round == ROUNDS {
            println!("  keys held at the end: {}", metrics.keys.get());
        }
    }
    report("full, best", best, DECISIONS);
}

fn report(label: &str, took: Duration, allowed: u64) {
    println!(
        "  {label:>20}: {DECISIONS} decisions in {:.3} s = {:.2} M decisions/s ({:.0} ns each; {allowed} allowed)",
        took.as_secs_f64(),
        DECISIONS as f64 / took.as_secs_f64() / 1e6,
        took.as_nanos() as f64 / DECISIONS as f64,
    );
}

async fn redis_latency(limits: &[LimitSpec]) {
    let Some(redis) = RedisChild::start() else {
        println!("  skipped: `redis-server` is not on PATH");
        return;
    };
    let (l, metrics) = limiter(RateLimiterConfig {
        backend: Backend::Redis {
            url: format!("redis://127.0.0.1:{}/", redis.port),
            pool_size: 4,
            timeout: Duration::from_millis(500),
            key_prefix: "wtgw-bench".into(),
        },
        on_backend_error: OnBackendError::FailClosed,
        memory_max_keys: 10_000,
    });
    let keys: Vec<String> = (0..1_000).map(|i| format!("sub:user{i}")).collect();
    // warm-up: connections and script load
    for key in keys.iter().take(8) {
        let _ = l.check("warmup", limits, key).await;
    }
    let mut lat = Vec::with_capacity(REDIS_DECISIONS);
    let mut errors = 0usize;
    let started = Instant::now();
    for i in 0..REDIS_DECISIONS {
        let t = Instant::now();
        if l.check("userinfo", limits, &keys[i % keys.len()])
            .await
            .is_err()
        {
            errors += 1;
        }
        lat.push(t.elapsed());
    }
    let took = started.elapsed();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "  {REDIS_DECISIONS} sequential decisions in {:.2} s ({:.0}/s): p50 {:?}, p99 {:?}, max {:?}; errors {errors}, backend errors counted {}",
        took.as_secs_f64(),
        REDIS_DECISIONS as f64 / took.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        lat[lat.len() - 1],
        metrics.backend_errors.with_label_values(&["redis"]).get(),
    );
}

/// A `redis-server` on a free loopback port, killed on drop.
struct RedisChild {
    child: Child,
    port: u16,
}

impl RedisChild {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                println!("  redis-server did not start listening on port {port}");
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Appends the decimal digits of `v` without allocating.
fn push_u64(s: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    s.extend(buf[i..].iter().map(|&b| char::from(b)));
}
