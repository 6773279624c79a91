//! TEMPORARY interface stand-in while the real limiter is written in parallel; replaced
//! before commit. (Not to be committed.)
use std::sync::Arc;
use std::time::Duration;

pub trait Clock: Send + Sync {
    fn now_millis(&self) -> u64;
}
pub struct SystemClock;
impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        0
    }
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitSpec {
    pub requests: u32,
    pub period: Duration,
}
#[derive(Clone, Debug)]
pub enum Backend {
    Memory,
    Redis {
        url: String,
        pool_size: usize,
        timeout: Duration,
        key_prefix: String,
    },
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnBackendError {
    FailOpen,
    FailClosed,
}
#[derive(Clone, Debug)]
pub struct RateLimiterConfig {
    pub backend: Backend,
    pub on_backend_error: OnBackendError,
    pub memory_max_keys: u64,
}
pub struct RateLimitMetrics;
impl RateLimitMetrics {
    pub fn new(_r: &prometheus::Registry) -> prometheus::Result<Self> {
        Ok(RateLimitMetrics)
    }
}
pub struct RateLimiter;
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub period: Duration,
    pub remaining: u32,
    pub reset: Duration,
    pub retry_after: Option<Duration>,
}
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("x")]
    BackendUnavailable(String),
}
impl RateLimiter {
    pub fn new(_c: RateLimiterConfig, _m: Arc<RateLimitMetrics>) -> Result<Self, RateLimitError> {
        Ok(RateLimiter)
    }
    pub async fn check(
        &self,
        _s: &str,
        l: &[LimitSpec],
        _k: &str,
    ) -> Result<Decision, RateLimitError> {
        Ok(Decision {
            allowed: true,
            limit: l[0].requests,
            period: l[0].period,
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: None,
        })
    }
}
