//! Step 3a, who is this for the rate limiter? The client IP (believing `X-Forwarded-For` only
//! from trusted proxies), HTTP Basic client ids, cookies, query parameters, and the
//! `client_id` of a form or JSON body. The key is a bounded string: long values are hashed.

use std::net::IpAddr;

use base64::Engine;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// The SHA-256 of the DER of a client certificate passed by a TLS-terminating proxy as
/// URL-encoded PEM (nginx `$ssl_client_escaped_cert`, AWS ALB `X-Amzn-Mtls-Clientcert`); plain
/// PEM with its newlines as spaces is read too. `None` for anything else.
pub(crate) fn cert_sha256_from_header(value: &[u8]) -> Option<[u8; 32]> {
    let text = std::str::from_utf8(value).ok()?;
    let decoded = percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()?;
    let body = decoded
        .trim()
        .strip_prefix("-----BEGIN CERTIFICATE-----")?
        .trim_end()
        .strip_suffix("-----END CERTIFICATE-----")?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    if der.is_empty() {
        return None;
    }
    Some(Sha256::digest(&der).into())
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
///
/// The walk goes from the right (the entries our own proxies appended) and stops at the
/// first untrusted address: what stands left of it is the client's to write, so garbage
/// there changes nothing. An entry that does not parse before that point ends the walk at
/// the last trusted hop: a proxy we trust wrote something we cannot read.
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
    let values: Vec<&[u8]> = xff.collect();
    let mut client = peer;
    for value in values.iter().rev() {
        for part in value.rsplit(|&b| b == b',') {
            let hop = std::str::from_utf8(part)
                .ok()
                .and_then(|s| parse_hop(s.trim()));
            match hop {
                Some(ip) => {
                    client = ip;
                    if !is_trusted(&ip) {
                        return Some(client);
                    }
                }
                None => return Some(client),
            }
        }
    }
    Some(client)
}

/// Did the request reach the edge over TLS? Only a trusted proxy's `X-Forwarded-Proto` is
/// believed: its right-most value, the one the nearest proxy wrote.
pub fn forwarded_https<'a>(
    peer: Option<IpAddr>,
    xfp: impl Iterator<Item = &'a [u8]>,
    trusted: &[IpNet],
) -> bool {
    let Some(peer) = peer else { return false };
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return false;
    }
    xfp.last()
        .and_then(|v| v.rsplit(|&b| b == b',').next())
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"https"))
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

/// Is this `Authorization` value in the Basic scheme?
pub fn is_basic(value: &[u8]) -> bool {
    value.len() > 6 && value[..6].eq_ignore_ascii_case(b"basic ")
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
pub(crate) fn cookie<'a>(values: impl Iterator<Item = &'a [u8]>, name: &str) -> Option<String> {
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
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
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

/// `client_id` of the query string; `Err` when it is given twice.
pub fn query_client_id(query: Option<&str>) -> Result<Option<String>, &'static str> {
    let Some(query) = query else { return Ok(None) };
    single(
        form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "client_id")
            .map(|(_, v)| v.into_owned()),
        "client_id given more than once in the query",
    )
}

/// The one value of a parameter; `Err` when there are several (RFC 6749 §3.1: "parameters
/// MUST NOT be included more than once"), `None` when there is none or it is empty.
fn single(
    mut values: impl Iterator<Item = String>,
    twice: &'static str,
) -> Result<Option<String>, &'static str> {
    let first = values.next();
    if values.next().is_some() {
        return Err(twice);
    }
    Ok(first.filter(|v| !v.is_empty()))
}

/// What a token-endpoint body says about its client.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BodyClient {
    pub client_id: Option<String>,
    /// A `client_secret` parameter is present (client_secret_post).
    pub has_secret: bool,
}

