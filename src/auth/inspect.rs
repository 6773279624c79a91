//! What a token says about itself, checked field by field against the issuers' config and
//! keys, for `explain`: its header, the issuer its `iss` names, whether that issuer holds its
//! `kid`, whether its `alg` is allowed, its times against the leeway, its audience. The verdict
//! stays the decision core's (`Authenticator::authenticate`); this only explains it. Claims are
//! shown (they are what a rule owner debugs); the signature and the token never are.

use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Map, Value};

use super::jwks::Issuer;

/// The facts, as lines for people and as JSON for machines.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct TokenFacts {
    pub lines: Vec<String>,
    /// The JOSE header (`alg`, `kid`, `typ`, ...).
    pub header: Value,
    /// The payload's claims, unverified.
    pub claims: Value,
}

fn segment(s: &str) -> Option<Map<String, Value>> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// `3 min ago`, `in 59 min`, `12 s ago`.
fn relative(secs: i64) -> String {
    let (n, unit) = match secs.unsigned_abs() {
        s if s < 120 => (s, "s"),
        s if s < 7200 => (s / 60, "min"),
        s => (s / 3600, "h"),
    };
    if secs < 0 {
        format!("{n} {unit} ago")
    } else {
        format!("in {n} {unit}")
    }
}

fn alg_name(a: &jsonwebtoken::Algorithm) -> String {
    format!("{a:?}")
}

/// Inspect `token` against `issuers` at `now` (Unix seconds).
pub(crate) fn inspect(token: &str, issuers: &[Arc<Issuer>], now: i64) -> TokenFacts {
    let mut lines = Vec::new();
    let mut parts = token.split('.');
    let (Some(h), Some(p)) = (parts.next(), parts.next()) else {
        lines.push("format    not a JWS in compact form".into());
        return TokenFacts {
            lines,
            header: Value::Null,
            claims: Value::Null,
        };
    };
    let (Some(header), Some(claims)) = (segment(h), segment(p)) else {
        lines.push("format    header or payload is not base64url-encoded JSON".into());
        return TokenFacts {
            lines,
            header: Value::Null,
            claims: Value::Null,
        };
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let alg = text(header.get("alg")).unwrap_or_else(|| "(none)".into());
    let kid = text(header.get("kid"));
    lines.push(format!(
        "header    alg {alg}, kid {}, typ {}",
        kid.as_deref().unwrap_or("(none)"),
        text(header.get("typ")).as_deref().unwrap_or("(none)")
    ));
    let iss = text(claims.get("iss"));
    let issuer = iss
        .as_deref()
        .and_then(|iss| issuers.iter().find(|i| i.cfg.issuer == iss));
    match (&iss, issuer) {
        (None, _) => lines.push("issuer    no iss claim: no issuer can be chosen".into()),
        (Some(iss), None) => lines.push(format!("issuer    iss {iss:?} is no configured issuer")),
        (Some(iss), Some(i)) => lines.push(format!("issuer    iss {iss:?} is issuer {}", i.name())),
    }
    if let Some(i) = issuer {
        let allowed: Vec<String> = i.cfg.algorithms.iter().map(alg_name).collect();
        if allowed.contains(&alg) {
            lines.push(format!(
                "algorithm {alg} is allowed for {} ({})",
                i.name(),
                allowed.join(", ")
            ));
        } else {
            lines.push(format!(
                "algorithm {alg} is not allowed for {} (allowed: {})",
                i.name(),
                allowed.join(", ")
            ));
        }
        let keys = i.keys();
        let held: Vec<&str> = keys.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        match (&kid, i.is_ready()) {
            (_, false) => lines.push(format!("key       {} has no keys loaded yet", i.name())),
            (Some(kid), true) if held.contains(&kid.as_str()) => lines.push(format!(
                "key       kid {kid:?} is in {}'s key set",
                i.name()
            )),
            (Some(kid), true) => lines.push(format!(
                "key       kid {kid:?} is not in {}'s key set ({}); the gateway refetches the \
                 key set once per cooldown before refusing",
                i.name(),
                held.join(", ")
            )),
            (None, true) => lines.push(format!(
                "key       no kid: every key of {} whose type fits is tried",
                i.name()
            )),
        }
        let leeway = i.cfg.leeway.as_secs() as i64;
        let time = |name: &str| claims.get(name).and_then(Value::as_i64);
        match time("exp") {
            None => lines.push("exp       missing (required)".into()),
            Some(exp) if exp.saturating_add(leeway) <= now => lines.push(format!(
                "exp       expired {} (leeway {leeway} s)",
                relative(exp.saturating_sub(now))
            )),
            Some(exp) => lines.push(format!(
                "exp       expires {} (leeway {leeway} s)",
                relative(exp.saturating_sub(now))
            )),
        }
        if let Some(nbf) = time("nbf") {
            let verdict = if nbf.saturating_sub(leeway) > now {
                "not yet valid"
            } else {
                "ok"
            };
            lines.push(format!(
                "nbf       {} : {verdict}",
                relative(nbf.saturating_sub(now))
            ));
        }
        if let Some(iat) = time("iat") {
            let verdict = if iat.saturating_sub(leeway) > now {
                "in the future"
            } else {
                "ok"
            };
            lines.push(format!(
                "iat       {} : {verdict}",
                relative(iat.saturating_sub(now))
            ));
        }
        let auds: Vec<String> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(a)) => a.iter().filter_map(|v| text(Some(v))).collect(),
            _ => Vec::new(),
        };
        let accepted = auds.iter().any(|a| i.cfg.audiences.contains(a));
        lines.push(format!(
            "aud       {:?}: {} ({} accepts {:?})",
            auds,
            if accepted { "accepted" } else { "not accepted" },
            i.name(),
            i.cfg.audiences
        ));
    }
    if let Some(cnf) = claims.get("cnf") {
        let mut bound = Vec::new();
        if let Some(t) = cnf.get("x5t#S256").and_then(Value::as_str) {
            bound.push(format!(
                "the client certificate with SHA-256 {t} (RFC 8705)"
            ));
        }
        if let Some(j) = cnf.get("jkt").and_then(Value::as_str) {
            bound.push(format!("the DPoP key with thumbprint {j} (RFC 9449)"));
        }
        if !bound.is_empty() {
            lines.push(format!("binding   bound to {}", bound.join(" and ")));
        }
    }
    let mut shown = Vec::new();
    for c in ["sub", "client_id", "azp", "scope", "scp"] {
        if let Some(v) = claims.get(c) {
            shown.push(format!("{c} {v}"));
        }
    }
    if !shown.is_empty() {
        lines.push(format!("claims    {}", shown.join(", ")));
    }
    TokenFacts {
        lines,
        header: Value::Object(header),
        claims: json!(claims),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_like_people_say_them() {
        assert_eq!(relative(-180), "3 min ago");
        assert_eq!(relative(3540), "in 59 min");
        assert_eq!(relative(-5), "5 s ago");
        assert_eq!(relative(7200 * 3), "in 6 h");
    }

    #[test]
    fn garbage_is_described_not_a_panic() {
        for t in ["", "a", "a.b", "!!.??.x", "e30.e30"] {
            let f = inspect(t, &[], 0);
            assert!(!f.lines.is_empty(), "{t}");
        }
        // Extreme times are described, never an overflow.
        assert_eq!(
            relative(i64::MIN),
            format!("{} h ago", i64::MIN.unsigned_abs() / 3600)
        );
        assert!(relative(i64::MAX).starts_with("in "));
    }
}
