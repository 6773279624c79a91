//! The shared backend of step 3 (may they, right now?): the same sliding-log decision as the
//! memory backend, kept in Redis so that every gateway replica counts against one log.
//!
//! One decision is one round trip: a Lua script (EVALSHA, falling back to EVAL-by-load on
//! NOSCRIPT) that, atomically and on Redis's own clock (`TIME`, so replicas with skewed clocks
//! agree), drops expired entries, counts each limit's window, admits only if every limit has
//! room, records the admission with a unique member, and returns what the headers need. The
//! log of one (route, client key) is one sorted set `<prefix>:rl:{<hash>}`, where `<hash>` is
//! 128 bits of SHA-256 of the route and key: user input never reaches the key, so it cannot
//! change the Redis Cluster hash tag or the key space.
//!
//! Connections: `pool_size` multiplexed [`ConnectionManager`]s used round-robin, each created on
//! first use inside the caller's runtime (pingora runs several), at most one connect in flight
//! per slot. Every decision is bounded by `timeout`. A slot that fails or times out is dropped
//! and marked down: for the next retry interval (500 ms, or the timeout if longer) calls skip it
//! without waiting, then one caller probes it with a fresh connection. A fresh connection after
//! a failure also cures what the manager cannot see by itself (a half-open TCP connection, a
//! connection whose runtime went away).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

use super::memory::{period_ms, Bounds};
use super::{Decision, LimitSpec, Observation, RateLimitError, RateLimitMetrics, Verdict};

/// KEYS[1]: the sorted set of admitted requests (score = admission time, ms of Redis's clock).
/// ARGV[1]: a nonce unique to this call, or `peek` to record and remove nothing (the answer a
/// request would get now, for `explain`); ARGV[2]: longest period (ms); ARGV[3]: largest
/// `requests`; then `requests`, `period_ms` for each limit.
/// Returns {allowed (0/1), now, then for each limit: in_window, oldest (-1: none),
/// free_at (-1: none)}; `in_window` includes this request if admitted.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
local max_period = tonumber(ARGV[2])
local max_requests = tonumber(ARGV[3])
local n = (#ARGV - 3) / 2
local peek = ARGV[1] == 'peek'
if not peek then
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - max_period)
end
local counts = {}
local allowed = 1
for i = 1, n do
  local requests = tonumber(ARGV[2 + 2 * i])
  local period = tonumber(ARGV[3 + 2 * i])
  local c = redis.call('ZCOUNT', key, '(' .. (now - period), '+inf')
  counts[i] = c
  if c >= requests then allowed = 0 end
end
local len = redis.call('ZCARD', key)
if allowed == 1 and not peek then
  redis.call('ZADD', key, now, now .. '-' .. ARGV[1])
  len = len + 1
  if len > max_requests then
    redis.call('ZREMRANGEBYRANK', key, 0, len - max_requests - 1)
    len = max_requests
  end
  redis.call('PEXPIRE', key, max_period)
