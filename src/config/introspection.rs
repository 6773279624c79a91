//! The introspection keys of an issuer (RFC 7662) and the route rules that depend on them:
//! validated here so `validate.rs` only calls in.

use std::time::Duration;

use super::file::{IssuerFile, Redacted, RouteFile};
use super::Problem;

/// Longest `introspection_negative_cache_secs`: a token the server said was inactive may
/// become valid only by being a new token, but an outage of the server's database may also
/// say `active: false`, and that must not stick.
pub(super) const MAX_NEGATIVE_CACHE_SECS: u64 = 60;

/// How the gateway authenticates itself at the introspection endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionAuth {
    /// `Authorization: Basic` with the form-urlencoded id and secret.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// An issuer's introspection endpoint and the gateway's client there.
#[derive(Debug, Clone, PartialEq)]
pub struct IntrospectionConfig {
    pub endpoint: String,
    pub auth: IntrospectionAuth,
    pub client_id: String,
    /// `Debug` prints `Redacted(..)`.
    pub client_secret: Redacted,
    pub timeout: Duration,
    /// Cap on reusing an active result (the token's `exp` is the other bound).
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
}

fn problem(location: String, message: &str) -> Problem {
    Problem {
        location,
        message: message.to_string(),
    }
}

/// The introspection settings of one issuer (`None` without `introspection_endpoint`), and
/// every problem found, at `at.key`.
pub(super) fn issuer_introspection(
    f: &IssuerFile,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<IntrospectionConfig> {
    let before = problems.len();
    let Some(endpoint) = &f.introspection_endpoint else {
        let set = [
            ("introspection_auth", f.introspection_auth.is_some()),
            (
                "introspection_client_id",
                f.introspection_client_id.is_some(),
            ),
            (
                "introspection_client_secret",
                f.introspection_client_secret.is_some(),
            ),
            (
                "introspection_timeout_ms",
                f.introspection_timeout_ms.is_some(),
            ),
            (
                "introspection_cache_secs",
                f.introspection_cache_secs.is_some(),
            ),
            (
                "introspection_negative_cache_secs",
                f.introspection_negative_cache_secs.is_some(),
            ),
        ];
        for (key, _) in set.iter().filter(|(_, on)| *on) {
            problems.push(problem(
                format!("{at}.{key}"),
                "has no effect without introspection_endpoint",
            ));
        }
        return None;
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        || endpoint.parse::<http::Uri>().is_err()
    {
        problems.push(problem(
            format!("{at}.introspection_endpoint"),
            "must be an http(s) URL",
        ));
    }
    let auth = match f.introspection_auth.as_deref() {
        None | Some("basic") => IntrospectionAuth::Basic,
        Some("client_secret_post") => IntrospectionAuth::ClientSecretPost,
        Some(_) => {
            problems.push(problem(
                format!("{at}.introspection_auth"),
                "must be \"basic\" or \"client_secret_post\"",
            ));
            IntrospectionAuth::Basic
        }
    };
    let client_id = f.introspection_client_id.clone().unwrap_or_default();
    if client_id.is_empty() {
        problems.push(problem(
            format!("{at}.introspection_client_id"),
            "required with introspection_endpoint (not empty)",
        ));
    }
    // The problem names the rule, never the value: it is a secret.
    let client_secret = f
        .introspection_client_secret
        .clone()
        .unwrap_or(Redacted(String::new()));
    if client_secret.0.is_empty() {
        problems.push(problem(
            format!("{at}.introspection_client_secret"),
            "required with introspection_endpoint (not empty; write \"${ENV_VAR}\")",
        ));
    }
    if f.introspection_timeout_ms == Some(0) {
        problems.push(problem(
            format!("{at}.introspection_timeout_ms"),
            "must be at least 1",
        ));
    }
    let negative = f.introspection_negative_cache_secs.unwrap_or(5);
    if negative > MAX_NEGATIVE_CACHE_SECS {
        problems.push(problem(
            format!("{at}.introspection_negative_cache_secs"),
            &format!("at most {MAX_NEGATIVE_CACHE_SECS} seconds"),
        ));
    }
    let cache = f.introspection_cache_secs.unwrap_or(60);
    if cache > 86_400 {
        problems.push(problem(
            format!("{at}.introspection_cache_secs"),
            "at most 86400 seconds",
        ));
    }
    if problems.len() != before {
        return None;
    }
    Some(IntrospectionConfig {
        endpoint: endpoint.clone(),
        auth,
        client_id,
        client_secret,
        timeout: Duration::from_millis(f.introspection_timeout_ms.unwrap_or(2000)),
        cache_ttl: Duration::from_secs(cache),
        negative_ttl: Duration::from_secs(negative),
    })
}

/// Route rules: `introspect = true` needs every issuer the route accepts to introspect, and
/// an opaque token must have exactly one place to go: a route may accept at most one
/// introspecting issuer (else list one in its `issuers`), so no token is ever sent to an
/// authorization server that did not issue it.
pub(super) fn route_problems(
    f: &RouteFile,
    jwt_route: bool,
    issuers: &[(&str, bool)],
    at: &str,
    problems: &mut Vec<Problem>,
) {
    let accepted: Vec<&(&str, bool)> = issuers
        .iter()
        .filter(|(name, _)| {
            f.issuers
                .as_ref()
                .is_none_or(|l| l.iter().any(|n| n == name))
        })
        .collect();
    if f.introspect == Some(true) {
        if !jwt_route {
            problems.push(problem(
                format!("{at}.introspect"),
                "has no effect on an auth = \"none\" route",
            ));
        }
        for (name, _) in accepted.iter().filter(|(_, introspects)| !introspects) {
            problems.push(problem(
                format!("{at}.introspect"),
                &format!(
                    "issuer {name:?} accepted here has no introspection_endpoint (list the \
                     introspecting issuers in this route's `issuers`)"
                ),
            ));
        }
    }
    let introspecting = accepted.iter().filter(|(_, i)| *i).count();
    if jwt_route && introspecting > 1 {
        problems.push(problem(
            at.to_string(),
            "accepts more than one issuer with an introspection_endpoint: an opaque token \
             could be sent to either; name one in this route's `issuers`",
        ));
    }
}
