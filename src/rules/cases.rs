//! A route-table test file: `[[case]]` entries, each a request (with a token minted from
//! claims, a literal token, or none) and what the gateway must decide. Every problem is
//! reported with its location, like a config's.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value as Json;
use toml::Value;

/// One case, validated.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub name: String,
    /// `FILE: case N` for messages.
    pub location: String,
    pub request: CaseRequest,
    pub token: Option<CaseToken>,
    /// Send the request this many times (the expectations apply to the last answer).
    pub repeat: u32,
    /// Move the virtual clock of the rate limiter forward this much before sending.
    pub at: Duration,
    pub expect: Expect,
}

#[derive(Debug, Clone)]
pub(crate) struct CaseRequest {
    pub method: String,
    /// The request target as a client sends it.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Arrived over TLS.
    pub tls: bool,
    pub peer: IpAddr,
}

#[derive(Debug, Clone)]
pub(crate) enum CaseToken {
    /// Used as is.
    Literal(String),
    /// Minted with the runner's key for `issuer` (a config issuer name; default the first).
    Minted {
        issuer: Option<String>,
        /// JOSE header entries merged over `{alg, typ, kid}` (`kid`, `alg`, `typ`).
        header: Json,
        /// Claims; `iss`, `aud`, `iat` and `exp` default from the issuer. Times may be
        /// relative (`"+1h"`, `"-3m"`).
        claims: serde_json::Map<String, Json>,
    },
}

/// What must hold. `None` is "not checked".
#[derive(Debug, Clone, Default)]
pub(crate) struct Expect {
    /// 200 means "forwarded to the upstream".
    pub status: Option<u16>,
    /// `Some(None)`: no route matches.
    pub route: Option<Option<String>>,
    pub upstream: Option<String>,
    /// The JSON `error` code of a refusal.
    pub error: Option<String>,
    /// The `scope` attribute of a 403.
    pub scope: Option<String>,
    /// Identity headers forwarded (`x-auth-*`); an empty value means "not sent".
    pub headers: BTreeMap<String, String>,
    /// The rate-limit key one of the route's limit groups counted under.
    pub limit_key: Option<String>,
    /// The exact `WWW-Authenticate` of the answer (empty: none).
    pub www_authenticate: Option<String>,
    /// What a gate that only reports would have refused for (report mode, `report_only`
    /// limits): a refusal reason such as `expired` or `insufficient_scope`; `"none"`: nothing.
    pub would_deny: Option<String>,
}

/// Problems, each `location: message`.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub Vec<String>);

impl Problems {
    fn push(&mut self, at: impl std::fmt::Display, msg: impl std::fmt::Display) {
        self.0.push(format!("{at}: {msg}"));
    }
}

/// Parse one cases file's text; `file` names it in messages.
pub(crate) fn parse(file: &str, text: &str) -> Result<Vec<Case>, Problems> {
    let mut p = Problems::default();
    let doc: toml::Table = match toml::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
            match line {
                Some(line) => p.push(
                    format!("{file}: line {line}"),
                    format!("not valid TOML: {}", e.message()),
                ),
                None => p.push(file, format!("not valid TOML: {}", e.message())),
            }
            return Err(p);
        }
    };
    for key in doc.keys().filter(|k| *k != "case") {
        p.push(
            file,
            format!("unknown key {key:?} (a cases file holds [[case]] entries)"),
        );
    }
    let cases = match doc.get("case") {
        Some(Value::Array(a)) if !a.is_empty() => a.clone(),
        Some(_) => {
            p.push(
                file,
                "`case` must be a non-empty array of tables ([[case]])",
            );
            return Err(p);
        }
        None => {
            p.push(file, "no [[case]] entries");
            return Err(p);
        }
    };
    let mut out = Vec::new();
    let mut names = BTreeMap::new();
    for (i, c) in cases.iter().enumerate() {
        let at = format!("{file}: case {}", i + 1);
        let Some(t) = c.as_table() else {
            p.push(&at, "must be a table");
            continue;
        };
        if let Some(Value::String(name)) = t.get("name") {
            if let Some(first) = names.insert(name.clone(), i + 1) {
                p.push(
                    format!("{at} ({name:?})"),
                    format!("name {name:?} is also case {first}"),
                );
            }
        }
        if let Some(case) = case(&at, t, &mut p) {
            out.push(case);
        }
    }
    if p.0.is_empty() {
        Ok(out)
    } else {
        Err(p)
    }
}

fn unknown(at: &str, t: &toml::Table, known: &[&str], p: &mut Problems) {
    for k in t.keys().filter(|k| !known.contains(&k.as_str())) {
        p.push(
            at,
            format!("unknown key {k:?} (known: {})", known.join(", ")),
        );
    }
}

