//! Step 0 for the admin listener: the `Host` values it answers to and its optional bearer
//! token, as validated types. The admin module checks requests against them.

use std::net::{IpAddr, Ipv6Addr};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The host part of a `Host` header or of an `allowed_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IP literal (IPv6 written in brackets); IPv4-mapped IPv6 is read as IPv4.
    Ip(IpAddr),
    /// A name, lower-cased.
    Name(String),
}

/// `host` or `host:port` (RFC 9110 §7.2 `Host`, RFC 3986 authority without userinfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: Host,
    /// `None` when the value has no port (`host` or `host:`).
    pub port: Option<u16>,
}

impl Authority {
    /// `None` for anything but `name`, `name:port`, `ipv4`, `ipv4:port`, `[ipv6]`,
    /// `[ipv6]:port` (userinfo, paths, spaces, unbracketed IPv6, bad ports).
    pub fn parse(s: &str) -> Option<Authority> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest.split_once(']')?;
            let ip = v6.parse::<Ipv6Addr>().ok()?;
            let port = match after {
                "" => "",
                p => p.strip_prefix(':')?,
            };
            (Host::Ip(IpAddr::V6(ip).to_canonical()), port)
        } else {
            let (name, port) = s.split_once(':').unwrap_or((s, ""));
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if !name_ok {
                return None;
            }
            let host = match name.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => Host::Name(name.to_ascii_lowercase()),
            };
            (host, port)
        };
        let port = match port {
            "" => None,
            p if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
            _ => return None,
        };
        Some(Authority { host, port })
    }

    /// Does this `allowed_hosts` entry admit the request authority `req`? An entry without a
    /// port admits its host on any port.
    pub fn admits(&self, req: &Authority) -> bool {
        self.host == req.host && self.port.is_none_or(|p| req.port == Some(p))
    }
}

/// The admin bearer token. `Debug` never shows it; `matches` compares in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Shortest admin token accepted: a guessable token would make the check decoration.
pub(super) const MIN_ADMIN_TOKEN_LEN: usize = 16;

impl AdminToken {
    /// At least [`MIN_ADMIN_TOKEN_LEN`] visible ASCII characters (it travels in a header).
    /// The error never contains the value.
    pub fn new(value: &str) -> Result<AdminToken, String> {
        if value.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(format!(
                "must be at least {MIN_ADMIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        if !value.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err("must be visible ASCII characters without spaces".to_string());
        }
        Ok(AdminToken(value.to_string()))
    }

    /// Constant time in the content and the length of both values: the digests are compared,
    /// so neither a prefix nor the length leaks through timing.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let want = Sha256::digest(self.0.as_bytes());
        let got = Sha256::digest(presented);
        want.ct_eq(&got).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Authority {
        Authority::parse(s).unwrap_or_else(|| panic!("{s:?} should parse"))
    }

    #[test]
    fn authority_forms_parse() {
        assert_eq!(
            a("127.0.0.1:9091"),
            Authority {
                host: Host::Ip("127.0.0.1".parse().unwrap()),
                port: Some(9091)
            }
        );
        assert_eq!(a("[::1]:9091").host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(a("[::ffff:10.0.0.5]:1").host, a("10.0.0.5").host);
        assert_eq!(a("Admin.Example").host, Host::Name("admin.example".into()));
        assert_eq!(a("admin.example").port, None);
        assert_eq!(a("admin.example:").port, None);
    }

    #[test]
    fn authority_junk_is_refused() {
        for bad in [
            "",
            ":9091",
            "::1",
            "[::1",
            "[::1]x",
            "[evil]:1",
            "a b",
            "user@host",
            "host/x",
            "host:99999",
            "host:+80",
            "host:80:80",
            "host:123456",
        ] {
            assert!(Authority::parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn allowed_entry_without_port_admits_any_port() {
        assert!(a("admin.example").admits(&a("admin.example:9091")));
        assert!(a("admin.example").admits(&a("ADMIN.example")));
        assert!(a("admin.example:9091").admits(&a("admin.example:9091")));
        assert!(!a("admin.example:9091").admits(&a("admin.example:9092")));
        assert!(!a("admin.example:9091").admits(&a("admin.example")));
        assert!(!a("admin.example").admits(&a("evil.example:9091")));
    }

    #[test]
    fn admin_token_matches_only_itself_and_never_prints() {
        let t = AdminToken::new("s3cret-admin-token-0123").unwrap();
        assert!(t.matches(b"s3cret-admin-token-0123"));
        assert!(!t.matches(b"s3cret-admin-token-012"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "AdminToken(..)");
        assert!(AdminToken::new("short").is_err());
        let e = AdminToken::new("has a space in it, long").unwrap_err();
        assert!(!e.contains("space in it"), "{e}");
    }
}
