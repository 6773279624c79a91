//! Step 3a, who is this for the rate limiter? The client IP (believing `X-Forwarded-For` only
//! from trusted proxies), HTTP Basic client ids, cookies, query parameters, and the
//! `client_id` of a form or JSON body. The key is a bounded string: long values are hashed.

use std::net::IpAddr;

use base64::Engine;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// The client's address: the peer, or — when the peer is a trusted proxy — the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip<'a>(
    peer: Option<IpAddr>,
    xff: impl Iterator<Item = &'a [u8]>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return Some(peer);
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in xff {
        let Ok(s) = std::str::from_utf8(value) else {
            return Some(peer);
        };
        for part in s.split(',') {
            match parse_hop(part.trim()) {
                Some(ip) => hops.push(ip),
                None => return Some(peer),
            }
        }
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = *hop;
        if !is_trusted(hop) {
            break;
        }
    }
    Some(client)
}

fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    // `[v6]:port` or `v4:port`
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    None
}

/// The user part of `Authorization: Basic ...` (form-urlencoded per RFC 6749 §2.3.1).
pub fn basic_client_id(value: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map(|(u, _)| u).unwrap_or(&text);
    let user: String = form_urlencoded::parse(format!("u={user}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    (!user.is_empty()).then_some(user)
}

/// A cookie's value from `Cookie` header values.
pub fn cookie<'a>(values: impl Iterator<Item = &'a [u8]>, name: &str) -> Option<String> {
    for v in values {
        let Ok(s) = std::str::from_utf8(v) else {
            continue;
        };
        for pair in s.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=') {
                if k.trim() == name {
                    let val = val.trim().trim_matches('"');
                    if !val.is_empty() {
                        return Some(val.to_string());
                    }
                }
            }
        }
    }
    None
}

/// A query parameter's decoded value.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// The media type of a `Content-Type` value, lower case, without parameters.
fn mime(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `client_id` of a form-encoded or JSON body. `Err` for a JSON body that does not parse.
pub fn body_client_id(content_type: &str, body: &[u8]) -> Result<Option<String>, &'static str> {
    let mime = mime(content_type);
    if mime == "application/x-www-form-urlencoded" {
        return Ok(form_urlencoded::parse(body)
            .find(|(k, _)| k == "client_id")
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty()));
    }
    if mime == "application/json" || mime.ends_with("+json") {
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(None);
        }
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| "malformed JSON body")?;
        return match v {
            serde_json::Value::Object(m) => Ok(m
                .get("client_id")
                .and_then(|c| c.as_str())
                .filter(|c| !c.is_empty())
                .map(str::to_string)),
            _ => Err("JSON body is not an object"),
        };
    }
    Ok(None)
}

/// Is this a body we read for `client_id`?
pub fn readable_body_type(content_type: &str) -> bool {
    let mime = mime(content_type);
    mime == "application/x-www-form-urlencoded"
        || mime == "application/json"
        || mime.ends_with("+json")
}

/// `tag:value`, with long values replaced by their SHA-256 so memory per key stays bounded.
pub fn key(tag: &str, value: &str) -> String {
    if value.len() <= 128 {
        format!("{tag}:{value}")
    } else {
        let d = Sha256::digest(value.as_bytes());
        let mut hex = String::with_capacity(64);
        for b in d {
            hex.push_str(&format!("{b:02x}"));
        }
        format!("{tag}:sha256:{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter()
            .map(|s| crate::config::parse_cidr(s).unwrap())
            .collect()
    }

    #[test]
    fn client_ip_untrusted_peer_ignores_xff() {
        let ip = client_ip(
            Some("198.51.100.7".parse().unwrap()),
            [&b"1.2.3.4"[..]].into_iter(),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, Some("198.51.100.7".parse().unwrap()));
    }

    #[test]
    fn client_ip_trusted_peer_uses_rightmost_untrusted_hop() {
        let ip = client_ip(
            Some("10.0.0.1".parse().unwrap()),
            [&b"6.6.6.6, 203.0.113.9, 10.0.0.2"[..]].into_iter(),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, Some("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn client_ip_garbage_xff_falls_back_to_peer() {
        let ip = client_ip(
            Some("10.0.0.1".parse().unwrap()),
            [&b"nonsense"[..]].into_iter(),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn basic_client_id_is_decoded() {
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("my%20app:secret")
        );
        assert_eq!(basic_client_id(v.as_bytes()).as_deref(), Some("my app"));
        assert_eq!(basic_client_id(b"Bearer x"), None);
        assert_eq!(basic_client_id(b"Basic !!!"), None);
    }

    #[test]
    fn cookie_and_query_are_found() {
        assert_eq!(
            cookie([&b"a=1; session=abc"[..]].into_iter(), "session").as_deref(),
            Some("abc")
        );
        assert_eq!(cookie([&b"sessionx=1"[..]].into_iter(), "session"), None);
        assert_eq!(
            query_param(Some("x=1&api_key=k%20y"), "api_key").as_deref(),
            Some("k y")
        );
    }

    #[test]
    fn body_client_id_from_form_and_json() {
        assert_eq!(
            body_client_id(
                "application/x-www-form-urlencoded",
                b"grant_type=client_credentials&client_id=app1"
            )
            .unwrap()
            .as_deref(),
            Some("app1")
        );
        assert_eq!(
            body_client_id(
                "application/json; charset=utf-8",
                br#"{"client_id":"app2"}"#
            )
            .unwrap()
            .as_deref(),
            Some("app2")
        );
        assert!(body_client_id("application/json", b"{nope").is_err());
        assert_eq!(body_client_id("text/plain", b"client_id=x").unwrap(), None);
    }

    #[test]
    fn long_key_values_are_hashed() {
        assert_eq!(key("ip", "1.2.3.4"), "ip:1.2.3.4");
        let k = key("header", &"x".repeat(1000));
        assert!(k.starts_with("header:sha256:") && k.len() < 90, "{k}");
    }
}