fn string(at: &str, t: &toml::Table, key: &str, p: &mut Problems) -> Option<String> {
    match t.get(key) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            p.push(format!("{at}.{key}"), "must be a string");
            None
        }
    }
}

fn case(at: &str, t: &toml::Table, p: &mut Problems) -> Option<Case> {
    unknown(
        at,
        t,
        &["name", "request", "token", "repeat", "at", "expect"],
        p,
    );
    let before = p.0.len();
    let name = string(at, t, "name", p).unwrap_or_default();
    if name.trim().is_empty() {
        p.push(format!("{at}.name"), "every case needs a name");
    }
    let at = if name.is_empty() {
        at.to_string()
    } else {
        format!("{at} ({name:?})")
    };
    let request = match t.get("request") {
        Some(Value::Table(r)) => request(&format!("{at}.request"), r, p),
        Some(_) => {
            p.push(format!("{at}.request"), "must be a table");
            None
        }
        None => {
            p.push(&at, "`request` is required");
            None
        }
    };
    let token = match t.get("token") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() => Some(CaseToken::Literal(s.clone())),
        Some(Value::Table(tt)) => token(&format!("{at}.token"), tt, p),
        Some(_) => {
            p.push(
                format!("{at}.token"),
                "must be a table of claims or a literal token string",
            );
            None
        }
    };
    let repeat = match t.get("repeat") {
        None => 1,
        Some(Value::Integer(n)) if (1..=100_000).contains(n) => *n as u32,
        Some(_) => {
            p.push(
                format!("{at}.repeat"),
                "must be an integer from 1 to 100000",
            );
            1
        }
    };
    let at_time = match t.get("at") {
        None => Duration::ZERO,
        Some(Value::String(s)) => match s.strip_prefix('+').map(humantime::parse_duration) {
            Some(Ok(d)) => d,
            _ => {
                p.push(
                    format!("{at}.at"),
                    format!("{s:?} is not a forward offset like \"+61s\""),
                );
                Duration::ZERO
            }
        },
        Some(_) => {
            p.push(format!("{at}.at"), "must be a string like \"+61s\"");
            Duration::ZERO
        }
    };
    let expect = match t.get("expect") {
        Some(Value::Table(e)) => expect(&format!("{at}.expect"), e, p),
        Some(_) => {
            p.push(format!("{at}.expect"), "must be a table");
            Expect::default()
        }
        None => {
            p.push(&at, "`expect` is required");
            Expect::default()
        }
    };
    if t.get("expect")
        .and_then(Value::as_table)
        .is_some_and(|e| !e.contains_key("status"))
    {
        p.push(format!("{at}.expect"), "`status` is required");
    }
    if p.0.len() > before {
        return None;
    }
    Some(Case {
        name,
        location: at.split(" (").next().unwrap_or(&at).to_string(),
        request: request?,
        token,
        repeat,
        at: at_time,
        expect,
    })
}

fn request(at: &str, t: &toml::Table, p: &mut Problems) -> Option<CaseRequest> {
    unknown(
        at,
        t,
        &["method", "path", "headers", "body", "tls", "peer"],
        p,
    );
    let method = string(at, t, "method", p).unwrap_or_else(|| "GET".into());
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        p.push(format!("{at}.method"), "must be an HTTP method token");
    }
    let Some(target) = string(at, t, "path", p) else {
        if !t.contains_key("path") {
            p.push(
                at,
                "`path` is required (the request target, e.g. \"/v1/studies/42\")",
            );
        }
        return None;
    };
    if target.parse::<http::Uri>().is_err() {
        p.push(
            format!("{at}.path"),
            "is not a request target an HTTP parser would accept",
        );
    }
    let mut headers = Vec::new();
    match t.get("headers") {
        None => {}
        Some(Value::Table(h)) => {
            for (k, v) in h {
                let values: Vec<&Value> = match v {
                    Value::Array(a) => a.iter().collect(),
                    other => vec![other],
                };
                for v in values {
                    match v.as_str() {
                        Some(s)
                            if http::HeaderName::from_bytes(k.as_bytes()).is_ok()
                                && http::HeaderValue::from_str(s).is_ok() =>
                        {
                            headers.push((k.to_ascii_lowercase(), s.to_string()))
                        }
                        _ => p.push(
                            format!("{at}.headers.{k}"),
                            "must be a valid header name with a string value (or an array of them)",
                        ),
                    }
                }
            }
        }
        Some(_) => p.push(format!("{at}.headers"), "must be a table"),
    }
    let body = string(at, t, "body", p).unwrap_or_default();
    let tls = match t.get("tls") {
        None => false,
        Some(Value::Boolean(b)) => *b,
        Some(_) => {
            p.push(format!("{at}.tls"), "must be true or false");
            false
        }
    };
    let peer = match string(at, t, "peer", p) {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(s) => s.parse().unwrap_or_else(|_| {
            p.push(format!("{at}.peer"), "must be an IP address");
            IpAddr::from([127, 0, 0, 1])
        }),
    };
    Some(CaseRequest {
        method,
        target,
        headers,
        body,
        tls,
        peer,
    })
}

