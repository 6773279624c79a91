//! The runtime the request path reads: routes, authenticator, upstreams and limiter built
//! from one validated config. A `Snapshot` is swapped atomically on reload; a request keeps
//! the snapshot it started with. Issuers whose config did not change are carried over with
//! their keys, and so is the limiter when its settings did not change.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::{Authenticator, Issuer};
use crate::config::{GatewayConfig, RouteConfig};
use crate::metrics::{Metrics, RouteMetrics};
use crate::policy::{Route, RouteTable};
use crate::ratelimit::{RateLimitError, RateLimiter};
use crate::upstream::Upstream;

/// Entries of the verified-token cache.
pub(crate) const TOKEN_CACHE_CAPACITY: u64 = 200_000;
/// DPoP proofs remembered per process (LRU beyond it): 1,000,000 is over 16,000 proofs a second
/// for the default 70 s window.
pub(crate) const DPOP_REPLAY_CAPACITY: u64 = 1_000_000;

pub struct Snapshot {
    pub config: GatewayConfig,
    /// Metric handles per route (by `Route::index`), plus `no_route` for unmatched requests.
    pub route_metrics: Vec<RouteMetrics>,
    pub no_route_metrics: RouteMetrics,
    /// `gateway_upstream_duration_seconds` per upstream (by index).
    pub upstream_durations: Vec<prometheus::Histogram>,
    /// `gateway_auth_decisions_total{result="ok"}` per issuer (by index).
    pub auth_ok: Vec<prometheus::IntCounter>,
    pub routes: RouteTable,
    pub auth: Authenticator,
    pub upstreams: Vec<Arc<Upstream>>,
    pub limiter: Arc<RateLimiter>,
    /// DPoP proofs seen (their `jti`), kept across reloads while the window is unchanged.
    pub(crate) dpop_replay: Arc<crate::auth::dpop::ReplayCache>,
}

pub(crate) type SharedState = Arc<ArcSwap<Snapshot>>;

