//! Step 3a, who is this for the rate limiter? The sources of a route's limit key, tried in
//! order; the first that yields a value wins (`sub | client_id | ip | header:N | cookie:N |
//! query:N`). Extraction from a request lives in `decide::clientkey`.

use crate::ratelimit::LimitSpec;

/// The limits of a route that share one key, decided together (all admit, or none counts).
/// A route's groups are decided in file order, each on its own key: a per-IP limit beside a
/// per-client one, say. Report-only limits (`report_only = true`) form groups of their own,
/// so an enforced limit never goes uncounted because a report-only one refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitGroup {
    pub limits: Vec<LimitSpec>,
    pub key: Vec<KeySource>,
    /// A refusal is reported (`would_deny`), and the request forwarded.
    pub report_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The validated token's `sub`.
    Sub,
    /// Token `client_id`/`azp`, else HTTP Basic user, else `client_id` in a form or JSON body.
    ClientId,
    /// The peer address, or `X-Forwarded-For` from a trusted proxy.
    Ip,
    /// Lower-case header name.
    Header(String),
    Cookie(String),
    Query(String),
}

impl KeySource {
    pub fn parse(s: &str) -> Result<Self, String> {
        let named = |kind: &str, name: &str| -> Result<String, String> {
            if name.is_empty() {
                Err(format!(
                    "{s:?}: {kind}: needs a name, e.g. \"{kind}:session\""
                ))
            } else if !name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b';' && b != b'=' && b != b',')
            {
                Err(format!("{s:?}: invalid {kind} name"))
            } else {
                Ok(name.to_string())
            }
        };
        match s {
            "sub" => Ok(KeySource::Sub),
            "client_id" => Ok(KeySource::ClientId),
            "ip" => Ok(KeySource::Ip),
            _ => match s.split_once(':') {
                Some(("header", n)) => {
                    let n = named("header", n)?;
                    http::HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("{s:?}: invalid header name"))?;
                    if n.eq_ignore_ascii_case("authorization") {
                        return Err(format!("{s:?}: the Authorization header carries secrets; use sub or client_id"));
                    }
                    Ok(KeySource::Header(n.to_ascii_lowercase()))
                }
                Some(("cookie", n)) => Ok(KeySource::Cookie(named("cookie", n)?)),
                Some(("query", n)) => Ok(KeySource::Query(named("query", n)?)),
                _ => Err(format!(
                    "{s:?} is not a key source (sub, client_id, ip, header:NAME, cookie:NAME, query:NAME)"
                )),
            },
        }
    }
}

/// As written in the config (`sub`, `header:x-api-key`, …).
impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Sub => f.write_str("sub"),
            KeySource::ClientId => f.write_str("client_id"),
            KeySource::Ip => f.write_str("ip"),
            KeySource::Header(n) => write!(f, "header:{n}"),
            KeySource::Cookie(n) => write!(f, "cookie:{n}"),
            KeySource::Query(n) => write!(f, "query:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_source_parses_every_form() {
        assert_eq!(KeySource::parse("sub"), Ok(KeySource::Sub));
        assert_eq!(KeySource::parse("client_id"), Ok(KeySource::ClientId));
        assert_eq!(KeySource::parse("ip"), Ok(KeySource::Ip));
        assert_eq!(
            KeySource::parse("header:X-Api-Key"),
            Ok(KeySource::Header("x-api-key".into()))
        );
        assert_eq!(
            KeySource::parse("cookie:session"),
            Ok(KeySource::Cookie("session".into()))
        );
        assert_eq!(
            KeySource::parse("query:api_key"),
            Ok(KeySource::Query("api_key".into()))
        );
    }

    #[test]
    fn key_source_bad_forms_are_refused() {
        for bad in [
            "",
            "user",
            "cookie:",
            "header:",
            "header:a b",
            "header:authorization",
            "form:x",
        ] {
            assert!(KeySource::parse(bad).is_err(), "{bad}");
        }
    }
}
