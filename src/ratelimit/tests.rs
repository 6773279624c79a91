//! Tests of the limiter through its public API: the memory backend on a manual clock (exact
//! arithmetic), then the Redis backend against a real `redis-server` (see `test_redis.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::test_redis::{free_port, RedisServer};
use super::*;

fn spec(requests: u32, period_ms: u64) -> LimitSpec {
    LimitSpec {
        requests,
        period: Duration::from_millis(period_ms),
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn metrics() -> Arc<RateLimitMetrics> {
    Arc::new(RateLimitMetrics::new(&prometheus::Registry::new()).expect("fresh registry"))
}

fn memory_limiter(clock: &Arc<ManualClock>) -> (RateLimiter, Arc<RateLimitMetrics>) {
    let m = metrics();
    let clock: Arc<dyn Clock> = clock.clone();
    let l = RateLimiter::with_clock(RateLimiterConfig::default(), Arc::clone(&m), clock)
        .expect("memory limiter");
    (l, m)
}

async fn decide(l: &RateLimiter, limits: &[LimitSpec], key: &str) -> Decision {
    l.check("route", limits, key).await.expect("decision")
}

// ---------------------------------------------------------------- memory backend, manual clock

#[tokio::test]
async fn memory_limit_admits_exactly_n_then_rejects() {
    let clock = Arc::new(ManualClock::new(1_000));
    let (l, _) = memory_limiter(&clock);
    let limits = [spec(5, 1_000)];
    for i in 0..5u32 {
        clock.advance(ms(10));
        let d = decide(&l, &limits, "sub:alice").await;
        assert!(d.allowed, "request {i}");
        assert_eq!(d.remaining, 4 - i);
        assert_eq!(d.limit, 5);
        assert_eq!(d.period, ms(1_000));
        assert_eq!(
            d.reset,
            ms(1_000 - 10 * u64::from(i)),
            "oldest admitted at +10"
        );
        assert_eq!(d.retry_after, None);
    }
    let d = decide(&l, &limits, "sub:alice").await;
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    assert_eq!(d.limit, 5);
    assert_eq!(
        d.retry_after,
        Some(ms(960)),
        "first admitted at t=1010 frees at 2010"
    );
}

#[tokio::test]
async fn memory_rejected_requests_consume_nothing() {
    let clock = Arc::new(ManualClock::new(0));
    let (l, _) = memory_limiter(&clock);
    let limits = [spec(2, 1_000)];
    assert!(decide(&l, &limits, "k").await.allowed);
    assert!(decide(&l, &limits, "k").await.allowed);
    for _ in 0..999 {
        clock.advance(ms(1));
        assert!(!decide(&l, &limits, "k").await.allowed);
    }
    clock.advance(ms(1)); // t = 1000: both admissions of t = 0 leave the window
    assert!(decide(&l, &limits, "k").await.allowed);
    assert!(decide(&l, &limits, "k").await.allowed);
    assert!(!decide(&l, &limits, "k").await.allowed);
}

#[tokio::test]
async fn memory_window_slides_without_boundary_burst() {
    let clock = Arc::new(ManualClock::new(0));
    let (l, _) = memory_limiter(&clock);
    let limits = [spec(10, 10_000)];
    // 4 early in the window, 6 at 0.9 P: the window is full
    for _ in 0..4 {
        assert!(decide(&l, &limits, "k").await.allowed);
    }
    clock.set(9_000);
    for _ in 0..6 {
        assert!(decide(&l, &limits, "k").await.allowed);
    }
    assert!(!decide(&l, &limits, "k").await.allowed);
    // 1.1 P: only the 4 older than P have left; a fixed window would admit 10 here
    clock.set(11_000);
    let mut admitted = 0;
    for _ in 0..20 {
        if decide(&l, &limits, "k").await.allowed {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 4);
    let d = decide(&l, &limits, "k").await;
    assert_eq!(
        d.retry_after,
        Some(ms(8_000)),
        "the 6 of t=9000 free at 19000"
    );
}

/// Exactness both ways on an irregular arrival pattern: no window of length P ever holds more
/// than N admissions, and every rejection happened with a full window.
#[tokio::test]
async fn memory_random_arrivals_never_exceed_n_in_any_window() {
    let clock = Arc::new(ManualClock::new(0));
    let (l, _) = memory_limiter(&clock);
    let (n, p) = (7usize, 1_000u64);
    let limits = [spec(n as u32, p)];
    let mut admitted: Vec<u64> = Vec::new();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut t = 0u64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        t += seed % 120; // bursts (0 ms gaps) and pauses
        clock.set(t);
        let in_window = admitted.iter().filter(|&&a| a + p > t).count();
        let d = decide(&l, &limits, "k").await;
        assert_eq!(d.allowed, in_window < n, "t={t} in_window={in_window}");
        if d.allowed {
            admitted.push(t);
        } else {
            let oldest_needed = admitted[admitted.len() - n];
            assert_eq!(d.retry_after, Some(ms(oldest_needed + p - t)));
        }
    }
    for (i, &a) in admitted.iter().enumerate() {
        let in_window = admitted[i..].iter().take_while(|&&b| b < a + p).count();
        assert!(in_window <= n);
    }
}

#[tokio::test]
async fn memory_retry_after_is_exact_time_until_slot_frees() {
    let clock = Arc::new(ManualClock::new(0));
    let (l, _) = memory_limiter(&clock);
    let limits = [spec(3, 1_000)];
    for t in [0, 200, 400] {
        clock.set(t);
        assert!(decide(&l, &limits, "k").await.allowed);
    }
    clock.set(500);
    let d = decide(&l, &limits, "k").await;
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(ms(500)));
    assert_eq!(d.reset, ms(500));
    clock.set(999);
    assert_eq!(decide(&l, &limits, "k").await.retry_after, Some(ms(1)));
    clock.set(1_000);
    let d = decide(&l, &limits, "k").await;
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    assert_eq!(d.reset, ms(200), "oldest in window is now t=200");
}

#[tokio::test]
async fn memory_multiple_limits_all_must_admit_and_most_constraining_reported() {
    let clock = Arc::new(ManualClock::new(0));
    let (l, _) = memory_limiter(&clock);
    let limits = [spec(3, 1_000), spec(5, 10_000)];
    for want_remaining in [2, 1, 0] {
        let d = decide(&l, &limits, "k").await;
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (3, want_remaining));
    }
    let d = decide(&l, &limits, "k").await;
    assert!(!d.allowed);
    assert_eq!((d.limit, d.period), (3, ms(1_000)));
    assert_eq!(d.retry_after, Some(ms(1_000)));

    clock.set(1_000);
    let d = decide(&l, &limits, "k").await;
    assert!(d.allowed);
    assert_eq!(
        (d.limit, d.remaining),
        (5, 1),
        "10 s limit has fewer left than 1 s"
    );
    assert!(decide(&l, &limits, "k").await.allowed);
    let d = decide(&l, &limits, "k").await;
    assert!(!d.allowed, "5 in 10 s");
    assert_eq!((d.limit, d.period, d.remaining), (5, ms(10_000), 0));
    assert_eq!(
        d.retry_after,
        Some(ms(9_000)),
        "the t=0 ones leave at 10000"
    );

    // rejected requests were recorded in neither limit: at 10 s, three slots free in both
    clock.set(10_000);
    for _ in 0..3 {
        assert!(decide(&l, &limits, "k").await.allowed);
    }
    assert!(!decide(&l, &limits, "k").await.allowed);
}

