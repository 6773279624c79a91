//! Step 2, for tokens only their server can judge: RFC 7662 introspection. An issuer with an
//! `introspection_endpoint` validates opaque tokens (and, on `introspect = true` routes, JWTs
//! it issued, so a revoked one stops working). Answers are cached in a moka cache keyed by the
//! keyed id of the token (never the token): `try_get_with` makes one call for any number of
//! requests arriving together with a new token; an active answer is reused until the token's
//! `exp` but at most `introspection_cache_secs`, an inactive one for
//! `introspection_negative_cache_secs`. A failed call (network, timeout, status, a body that
//! is not an introspection response) is not cached and refuses the request with 503: never
//! fail open. The route's scopes are not part of the cached answer; the decision checks them
//! on every request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{ACCEPT, CONTENT_TYPE};
use moka::future::Cache;
use moka::Expiry;
use prometheus::IntCounter;
use serde::Deserialize;
use serde_json::Value;
use tracing::warn;

use super::jwks::Issuer;
use super::jwt::{self, Claims};
use super::{AuthError, Principal};
use crate::config::{IntrospectionAuth, IntrospectionConfig};
use crate::metrics::Metrics;

/// Answers kept per issuer at most (moka evicts the least used beyond).
const CACHE_CAPACITY: u64 = 100_000;
/// Largest introspection response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What the server said about a token, as cached.
#[derive(Clone, Debug)]
pub(crate) enum Verdict {
    Active {
        principal: Arc<Principal>,
        /// Unix seconds from which the token is expired (`exp` + leeway), when it has `exp`.
        stale_at: Option<u64>,
        ttl: Duration,
    },
    /// `active: false`, or active but refused by a check (issuer, audience, type, times).
    Inactive { why: AuthError, ttl: Duration },
}

/// Why a call gave no answer. Never cached; the request gets 503. Messages never hold the
/// token, the client secret or the response body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("timed out")]
    Timeout,
    #[error("request failed: {0}")]
    Failed(String),
    #[error("http status {0}")]
    Status(u16),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// Per-entry expiry: the verdict's own time to live.
struct ByVerdict;

impl Expiry<u128, Verdict> for ByVerdict {
    fn expire_after_create(&self, _: &u128, v: &Verdict, _: Instant) -> Option<Duration> {
        Some(match v {
            Verdict::Active { ttl, .. } | Verdict::Inactive { ttl, .. } => *ttl,
        })
    }
}

/// How long an active answer may be reused: until `exp` (never past it), at most `cap`.
pub(crate) fn positive_ttl(exp: Option<u64>, now: u64, cap: Duration) -> Duration {
    match exp {
        None => cap,
        Some(exp) => Duration::from_secs(exp.saturating_sub(now)).min(cap),
    }
}

/// What the checks of an active answer need of the issuer.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub leeway: u64,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub index: usize,
    pub uid: u64,
    pub strip_authorization: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The members of an active answer the gateway reads (RFC 7662 §2.2); `sub`, `client_id` and
/// `scope` go through the same grammar checks as a JWT's claims.
#[derive(Deserialize)]
struct ActiveResponse {
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    token_type: Option<String>,
    /// `cnf` is read by `Claims` (the same binding a JWT carries).
    #[serde(flatten)]
    claims: Claims,
}