impl Snapshot {
    /// Build from a validated config, reusing what `previous` has for unchanged parts.
    pub fn build(
        config: GatewayConfig,
        previous: Option<&Snapshot>,
        http: &reqwest::Client,
        metrics: &Arc<Metrics>,
    ) -> Result<Snapshot, RateLimitError> {
        let mut old_issuers: HashMap<&str, &Arc<Issuer>> = HashMap::new();
        if let Some(prev) = previous {
            for i in prev.auth.issuers() {
                old_issuers.insert(i.name(), i);
            }
        }
        let issuers: Vec<Arc<Issuer>> = config
            .issuers
            .iter()
            .map(|cfg| match old_issuers.get(cfg.name.as_str()) {
                Some(old) if old.cfg == *cfg => Arc::clone(old),
                Some(old) => Arc::new(Issuer::successor(
                    cfg.clone(),
                    old,
                    http.clone(),
                    metrics.clone(),
                )),
                None => Arc::new(Issuer::new(cfg.clone(), http.clone(), metrics.clone())),
            })
            .collect();
        let auth = Authenticator::new(
            issuers,
            TOKEN_CACHE_CAPACITY,
            metrics.clone(),
            previous.map(|p| &p.auth),
        );

        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| Arc::new(Upstream::new(u)))
            .collect();
        let index: HashMap<&str, usize> = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        let routes = RouteTable::new(
            config
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    route_from_config(r, i, index.get(r.upstream.as_str()).copied().unwrap_or(0))
                })
                .collect(),
        );
        let route_metrics = routes
            .iter()
            .map(|r| metrics.route_handles(&r.name, !r.limits.is_empty()))
            .collect();
        let no_route_metrics = metrics.route_handles("_none", false);
        let upstream_durations = upstreams
            .iter()
            .map(|u| {
                metrics
                    .upstream_duration
                    .with_label_values(&[u.name.as_str()])
            })
            .collect();
        let auth_ok = auth
            .issuers()
            .iter()
            .map(|i| metrics.auth_decisions.with_label_values(&[i.name(), "ok"]))
            .collect();

        let limiter = match previous {
            Some(prev) if prev.config.rate_limit == config.rate_limit => prev.limiter.clone(),
            _ => Arc::new(RateLimiter::new(
                config.rate_limit.clone(),
                metrics.ratelimit.clone(),
            )?),
        };
        let window = config.server.dpop.replay_window();
        let dpop_replay = match previous {
            Some(prev) if prev.dpop_replay.window() == window => prev.dpop_replay.clone(),
            _ => Arc::new(crate::auth::dpop::ReplayCache::new(
                DPOP_REPLAY_CAPACITY,
                window,
            )),
        };
        Ok(Snapshot {
            dpop_replay,
            config,
            route_metrics,
            no_route_metrics,
            upstream_durations,
            auth_ok,
            routes,
            auth,
            upstreams,
            limiter,
        })
    }

    /// For offline front doors (route-table tests, `explain`): the same snapshot, but the
    /// limiter is always in memory (no Redis) and reads `clock`, and no key is fetched (the
    /// caller installs keys with `Issuer::install_jwks` or fetches them itself).
    pub fn offline(
        mut config: GatewayConfig,
        metrics: &Arc<Metrics>,
        clock: Arc<dyn crate::ratelimit::Clock>,
    ) -> Result<Snapshot, RateLimitError> {
        config.rate_limit.backend = crate::ratelimit::Backend::Memory;
        let rate_limit = config.rate_limit.clone();
        let mut snap = Snapshot::build(config, None, &reqwest::Client::new(), metrics)?;
        snap.limiter = Arc::new(RateLimiter::with_clock(
            rate_limit,
            metrics.ratelimit.clone(),
            clock,
        )?);
        Ok(snap)
    }

    pub fn ready(&self) -> bool {
        self.auth.ready()
    }

    /// Fetch the keys of every issuer that has none yet, concurrently, within `limit`.
    pub async fn warm_up(&self, http: &reqwest::Client, limit: std::time::Duration) {
        let fetches = self
            .auth
            .issuers()
            .iter()
            .filter(|i| !i.is_ready())
            .map(|i| i.refresh_using(http));
        let _ = tokio::time::timeout(limit, futures_join_all(fetches)).await;
    }
}

async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    // Poll all to completion concurrently without an extra dependency.
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// A route of the table from its validated config: `index` is its position in the file (and
/// in the per-route metric handles), `upstream` the index of its upstream.
pub(crate) fn route_from_config(cfg: &RouteConfig, index: usize, upstream: usize) -> Route {
    let limit_policy = cfg
        .limit_groups
        .iter()
        .flat_map(|g| g.limits.iter())
        .map(|l| format!("{};w={}", l.requests, l.period.as_secs()))
        .collect::<Vec<_>>()
        .join(", ");
    // Digits, `;w=` and `, `: always a valid header value.
    let limit_policy = http::HeaderValue::from_str(&limit_policy)
        .unwrap_or_else(|_| http::HeaderValue::from_static(""));
    let limits = cfg
        .limit_groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let scope = match i {
                0 => cfg.name.clone(),
                _ => format!("{}#{i}", cfg.name),
            };
            (scope, g.clone())
        })
        .collect();
    Route {
        index,
        name: cfg.name.clone(),
        methods: cfg.methods.clone(),
        path: cfg.path.clone(),
        upstream,
        auth: cfg.auth,
        scopes: cfg.scopes.clone(),
        issuers: cfg.issuers.clone(),
        token_query_param: cfg.token_query_param.clone(),
        token_cookie: cfg.token_cookie.clone(),
        limits,
        limit_policy,
        allow_encoded_slashes: cfg.allow_encoded_slashes,
        require_tls: cfg.require_tls,
        introspect: cfg.introspect,
        mode: cfg.mode,
        dpop: cfg.dpop,
    }
}