end
local out = {allowed, now}
for i = 1, n do
  local requests = tonumber(ARGV[2 + 2 * i])
  local c = counts[i] + allowed
  local oldest = -1
  local free = -1
  if peek and allowed == 1 then
    -- not added: the oldest is the oldest already in the window, else this request
    if counts[i] > 0 then
      oldest = tonumber(redis.call('ZRANGE', key, len - counts[i], len - counts[i], 'WITHSCORES')[2])
    else
      oldest = now
    end
  elseif c > 0 then
    oldest = tonumber(redis.call('ZRANGE', key, len - c, len - c, 'WITHSCORES')[2])
  end
  if allowed == 0 and c >= requests then
    free = tonumber(redis.call('ZRANGE', key, len - requests, len - requests, 'WITHSCORES')[2])
  end
  out[#out + 1] = c
  out[#out + 1] = oldest
  out[#out + 1] = free
end
return out
"#;

/// Shortest pause before a failed slot is tried again.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

pub(crate) struct RedisBackend {
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    slots: Box<[Slot]>,
    next_slot: AtomicUsize,
    timeout: Duration,
    retry_interval_ms: u64,
    key_prefix: String,
    script: redis::Script,
    nonce_prefix: u64,
    nonce_counter: AtomicU64,
    /// `host:port` (no credentials), for messages.
    endpoint: String,
    /// The password as written in the URL and as decoded: scrubbed from every message.
    secrets: Vec<String>,
    metrics: Arc<RateLimitMetrics>,
    epoch: Instant,
}

/// One pooled connection and its health.
struct Slot {
    /// The connection and its generation (to drop only the one that failed).
    conn: parking_lot::Mutex<Option<(u64, ConnectionManager)>>,
    /// Held while connecting: at most one connect in flight per slot.
    connecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    /// 0 while healthy; else 1 + ms (since `epoch`) of the last failure or probe.
    down_since: AtomicU64,
}

/// Why the backend could not decide (turned into a counted fallback or a 503 by the caller).
#[derive(Debug)]
pub(crate) enum BackendError {
    /// Every slot failed recently; not retried yet.
    Down,
    Timeout(Duration),
    Redis(redis::RedisError),
    BadReply(usize),
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::Down => f.write_str("marked down after a recent failure"),
            BackendError::Timeout(t) => write!(f, "no answer within {t:?}"),
            BackendError::Redis(e) => write!(f, "{e}"),
            BackendError::BadReply(n) => write!(f, "unexpected script reply of {n} values"),
        }
    }
}

impl RedisBackend {
    /// Validates the settings and prepares the pool; connects nothing (no I/O here).
    pub(crate) fn new(
        url: &str,
        pool_size: usize,
        timeout: Duration,
        key_prefix: String,
        metrics: Arc<RateLimitMetrics>,
    ) -> Result<Self, RateLimitError> {
        if pool_size == 0 {
            return Err(RateLimitError::InvalidConfig(
                "redis pool size must be at least 1".into(),
            ));
        }
        if timeout.is_zero() {
            return Err(RateLimitError::InvalidConfig(
                "redis timeout must be greater than zero".into(),
            ));
        }
        if key_prefix.contains(['{', '}']) {
            return Err(RateLimitError::InvalidConfig(format!(
                "redis key prefix {key_prefix:?} must not contain braces (they would change the cluster hash tag)"
            )));
        }
        let client = redis::Client::open(url).map_err(|e| {
            RateLimitError::InvalidConfig(format!(
                "invalid redis url {}: {}",
                redact_url(url),
                scrub(
                    &e.to_string(),
                    &url_password(url).into_iter().collect::<Vec<_>>()
                )
            ))
        })?;
        let info = client.get_connection_info();
        let endpoint = info.addr().to_string();
        let secrets: Vec<String> = info
            .redis_settings()
            .password()
            .map(str::to_owned)
            .into_iter()
            .chain(url_password(url))
            .filter(|p| !p.is_empty())
            .collect();
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            // The whole call is bounded by `timeout` here; a timed-out slot is replaced.
            .set_response_timeout(None)
            // One attempt per reconnect: retrying is paced by the slot's retry interval.
            .set_number_of_retries(0);
        let slots = (0..pool_size)
            .map(|_| Slot {
                conn: parking_lot::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                down_since: AtomicU64::new(0),
            })
            .collect();
        let retry_interval = RETRY_INTERVAL.max(timeout);
        Ok(Self {
            client,
            manager_config,
            slots,
            next_slot: AtomicUsize::new(0),
            timeout,
            retry_interval_ms: u64::try_from(retry_interval.as_millis()).unwrap_or(u64::MAX),
            key_prefix,
            script: redis::Script::new(SCRIPT),
            nonce_prefix: uuid::Uuid::new_v4().as_u64_pair().0,
            nonce_counter: AtomicU64::new(0),
            endpoint,
            secrets,
            metrics,
            epoch: Instant::now(),
        })
    }

    /// The message of a [`RateLimitError::BackendUnavailable`]: endpoint and cause, no secret.
    pub(crate) fn describe(&self, e: &BackendError) -> String {
        scrub(&format!("redis at {}: {e}", self.endpoint), &self.secrets)
    }

    /// One decision in Redis, bounded by the timeout. Records the call's duration.
    pub(crate) async fn check(
        &self,
        scope: &str,
        limits: &[LimitSpec],
        key: &str,
        bounds: Bounds,
        peek: bool,
    ) -> Result<Decision, BackendError> {
        let now = self.now_ms();
        let Some((slot, ticket)) = self.pick_slot(now) else {
            return Err(BackendError::Down);
        };
        let started = Instant::now();
        let mut used_generation = None;
        let result = tokio::time::timeout(
            self.timeout,
            self.call(
                slot,
                ticket,
                &mut used_generation,
                scope,
                limits,
                key,
                bounds,
                peek,
            ),
        )
        .await;
        self.metrics
            .redis_duration
            .observe(started.elapsed().as_secs_f64());
        let err = match result {
            Ok(Ok(decision)) => {
                self.mark_up(slot);
                return Ok(decision);
            }
            Ok(Err(e)) => e,
            Err(_) => BackendError::Timeout(self.timeout),
        };
        if !matches!(err, BackendError::Down) {
            self.mark_down(slot, used_generation, &err);
        }
        Err(err)
    }

    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        slot: &Slot,
        ticket: u64,
        used_generation: &mut Option<u64>,
        scope: &str,
        limits: &[LimitSpec],
        key: &str,
        bounds: Bounds,
        peek: bool,
    ) -> Result<Decision, BackendError> {
        let (generation, mut conn) = self.connection(slot, ticket).await?;
        *used_generation = Some(generation);
        let nonce = if peek {
            String::from("peek")
        } else {
            format!(
                "{:016x}{:x}",
                self.nonce_prefix,
                self.nonce_counter.fetch_add(1, Ordering::Relaxed)
            )
        };
        let mut invocation = self.script.key(self.redis_key(scope, key));
        invocation
            .arg(nonce)
            .arg(bounds.max_period_ms)
            .arg(bounds.max_requests);
        for l in limits {
            invocation.arg(l.requests).arg(period_ms(l));
        }
        let reply: redis::RedisResult<Vec<i64>> = match invocation.invoke_async(&mut conn).await {
            // The connection broke since the last call (typically Redis restarted while this
            // slot was idle) and the manager is already reconnecting: retry once, still within
            // the timeout. If the lost call had run, the request counts twice (never less).
            Err(e) if e.is_connection_dropped() || e.is_unrecoverable_error() => {
                invocation.invoke_async(&mut conn).await
            }
            other => other,
        };
        let reply = reply.map_err(BackendError::Redis)?;
        decision_from_reply(&reply, limits).ok_or(BackendError::BadReply(reply.len()))
    }

    /// The slot's connection, created on first use in the caller's runtime.
    async fn connection(
        &self,
        slot: &Slot,
        ticket: u64,
    ) -> Result<(u64, ConnectionManager), BackendError> {
        if let Some((g, c)) = slot.conn.lock().as_ref() {
            return Ok((*g, c.clone()));
        }
        let _connecting = slot.connecting.lock().await;
        if let Some((g, c)) = slot.conn.lock().as_ref() {
            return Ok((*g, c.clone()));
        }
        if slot.down_since.load(Ordering::Acquire) != ticket {
            // The connect we waited for failed: do not try again before the retry interval.
            return Err(BackendError::Down);
        }
        let manager =
            ConnectionManager::new_with_config(self.client.clone(), self.manager_config.clone())
                .await;
        match manager {
            Ok(manager) => {
                let generation = slot.generation.fetch_add(1, Ordering::Relaxed) + 1;
                *slot.conn.lock() = Some((generation, manager.clone()));
                Ok((generation, manager))
            }
            Err(e) => {
                // Marked while still holding `connecting`, so the callers queued behind this
                // connect see it and give up instead of connecting one after another.
                let err = BackendError::Redis(e);
                self.mark_down(slot, None, &err);
                Err(err)
            }
        }
    }

    /// Round-robin over the healthy slots; a slot down for longer than the retry interval is
    /// given to exactly one caller (the probe). `None` if every slot is down: fail fast.
    fn pick_slot(&self, now: u64) -> Option<(&Slot, u64)> {
        let n = self.slots.len();
        let start = self.next_slot.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let Some(slot) = self.slots.get(start.wrapping_add(i) % n) else {
                continue;
            };
            let down = slot.down_since.load(Ordering::Acquire);
            if down == 0 {
                return Some((slot, 0));
            }
            if now.saturating_add(1) >= down.saturating_add(self.retry_interval_ms) {
                let probe = now.saturating_add(1).max(down);
                if slot
                    .down_since
                    .compare_exchange(down, probe, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some((slot, probe));
                }
            }
        }
        None
    }

    fn mark_up(&self, slot: &Slot) {
        if slot.down_since.load(Ordering::Relaxed) != 0
            && slot.down_since.swap(0, Ordering::AcqRel) != 0
        {
            tracing::info!(endpoint = %self.endpoint, "redis rate-limit backend reachable again");
        }
    }

    /// Drops the slot's connection (if it is still the one that failed) and marks it down.
    fn mark_down(&self, slot: &Slot, generation: Option<u64>, err: &BackendError) {
        if let Some(g) = generation {
            let mut conn = slot.conn.lock();
            if conn.as_ref().is_some_and(|(current, _)| *current == g) {
                *conn = None;
            }
        }
        let was = slot
            .down_since
            .swap(self.now_ms().saturating_add(1), Ordering::AcqRel);
        if was == 0 {
            tracing::warn!(
                endpoint = %self.endpoint,
                error = %scrub(&err.to_string(), &self.secrets),
                retry_in_ms = self.retry_interval_ms,
                "redis rate-limit backend failed"
            );
        }
    }

    /// `SET <prefix>:once:{<id>} 1 NX PX <ttl>`: `true` if `id` was not set (it now is, for
    /// `ttl`); with `peek`, `EXISTS` only (`true` if absent). On the same slots, timeout and
    /// health marking as the limiter's decisions (for the DPoP replay cache). `id` is a digest
    /// (hex), never client text.
    pub(crate) async fn set_once(
        &self,
        id: &str,
        ttl: Duration,
        peek: bool,
    ) -> Result<bool, BackendError> {
        let Some((slot, ticket)) = self.pick_slot(self.now_ms()) else {
            return Err(BackendError::Down);
        };
        let key = format!("{}:once:{{{id}}}", self.key_prefix);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut used_generation = None;
        let call = async {
            let (generation, mut conn) = self.connection(slot, ticket).await?;
            used_generation = Some(generation);
            let reply: redis::RedisResult<redis::Value> = if peek {
                redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await
            } else {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut conn)
                    .await
            };
            match reply.map_err(BackendError::Redis)? {
                redis::Value::Okay => Ok(true),
                redis::Value::Nil => Ok(false),
                redis::Value::Int(n) => Ok(n == 0),
                redis::Value::SimpleString(s) if s == "OK" => Ok(true),
                _ => Err(BackendError::BadReply(1)),
            }
        };
        let result = tokio::time::timeout(self.timeout, call).await;
        let err = match result {
            Ok(Ok(fresh)) => {
                self.mark_up(slot);
                return Ok(fresh);
            }
            Ok(Err(e)) => e,
            Err(_) => BackendError::Timeout(self.timeout),
        };
        if !matches!(err, BackendError::Down) {
            self.mark_down(slot, used_generation, &err);
        }
        Err(err)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn redis_key(&self, scope: &str, key: &str) -> String {
        redis_key(&self.key_prefix, scope, key)
    }
}