/// Read an introspection response body into a verdict (`now` in unix seconds).
pub(crate) fn verdict(body: &[u8], rules: &Rules, now: u64) -> Result<Verdict, CallError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| CallError::Malformed("not JSON"))?;
    let inactive = |why| Verdict::Inactive {
        why,
        ttl: rules.negative_ttl,
    };
    match value.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Ok(inactive(AuthError::Inactive)),
        _ if !value.is_object() => return Err(CallError::Malformed("not a JSON object")),
        _ => return Err(CallError::Malformed("no boolean `active` member")),
    }
    let r: ActiveResponse = serde_json::from_value(value)
        .map_err(|_| CallError::Malformed("a member has the wrong type"))?;
    if r.token_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("refresh_token"))
    {
        return Ok(inactive(AuthError::InvalidClaims(
            "a refresh token is not an access token",
        )));
    }
    // Sender-constrained (mTLS `x5t#S256`, DPoP `jkt`): the binding goes into the principal
    // and the decision core checks it on every request, as for a JWT.
    let binding = match r.claims.cnf.as_ref().map(|c| c.binding()).transpose() {
        Ok(b) => b.flatten().map(Box::new),
        Err(e) => return Ok(inactive(e)),
    };
    if r.iss.as_deref().is_some_and(|i| i != rules.issuer) {
        return Ok(inactive(AuthError::WrongIssuer));
    }
    let aud_ok = match &r.aud {
        None => true,
        Some(Audience::One(a)) => rules.audiences.contains(a),
        Some(Audience::Many(list)) => list.iter().any(|a| rules.audiences.contains(a)),
    };
    if !aud_ok {
        return Ok(inactive(AuthError::WrongAudience));
    }
    if r.exp
        .is_some_and(|exp| now >= exp.saturating_add(rules.leeway))
    {
        return Ok(inactive(AuthError::Expired));
    }
    if r.nbf
        .is_some_and(|nbf| nbf > now.saturating_add(rules.leeway))
    {
        return Ok(inactive(AuthError::NotYetValid("token is not valid yet")));
    }
    let identity = match r.claims.identity() {
        Ok(i) => i,
        Err(e) => return Ok(inactive(e)),
    };
    let (text, sub_len, client_id_len) = Principal::pack(&identity);
    Ok(Verdict::Active {
        principal: Arc::new(Principal {
            issuer_index: rules.index,
            issuer_uid: rules.uid,
            generation: 0,
            text,
            sub_len,
            client_id_len,
            strip_authorization: rules.strip_authorization,
            binding,
        }),
        stale_at: r.exp.map(|e| e.saturating_add(rules.leeway)),
        ttl: positive_ttl(r.exp, now, rules.cache_ttl),
    })
}

/// One issuer's introspection client and its answer cache.
pub(crate) struct Introspector {
    /// The [`Issuer::uid`] it was built for: kept across a reload only for that issuer.
    pub(crate) issuer_uid: u64,
    rules: Rules,
    cfg: IntrospectionConfig,
    http: reqwest::Client,
    cache: Cache<u128, Verdict>,
    name: String,
    /// `gateway_introspection_requests_total`: active, inactive, error, timeout.
    calls: [IntCounter; 4],
    hit: IntCounter,
    miss: IntCounter,
}

/// Where an answer came from (for `explain`).
pub(crate) const FROM_ENDPOINT: &str = "endpoint";
pub(crate) const FROM_CACHE: &str = "cache";