/// `client_id` and `client_secret` of a form-encoded or JSON body. `Err` for a JSON body
/// that does not parse or is not UTF-8, or a parameter given twice (a JSON object with a repeated key
/// included: parsers disagree on which one wins).
pub fn body_client(content_type: &str, body: &[u8]) -> Result<BodyClient, &'static str> {
    let mime = mime(content_type);
    if mime == "application/x-www-form-urlencoded" {
        let pairs = || form_urlencoded::parse(body);
        let secrets = pairs().filter(|(k, _)| k == "client_secret").count();
        if secrets > 1 {
            return Err("client_secret given more than once in the body");
        }
        return Ok(BodyClient {
            client_id: single(
                pairs()
                    .filter(|(k, _)| k == "client_id")
                    .map(|(_, v)| v.into_owned()),
                "client_id given more than once in the body",
            )?,
            has_secret: secrets == 1,
        });
    }
    if mime == "application/json" || mime.ends_with("+json") {
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(BodyClient::default());
        }
        // JSON is UTF-8 (RFC 8259 §8.1). serde_json skips the members we do not read without
        // checking their bytes, so a body the authorization server refuses (or reads with
        // replacement characters) would still give us a client_id: check it whole first.
        let body = std::str::from_utf8(body).map_err(|_| "JSON body is not valid UTF-8")?;
        let parsed: JsonClient = serde_json::from_str(body).map_err(|e| {
            if e.is_data() && e.to_string().contains(DUPLICATE) {
                "a client parameter is given more than once in the JSON body"
            } else if e.is_data() {
                "JSON body is not an object"
            } else {
                "malformed JSON body"
            }
        })?;
        return Ok(BodyClient {
            client_id: parsed.client_id.filter(|c| !c.is_empty()),
            has_secret: parsed.has_secret,
        });
    }
    Ok(BodyClient::default())
}

const DUPLICATE: &str = "duplicate client parameter";

/// The top-level object of a JSON body, read once: `client_id` (a string) and whether
/// `client_secret` is present, refusing either key twice. Other members are skipped
/// without being kept.
struct JsonClient {
    client_id: Option<String>,
    has_secret: bool,
}