/// `<prefix>:rl:{<32 hex>}`: the hash tag is the hex digest only, whatever the route or key.
pub(crate) fn redis_key(prefix: &str, scope: &str, key: &str) -> String {
    let mut h = Sha256::new();
    // Length-prefix the route so ("a", "bc") and ("ab", "c") differ.
    h.update((scope.len() as u64).to_le_bytes());
    h.update(scope.as_bytes());
    h.update(key.as_bytes());
    let digest = h.finalize();
    let mut out = String::with_capacity(prefix.len() + 38);
    out.push_str(prefix);
    out.push_str(":rl:{");
    for b in digest.iter().take(16) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out.push('}');
    out
}

/// Reads the script's reply into a [`Decision`]; `None` if it has the wrong shape.
fn decision_from_reply(reply: &[i64], limits: &[LimitSpec]) -> Option<Decision> {
    let (&allowed, rest) = reply.split_first()?;
    let (&now, per_limit) = rest.split_first()?;
    if per_limit.len() != limits.len() * 3 {
        return None;
    }
    let now = u64::try_from(now).ok()?;
    let known = |v: i64| u64::try_from(v).ok(); // -1: none
    let mut verdict = Verdict::new(now, allowed == 1);
    for (l, v) in limits.iter().zip(per_limit.chunks_exact(3)) {
        let [in_window, oldest, free_at] = v else {
            return None;
        };
        verdict.add(&Observation {
            requests: l.requests,
            period_ms: period_ms(l),
            in_window: known(*in_window)?,
            oldest: known(*oldest),
            free_at: known(*free_at),
        });
    }
    Some(verdict.finish())
}