impl Introspector {
    /// `None` when the issuer has no introspection endpoint.
    pub(crate) fn new(index: usize, issuer: &Issuer, metrics: &Metrics) -> Option<Introspector> {
        let cfg = issuer.cfg.introspection.clone()?;
        // Redirects are not followed: the token and the client secret go to the configured
        // endpoint only.
        let http = reqwest::Client::builder()
            .user_agent(concat!("wetrials-gateway/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let name = issuer.name().to_string();
        let calls = ["active", "inactive", "error", "timeout"].map(|r| {
            metrics
                .introspection_requests
                .with_label_values(&[name.as_str(), r])
        });
        let [hit, miss] = ["hit", "miss"].map(|r| {
            metrics
                .introspection_cache
                .with_label_values(&[name.as_str(), r])
        });
        Some(Introspector {
            issuer_uid: issuer.uid(),
            rules: Rules {
                issuer: issuer.cfg.issuer.clone(),
                audiences: issuer.cfg.audiences.clone(),
                leeway: issuer.cfg.leeway.as_secs(),
                cache_ttl: cfg.cache_ttl,
                negative_ttl: cfg.negative_ttl,
                index,
                uid: issuer.uid(),
                strip_authorization: issuer.cfg.strip_authorization,
            },
            http,
            cache: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .expire_after(ByVerdict)
                .build(),
            cfg,
            name,
            calls,
            hit,
            miss,
        })
    }

    /// The caller of `token` (`id`: its keyed id) per the server, from the cache or one call
    /// shared by every request waiting for the same token. `source` tells which.
    pub(crate) async fn check(
        &self,
        id: u128,
        token: &str,
        source: &mut Option<&'static str>,
    ) -> Result<Arc<Principal>, AuthError> {
        let mut called = false;
        let got = self
            .cache
            .try_get_with(id, async {
                called = true;
                self.call(token).await
            })
            .await;
        if called {
            self.miss.inc();
            *source = Some(FROM_ENDPOINT);
        } else {
            self.hit.inc();
            *source = Some(FROM_CACHE);
        }
        match got {
            Ok(Verdict::Active {
                principal,
                stale_at,
                ..
            }) => {
                if stale_at.is_some_and(|s| jwt::now_secs() >= s) {
                    self.cache.invalidate(&id).await;
                    return Err(AuthError::Expired);
                }
                Ok(principal)
            }
            Ok(Verdict::Inactive { why, .. }) => Err(why),
            Err(e) => {
                // Logged once, by the request that made the call (waiters share its error).
                if called {
                    warn!(issuer = %self.name, error = %e, "token introspection failed; refusing with 503");
                }
                Err(AuthError::IntrospectionUnavailable)
            }
        }
    }

    /// One call, counted by result.
    async fn call(&self, token: &str) -> Result<Verdict, CallError> {
        let result = match self.exchange(token).await {
            Ok(body) => verdict(&body, &self.rules, jwt::now_secs()),
            Err(e) => Err(e),
        };
        let slot = match &result {
            Ok(Verdict::Active { .. }) => 0,
            Ok(Verdict::Inactive { .. }) => 1,
            Err(CallError::Timeout) => 3,
            Err(_) => 2,
        };
        self.calls[slot].inc();
        result
    }

    /// POST the token (RFC 7662 §2.1) with the gateway's client authentication; the body of a
    /// 200 answer.
    async fn exchange(&self, token: &str) -> Result<Vec<u8>, CallError> {
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                CallError::Timeout
            } else {
                CallError::Failed(e.without_url().to_string())
            }
        };
        let (id, secret) = (&self.cfg.client_id, &self.cfg.client_secret.0);
        // Built before any await: the serializer is not `Send`.
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token)
                .append_pair("token_type_hint", "access_token");
            if self.cfg.auth == IntrospectionAuth::ClientSecretPost {
                form.append_pair("client_id", id)
                    .append_pair("client_secret", secret);
            }
            form.finish()
        };
        let mut req = self
            .http
            .post(&self.cfg.endpoint)
            .timeout(self.cfg.timeout)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        if self.cfg.auth == IntrospectionAuth::Basic {
            // RFC 6749 §2.3.1: both form-urlencoded before Basic encoding.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.basic_auth(enc(id), Some(enc(secret)));
        }
        let mut resp = req.body(body).send().await.map_err(classify)?;
        if resp.status() != http::StatusCode::OK {
            return Err(CallError::Status(resp.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(CallError::Malformed("response larger than 64 KiB"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            issuer: "https://as.example".into(),
            audiences: vec!["https://api.example".into()],
            leeway: 30,
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            index: 0,
            uid: 1,
            strip_authorization: false,
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn parse(v: Value) -> Result<Verdict, CallError> {
        verdict(v.to_string().as_bytes(), &rules(), NOW)
    }

    fn refused(v: Value) -> AuthError {
        match parse(v) {
            Ok(Verdict::Inactive { why, ttl }) => {
                assert_eq!(ttl, Duration::from_secs(5));
                why
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn active_answer_gives_the_caller_and_is_kept_until_exp_at_most_the_cap() {
        let v = serde_json::json!({
            "active": true, "sub": "user-1", "client_id": "app", "scope": "read:a  write:b",
            "iss": "https://as.example", "aud": ["other", "https://api.example"],
            "exp": NOW + 20, "token_type": "Bearer", "iat": NOW - 1, "unknown": {"x": 1}
        });
        let Ok(Verdict::Active {
            principal,
            stale_at,
            ttl,
        }) = parse(v)
        else {
            panic!("not active")
        };
        assert_eq!(principal.sub(), Some("user-1"));
        assert_eq!(principal.client_id(), Some("app"));
        assert_eq!(principal.scopes(), "read:a write:b");
        assert_eq!(stale_at, Some(NOW + 50));
        assert_eq!(ttl, Duration::from_secs(20));
        // No exp: the cap; a far exp: the cap.
        let Ok(Verdict::Active { ttl, stale_at, .. }) = parse(serde_json::json!({"active": true}))
        else {
            panic!("not active")
        };
        assert_eq!((ttl, stale_at), (Duration::from_secs(60), None));
        let Ok(Verdict::Active { ttl, .. }) =
            parse(serde_json::json!({"active": true, "exp": NOW + 3600}))
        else {
            panic!("not active")
        };
        assert_eq!(ttl, Duration::from_secs(60));
    }

    #[test]
    fn positive_ttl_never_passes_exp() {
        let cap = Duration::from_secs(60);
        assert_eq!(positive_ttl(None, NOW, cap), cap);
        assert_eq!(
            positive_ttl(Some(NOW + 7), NOW, cap),
            Duration::from_secs(7)
        );
        assert_eq!(positive_ttl(Some(NOW + 600), NOW, cap), cap);
        assert_eq!(positive_ttl(Some(NOW - 5), NOW, cap), Duration::ZERO);
        assert_eq!(
            positive_ttl(Some(NOW + 7), NOW, Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn inactive_and_failed_checks_are_refusals_cached_briefly() {
        assert_eq!(
            refused(serde_json::json!({"active": false})),
            AuthError::Inactive
        );
        assert_eq!(
            refused(serde_json::json!({"active": true, "iss": "https://evil"})),
            AuthError::WrongIssuer
        );
        assert_eq!(
            refused(serde_json::json!({"active": true, "aud": "https://other"})),
            AuthError::WrongAudience
        );
        assert_eq!(
            refused(serde_json::json!({"active": true, "exp": NOW - 31})),
            AuthError::Expired
        );
        assert!(matches!(
            refused(serde_json::json!({"active": true, "nbf": NOW + 31})),
            AuthError::NotYetValid(_)
        ));
        assert!(matches!(
            refused(serde_json::json!({"active": true, "token_type": "refresh_token"})),
            AuthError::InvalidClaims(_)
        ));
        assert!(matches!(
            refused(serde_json::json!({"active": true, "cnf": {"jkt": "x"}})),
            AuthError::InvalidClaims(_)
        ));
        assert_eq!(
            refused(serde_json::json!({"active": true, "sub": "a\u{7f}b"})),
            AuthError::UnforwardableClaim("sub")
        );
        assert_eq!(
            refused(serde_json::json!({"active": true, "scope": "a\"b"})),
            AuthError::UnforwardableClaim("scope")
        );
    }

    #[test]
    fn a_body_that_is_not_an_introspection_response_is_an_error_not_a_verdict() {
        for body in [
            &b"<html>"[..],
            b"[]",
            b"{}",
            b"{\"active\": \"true\"}",
            b"{\"active\": 1}",
            b"{\"active\": true, \"exp\": \"soon\"}",
            b"{\"active\": true, \"scope\": 5}",
        ] {
            assert!(
                matches!(verdict(body, &rules(), NOW), Err(CallError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
