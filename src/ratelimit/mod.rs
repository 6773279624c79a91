//! Step 3 of a request: may this client call this route, right now? [`RateLimiter::check`]
//! answers for one (route, client key) against all the limits of the route, and records the
//! request if, and only if, every limit admits it.
//!
//! Semantics (the same for both backends): a limit of N requests per period P never admits more
//! than N requests of one (route, key) in any rolling window of length P. It is a sliding log of
//! the admitted requests' times (not a fixed window, not a token bucket), so there is no 2N
//! burst across a window boundary; rejected requests consume nothing.
//!
//! Backends: `memory` (default; in-process, bounded number of keys, idle keys expire; see
//! `memory.rs`) and `redis` (shared by every replica; one atomic script per decision, Redis's
//! own clock; see `redis_backend.rs`). When Redis fails or is slow, the operator's
//! [`OnBackendError`] picks between deciding locally (fail-open, counted) and refusing
//! ([`RateLimitError::BackendUnavailable`], fail-closed). The in-process store never forgets a
//! key whose window still counts requests: when it is full of such keys, a new key is decided by
//! the same [`OnBackendError`] (admitted without being stored, or refused) and counted in
//! `gateway_ratelimit_store_full_total`. The caller (the proxy) turns a
//! [`Decision`] into the 429 / `RateLimit-*` headers and counts decisions per route.

mod clock;
mod memory;
mod metrics;
mod redis_backend;

#[cfg(test)]
mod test_redis;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use clock::{Clock, ManualClock, SystemClock};
pub use metrics::RateLimitMetrics;

use crate::expiring::Ids;
use memory::{period_ms, Bounds, MemoryStore, StoreFull, MAX_PERIOD_MS};
use redis_backend::RedisBackend;

/// One limit of a route: at most `requests` per rolling `period`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitSpec {
    /// Requests admitted per window; at least 1.
    pub requests: u32,
    /// Window length, from 1 ms to about 24.8 days (2^31 - 1 ms); counted in milliseconds,
    /// a fraction of a millisecond rounds up.
    pub period: Duration,
}

/// Where the limiter keeps its state.
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// In-process (default): exact per gateway process, not shared between replicas.
    Memory,
    /// Shared by every replica using the same Redis.
    Redis {
        /// `redis://[user:password@]host[:port][/db]`; never logged with its password.
        url: String,
        /// Multiplexed connections used round-robin; at least 1.
        pool_size: usize,
        /// Bound on one decision (connect included); above it the decision counts as a
        /// backend error. Greater than zero.
        timeout: Duration,
        /// Prefix of every Redis key (`<prefix>:rl:{<hash>}`); must not contain `{` or `}`.
        key_prefix: String,
    },
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Memory => f.write_str("Memory"),
            Backend::Redis {
                url,
                pool_size,
                timeout,
                key_prefix,
            } => f
                .debug_struct("Redis")
                .field("url", &redis_backend::redact_url(url))
                .field("pool_size", pool_size)
                .field("timeout", timeout)
                .field("key_prefix", key_prefix)
                .finish(),
        }
    }
}

/// What to do when the Redis backend errors or times out, or when the in-process store is full
/// of keys whose windows still count requests and a new key arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnBackendError {
    /// Redis failing: decide with the in-process limiter (same semantics, local to this
    /// replica) and count it in `gateway_ratelimit_fallbacks_total`. Store full: admit the new
    /// key's request without storing the key (it is not limited while the store stays full).
    FailOpen,
    /// Return [`RateLimitError::BackendUnavailable`] (the proxy answers 503).
    FailClosed,
}

/// The limiter as the operator configured it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimiterConfig {
    /// Defaults to [`Backend::Memory`].
    pub backend: Backend,
    /// When Redis fails, and when the in-process store is full of live keys. Defaults to
    /// [`OnBackendError::FailOpen`].
    pub on_backend_error: OnBackendError,
    /// Most keys (route x client) the in-process limiter holds (the memory backend, or the
    /// fallback of the Redis backend). A key is dropped only once its window is empty; while
    /// the store (or the shard a new key falls in) is full of live keys, new keys are decided
    /// by `on_backend_error`. At least 1. Defaults to 1,000,000 (about 100 bytes per key while
    /// a key has at most three requests in its window, so about 100 MB when full; beyond
    /// three, 8 bytes per distinct millisecond that holds requests of the key).
    pub memory_max_keys: u64,
}

