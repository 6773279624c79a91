//! Every answer the gateway gives itself: `Reject` -> status, headers, JSON body. This is the
//! only place that decides them (RFC 6750 §3 for bearer errors, RFC 6749 §5.2 body shape).
//! Plain data: the proxy writes it with pingora, `test` and `explain` print it.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{HeaderName, CONNECTION, RETRY_AFTER, UPGRADE, WWW_AUTHENTICATE};

use crate::auth::AuthError;
use crate::policy::MissingScopes;

/// The realm in `WWW-Authenticate`.
pub(crate) const REALM: &str = "wetrials";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// No route matched: 404.
    NoRoute,
    /// The path could not be normalised: 400.
    BadPath(&'static str),
    /// A request target that is neither origin-form nor http(s) absolute-form (RFC 9112
    /// §3.2): 400. The upstream could read it as another path than the one routed.
    BadTarget(&'static str),
    /// `%2F`, `%5C` or `\` in the path on a route that does not allow them: 400.
    EncodedSlash,
    /// Message framing or header names an upstream could read differently (duplicate
    /// `Content-Length`, a transfer coding other than chunked, a lower-case method, a header
    /// name with `_` where refused): 400.
    Malformed(&'static str),
    /// Client identification that an authorization server could read differently (two
    /// `client_id` values, HTTP Basic and a body secret; RFC 6749 §2.3, §3.1): 400.
    ClientAuthConflict(&'static str),
    /// Plain HTTP on a `require_tls` route: 403, or 426 with `Upgrade`.
    TlsRequired { status: u16 },
    /// Token problems: 400 / 401 (or 503 while keys are not loaded).
    Auth(AuthError),
    /// Valid token, scope missing: 403.
    Scope(MissingScopes),
    /// Over the limit: 429, `Retry-After` in seconds.
    RateLimited { retry_after_secs: u64 },
    /// The shared limiter is unreachable and the config says fail closed: 503.
    LimiterUnavailable,
    /// Body too large to look for `client_id`: 413.
    BodyTooLarge(usize),
    /// Body not parseable where it must be read: 400.
    BadBody(&'static str),
    /// An authentication refusal answered with a `DPoP` challenge (RFC 9449 §7.1): the request
    /// used the DPoP scheme, or the route requires it. `algs`: the proof algorithms accepted.
    Dpop { error: AuthError, algs: String },
}

impl Reject {
    pub fn status(&self) -> u16 {
        match self {
            Reject::NoRoute => 404,
            Reject::BadPath(_)
            | Reject::BadBody(_)
            | Reject::BadTarget(_)
            | Reject::EncodedSlash
            | Reject::Malformed(_)
            | Reject::ClientAuthConflict(_) => 400,
            Reject::TlsRequired { status } => *status,
            Reject::Auth(AuthError::InvalidRequest(_))
            | Reject::Dpop {
                error: AuthError::InvalidRequest(_),
                ..
            } => 400,
            Reject::Auth(e) | Reject::Dpop { error: e, .. } if e.is_unavailable() => 503,
            Reject::Auth(_) | Reject::Dpop { .. } => 401,
            Reject::Scope(_) => 403,
            Reject::RateLimited { .. } => 429,
            Reject::LimiterUnavailable => 503,
            Reject::BodyTooLarge(_) => 413,
        }
    }

    /// Bounded label for logs: what happened.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::NoRoute => "no_route",
            Reject::BadPath(_) => "bad_path",
            Reject::BadTarget(_) => "bad_target",
            Reject::EncodedSlash => "encoded_slash",
            Reject::Malformed(_) => "malformed_request",
            Reject::ClientAuthConflict(_) => "client_auth_conflict",
            Reject::TlsRequired { .. } => "tls_required",
            Reject::Auth(e) | Reject::Dpop { error: e, .. } => e.reason(),
            Reject::Scope(_) => "insufficient_scope",
            Reject::RateLimited { .. } => "rate_limited",
            Reject::LimiterUnavailable => "limiter_unavailable",
            Reject::BodyTooLarge(_) => "body_too_large",
            Reject::BadBody(_) => "bad_body",
        }
    }

    /// `(error, error_description)` of the JSON body.
    pub fn error_pair(&self) -> (&'static str, String) {
        match self {
            Reject::NoRoute => ("not_found", "no route for this method and path".into()),
            Reject::BadPath(d)
            | Reject::BadTarget(d)
            | Reject::Malformed(d)
            | Reject::ClientAuthConflict(d) => ("invalid_request", (*d).into()),
            Reject::EncodedSlash => (
                "invalid_request",
                "encoded '/' or '\\' in the path (%2F, %5C) is not accepted on this route".into(),
            ),
            Reject::TlsRequired { .. } => (
                "invalid_request",
                "this endpoint accepts HTTPS only; the request was not forwarded, and any credential it carried crossed the network unencrypted".into(),
            ),
            Reject::Auth(AuthError::MissingToken) => {
                ("invalid_request", "missing bearer token".into())
            }
            Reject::Auth(AuthError::InvalidRequest(d)) => ("invalid_request", (*d).into()),
            Reject::Auth(AuthError::IntrospectionUnavailable) => (
                "temporarily_unavailable",
                "the token could not be checked with its issuer; try again shortly".into(),
            ),
            Reject::Auth(AuthError::KeysUnavailable) => (
                "temporarily_unavailable",
                "signing keys of the token issuer are not loaded yet".into(),
            ),
            Reject::Auth(e @ AuthError::ReplayCacheUnavailable) => {
                ("temporarily_unavailable", e.to_string())
            }
            Reject::Auth(e) => ("invalid_token", e.to_string()),
            Reject::Dpop { error, .. } => match error {
                AuthError::MissingToken => (
                    "invalid_request",
                    "missing access token: this resource requires DPoP (RFC 9449)".into(),
                ),
                AuthError::InvalidRequest(_) => ("invalid_request", error.to_string()),
                AuthError::Dpop(_) => ("invalid_dpop_proof", error.to_string()),
                AuthError::KeysUnavailable | AuthError::ReplayCacheUnavailable => {
                    Reject::Auth(error.clone()).error_pair()
                }
                _ => ("invalid_token", error.to_string()),
            },
            Reject::Scope(m) => (
                "insufficient_scope",
                format!("token lacks a required scope: {}", m.0),
            ),
            Reject::RateLimited { retry_after_secs } => (
                "rate_limit_exceeded",
                format!("too many requests; retry after {retry_after_secs} s"),
            ),
            Reject::LimiterUnavailable => (
                "temporarily_unavailable",
                "rate limiter unavailable; try again shortly".into(),
            ),
            Reject::BodyTooLarge(max) => (
                "invalid_request",
                format!("request body larger than {max} bytes"),
            ),
            Reject::BadBody(d) => ("invalid_request", (*d).into()),
        }
    }

    /// `WWW-Authenticate` value, where one belongs.
    pub fn www_authenticate(&self) -> Option<String> {
        let quote = |s: &str| s.replace(['"', '\\'], "");
        match self {
            Reject::Auth(AuthError::MissingToken) => Some(format!("Bearer realm=\"{REALM}\"")),
            Reject::Auth(e) | Reject::Dpop { error: e, .. } if e.is_unavailable() => None,
            Reject::Dpop {
                error: AuthError::MissingToken,
                algs,
            } => Some(format!("DPoP realm=\"{REALM}\", algs=\"{algs}\"")),
            Reject::Dpop { algs, .. } => {
                let (error, description) = self.error_pair();
                Some(format!(
                    "DPoP realm=\"{REALM}\", error=\"{error}\", error_description=\"{}\", algs=\"{algs}\"",
                    quote(&description)
                ))
            }
            Reject::Auth(e @ AuthError::InvalidRequest(_)) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_request\", error_description=\"{}\"",
                quote(&e.to_string())
            )),
            Reject::Auth(e) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                quote(&e.to_string())
            )),
            Reject::Scope(m) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"token lacks a required scope\", scope=\"{}\"",
                quote(&m.0)
            )),
            _ => None,
        }
    }

    /// JSON body bytes.
    pub fn body(&self) -> Bytes {
        let (error, description) = self.error_pair();
        json_error(error, &description)
    }

    /// The headers of the answer besides the common ones (content type, length, no caching,
    /// request id): `WWW-Authenticate`, `Retry-After`, `Upgrade`.
    pub fn headers(&self) -> Vec<(HeaderName, Cow<'static, str>)> {
        let mut h = Vec::new();
        if let Some(v) = self.www_authenticate() {
            h.push((WWW_AUTHENTICATE, Cow::Owned(v)));
        }
        match self {
            Reject::RateLimited { retry_after_secs } => {
                h.push((RETRY_AFTER, Cow::Owned(retry_after_secs.to_string())));
            }
            Reject::Auth(e) | Reject::Dpop { error: e, .. } if e.is_unavailable() => {
                h.push((RETRY_AFTER, Cow::Borrowed("1")));
            }
            Reject::LimiterUnavailable => {
                h.push((RETRY_AFTER, Cow::Borrowed("1")));
            }
            Reject::TlsRequired { status: 426 } => {
                // RFC 9110 §15.5.22: a 426 names the protocols to switch to.
                h.push((UPGRADE, Cow::Borrowed("TLS/1.3, TLS/1.2")));
                h.push((CONNECTION, Cow::Borrowed("Upgrade")));
            }
            _ => {}
        }
        h
    }
}