#[tokio::test]
async fn memory_two_rejecting_limits_retry_after_is_the_later() {
    let clock = Arc::new(ManualClock::new(0));
    let (l, _) = memory_limiter(&clock);
    let limits = [spec(1, 1_000), spec(2, 10_000)];
    assert!(decide(&l, &limits, "k").await.allowed);
    clock.set(500);
    let d = decide(&l, &limits, "k").await;
    assert_eq!(
        (d.allowed, d.limit, d.retry_after),
        (false, 1, Some(ms(500)))
    );
    clock.set(1_000);
    assert!(decide(&l, &limits, "k").await.allowed);
    clock.set(1_500);
    let d = decide(&l, &limits, "k").await;
    assert!(!d.allowed);
    assert_eq!((d.limit, d.period), (2, ms(10_000)));
    assert_eq!(
        d.retry_after,
        Some(ms(8_500)),
        "max(500 for 1 s, 8500 for 10 s)"
    );
}

#[tokio::test]
async fn memory_different_keys_and_routes_are_independent() {
    let clock = Arc::new(ManualClock::new(0));
    let (l, m) = memory_limiter(&clock);
    let limits = [spec(1, 60_000)];
    assert!(
        l.check("a", &limits, "ip:1.2.3.4")
            .await
            .expect("ok")
            .allowed
    );
    assert!(
        !l.check("a", &limits, "ip:1.2.3.4")
            .await
            .expect("ok")
            .allowed
    );
    assert!(
        l.check("a", &limits, "ip:1.2.3.5")
            .await
            .expect("ok")
            .allowed
    );
    assert!(
        l.check("b", &limits, "ip:1.2.3.4")
            .await
            .expect("ok")
            .allowed
    );
    // the (route, key) boundary is unambiguous
    assert!(l.check("ab", &limits, "c").await.expect("ok").allowed);
    assert!(l.check("a", &limits, "bc").await.expect("ok").allowed);
    assert_eq!(m.keys.get(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_checks_on_one_key_admit_exactly_n() {
    let clock = Arc::new(ManualClock::new(0));
    let (l, _) = memory_limiter(&clock);
    let l = Arc::new(l);
    let limits = Arc::new([spec(1_000, 3_600_000)]);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (l, limits) = (Arc::clone(&l), Arc::clone(&limits));
            tokio::spawn(async move {
                let mut admitted = 0u32;
                for _ in 0..100 {
                    if decide(&l, &limits[..], "hot").await.allowed {
                        admitted += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    assert_eq!(total, 1_000);
}

#[tokio::test]
async fn memory_idle_keys_expire_and_gauge_follows() {
    let clock = Arc::new(ManualClock::new(0));
    let (l, m) = memory_limiter(&clock);
    for i in 0..100 {
        decide(&l, &[spec(1, 1_000)], &format!("k{i}")).await;
    }
    assert_eq!(m.keys.get(), 100);
    clock.set(60_000); // idle far past their period
                       // requests passing by take the sweep steps, one shard each, every shard within 10 s
    for _ in 0..100 {
        clock.advance(ms(200));
        decide(&l, &[spec(1, 1_000)], "new").await;
    }
    assert_eq!(m.keys.get(), 1);
}

#[tokio::test]
async fn memory_max_keys_bounds_the_store() {
    let clock = Arc::new(ManualClock::new(0));
    let m = metrics();
    let cfg = RateLimiterConfig {
        memory_max_keys: 50,
        ..RateLimiterConfig::default()
    };
    let l = RateLimiter::with_clock(cfg, Arc::clone(&m), clock).expect("limiter");
    for i in 0..500 {
        decide(&l, &[spec(1, 60_000)], &format!("k{i}")).await;
        assert!(m.keys.get() <= 50);
    }
}

fn full_store_limiter(
    clock: &Arc<ManualClock>,
    on_backend_error: OnBackendError,
) -> (RateLimiter, Arc<RateLimitMetrics>) {
    let m = metrics();
    let cfg = RateLimiterConfig {
        memory_max_keys: 50,
        on_backend_error,
        ..RateLimiterConfig::default()
    };
    let clock: Arc<dyn Clock> = clock.clone();
    let l = RateLimiter::with_clock(cfg, Arc::clone(&m), clock).expect("limiter");
    (l, m)
}

#[tokio::test]
async fn memory_store_full_fail_closed_refuses_new_keys_and_keeps_limited_ones() {
    let clock = Arc::new(ManualClock::new(0));
    let (l, m) = full_store_limiter(&clock, OnBackendError::FailClosed);
    let limits = [spec(2, 60_000)];
    for _ in 0..2 {
        assert!(decide(&l, &limits, "victim").await.allowed);
    }
    assert!(!decide(&l, &limits, "victim").await.allowed);
    let mut refused = 0;
    for i in 0..500 {
        clock.advance(ms(10));
        match l.check("route", &limits, &format!("k{i}")).await {
            Ok(d) => assert!(d.allowed),
            Err(RateLimitError::BackendUnavailable(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused >= 450, "{refused}");
    assert!(
        !decide(&l, &limits, "victim").await.allowed,
        "still limited"
    );
    assert_eq!(
        m.store_full.with_label_values(&["route"]).get(),
        refused as u64
    );
    assert!(m.keys.get() <= 50);
}

#[tokio::test]
async fn memory_store_full_fail_open_admits_new_keys_unstored_and_keeps_limited_ones() {
    let clock = Arc::new(ManualClock::new(0));
    let (l, m) = full_store_limiter(&clock, OnBackendError::FailOpen);
    let limits = [spec(2, 60_000)];
    for _ in 0..2 {
        assert!(decide(&l, &limits, "victim").await.allowed);
    }
    for i in 0..500 {
        clock.advance(ms(10));
        let d = decide(&l, &limits, &format!("k{i}")).await;
        assert!(d.allowed);
        assert_eq!(d.remaining, 1, "every new key gets a fresh key's headers");
    }
    assert!(
        !decide(&l, &limits, "victim").await.allowed,
        "still limited"
    );
    assert!(m.store_full.with_label_values(&["route"]).get() >= 450);
    assert!(m.keys.get() <= 50);
    // Once the first keys' windows are over, new keys are stored (and limited) again.
    clock.advance(ms(60_000));
    for _ in 0..2 {
        assert!(decide(&l, &limits, "late").await.allowed);
    }
    assert!(!decide(&l, &limits, "late").await.allowed);
}

#[tokio::test]
async fn check_invalid_limits_is_invalid_config() {
    let clock = Arc::new(ManualClock::new(0));
    let (l, _) = memory_limiter(&clock);
    for limits in [
        vec![],
        vec![spec(0, 1_000)],
        vec![spec(1, 0)],
        vec![spec(1, 1_000), spec(1, 30 * 24 * 3_600_000)],
    ] {
        let r = l.check("r", &limits, "k").await;
        assert!(
            matches!(r, Err(RateLimitError::InvalidConfig(_))),
            "{limits:?}: {r:?}"
        );
        assert!(RateLimiter::validate_limits(&limits).is_err());
    }
    assert!(RateLimiter::validate_limits(&[spec(20, 60_000), spec(200, 3_600_000)]).is_ok());
}

#[test]
fn check_future_is_send_and_limiter_is_sync() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RateLimiter>();
    let l = RateLimiter::new(RateLimiterConfig::default(), metrics()).expect("limiter");
    let limits = [spec(1, 1)];
    let fut = l.check("r", &limits, "k");
    assert_send(&fut);
}

#[test]
fn backend_name_names_configured_backend() {
    let l = RateLimiter::new(RateLimiterConfig::default(), metrics()).expect("limiter");
    assert_eq!(l.backend_name(), "memory");
    let l =
        RateLimiter::new(redis_config("redis://127.0.0.1:1/", 1_000), metrics()).expect("limiter");
    assert_eq!(l.backend_name(), "redis");
}

#[test]
fn backend_debug_hides_redis_password() {
    let cfg = redis_config("redis://user:hunter2@127.0.0.1:6379/0", 100);
    let s = format!("{cfg:?}");
    assert!(!s.contains("hunter2"), "{s}");
    assert!(s.contains("user:***@127.0.0.1:6379"), "{s}");
}

#[test]
fn new_invalid_settings_are_invalid_config() {
    let bad = [
        RateLimiterConfig {
            memory_max_keys: 0,
            ..RateLimiterConfig::default()
        },
        redis_cfg_with(|pool, _, _| *pool = 0),
        redis_cfg_with(|_, timeout, _| *timeout = Duration::ZERO),
        redis_cfg_with(|_, _, prefix| *prefix = "a{b".into()),
        redis_config("http://:pw@nope", 100),
    ];
    for cfg in bad {
        let r = RateLimiter::new(cfg.clone(), metrics());
        match r {
            Err(RateLimitError::InvalidConfig(msg)) => assert!(!msg.contains("pw@"), "{msg}"),
            Err(e) => panic!("{cfg:?}: {e}"),
            Ok(_) => panic!("{cfg:?} accepted"),
        }
    }
}

/// Construction does no I/O and needs no runtime, even when Redis is not there.
#[test]
fn new_redis_unreachable_builds_without_runtime_or_delay() {
    let started = Instant::now();
    let port = free_port();
    let l = RateLimiter::new(
        redis_config(&format!("redis://127.0.0.1:{port}/"), 5_000),
        metrics(),
    );
    assert!(l.is_ok());
    assert!(started.elapsed() < Duration::from_millis(200));
}

// ---------------------------------------------------------------- redis backend, real server

fn redis_config(url: &str, timeout_ms: u64) -> RateLimiterConfig {
    RateLimiterConfig {
        backend: Backend::Redis {
            url: url.to_owned(),
            pool_size: 2,
            timeout: ms(timeout_ms),
            key_prefix: "wtgw".into(),
        },
        on_backend_error: OnBackendError::FailOpen,
        memory_max_keys: 10_000,
    }
}

fn redis_cfg_with(edit: impl FnOnce(&mut usize, &mut Duration, &mut String)) -> RateLimiterConfig {
    let mut cfg = redis_config("redis://127.0.0.1:6379/", 100);
    if let Backend::Redis {
        pool_size,
        timeout,
        key_prefix,
        ..
    } = &mut cfg.backend
    {
        edit(pool_size, timeout, key_prefix);
    }
    cfg
}

fn redis_limiter(
    url: &str,
    on_error: OnBackendError,
    timeout_ms: u64,
) -> (RateLimiter, Arc<RateLimitMetrics>) {
    let m = metrics();
    let cfg = RateLimiterConfig {
        on_backend_error: on_error,
        ..redis_config(url, timeout_ms)
    };
    (
        RateLimiter::new(cfg, Arc::clone(&m)).expect("redis limiter"),
        m,
    )
}

fn redis_calls(m: &RateLimitMetrics) -> u64 {
    m.redis_duration.get_sample_count()
}

/// Polls until a decision comes from Redis again (no backend error), or panics after 10 s.
async fn wait_for_redis(l: &RateLimiter, m: &RateLimitMetrics, limits: &[LimitSpec]) -> Decision {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let errors = m.redis_errors.get();
        let r = l.check("route", limits, "probe").await;
        if m.redis_errors.get() == errors {
            return r.expect("decision from redis");
        }
        assert!(Instant::now() < deadline, "redis decisions did not resume");
        tokio::time::sleep(ms(50)).await;
    }
}

#[tokio::test]
async fn redis_limit_admits_exactly_n_then_rejects() {
    let redis = RedisServer::start();
    let (l, m) = redis_limiter(&redis.url(), OnBackendError::FailClosed, 1_000);
    let limits = [spec(5, 10_000)];
    for i in 0..5u32 {
        let d = decide(&l, &limits, "sub:alice").await;
        assert!(d.allowed, "request {i}");
        assert_eq!((d.limit, d.remaining), (5, 4 - i));
        assert!(
            d.reset > ms(9_000) && d.reset <= ms(10_000),
            "{:?}",
            d.reset
        );
    }
    for _ in 0..3 {
        let d = decide(&l, &limits, "sub:alice").await;
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        let retry = d.retry_after.expect("retry_after on rejection");
        assert!(retry > ms(9_000) && retry <= ms(10_000), "{retry:?}");
    }
    assert!(
        decide(&l, &limits, "sub:bob").await.allowed,
        "other key unaffected"
    );
    assert!(
        l.check("other-route", &limits, "sub:alice")
            .await
            .expect("ok")
            .allowed
    );
    assert_eq!(m.redis_errors.get(), 0);
    assert_eq!(m.fallbacks.get(), 0);
    assert_eq!(redis_calls(&m), 10);
}

#[tokio::test]
async fn redis_window_slides_and_frees_after_period() {
    let redis = RedisServer::start();
    let (l, m) = redis_limiter(&redis.url(), OnBackendError::FailClosed, 1_000);
    let limits = [spec(2, 2_000)];
    assert!(decide(&l, &limits, "k").await.allowed);
    tokio::time::sleep(ms(1_000)).await;
    assert!(decide(&l, &limits, "k").await.allowed);
    let d = decide(&l, &limits, "k").await;
    assert!(!d.allowed);
    let retry = d.retry_after.expect("retry");
    assert!(retry <= ms(1_000) && retry > ms(0), "{retry:?}");
    tokio::time::sleep(retry + ms(20)).await;
    // only the first one left the window
    assert!(decide(&l, &limits, "k").await.allowed);
    assert!(!decide(&l, &limits, "k").await.allowed);
    assert_eq!(m.redis_errors.get(), 0);
}

#[tokio::test]
async fn redis_multiple_limits_all_must_admit() {
    let redis = RedisServer::start();
    let (l, _) = redis_limiter(&redis.url(), OnBackendError::FailClosed, 1_000);
    let limits = [spec(2, 1_000), spec(3, 10_000)];
    assert!(decide(&l, &limits, "k").await.allowed);
    let d = decide(&l, &limits, "k").await;
    assert!(d.allowed);
    assert_eq!((d.limit, d.remaining), (2, 0));
    let d = decide(&l, &limits, "k").await;
    assert!(!d.allowed);
    assert_eq!((d.limit, d.period), (2, ms(1_000)));
    tokio::time::sleep(d.retry_after.expect("retry") + ms(20)).await;
    let d = decide(&l, &limits, "k").await;
    assert!(d.allowed);
    assert_eq!((d.limit, d.remaining), (3, 0));
    let d = decide(&l, &limits, "k").await;
    assert!(!d.allowed);
    assert_eq!((d.limit, d.period), (3, ms(10_000)));
    let retry = d.retry_after.expect("retry");
    assert!(retry > ms(8_000) && retry <= ms(10_000), "{retry:?}");
}

#[tokio::test]
async fn redis_two_limiters_sharing_redis_admit_n_in_total() {
    let redis = RedisServer::start();
    let (a, _) = redis_limiter(&redis.url(), OnBackendError::FailClosed, 1_000);
    let (b, _) = redis_limiter(&redis.url(), OnBackendError::FailClosed, 1_000);
    let (a, b) = (Arc::new(a), Arc::new(b));
    let limits = Arc::new([spec(10, 60_000)]);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let l = if i % 2 == 0 {
                Arc::clone(&a)
            } else {
                Arc::clone(&b)
            };
            let limits = Arc::clone(&limits);
            tokio::spawn(async move { decide(&l, &limits[..], "client_id:web").await.allowed })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if t.await.expect("task") {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_concurrent_checks_on_one_key_admit_exactly_n() {
    let redis = RedisServer::start();
    let (l, m) = redis_limiter(&redis.url(), OnBackendError::FailClosed, 2_000);
    let l = Arc::new(l);
    let limits = Arc::new([spec(25, 60_000)]);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (l, limits) = (Arc::clone(&l), Arc::clone(&limits));
            tokio::spawn(async move { decide(&l, &limits[..], "hot").await.allowed })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if t.await.expect("task") {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 25);
    assert_eq!(m.redis_errors.get(), 0);
}

#[tokio::test]
async fn redis_killed_fail_open_falls_back_then_recovers() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let (l, m) = redis_limiter(&redis.url(), OnBackendError::FailOpen, 300);
    let limits = [spec(3, 60_000)];
    assert!(decide(&l, &limits, "k").await.allowed);
    assert_eq!(m.fallbacks.get(), 0);

    redis.kill();
    for i in 0..5 {
        let started = Instant::now();
        let d = decide(&l, &limits, "k").await;
        assert!(started.elapsed() < Duration::from_secs(1));
        // the local limiter starts empty: 3 admitted, then rejected
        assert_eq!(d.allowed, i < 3, "fallback decision {i}");
    }
    assert_eq!(m.fallbacks.get(), 5);
    assert_eq!(m.redis_errors.get(), 5);

    let _redis = RedisServer::start_on(port);
    let d = wait_for_redis(&l, &m, &limits).await;
    assert!(d.allowed, "fresh redis has no history for the probe key");
    let fallbacks = m.fallbacks.get();
    assert!(
        decide(&l, &limits, "k").await.allowed,
        "fresh redis, fresh log"
    );
    assert_eq!(m.fallbacks.get(), fallbacks);
}

#[tokio::test]
async fn redis_killed_fail_closed_is_unavailable_then_recovers() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let (l, m) = redis_limiter(&redis.url(), OnBackendError::FailClosed, 300);
    let limits = [spec(3, 60_000)];
    assert!(decide(&l, &limits, "k").await.allowed);
    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let r = l.check("route", &limits, "k").await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            matches!(&r, Err(RateLimitError::BackendUnavailable(msg)) if msg.contains(&format!("127.0.0.1:{port}"))),
            "{r:?}"
        );
    }
    assert_eq!(m.fallbacks.get(), 0);
    assert_eq!(m.redis_errors.get(), 3);
    let _redis = RedisServer::start_on(port);
    assert!(wait_for_redis(&l, &m, &limits).await.allowed);
}

#[tokio::test]
async fn redis_paused_check_returns_within_timeout_then_recovers() {
    let redis = RedisServer::start();
    let (l, m) = redis_limiter(&redis.url(), OnBackendError::FailClosed, 100);
    let limits = [spec(100, 60_000)];
    // warm both pooled connections
    assert!(decide(&l, &limits, "k").await.allowed);
    assert!(decide(&l, &limits, "k").await.allowed);

    redis.pause();
    for _ in 0..4 {
        let started = Instant::now();
        let r = l.check("route", &limits, "k").await;
        let took = started.elapsed();
        assert!(
            matches!(r, Err(RateLimitError::BackendUnavailable(_))),
            "{r:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "took {took:?} with a 100 ms timeout"
        );
    }
    redis.resume();
    let d = wait_for_redis(&l, &m, &limits).await;
    assert!(d.allowed);
}

#[tokio::test]
async fn redis_paused_fail_open_decides_locally_within_timeout() {
    let redis = RedisServer::start();
    let (l, m) = redis_limiter(&redis.url(), OnBackendError::FailOpen, 100);
    let limits = [spec(100, 60_000)];
    assert!(decide(&l, &limits, "k").await.allowed);
    redis.pause();
    let started = Instant::now();
    for _ in 0..10 {
        assert!(decide(&l, &limits, "k").await.allowed);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "10 decisions took {took:?}");
    assert_eq!(m.fallbacks.get(), 10);
    redis.resume();
    wait_for_redis(&l, &m, &limits).await;
}

/// Redis down when the gateway starts: decisions fail (fail-closed) until it comes up, then
/// go to Redis without a restart.
#[tokio::test]
async fn redis_absent_at_start_connects_when_it_appears() {
    let port = free_port();
    let (l, m) = redis_limiter(
        &format!("redis://127.0.0.1:{port}/"),
        OnBackendError::FailClosed,
        200,
    );
    let limits = [spec(1, 60_000)];
    let r = l.check("route", &limits, "k").await;
    assert!(
        matches!(r, Err(RateLimitError::BackendUnavailable(_))),
        "{r:?}"
    );
    let _redis = RedisServer::start_on(port);
    assert!(wait_for_redis(&l, &m, &limits).await.allowed);
    assert!(
        !decide(&l, &limits, "probe").await.allowed,
        "the probe key is at 1/1"
    );
}

#[tokio::test]
async fn redis_unreachable_error_hides_password() {
    let port = free_port();
    let (l, _) = redis_limiter(
        &format!("redis://:s3cr3t-pw@127.0.0.1:{port}/"),
        OnBackendError::FailClosed,
        200,
    );
    let r = l.check("route", &[spec(1, 1_000)], "k").await;
    match r {
        Err(RateLimitError::BackendUnavailable(msg)) => {
            assert!(!msg.contains("s3cr3t"), "{msg}");
            assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- peek: look without counting

/// Peeks answer what the next request would get, and never count: after any number of them
/// the key still admits exactly its limit.
async fn assert_peek_counts_nothing(l: &RateLimiter) {
    let limits = [spec(3, 60_000)];
    let p = l.peek("route", &limits, "sub:p").await.expect("peek");
    assert!(p.allowed);
    assert_eq!((p.limit, p.remaining), (3, 2), "as if it were the first");
    for _ in 0..10 {
        assert!(l.peek("route", &limits, "sub:p").await.unwrap().allowed);
    }
    for i in 0..3u32 {
        let d = decide(l, &limits, "sub:p").await;
        assert!(d.allowed, "request {i} after the peeks");
        let p = l.peek("route", &limits, "sub:p").await.unwrap();
        assert_eq!(p.allowed, i < 2, "peek after request {i}");
        assert_eq!(p.remaining, 1u32.saturating_sub(i));
    }
    let p = l.peek("route", &limits, "sub:p").await.unwrap();
    assert!(!p.allowed && p.retry_after.is_some());
    assert!(!decide(l, &limits, "sub:p").await.allowed);
}

#[tokio::test]
async fn memory_peek_answers_like_check_and_counts_nothing() {
    let clock = Arc::new(ManualClock::new(1_000));
    let (l, _) = memory_limiter(&clock);
    assert_peek_counts_nothing(&l).await;
}

#[tokio::test]
async fn redis_peek_answers_like_check_and_counts_nothing() {
    let redis = RedisServer::start();
    let (l, m) = redis_limiter(&redis.url(), OnBackendError::FailClosed, 1_000);
    assert_peek_counts_nothing(&l).await;
    assert_eq!(m.redis_errors.get(), 0);
}