impl Default for RateLimiterConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Memory,
            on_backend_error: OnBackendError::FailOpen,
            memory_max_keys: 1_000_000,
        }
    }
}

/// The answer for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether every limit of the route admitted the request (it is then recorded in all).
    pub allowed: bool,
    /// The most constraining limit (fewest remaining; on rejection the rejecting limit that
    /// frees up last): its `requests`.
    pub limit: u32,
    /// That limit's period.
    pub period: Duration,
    /// Requests that limit still admits now (after this one, if it was admitted).
    pub remaining: u32,
    /// Time until that limit's oldest admitted request leaves its window (0 if none is in it).
    pub reset: Duration,
    /// On rejection: time until every limit would admit the request (> 0). `None` if allowed.
    pub retry_after: Option<Duration>,
}

/// Why no decision could be made.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// The limiter or a route's limits are unusable (bad URL, zero requests, ...).
    #[error("invalid rate limit configuration: {0}")]
    InvalidConfig(String),
    /// Redis failed or timed out and `on_backend_error` is fail-closed. Never contains the
    /// Redis password.
    #[error("rate limit backend unavailable: {0}")]
    BackendUnavailable(String),
}

/// Decides requests against per-route limits. `Send + Sync`; share it in an `Arc`.
pub struct RateLimiter {
    clock: Arc<dyn Clock>,
    metrics: Arc<RateLimitMetrics>,
    ids: Ids,
    on_error: OnBackendError,
    engine: Engine,
}

enum Engine {
    Memory(MemoryStore),
    Redis {
        remote: Box<RedisBackend>,
        fallback: MemoryStore,
    },
}

impl RateLimiter {
    /// Builds the limiter on the system clock. Does no I/O: Redis is connected on first use
    /// (from the caller's runtime) and reconnected automatically.
    pub fn new(
        cfg: RateLimiterConfig,
        metrics: Arc<RateLimitMetrics>,
    ) -> Result<Self, RateLimitError> {
        Self::with_clock(cfg, metrics, Arc::new(SystemClock))
    }