/// Replaces every occurrence of the secrets in `msg`.
fn scrub(msg: &str, secrets: &[String]) -> String {
    let mut out = msg.to_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

/// The password in a `scheme://user:password@host...` URL, if any.
fn url_password(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

/// The URL with its password replaced by `***` (for `Debug` and messages).
pub(crate) fn redact_url(url: &str) -> String {
    let mut out = match url_password(url) {
        Some(p) => url.replacen(&format!(":{p}@"), ":***@", 1),
        None => url.to_owned(),
    };
    // A password may also come as a query parameter.
    if let Some(q) = out.find("password=") {
        let start = q + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_key_braces_in_user_input_leave_hash_tag_hex() {
        for key in ["a}b", "{x}", "}{", "ip:1.2.3.4", "", "\u{0}{"] {
            let k = redis_key("wtgw", "route{1}", key);
            let open = k.find('{').expect("tag open");
            let close = k[open..].find('}').expect("tag close") + open;
            let tag = &k[open + 1..close];
            assert_eq!(tag.len(), 32, "{k}");
            assert!(tag.bytes().all(|b| b.is_ascii_hexdigit()), "{k}");
            assert_eq!(close, k.len() - 1, "{k}");
            assert!(k.starts_with("wtgw:rl:{"));
        }
    }

    #[test]
    fn redis_key_scope_key_boundary_is_unambiguous() {
        assert_ne!(redis_key("p", "a", "bc"), redis_key("p", "ab", "c"));
        assert_eq!(redis_key("p", "a", "bc"), redis_key("p", "a", "bc"));
    }

    #[test]
    fn redact_url_password_is_hidden() {
        let u = "redis://user:s3cr%40t@host:6379/0";
        let r = redact_url(u);
        assert!(!r.contains("s3cr"), "{r}");
        assert_eq!(r, "redis://user:***@host:6379/0");
        assert_eq!(redact_url("redis://:pw@h/"), "redis://:***@h/");
        assert_eq!(redact_url("redis://h:1/"), "redis://h:1/");
        assert!(!redact_url("redis://h/?password=zz&db=1").contains("zz"));
    }

    #[test]
    fn decision_from_reply_wrong_shape_is_none() {
        let limits = [LimitSpec {
            requests: 1,
            period: Duration::from_secs(1),
        }];
        assert!(decision_from_reply(&[1, 5], &limits).is_none());
        assert!(decision_from_reply(&[], &limits).is_none());
        let d = decision_from_reply(&[1, 1_000, 1, 1_000, -1], &limits).expect("shape");
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.reset, Duration::from_secs(1));
    }
}