/// `{"error": ..., "error_description": ...}`.
pub(crate) fn json_error(error: &str, description: &str) -> Bytes {
    let v = serde_json::json!({"error": error, "error_description": description});
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_token_has_no_error_attribute() {
        let r = Reject::Auth(AuthError::MissingToken);
        assert_eq!(r.status(), 401);
        assert_eq!(r.www_authenticate().unwrap(), "Bearer realm=\"wetrials\"");
    }

    #[test]
    fn invalid_request_is_400_with_error() {
        let r = Reject::Auth(AuthError::InvalidRequest(
            "Authorization must use the Bearer scheme",
        ));
        assert_eq!(r.status(), 400);
        assert!(r
            .www_authenticate()
            .unwrap()
            .contains("error=\"invalid_request\""));
    }

    #[test]
    fn expired_is_401_invalid_token_with_description() {
        let r = Reject::Auth(AuthError::Expired);
        assert_eq!(r.status(), 401);
        let w = r.www_authenticate().unwrap();
        assert!(w.contains("error=\"invalid_token\""), "{w}");
        assert!(w.contains("error_description=\"token expired\""), "{w}");
        let body: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["error_description"], "token expired");
    }

    #[test]
    fn dpop_refusals_carry_a_dpop_challenge_with_algs() {
        let algs = "ES256 EdDSA".to_string();
        let r = Reject::Dpop {
            error: AuthError::Dpop(crate::auth::dpop::DpopError::Replay),
            algs: algs.clone(),
        };
        assert_eq!(r.status(), 401);
        assert_eq!(r.reason(), "dpop_replay");
        let w = r.www_authenticate().unwrap();
        assert!(
            w.starts_with(
                "DPoP realm=\"wetrials\", error=\"invalid_dpop_proof\", error_description=\""
            ),
            "{w}"
        );
        assert!(w.ends_with("algs=\"ES256 EdDSA\""), "{w}");
        let r = Reject::Dpop {
            error: AuthError::Expired,
            algs: algs.clone(),
        };
        assert!(r
            .www_authenticate()
            .unwrap()
            .contains("error=\"invalid_token\""));
        let r = Reject::Dpop {
            error: AuthError::MissingToken,
            algs: algs.clone(),
        };
        assert_eq!(
            r.www_authenticate().unwrap(),
            "DPoP realm=\"wetrials\", algs=\"ES256 EdDSA\""
        );
        let r = Reject::Dpop {
            error: AuthError::ReplayCacheUnavailable,
            algs,
        };
        assert_eq!(r.status(), 503);
        assert_eq!(r.www_authenticate(), None);
    }

    #[test]
    fn scope_is_403_with_scope_attribute() {
        let r = Reject::Scope(MissingScopes("read:studies".into()));
        assert_eq!(r.status(), 403);
        assert!(r
            .www_authenticate()
            .unwrap()
            .contains("scope=\"read:studies\""));
    }

    #[test]
    fn tls_required_is_403_or_426_with_upgrade() {
        let r = Reject::TlsRequired { status: 403 };
        assert_eq!(r.status(), 403);
        assert!(!r.headers().iter().any(|(n, _)| *n == UPGRADE));
        let r = Reject::TlsRequired { status: 426 };
        assert_eq!(r.status(), 426);
        assert!(r.headers().iter().any(|(n, _)| *n == UPGRADE));
        let body: serde_json::Value =
            serde_json::from_slice(&Reject::TlsRequired { status: 426 }.body()).unwrap();
        assert_eq!(body["error"], "invalid_request");
    }

    #[test]
    fn rate_limited_is_429_with_retry_after() {
        let r = Reject::RateLimited {
            retry_after_secs: 7,
        };
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers(), vec![(RETRY_AFTER, Cow::Borrowed("7"))]);
        let body: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(body["error"], "rate_limit_exceeded");
    }
}