    /// Builds the limiter on `clock` (tests drive time with a [`ManualClock`]). The clock is
    /// used by the in-process limiter only; Redis decisions use the Redis server's time.
    pub fn with_clock(
        cfg: RateLimiterConfig,
        metrics: Arc<RateLimitMetrics>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, RateLimitError> {
        if cfg.memory_max_keys == 0 {
            return Err(RateLimitError::InvalidConfig(
                "memory_max_keys must be at least 1".into(),
            ));
        }
        let engine = match cfg.backend {
            Backend::Memory => Engine::Memory(MemoryStore::new(cfg.memory_max_keys)),
            Backend::Redis {
                url,
                pool_size,
                timeout,
                key_prefix,
            } => Engine::Redis {
                remote: Box::new(RedisBackend::new(
                    &url,
                    pool_size,
                    timeout,
                    key_prefix,
                    Arc::clone(&metrics),
                )?),
                fallback: MemoryStore::new(cfg.memory_max_keys),
            },
        };
        Ok(Self {
            clock,
            metrics,
            ids: Ids::new(),
            on_error: cfg.on_backend_error,
            engine,
        })
    }

    /// Decides one request of client `key` on route `scope` against all of the route's
    /// `limits`, recording it only if every limit admits it.
    ///
    /// Errors: [`RateLimitError::InvalidConfig`] if `limits` is empty or holds a zero or
    /// out-of-range value; [`RateLimitError::BackendUnavailable`] only when fail-closed: Redis
    /// failed or did not answer within the timeout, or the in-process store is full of live keys
    /// and `key` is not one of them.
    pub async fn check(
        &self,
        scope: &str,
        limits: &[LimitSpec],
        key: &str,
    ) -> Result<Decision, RateLimitError> {
        let bounds = validate(limits)?;
        match &self.engine {
            Engine::Memory(store) => self.check_local(store, scope, limits, key, bounds),
            Engine::Redis { remote, fallback } => {
                match remote.check(scope, limits, key, bounds, false).await {
                    Ok(decision) => Ok(decision),
                    Err(e) => {
                        self.metrics.redis_errors.inc();
                        match self.on_error {
                            OnBackendError::FailOpen => {
                                self.metrics.fallbacks.inc();
                                self.check_local(fallback, scope, limits, key, bounds)
                            }
                            OnBackendError::FailClosed => {
                                Err(RateLimitError::BackendUnavailable(remote.describe(&e)))
                            }
                        }
                    }
                }
            }
        }
    }

    /// What [`RateLimiter::check`] would answer now, recording nothing: the remaining quota of
    /// a key, for `explain`. With Redis unreachable, the in-process fallback answers (fail
    /// open) or the error is returned (fail closed), as `check` would.
    pub async fn peek(
        &self,
        scope: &str,
        limits: &[LimitSpec],
        key: &str,
    ) -> Result<Decision, RateLimitError> {
        let bounds = validate(limits)?;
        let local = |store: &MemoryStore| {
            let id = self.ids.of((scope, key));
            store.peek(id, self.clock.now_millis(), limits, bounds)
        };
        match &self.engine {
            Engine::Memory(store) => Ok(local(store)),
            Engine::Redis { remote, fallback } => {
                match remote.check(scope, limits, key, bounds, true).await {
                    Ok(decision) => Ok(decision),
                    Err(e) => match self.on_error {
                        OnBackendError::FailOpen => Ok(local(fallback)),
                        OnBackendError::FailClosed => {
                            Err(RateLimitError::BackendUnavailable(remote.describe(&e)))
                        }
                    },
                }
            }
        }
    }

    /// The first use of `id` within `ttl`, in the shared store: `Ok(Some(true))` the first time,
    /// `Ok(Some(false))` after; `Ok(None)` when there is no shared store (memory backend) or
    /// Redis failed and `on_backend_error` is fail-open (counted as a fallback): the caller
    /// decides in process. `peek` records nothing. For the DPoP replay cache (`id`: a digest).
    pub async fn first_use(
        &self,
        id: &str,
        ttl: Duration,
        peek: bool,
    ) -> Result<Option<bool>, RateLimitError> {
        let Engine::Redis { remote, .. } = &self.engine else {
            return Ok(None);
        };
        match remote.set_once(id, ttl, peek).await {
            Ok(fresh) => Ok(Some(fresh)),
            Err(e) => {
                if !peek {
                    self.metrics.redis_errors.inc();
                }
                match self.on_error {
                    OnBackendError::FailOpen => {
                        if !peek {
                            self.metrics.fallbacks.inc();
                        }
                        Ok(None)
                    }
                    OnBackendError::FailClosed => {
                        Err(RateLimitError::BackendUnavailable(remote.describe(&e)))
                    }
                }
            }
        }
    }

    /// Checks a route's limits as [`RateLimiter::check`] will (for config validation at
    /// startup): at least one limit, each with `requests` >= 1 and a period from 1 ms to
    /// about 24.8 days.
    pub fn validate_limits(limits: &[LimitSpec]) -> Result<(), RateLimitError> {
        validate(limits).map(|_| ())
    }

    /// `"memory"` or `"redis"` (the configured backend, for logs and labels).
    pub fn backend_name(&self) -> &'static str {
        match self.engine {
            Engine::Memory(_) => "memory",
            Engine::Redis { .. } => "redis",
        }
    }

