//! Metrics of step 3 (may they, right now?): how the limiter's backends behave. Decisions by
//! route and result are counted by the caller (it knows the route and what it answered); this
//! file owns what only the limiter sees: backend errors and latency, fallbacks to the local
//! limiter, the number of keys the memory backend holds, and new keys it had no room for.
//!
//! Registered once into the registry the admin app serves (no global registry).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Latency buckets of a backend call, 50µs to 1s.
const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// The limiter's Prometheus handles.
#[derive(Clone, Debug)]
pub struct RateLimitMetrics {
    /// `gateway_ratelimit_backend_errors_total{backend}`: decisions the backend could not make
    /// (error, timeout, or backend marked down after a recent failure).
    pub backend_errors: IntCounterVec,
    /// `gateway_ratelimit_backend_duration_seconds{backend}`: duration of each call to a remote
    /// backend (Redis), successful or not.
    pub backend_duration: HistogramVec,
    /// `gateway_ratelimit_fallbacks_total`: decisions made by the local limiter because Redis
    /// failed and `on_backend_error` is fail-open.
    pub fallbacks: IntCounter,
    /// `gateway_ratelimit_keys`: keys held by the in-process limiter (memory backend, or the
    /// local fallback of the Redis backend).
    pub keys: IntGauge,
    /// `gateway_ratelimit_store_full_total{route}`: requests of a new key the in-process limiter
    /// had no room for (full of keys whose windows still count), decided by `on_backend_error`.
    pub store_full: IntCounterVec,
    // Pre-resolved label values: the hot path does no label lookup.
    pub(crate) redis_errors: IntCounter,
    pub(crate) redis_duration: Histogram,
}

impl RateLimitMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let backend_errors = IntCounterVec::new(
            Opts::new(
                "gateway_ratelimit_backend_errors_total",
                "Rate-limit decisions the backend could not make (error, timeout, backend down)",
            ),
            &["backend"],
        )?;
        let backend_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_ratelimit_backend_duration_seconds",
                "Duration of each rate-limit backend call",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["backend"],
        )?;
        let fallbacks = IntCounter::with_opts(Opts::new(
            "gateway_ratelimit_fallbacks_total",
            "Rate-limit decisions made by the local limiter because Redis failed (fail_open)",
        ))?;
        let keys = IntGauge::with_opts(Opts::new(
            "gateway_ratelimit_keys",
            "Keys held by the in-process rate limiter",
        ))?;
        registry.register(Box::new(backend_errors.clone()))?;
        registry.register(Box::new(backend_duration.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(keys.clone()))?;
        let store_full = IntCounterVec::new(
            Opts::new(
                "gateway_ratelimit_store_full_total",
                "Requests of a new key the in-process rate limiter had no room for \
                 (decided by on_backend_error)",
            ),
            &["route"],
        )?;
        registry.register(Box::new(store_full.clone()))?;
        let redis_errors = backend_errors.get_metric_with_label_values(&["redis"])?;
        let redis_duration = backend_duration.get_metric_with_label_values(&["redis"])?;
        Ok(Self {
            backend_errors,
            backend_duration,
            fallbacks,
            keys,
            store_full,
            redis_errors,
            redis_duration,
        })
    }

    /// Sets the keys gauge, writing only when it changed (the gauge is shared by every thread
    /// on the hot path; an unconditional store would bounce its cache line between cores).
    pub(crate) fn set_keys(&self, n: u64) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        if self.keys.get() != n {
            self.keys.set(n);
        }
    }

    /// Counts a new key of route `route` that found the store full (rare: a label lookup).
    pub(crate) fn store_full(&self, route: &str) {
        self.store_full.with_label_values(&[route]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_new_registers_every_family() {
        let registry = Registry::new();
        let m = RateLimitMetrics::new(&registry).expect("fresh registry");
        m.redis_errors.inc();
        m.redis_duration.observe(0.001);
        m.fallbacks.inc();
        m.set_keys(3);
        m.store_full("route");
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        for want in [
            "gateway_ratelimit_backend_errors_total",
            "gateway_ratelimit_backend_duration_seconds",
            "gateway_ratelimit_fallbacks_total",
            "gateway_ratelimit_keys",
            "gateway_ratelimit_store_full_total",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
    }

    #[test]
    fn metrics_new_twice_on_one_registry_is_error() {
        let registry = Registry::new();
        let _m = RateLimitMetrics::new(&registry).expect("fresh registry");
        assert!(RateLimitMetrics::new(&registry).is_err());
    }
}
