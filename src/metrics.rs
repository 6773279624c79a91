//! Metrics: one owned registry, registered once, served by the admin listener. Names carry
//! the `gateway_` prefix; labels are bounded (route and upstream *names*, status codes,
//! fixed reason lists), never raw paths or subjects.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::ratelimit::RateLimitMetrics;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub auth_decisions: IntCounterVec,
    pub jwks_fetches: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub jwks_last_success: IntGaugeVec,
    pub token_cache: IntCounterVec,
    token_cache_hit: IntCounter,
    token_cache_miss: IntCounter,
    pub ratelimit_decisions: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: IntGauge,
    pub ready: IntGauge,
    pub build_info: IntGaugeVec,
    pub token_cache_entries: IntGauge,
    pub ratelimit: std::sync::Arc<RateLimitMetrics>,
    /// Requests being handled now.
    pub in_flight: IntGauge,
    /// `gateway_rejections_total{route, reason}`: requests the gateway answered itself, by
    /// the bounded reason of the access log (`bad_target`, `encoded_slash`, `tls_required`, …).
    pub rejections: IntCounterVec,
    /// RFC 7662 calls by issuer and result (active, inactive, error, timeout).
    pub introspection_requests: IntCounterVec,
    /// Introspection cache lookups by issuer and result (hit, miss).
    pub introspection_cache: IntCounterVec,
    /// `gateway_report_only_denials_total{route, reason}`: requests forwarded that an enforced
    /// rule would have refused (report mode, `report_only` limits), by the same reasons.
    pub report_only_denials: IntCounterVec,
    /// `gateway_dpop_proofs_total{result}`: DPoP proofs checked, by `ok` or the refusal
    /// reason (`dpop_replay`, `dpop_htu`, …).
    pub dpop_proofs: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c);

        let requests = IntCounterVec::new(
            Opts::new(
                "gateway_requests_total",
                "Requests answered, by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        reg(Box::new(requests.clone()))?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_request_duration_seconds",
                "Time from request to the end of the response, by route",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        reg(Box::new(request_duration.clone()))?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_upstream_duration_seconds",
                "Time from choosing a peer to its response header, by upstream",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        )?;
        reg(Box::new(upstream_duration.clone()))?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_errors_total",
                "Upstream failures by upstream and kind (connect, timeout, reset, other)",
            ),
            &["upstream", "kind"],
        )?;
        reg(Box::new(upstream_errors.clone()))?;
        let auth_decisions = IntCounterVec::new(
            Opts::new(
                "gateway_auth_decisions_total",
                "Authentication and scope decisions by issuer and result",
            ),
            &["issuer", "result"],
        )?;
        reg(Box::new(auth_decisions.clone()))?;
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "gateway_jwks_fetches_total",
                "JWKS fetches by issuer and result (ok, error)",
            ),
            &["issuer", "result"],
        )?;
        reg(Box::new(jwks_fetches.clone()))?;
        let jwks_keys = IntGaugeVec::new(
            Opts::new("gateway_jwks_keys", "Usable signing keys held, by issuer"),
            &["issuer"],
        )?;
        reg(Box::new(jwks_keys.clone()))?;
        let jwks_last_success = IntGaugeVec::new(
            Opts::new(
                "gateway_jwks_last_success_timestamp_seconds",
                "Unix time of the last good JWKS fetch, by issuer",
            ),
            &["issuer"],
        )?;
        reg(Box::new(jwks_last_success.clone()))?;
        let token_cache = IntCounterVec::new(
            Opts::new(
                "gateway_token_cache_requests_total",
                "Verified-token cache lookups (hit, miss)",
            ),
            &["result"],
        )?;
        reg(Box::new(token_cache.clone()))?;
        let token_cache_hit = token_cache.with_label_values(&["hit"]);
        let token_cache_miss = token_cache.with_label_values(&["miss"]);
        let token_cache_entries = IntGauge::new(
            "gateway_token_cache_entries",
            "Verified tokens held in the cache",
        )?;
        reg(Box::new(token_cache_entries.clone()))?;
        let ratelimit_decisions = IntCounterVec::new(
            Opts::new(
                "gateway_ratelimit_decisions_total",
                "Rate-limit decisions by route and result (allowed, limited, error)",
            ),
            &["route", "result"],
        )?;
        reg(Box::new(ratelimit_decisions.clone()))?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "gateway_config_reloads_total",
                "Config reloads by result (ok, error)",
            ),
            &["result"],
        )?;
        reg(Box::new(config_reloads.clone()))?;
        // Make both series exist from the start, so alerts on increase() see the first failure.
        config_reloads.with_label_values(&["ok"]);
        config_reloads.with_label_values(&["error"]);
        let config_last_reload_success = IntGauge::new(
            "gateway_config_last_reload_success_timestamp_seconds",
            "Unix time the running config was loaded",
        )?;
        reg(Box::new(config_last_reload_success.clone()))?;
        let ready = IntGauge::new(
            "gateway_ready",
            "1 once every issuer has keys and the gateway serves",
        )?;
        reg(Box::new(ready.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new("gateway_build_info", "Build information"),
            &["version"],
        )?;
        reg(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let in_flight = IntGauge::new("gateway_requests_in_flight", "Requests being handled")?;
        reg(Box::new(in_flight.clone()))?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "gateway_rejections_total",
                "Requests answered by the gateway itself (never forwarded), by route and reason",
            ),
            &["route", "reason"],
        )?;
        reg(Box::new(rejections.clone()))?;
        let introspection_requests = IntCounterVec::new(
            Opts::new(
                "gateway_introspection_requests_total",
                "Token introspection calls (RFC 7662) by issuer and result (active, inactive, error, timeout)",
            ),
            &["issuer", "result"],
        )?;
        reg(Box::new(introspection_requests.clone()))?;
        let introspection_cache = IntCounterVec::new(
            Opts::new(
                "gateway_introspection_cache_total",
                "Introspection cache lookups by issuer and result (hit, miss)",
            ),
            &["issuer", "result"],
        )?;
        reg(Box::new(introspection_cache.clone()))?;
        let report_only_denials = IntCounterVec::new(
            Opts::new(
                "gateway_report_only_denials_total",
                "Requests forwarded that an enforced rule would have refused (report mode, report_only limits), by route and reason",
            ),
            &["route", "reason"],
        )?;
        reg(Box::new(report_only_denials.clone()))?;
        let dpop_proofs = IntCounterVec::new(
            Opts::new(
                "gateway_dpop_proofs_total",
                "DPoP proofs checked (RFC 9449), by result: ok or the refusal reason",
            ),
            &["result"],
        )?;
        reg(Box::new(dpop_proofs.clone()))?;
        let ratelimit = std::sync::Arc::new(RateLimitMetrics::new(&registry)?);
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            auth_decisions,
            jwks_fetches,
            jwks_keys,
            jwks_last_success,
            token_cache,
            token_cache_hit,
            token_cache_miss,
            ratelimit_decisions,
            config_reloads,
            config_last_reload_success,
            ready,
            build_info,
            token_cache_entries,
            ratelimit,
            in_flight,
            rejections,
            introspection_requests,
            introspection_cache,
            report_only_denials,
            dpop_proofs,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }

    pub fn token_cache(&self, hit: bool) {
        if hit {
            self.token_cache_hit.inc()
        } else {
            self.token_cache_miss.inc()
        }
    }

    pub fn jwks_fetch(&self, issuer: &str, ok: bool, keys: usize, unix: u64) {
        self.jwks_fetches
            .with_label_values(&[issuer, if ok { "ok" } else { "error" }])
            .inc();
        if ok {
            self.jwks_keys.with_label_values(&[issuer]).set(keys as i64);
            self.jwks_last_success
                .with_label_values(&[issuer])
                .set(unix as i64);
        }
    }

    /// Drop the per-issuer series of an issuer a reload removed.
    pub fn forget_issuer(&self, issuer: &str) {
        let _ = self.jwks_keys.remove_label_values(&[issuer]);
        let _ = self.jwks_last_success.remove_label_values(&[issuer]);
        for r in ["active", "inactive", "error", "timeout"] {
            let _ = self
                .introspection_requests
                .remove_label_values(&[issuer, r]);
        }
        for r in ["hit", "miss"] {
            let _ = self.introspection_cache.remove_label_values(&[issuer, r]);
        }
    }

    /// Handles of one route's series, resolved once per config instead of per request.
    /// `limited`: the route has rate limits (only then do its decision series exist).
    pub fn route_handles(&self, route: &str, limited: bool) -> RouteMetrics {
        let decisions = limited.then(|| RateLimitHandles {
            allowed: self
                .ratelimit_decisions
                .with_label_values(&[route, "allowed"]),
            limited: self
                .ratelimit_decisions
                .with_label_values(&[route, "limited"]),
            error: self
                .ratelimit_decisions
                .with_label_values(&[route, "error"]),
        });
        RouteMetrics {
            route: route.to_string(),
            duration: self.request_duration.with_label_values(&[route]),
            decisions,
            requests: parking_lot::RwLock::new(Vec::new()),
            family: self.requests.clone(),
        }
    }

    pub fn auth(&self, issuer: &str, result: &str) {
        self.auth_decisions
            .with_label_values(&[issuer, result])
            .inc();
    }
}

/// One route's metric handles. `requests` resolves each (method, status) pair once.
pub struct RouteMetrics {
    route: String,
    pub duration: prometheus::Histogram,
    /// Present when the route has rate limits.
    pub decisions: Option<RateLimitHandles>,
    requests: parking_lot::RwLock<Vec<(&'static str, u16, IntCounter)>>,
    family: IntCounterVec,
}

/// `gateway_ratelimit_decisions_total` of one route.
pub struct RateLimitHandles {
    pub allowed: IntCounter,
    pub limited: IntCounter,
    pub error: IntCounter,
}

impl RouteMetrics {
    /// Count a request answered with `status`.
    pub fn request(&self, method: &'static str, status: u16) {
        if let Some((_, _, c)) = self
            .requests
            .read()
            .iter()
            .find(|(m, s, _)| *s == status && *m == method)
        {
            c.inc();
            return;
        }
        let code = http::StatusCode::from_u16(status)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| status.to_string());
        let counter = self
            .family
            .with_label_values(&[self.route.as_str(), method, code.as_str()]);
        counter.inc();
        let mut all = self.requests.write();
        if !all.iter().any(|(m, s, _)| *s == status && *m == method) {
            all.push((method, status, counter));
        }
    }
}