    fn check_local(
        &self,
        store: &MemoryStore,
        scope: &str,
        limits: &[LimitSpec],
        key: &str,
        bounds: Bounds,
    ) -> Result<Decision, RateLimitError> {
        // `(&str, &str)` hashes each string followed by a terminator: ("a", "bc") != ("ab", "c").
        let id = self.ids.of((scope, key));
        let now = self.clock.now_millis();
        let result = store.check(id, now, limits, bounds);
        self.metrics.set_keys(store.len());
        match result {
            Ok(decision) => Ok(decision),
            // Full of keys whose windows still count: never make room by forgetting one.
            Err(StoreFull) => {
                self.metrics.store_full(scope);
                match self.on_error {
                    OnBackendError::FailOpen => Ok(memory::unstored(now, limits, bounds)),
                    OnBackendError::FailClosed => Err(RateLimitError::BackendUnavailable(
                        "in-process store full of live keys (memory_max_keys)".into(),
                    )),
                }
            }
        }
    }
}

/// Checks a route's limits; returns their longest period and largest count.
fn validate(limits: &[LimitSpec]) -> Result<Bounds, RateLimitError> {
    if limits.is_empty() {
        return Err(RateLimitError::InvalidConfig(
            "a rate-limited route needs at least one limit".into(),
        ));
    }
    let mut bounds = Bounds {
        max_period_ms: 0,
        max_requests: 0,
    };
    for l in limits {
        let p = period_ms(l);
        if l.requests == 0 {
            return Err(RateLimitError::InvalidConfig(
                "requests must be at least 1".into(),
            ));
        }
        if p == 0 || p > MAX_PERIOD_MS {
            return Err(RateLimitError::InvalidConfig(format!(
                "period must be between 1 ms and {MAX_PERIOD_MS} ms (about 24.8 days), got {:?}",
                l.period
            )));
        }
        bounds.max_period_ms = bounds.max_period_ms.max(p);
        bounds.max_requests = bounds.max_requests.max(l.requests);
    }
    Ok(bounds)
}

/// What a backend saw for one limit, in milliseconds of the backend's clock.
pub(crate) struct Observation {
    pub requests: u32,
    pub period_ms: u64,
    /// Admitted requests in the window now (this one included if admitted).
    pub in_window: u64,
    /// Time of the oldest admitted request in the window.
    pub oldest: Option<u64>,
    /// If this limit rejects: time of the request whose leaving the window frees a slot.
    pub free_at: Option<u64>,
}

/// Folds the per-limit observations into the [`Decision`] (the most constraining limit).
pub(crate) struct Verdict {
    now: u64,
    allowed: bool,
    best: Option<Decision>,
}

impl Verdict {
    pub(crate) fn new(now: u64, allowed: bool) -> Self {
        Self {
            now,
            allowed,
            best: None,
        }
    }

    pub(crate) fn add(&mut self, o: &Observation) {
        let rejecting = o.in_window >= u64::from(o.requests);
        if !self.allowed && !rejecting {
            return; // on rejection only the rejecting limits describe the answer
        }
        let reset = o.oldest.map_or(0, |t| {
            t.saturating_add(o.period_ms).saturating_sub(self.now)
        });
        let remaining = u64::from(o.requests).saturating_sub(o.in_window);
        let retry_after = (!self.allowed).then(|| {
            // free_at is always known for a rejecting limit; a full period is the safe bound.
            let at = o.free_at.unwrap_or(self.now).saturating_add(o.period_ms);
            Duration::from_millis(at.saturating_sub(self.now).max(1))
        });
        let candidate = Decision {
            allowed: self.allowed,
            limit: o.requests,
            period: Duration::from_millis(o.period_ms),
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset: Duration::from_millis(reset),
            retry_after,
        };
        let better = match &self.best {
            None => true,
            Some(b) if self.allowed => {
                (candidate.remaining, std::cmp::Reverse(candidate.reset))
                    < (b.remaining, std::cmp::Reverse(b.reset))
            }
            Some(b) => candidate.retry_after > b.retry_after,
        };
        if better {
            self.best = Some(candidate);
        }
    }

    pub(crate) fn finish(self) -> Decision {
        self.best.unwrap_or(Decision {
            allowed: self.allowed,
            limit: 0,
            period: Duration::ZERO,
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: (!self.allowed).then_some(Duration::from_millis(1)),
        })
    }
}

#[cfg(test)]
mod tests;