fn token(at: &str, t: &toml::Table, p: &mut Problems) -> Option<CaseToken> {
    let issuer = string(at, t, "issuer", p);
    let header = match t.get("header") {
        None => Json::Object(Default::default()),
        Some(Value::Table(h)) => {
            for k in h
                .keys()
                .filter(|k| !["kid", "alg", "typ"].contains(&k.as_str()))
            {
                p.push(
                    format!("{at}.header.{k}"),
                    "only kid, alg and typ may be set",
                );
            }
            serde_json::to_value(h).unwrap_or_default()
        }
        Some(_) => {
            p.push(format!("{at}.header"), "must be a table");
            return None;
        }
    };
    let mut claims = serde_json::Map::new();
    for (k, v) in t.iter().filter(|(k, _)| *k != "issuer" && *k != "header") {
        match serde_json::to_value(v) {
            Ok(j) => {
                claims.insert(k.clone(), j);
            }
            Err(_) => p.push(format!("{at}.{k}"), "cannot be a JSON claim"),
        }
    }
    Some(CaseToken::Minted {
        issuer,
        header,
        claims,
    })
}

fn expect(at: &str, t: &toml::Table, p: &mut Problems) -> Expect {
    unknown(
        at,
        t,
        &[
            "status",
            "route",
            "upstream",
            "error",
            "scope",
            "headers",
            "limit_key",
            "www_authenticate",
            "would_deny",
        ],
        p,
    );
    let status = match t.get("status") {
        None => None,
        Some(Value::Integer(n)) if (100..=599).contains(n) => Some(*n as u16),
        Some(_) => {
            p.push(
                format!("{at}.status"),
                "must be an HTTP status (200 = forwarded)",
            );
            None
        }
    };
    let route = match t.get("route") {
        None => None,
        Some(Value::String(s)) if s.is_empty() || s == "none" => Some(None),
        Some(Value::String(s)) => Some(Some(s.clone())),
        Some(Value::Boolean(false)) => Some(None),
        Some(_) => {
            p.push(
                format!("{at}.route"),
                "must be a route name, or \"none\" for no matching route",
            );
            None
        }
    };
    let mut headers = BTreeMap::new();
    match t.get("headers") {
        None => {}
        Some(Value::Table(h)) => {
            for (k, v) in h {
                match v.as_str() {
                    Some(s) => {
                        headers.insert(k.to_ascii_lowercase(), s.to_string());
                    }
                    None => p.push(
                        format!("{at}.headers.{k}"),
                        "must be a string (\"\": not sent)",
                    ),
                }
            }
        }
        Some(_) => p.push(format!("{at}.headers"), "must be a table"),
    }
    Expect {
        status,
        route,
        upstream: string(at, t, "upstream", p),
        error: string(at, t, "error", p),
        scope: string(at, t, "scope", p),
        headers,
        limit_key: string(at, t, "limit_key", p),
        www_authenticate: string(at, t, "www_authenticate", p),
        would_deny: string(at, t, "would_deny", p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_location() {
        let text = r#"
[[case]]
name = "a"
request = { method = "GET", path = "/x", color = "red" }
expect = { status = 200, route = 3 }

[[case]]
name = "a"
request = { path = "/y" }
expect = { status = 99 }
repeat = 0
at = "-1s"
"#;
        let p = parse("t.toml", text).unwrap_err().0;
        let has = |s: &str| p.iter().any(|m| m.contains(s));
        assert!(
            has("t.toml: case 1 (\"a\").request: unknown key \"color\""),
            "{p:#?}"
        );
        assert!(
            has("t.toml: case 1 (\"a\").expect.route: must be a route name"),
            "{p:#?}"
        );
        assert!(has("t.toml: case 2 (\"a\").expect.status"), "{p:#?}");
        assert!(has("t.toml: case 2 (\"a\").repeat"), "{p:#?}");
        assert!(has("t.toml: case 2 (\"a\").at"), "{p:#?}");
    }

    #[test]
    fn a_minted_token_keeps_its_claims_and_header_fields() {
        let text = r#"
[[case]]
name = "t"
request = { path = "/v1/x" }
token = { sub = "u1", scope = "read:x", exp = "-3m", header = { kid = "other" } }
expect = { status = 401, route = "none" }
"#;
        let c = parse("t.toml", text).unwrap();
        match &c[0].token {
            Some(CaseToken::Minted { header, claims, .. }) => {
                assert_eq!(header["kid"], "other");
                assert_eq!(claims["sub"], "u1");
                assert_eq!(claims["exp"], "-3m");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c[0].expect.route, Some(None));
    }
}