impl<'de> serde::Deserialize<'de> for JsonClient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = JsonClient;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonClient, A::Error> {
                use serde::de::Error;
                let mut out = JsonClient {
                    client_id: None,
                    has_secret: false,
                };
                let mut ids = 0;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        // A client_id that is not a string names no client (as before).
                        "client_id" => {
                            ids += 1;
                            out.client_id = match map.next_value::<serde_json::Value>()? {
                                serde_json::Value::String(s) => Some(s),
                                _ => None,
                            };
                        }
                        "client_secret" => {
                            if out.has_secret {
                                return Err(A::Error::custom(DUPLICATE));
                            }
                            out.has_secret = true;
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                    if ids > 1 {
                        return Err(A::Error::custom(DUPLICATE));
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Is this a body we read for `client_id`?
pub(crate) fn readable_body_type(content_type: &str) -> bool {
    let mime = mime(content_type);
    mime == "application/x-www-form-urlencoded"
        || mime == "application/json"
        || mime.ends_with("+json")
}

/// `tag:value`, with long values replaced by their SHA-256 so memory per key stays bounded.
pub(crate) fn key(tag: &str, value: &str) -> String {
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

    fn body_id(ct: &str, body: &[u8]) -> Result<Option<String>, &'static str> {
        body_client(ct, body).map(|b| b.client_id)
    }

    #[test]
    fn body_client_id_from_form_and_json() {
        assert_eq!(
            body_id(
                "application/x-www-form-urlencoded",
                b"grant_type=client_credentials&client_id=app1"
            )
            .unwrap()
            .as_deref(),
            Some("app1")
        );
        assert_eq!(
            body_id(
                "application/json; charset=utf-8",
                br#"{"client_id":"app2", "scope": ["a"], "x": {"client_id": "nested"}}"#
            )
            .unwrap()
            .as_deref(),
            Some("app2")
        );
        assert!(body_id("application/json", b"{nope").is_err());
        assert!(body_id("application/json", b"[1]").is_err());
        assert_eq!(
            body_id("application/json", br#"{"client_id": 7}"#),
            Ok(None)
        );
        assert_eq!(body_id("text/plain", b"client_id=x").unwrap(), None);
    }

    #[test]
    fn body_client_refuses_repeated_parameters_and_sees_secrets() {
        let form = "application/x-www-form-urlencoded";
        assert!(body_id(form, b"client_id=a&client_id=victim").is_err());
        assert!(body_id(form, b"client_id=a&client_%69d=victim").is_err());
        assert!(body_id(
            "application/json",
            br#"{"client_id":"a","client_id":"victim"}"#
        )
        .is_err());
        assert!(body_client(form, b"client_secret=1&client_secret=2").is_err());
        assert!(
            body_client(form, b"client_id=a&client_secret=s")
                .unwrap()
                .has_secret
        );
        assert!(
            body_client(
                "application/json",
                br#"{"client_id":"a","client_secret":"s"}"#
            )
            .unwrap()
            .has_secret
        );
        assert!(!body_client(form, b"client_id=a").unwrap().has_secret);
        assert!(query_client_id(Some("client_id=a&client_id=b")).is_err());
        assert_eq!(
            query_client_id(Some("x=1&client_id=a")).unwrap().as_deref(),
            Some("a")
        );
    }

    #[test]
    fn body_client_refuses_json_that_is_not_utf8() {
        // Found by the `client_id` fuzz target: a byte that is not UTF-8 in a member we skip
        // made the body unreadable for serde_json's Value and Python's json.loads, while
        // the gateway read (and counted) `victim`.
        let body = b"{\"grant_type\":\"client_crede\xe5tials\",\"client_id\":\"victim\"}";
        assert!(serde_json::from_slice::<serde_json::Value>(body).is_err());
        assert_eq!(
            body_id("application/json", body),
            Err("JSON body is not valid UTF-8")
        );
        assert_eq!(
            body_id(
                "application/json",
                "{\"x\":\"\u{e5}\",\"client_id\":\"v\"}".as_bytes()
            )
            .unwrap()
            .as_deref(),
            Some("v")
        );
    }

    #[test]
    fn client_ip_walks_from_the_right_past_garbage_on_the_left() {
        let trusted = nets(&["10.0.0.0/8"]);
        let ip = |xff: &[&[u8]]| {
            client_ip(
                Some("10.0.0.1".parse().unwrap()),
                xff.iter().copied(),
                &trusted,
            )
        };
        assert_eq!(
            ip(&[b"garbage, 203.0.113.7"]),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            ip(&[b"garbage", b"203.0.113.7, 10.0.0.9"]),
            Some("203.0.113.7".parse().unwrap())
        );
        // Garbage written by a trusted hop ends the walk at that hop.
        assert_eq!(
            ip(&[b"203.0.113.7, junk, 10.0.0.9"]),
            Some("10.0.0.9".parse().unwrap())
        );
    }

    #[test]
    fn forwarded_https_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let https = |peer: &str, xfp: &[&[u8]]| {
            forwarded_https(Some(peer.parse().unwrap()), xfp.iter().copied(), &trusted)
        };
        assert!(https("10.0.0.1", &[b"https"]));
        assert!(https("10.0.0.1", &[b"http, HTTPS"]));
        assert!(!https("10.0.0.1", &[b"https, http"]));
        assert!(!https("203.0.113.7", &[b"https"]));
        assert!(!https("10.0.0.1", &[]));
    }

    #[test]
    fn long_key_values_are_hashed() {
        assert_eq!(key("ip", "1.2.3.4"), "ip:1.2.3.4");
        let k = key("header", &"x".repeat(1000));
        assert!(k.starts_with("header:sha256:") && k.len() < 90, "{k}");
    }
}
